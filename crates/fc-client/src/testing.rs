//! A stand-in for Firecracker's API server in unit tests: a hyper server on
//! a Unix socket in a temporary directory that records every request and
//! answers each with the same canned reply.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tempfile::TempDir;
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) content_type: Option<String>,
    pub(crate) content_length: Option<String>,
    pub(crate) host: Option<String>,
    pub(crate) body: Bytes,
}

impl Recorded {
    /// The body parsed as JSON (panics if it is not).
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// What the server answers to every request.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) body: &'static str,
}

impl Reply {
    /// `204 No Content`, Firecracker's answer to a successful PUT or PATCH.
    pub(crate) fn no_content() -> Self {
        Self {
            status: StatusCode::NO_CONTENT,
            body: "",
        }
    }

    /// `200 OK` with a JSON body.
    pub(crate) fn ok(body: &'static str) -> Self {
        Self {
            status: StatusCode::OK,
            body,
        }
    }

    /// An error status with a raw body.
    pub(crate) fn error(status: StatusCode, body: &'static str) -> Self {
        Self { status, body }
    }
}

/// The running server; stops when dropped.
#[derive(Debug)]
pub(crate) struct TestServer {
    _dir: TempDir,
    socket: PathBuf,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: JoinHandle<()>,
}

impl TestServer {
    /// Starts a server answering every request with `reply`, on a socket in
    /// a fresh temporary directory.
    pub(crate) fn start(reply: Reply) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), reply)
    }

    /// Starts a server on `dir/api.sock`, keeping `dir` alive with it.
    pub(crate) fn start_in(dir: TempDir, reply: Reply) -> Self {
        let socket = dir.path().join("api.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorder = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let recorder = Arc::clone(&recorder);
                let reply = reply.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        handle(request, Arc::clone(&recorder), reply.clone())
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            _dir: dir,
            socket,
            requests,
            task,
        }
    }

    /// The server's socket.
    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }

    /// Every request received so far, oldest first.
    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// The only request received (panics unless there is exactly one).
    pub(crate) fn single_request(&self) -> Recorded {
        let requests = self.requests();
        assert_eq!(requests.len(), 1, "{requests:#?}");
        requests[0].clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    request: Request<Incoming>,
    recorder: Arc<Mutex<Vec<Recorded>>>,
    reply: Reply,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let header = |name: http::header::HeaderName| {
        request
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let recorded = Recorded {
        method: request.method().clone(),
        path: request.uri().path().to_owned(),
        content_type: header(http::header::CONTENT_TYPE),
        content_length: header(http::header::CONTENT_LENGTH),
        host: header(http::header::HOST),
        body: Bytes::new(),
    };
    let body = request.into_body().collect().await.unwrap().to_bytes();
    recorder.lock().unwrap().push(Recorded { body, ..recorded });
    let response = Response::builder()
        .status(reply.status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(reply.body.as_bytes())))
        .unwrap();
    Ok(response)
}
