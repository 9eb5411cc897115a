//! Test helpers: an in-process envd and a minimal Connect client that
//! speaks the wire exactly as the E2B SDK does (JSON), plus binary proto.

// Test-only helpers: panicking on an unexpected reply is the point.
#![allow(
    dead_code,
    clippy::missing_panics_doc,
    clippy::unwrap_used,
    clippy::expect_used
)]

use base64::Engine as _;
use envd::{Config, RunningServer, Server};
use prost::Message;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

/// An envd on 127.0.0.1 with default user `root` and a temp workdir.
pub struct Envd {
    pub server: RunningServer,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

impl Envd {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            default_user: "root".to_owned(),
            default_workdir: Some(dir.path().to_path_buf()),
            ..Config::localhost()
        };
        let server = Server::bind(config).await.unwrap().spawn();
        let http = reqwest::Client::builder()
            .http1_only()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Self { server, dir, http }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url())
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    pub fn dir_str(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// Unary Connect call with the JSON codec.
    pub async fn unary(&self, method: &str, body: Value, headers: &[(&str, &str)]) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(&format!("/{method}")))
            .headers(header_map(headers))
            .header("content-type", "application/json")
            .header("connect-protocol-version", "1")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        (status, value)
    }

    /// Unary Connect call with the binary proto codec.
    pub async fn unary_proto<Req: Message, Resp: Message + Default>(
        &self,
        method: &str,
        request: &Req,
    ) -> Resp {
        let response = self
            .http
            .post(self.url(&format!("/{method}")))
            .header("content-type", "application/proto")
            .body(request.encode_to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        Resp::decode(response.bytes().await.unwrap()).unwrap()
    }

    /// Opens a server stream with the JSON codec (one enveloped request).
    pub async fn stream(&self, method: &str, body: Value, headers: &[(&str, &str)]) -> FrameReader {
        let payload = body.to_string().into_bytes();
        let response = self
            .http
            .post(self.url(&format!("/{method}")))
            .headers(header_map(headers))
            .header("content-type", "application/connect+json")
            .header("connect-protocol-version", "1")
            .body(envelope(0, &payload))
            .send()
            .await
            .unwrap();
        FrameReader::new(response)
    }

    /// Opens a server stream with the binary codec.
    pub async fn stream_proto<Req: Message>(&self, method: &str, request: &Req) -> FrameReader {
        let response = self
            .http
            .post(self.url(&format!("/{method}")))
            .header("content-type", "application/connect+proto")
            .body(envelope(0, &request.encode_to_vec()))
            .send()
            .await
            .unwrap();
        FrameReader::new(response)
    }

    /// Starts `bash -c <script>` with `stdin: false` and returns the stream.
    ///
    /// The SDK sends `bash -l -c`; the login flag is left out here because
    /// the host's root login scripts (pyenv) are slow and hold locks that a
    /// killed test process would leave behind. `run_login` keeps it.
    pub async fn run(&self, script: &str, extra: Value, headers: &[(&str, &str)]) -> FrameReader {
        self.start_bash(&["-c", script], extra, headers).await
    }

    /// Starts exactly what `commands.run` sends: `bash -l -c <script>`.
    pub async fn run_login(
        &self,
        script: &str,
        extra: Value,
        headers: &[(&str, &str)],
    ) -> FrameReader {
        self.start_bash(&["-l", "-c", script], extra, headers).await
    }

    async fn start_bash(
        &self,
        args: &[&str],
        extra: Value,
        headers: &[(&str, &str)],
    ) -> FrameReader {
        let mut body = json!({
            "process": {"cmd": "/bin/bash", "args": args},
            "stdin": false,
        });
        merge(&mut body, extra);
        self.stream("process.Process/Start", body, headers).await
    }
}

fn merge(base: &mut Value, extra: Value) {
    if let (Some(base), Value::Object(extra)) = (base.as_object_mut(), extra) {
        for (k, v) in extra {
            match (base.get_mut(&k), v) {
                (Some(Value::Object(b)), Value::Object(e)) => b.extend(e),
                (_, v) => {
                    base.insert(k, v);
                }
            }
        }
    }
}

pub fn header_map(headers: &[(&str, &str)]) -> HeaderMap {
    headers
        .iter()
        .map(|(k, v)| {
            (
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            )
        })
        .collect()
}

/// `Authorization: Basic base64("<user>:")`.
pub fn basic(user: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:"))
    )
}

pub fn envelope(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![flags];
    out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    out.extend_from_slice(payload);
    out
}

pub fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

pub fn unb64(value: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(value.as_str().unwrap())
        .unwrap()
}

/// One Connect envelope.
#[derive(Debug, Clone)]
pub struct Frame {
    pub flags: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap()
    }

    pub fn is_end(&self) -> bool {
        self.flags & 0x02 != 0
    }
}

/// Reads envelopes off a streaming response as they arrive.
pub struct FrameReader {
    pub status: u16,
    pub content_type: String,
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl FrameReader {
    fn new(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Self {
            status,
            content_type,
            response,
            buffer: Vec::new(),
        }
    }

    /// The next envelope, or `None` at the end of the body.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            if self.buffer.len() >= 5 {
                let len = u32::from_be_bytes(self.buffer[1..5].try_into().unwrap()) as usize;
                if self.buffer.len() >= 5 + len {
                    let frame: Vec<u8> = self.buffer.drain(..5 + len).collect();
                    return Some(Frame {
                        flags: frame[0],
                        payload: frame[5..].to_vec(),
                    });
                }
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), self.response.chunk())
                .await
                .expect("stream stalled")
                .unwrap()?;
            self.buffer.extend_from_slice(&chunk);
        }
    }

    /// The next message (not end) frame as JSON, skipping keepalives.
    pub async fn next_event(&mut self) -> Value {
        loop {
            let frame = self.next().await.expect("stream ended");
            assert!(!frame.is_end(), "unexpected end frame: {}", frame.json());
            let value = frame.json();
            if value["event"].get("keepalive").is_none() {
                return value;
            }
        }
    }

    /// All remaining frames.
    pub async fn collect(mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next().await {
            frames.push(frame);
        }
        frames
    }
}

/// The process events of a finished `Start`/`Connect` stream, in order.
#[derive(Debug, Default)]
pub struct Run {
    pub events: Vec<Value>,
    pub stdout: String,
    pub stderr: String,
    pub end: Option<Value>,
    pub trailer: Value,
}

impl Run {
    pub fn pid(&self) -> u64 {
        self.events[0]["event"]["start"]["pid"].as_u64().unwrap()
    }

    pub fn exit_code(&self) -> i64 {
        self.end.as_ref().unwrap()["exitCode"].as_i64().unwrap_or(0)
    }
}

pub async fn finish(reader: FrameReader) -> Run {
    let mut run = Run::default();
    for frame in reader.collect().await {
        let value = frame.json();
        if frame.is_end() {
            run.trailer = value;
            continue;
        }
        let event = &value["event"];
        if let Some(data) = event.get("data") {
            if let Some(out) = data.get("stdout") {
                run.stdout.push_str(&String::from_utf8_lossy(&unb64(out)));
            }
            if let Some(err) = data.get("stderr") {
                run.stderr.push_str(&String::from_utf8_lossy(&unb64(err)));
            }
            if let Some(pty) = data.get("pty") {
                run.stdout.push_str(&String::from_utf8_lossy(&unb64(pty)));
            }
        }
        if let Some(end) = event.get("end") {
            run.end = Some(end.clone());
        }
        run.events.push(value);
    }
    run
}

pub fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}
