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

/// A client of one agent at `http://ADDR`.
#[derive(Clone)]
pub struct Client {
    base: String,
    inner: Legacy<HttpConnector, Full<Bytes>>,
    /// Sent with every request (e.g. `X-API-KEY` for the E2B routes).
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
        Self {
            base: base.into(),
            inner: Legacy::builder(TokioExecutor::new()).build_http(),
            headers: Vec::new(),
        }
    }

    /// The same client, sending `name: value` with every request.
    #[must_use]
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    fn request<B>(&self, method: Method, path: &str, body: B) -> Request<B> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        builder.body(body).unwrap()
    }

    /// Sends `body` to `path` and returns the response with its body
    /// unread (to read it as slowly as a test wants).
    pub async fn open(
        &self,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
    ) -> http::Response<hyper::body::Incoming> {
        let request = self.request(method, path, Full::new(body.into()));
        self.inner.request(request).await.unwrap()
    }

    /// Sends a body produced as it goes (`Transfer-Encoding: chunked`).
    pub async fn send_streamed(&self, method: Method, path: &str, body: Streamed) -> Reply {
        let client: Legacy<HttpConnector, Streamed> =
            Legacy::builder(TokioExecutor::new()).build_http();
        let response = client
            .request(self.request(method, path, body))
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// Sends `body` to `path` (appended to the base as is).
    pub async fn send(&self, method: Method, path: &str, body: impl Into<Bytes>) -> Reply {
        let request = self.request(method, path, Full::new(body.into()));
        let response = self.inner.request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
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

    pub async fn put(&self, path: &str, body: impl Into<Bytes>) -> Reply {
        self.send(Method::PUT, path, body).await
    }
}
