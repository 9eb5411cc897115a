//! The client against a scripted HTTP server: Connect framing split across
//! body chunks, errors in end-of-stream frames and unary bodies, headers,
//! health polling. The real envd is exercised in `tests/envd.rs`.

// Test helpers outside #[test] fns: a failed setup should panic.
#![allow(clippy::unwrap_used)]

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::{BufMut as _, Bytes, BytesMut};
use envd_client::{EnvdClient, ExecRequest};
use envd_proto::process as pb;
use futures::stream;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use prost::Message as _;
use tokio::net::TcpListener;

/// What the fake server answers: status, content type, body chunks (each
/// written as its own chunk, a few ms apart).
#[derive(Clone)]
struct Reply {
    status: u16,
    content_type: &'static str,
    chunks: Vec<Bytes>,
}

/// A request the fake server received.
#[derive(Debug, Clone)]
struct Seen {
    path_and_query: String,
    headers: HeaderMap,
    body: Bytes,
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

struct FakeEnvd {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeEnvd {
    async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let server_seen = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                let handler = Arc::clone(&handler);
                let seen = Arc::clone(&server_seen);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        respond(request, Arc::clone(&handler), Arc::clone(&seen))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        Self { addr, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

type ReplyBody =
    StreamBody<futures::stream::BoxStream<'static, Result<Frame<Bytes>, std::convert::Infallible>>>;

async fn respond(
    request: Request<Incoming>,
    handler: Handler,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<ReplyBody>, std::convert::Infallible> {
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(ToString::to_string)
        .unwrap_or_default();
    let headers = request.headers().clone();
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let record = Seen {
        path_and_query,
        headers,
        body,
    };
    let reply = handler(&record);
    seen.lock().unwrap().push(record);
    let frames = stream::unfold(reply.chunks.into_iter(), |mut chunks| async move {
        let chunk = chunks.next()?;
        tokio::time::sleep(Duration::from_millis(3)).await;
        Some((Ok(Frame::data(chunk)), chunks))
    });
    let body = StreamBody::new(futures::StreamExt::boxed(frames));
    Ok(Response::builder()
        .status(reply.status)
        .header("content-type", reply.content_type)
        .body(body)
        .unwrap())
}

fn envelope(flags: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(flags);
    out.put_u32(u32::try_from(payload.len()).unwrap());
    out.put_slice(payload);
    out.freeze()
}

fn event(event: pb::process_event::Event) -> Bytes {
    let message = pb::StartResponse {
        event: Some(pb::ProcessEvent { event: Some(event) }),
    };
    envelope(0, &message.encode_to_vec())
}

fn start_event(pid: u32) -> Bytes {
    event(pb::process_event::Event::Start(
        pb::process_event::StartEvent { pid },
    ))
}

fn stdout_event(data: &[u8]) -> Bytes {
    event(pb::process_event::Event::Data(
        pb::process_event::DataEvent {
            output: Some(pb::process_event::data_event::Output::Stdout(data.to_vec())),
        },
    ))
}

fn keepalive_event() -> Bytes {
    event(pb::process_event::Event::Keepalive(
        pb::process_event::KeepAlive {},
    ))
}

fn end_event(exit_code: i32) -> Bytes {
    event(pb::process_event::Event::End(pb::process_event::EndEvent {
        exit_code,
        exited: true,
        status: format!("exit status {exit_code}"),
        error: None,
    }))
}

/// `bytes` cut into pieces of `size` bytes, so envelopes straddle chunks.
fn split(bytes: &[u8], size: usize) -> Vec<Bytes> {
    bytes.chunks(size).map(Bytes::copy_from_slice).collect()
}

fn stream_reply(body: &[u8], chunk_size: usize) -> Reply {
    Reply {
        status: 200,
        content_type: "application/connect+proto",
        chunks: split(body, chunk_size),
    }
}

#[tokio::test]
async fn exec_reassembles_envelopes_split_across_body_frames() {
    let body = [
        start_event(42),
        keepalive_event(),
        stdout_event(b"hel"),
        stdout_event(b"lo\n"),
        end_event(3),
        envelope(2, b"{}"),
    ]
    .concat();
    let envd = FakeEnvd::start(move |_| stream_reply(&body, 3)).await;
    let client = EnvdClient::new(envd.addr);

    let output = client.exec(ExecRequest::shell("echo hello")).await.unwrap();

    assert_eq!(output.pid, 42);
    assert_eq!(output.stdout, b"hello\n");
    assert_eq!(output.exit_code, 3);
    assert_eq!(output.status, "exit status 3");
}

#[tokio::test]
async fn exec_fails_with_the_code_of_the_end_stream_error() {
    let body = [
        start_event(7),
        envelope(
            2,
            br#"{"error":{"code":"deadline_exceeded","message":"context deadline exceeded"}}"#,
        ),
    ]
    .concat();
    let envd = FakeEnvd::start(move |_| stream_reply(&body, 4)).await;
    let client = EnvdClient::new(envd.addr);

    let error = client
        .exec(ExecRequest::shell("sleep 10").timeout(Duration::from_millis(100)))
        .await
        .unwrap_err();

    assert_eq!(error.code(), Some("deadline_exceeded"));
    assert!(
        error.to_string().contains("process.Process/Start"),
        "{error}"
    );
}

#[tokio::test]
async fn exec_without_end_frame_is_a_protocol_error() {
    let body = [start_event(9), stdout_event(b"partial")].concat();
    let envd = FakeEnvd::start(move |_| stream_reply(&body, 64)).await;
    let client = EnvdClient::new(envd.addr);

    let error = client.exec(ExecRequest::new("true")).await.unwrap_err();

    assert!(
        error.to_string().contains("without an end-of-stream"),
        "{error}"
    );
}

#[tokio::test]
async fn start_request_carries_connect_and_auth_headers_and_one_envelope() {
    let body = [start_event(1), end_event(0), envelope(2, b"{}")].concat();
    let envd = FakeEnvd::start(move |_| stream_reply(&body, 64)).await;
    let client = EnvdClient::new(envd.addr).with_access_token("tok");

    client
        .exec(
            ExecRequest::new("id")
                .user("root")
                .timeout(Duration::from_secs(5)),
        )
        .await
        .unwrap();

    let seen = envd.seen().remove(0);
    assert_eq!(seen.path_and_query, "/process.Process/Start");
    assert_eq!(seen.headers["content-type"], "application/connect+proto");
    assert_eq!(seen.headers["connect-protocol-version"], "1");
    assert_eq!(seen.headers["connect-timeout-ms"], "5000");
    assert_eq!(seen.headers["x-access-token"], "tok");
    assert_eq!(seen.headers["authorization"], "Basic cm9vdDo=");
    assert_eq!(seen.body[0], 0);
    let request = pb::StartRequest::decode(&seen.body[5..]).unwrap();
    assert_eq!(request.process.unwrap().cmd, "id");
}

#[tokio::test]
async fn unary_error_json_becomes_an_rpc_error_with_its_code() {
    let envd = FakeEnvd::start(|_| Reply {
        status: 404,
        content_type: "application/json",
        chunks: vec![Bytes::from_static(
            br#"{"code":"not_found","message":"/nope does not exist"}"#,
        )],
    })
    .await;
    let client = EnvdClient::new(envd.addr);

    let error = client.stat("/nope", None).await.unwrap_err();

    assert!(error.is_not_found());
    assert_eq!(
        error.to_string(),
        format!(
            "envd RPC filesystem.Filesystem/Stat at {} failed with not_found: /nope does not exist",
            envd.addr
        )
    );
}

#[tokio::test]
async fn read_file_404_maps_to_not_found() {
    let envd = FakeEnvd::start(|_| Reply {
        status: 404,
        content_type: "application/json",
        chunks: vec![Bytes::from_static(
            br#"{"code":404,"message":"path not found"}"#,
        )],
    })
    .await;
    let client = EnvdClient::new(envd.addr);

    let error = client
        .read_file("/tmp/a b", Some("root"))
        .await
        .unwrap_err();

    assert!(error.is_not_found());
    assert_eq!(
        envd.seen()[0].path_and_query,
        "/files?path=/tmp/a%20b&username=root"
    );
}

#[tokio::test]
async fn wait_healthy_returns_once_health_answers() {
    let envd = FakeEnvd::start(|_| Reply {
        status: StatusCode::NO_CONTENT.as_u16(),
        content_type: "text/plain",
        chunks: Vec::new(),
    })
    .await;
    let client = EnvdClient::new(envd.addr);

    let took = client.wait_healthy(Duration::from_secs(5)).await.unwrap();

    assert!(took < Duration::from_secs(5));
    assert_eq!(envd.seen()[0].path_and_query, "/health");
}

#[tokio::test]
async fn wait_healthy_times_out_naming_address_and_last_failure() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = EnvdClient::new(addr);

    let error = client
        .wait_healthy(Duration::from_millis(300))
        .await
        .unwrap_err();

    let text = error.to_string();
    assert_eq!(error.code(), Some("deadline_exceeded"));
    assert!(text.contains(&addr.to_string()), "{text}");
    assert!(text.contains("within 300 ms"), "{text}");
    assert!(text.to_lowercase().contains("refused"), "{text}");
}
