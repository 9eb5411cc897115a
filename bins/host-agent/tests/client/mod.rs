//! A small HTTP/1.1 client for the API tests, on hyper-util's legacy
//! client. It sends paths exactly as given (no `..` or `%2e%2e`
//! normalization, which URL parsers such as reqwest's would apply), so
//! traversal attempts reach the router as an attacker would send them.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client as Legacy;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// The key test agents accept (as `common::API_KEY`).
pub const TEST_API_KEY: &str = "e2b_0123456789abcdef0123456789abcdef";

/// A client of one agent at `http://ADDR`; it sends `X-API-KEY` with the
/// test key unless made with [`Client::anonymous`].
#[derive(Clone)]
pub struct Client {
    base: String,
    inner: Legacy<HttpConnector, Full<Bytes>>,
    /// Sent with every request.
    headers: Vec<(String, String)>,
}

/// The chunks of a request body sent as they are produced.
pub type StreamedChunks =
    futures::stream::BoxStream<'static, Result<hyper::body::Frame<Bytes>, std::io::Error>>;
/// A request body sent as it is produced.
pub type Streamed = http_body_util::StreamBody<StreamedChunks>;

/// A whole response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// `error.code` of an error body (`""` when there is none).
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Status and error code, for comparing many replies at once.
    pub fn status_code(&self) -> (u16, String) {
        (self.status.as_u16(), self.code())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The Server-Sent Events of the body: `(event, data)` pairs
    /// (comments and keepalives dropped).
    pub fn events(&self) -> Vec<(String, Value)> {
        self.text()
            .split("\n\n")
            .filter_map(|block| {
                let mut name = None;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                Some((name?, serde_json::from_str(&data).unwrap_or(Value::Null)))
            })
            .collect()
    }
}

impl Client {
    pub fn new(base: impl Into<String>) -> Self {
        Self::anonymous(base).with_header("x-api-key", TEST_API_KEY)
    }

    /// A client that sends no key.
    pub fn anonymous(base: impl Into<String>) -> Self {
        Self {
            base: base.into(),
            inner: Legacy::builder(TokioExecutor::new()).build_http(),
            headers: vec![("content-type".into(), "application/json".into())],
        }
    }

    /// The same client, also sending `name: value` (replacing an earlier
    /// value of `name`).
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// The same client without the header `name`.
    pub fn without_header(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    fn request<B>(&self, method: Method, path: &str, body: B) -> Result<Request<B>, String> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in &self.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        builder
            .body(body)
            .map_err(|err| format!("building the request: {err}"))
    }

    /// Sends `body` to `path` and returns the response with its body
    /// unread (to read it as slowly as a test wants).
    pub async fn open(
        &self,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
    ) -> http::Response<hyper::body::Incoming> {
        let request = self.request(method, path, Full::new(body.into())).unwrap();
        self.inner.request(request).await.unwrap()
    }

    /// Uploads a body produced as it goes (`Transfer-Encoding: chunked`,
    /// `application/octet-stream`).
    pub async fn send_streamed(&self, method: Method, path: &str, body: Streamed) -> Reply {
        self.try_send_streamed(method, path, body).await.unwrap()
    }

    /// Like [`send_streamed`](Self::send_streamed), with a connection
    /// error (the agent closing it mid-upload) as `Err`.
    pub async fn try_send_streamed(
        &self,
        method: Method,
        path: &str,
        body: Streamed,
    ) -> Result<Reply, String> {
        let client: Legacy<HttpConnector, Streamed> =
            Legacy::builder(TokioExecutor::new()).build_http();
        let uploader = self
            .clone()
            .with_header("content-type", "application/octet-stream");
        let response = client
            .request(uploader.request(method, path, body)?)
            .await
            .map_err(|err| format!("{err:?}"))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|err| format!("{err:?}"))?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Sends `body` to `path` (appended to the base as is).
    pub async fn send(&self, method: Method, path: &str, body: impl Into<Bytes>) -> Reply {
        self.try_send(method, path, body).await.unwrap()
    }

    /// [`Client::send`], with a failure to get a whole answer (refused or
    /// dropped connection, broken body) as an error.
    pub async fn try_send(
        &self,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
    ) -> Result<Reply, String> {
        let request = self.request(method, path, Full::new(body.into()))?;
        let response = self
            .inner
            .request(request)
            .await
            .map_err(|err| format!("no answer: {err:?}"))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|err| format!("reading the body: {err}"))?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// POSTs `body` and reads the answer as it comes without keeping it:
    /// the status, the number of body bytes and the last 4 KiB.
    pub async fn post_streamed(&self, path: &str, body: &Value) -> (StatusCode, u64, Bytes) {
        let request = self
            .request(Method::POST, path, Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let response = self.inner.request(request).await.unwrap();
        let status = response.status();
        let mut body = response.into_body();
        let (mut count, mut tail) = (0u64, Vec::new());
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.unwrap().into_data() else {
                continue;
            };
            count += data.len() as u64;
            tail.extend_from_slice(&data);
            if tail.len() > 8192 {
                tail.drain(..tail.len() - 4096);
            }
        }
        (status, count, Bytes::from(tail))
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, Bytes::new()).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(Method::DELETE, path, Bytes::new()).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(Method::POST, path, body.to_string()).await
    }

    /// A raw upload (`application/octet-stream`).
    pub async fn put(&self, path: &str, body: impl Into<Bytes>) -> Reply {
        self.clone()
            .with_header("content-type", "application/octet-stream")
            .send(Method::PUT, path, body)
            .await
    }
}
