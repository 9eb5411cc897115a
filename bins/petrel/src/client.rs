//! The host agent's HTTP API (`/v1`) as [`Client`]: JSON requests, the
//! Server-Sent Events of `exec/stream`, and the WebSocket URL of `pty`.
//!
//! Every request carries the API key, when there is one, as `X-API-KEY`.
//! Failures are [`Error`]s whose `Display` is one line meant for an
//! operator: the agent's own message and code for API errors, the URL and
//! a hint when the agent cannot be reached.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::sse::{SseDecoder, SseEvent};

/// The header the API key travels in.
pub const API_KEY_HEADER: &str = "x-api-key";

/// How long opening a TCP connection to the agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Most of an unexpected (non-JSON) error body shown to the operator.
const BODY_SNIPPET: usize = 200;

/// What went wrong talking to the host agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The agent answered with its JSON error.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The agent reported a failure inside a stream (an `error` event, an
    /// `error` message of a terminal session).
    #[error("{message} ({code})")]
    Remote { code: String, message: String },
    /// No connection could be opened.
    #[error(
        "cannot connect to the host agent at {url}: {reason}; is it running? (start one with `cargo xtask serve`)"
    )]
    Unreachable { url: String, reason: String },
    /// The exchange failed after connecting, or the reply was not what the
    /// API sends.
    #[error("{what} from the host agent at {url}: {reason}")]
    Protocol {
        url: String,
        what: &'static str,
        reason: String,
    },
    /// The URL or the API key cannot be used.
    #[error("{0}")]
    Config(String),
}

impl Error {
    /// The agent's error code, for API errors.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } | Self::Remote { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A JSON reply: parsed, and as the agent sent it (for `--json`, which
/// keeps the agent's field order).
#[derive(Debug, Clone)]
pub struct Reply {
    pub value: Value,
    pub text: String,
}

/// A client of one host agent. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    /// `http://host:port` with any path prefix, no trailing `/`.
    base: String,
    /// `host:port`.
    authority: String,
    /// The path prefix of `base` (empty or `/prefix`).
    prefix: String,
    api_key: Option<HeaderValue>,
    http: HttpClient<HttpConnector, Full<Bytes>>,
}

impl Client {
    /// A client of the agent at `url` (`http://HOST:PORT`, a path prefix
    /// allowed; `HOST:PORT` alone means `http://`). Must be used inside a
    /// tokio runtime.
    pub fn new(url: &str, api_key: Option<&str>) -> Result<Self, Error> {
        let with_scheme = if url.contains("://") {
            url.to_owned()
        } else {
            format!("http://{url}")
        };
        let uri: Uri = with_scheme
            .parse()
            .map_err(|err| Error::Config(format!("invalid agent URL {url:?}: {err}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(Error::Config(format!(
                    "agent URL {url:?}: scheme {other}:// is not supported, only http://"
                )));
            }
            None => return Err(Error::Config(format!("agent URL {url:?} has no scheme"))),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| Error::Config(format!("agent URL {url:?} has no host")))?
            .to_string();
        if uri.query().is_some() {
            return Err(Error::Config(format!(
                "agent URL {url:?} must not have a query"
            )));
        }
        let prefix = uri.path().trim_end_matches('/').to_owned();
        let api_key = api_key
            .map(|key| {
                HeaderValue::from_str(key).map_err(|_| {
                    Error::Config("the API key is not a valid HTTP header value".into())
                })
            })
            .transpose()?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let http = HttpClient::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            base: format!("http://{authority}{prefix}"),
            authority,
            prefix,
            api_key,
            http,
        })
    }

    /// `http://host:port[/prefix]`, as requests go to it.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The API key sent as `X-API-KEY`, if any.
    pub fn api_key(&self) -> Option<&HeaderValue> {
        self.api_key.as_ref()
    }

    /// `ws://host:port[/prefix]{path_and_query}`.
    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{}{path_and_query}", self.authority, self.prefix)
    }

    /// `GET path`, the reply's JSON.
    pub async fn get(&self, path: &str) -> Result<Reply, Error> {
        self.json(Method::GET, path, None).await
    }

    /// `POST path` with a JSON body, the reply's JSON.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Reply, Error> {
        self.json(Method::POST, path, Some(body)).await
    }

    /// `DELETE path`; the reply has no body (204).
    pub async fn delete(&self, path: &str) -> Result<(), Error> {
        let response = self.request(Method::DELETE, path, None).await?;
        self.read(response, path).await.map(drop)
    }

    /// `PUT path` with `bytes` as `application/octet-stream` (a file
    /// upload), the reply's JSON (if any).
    pub async fn upload(&self, path: &str, bytes: Bytes) -> Result<Reply, Error> {
        let response = self
            .send(Method::PUT, path, Some(("application/octet-stream", bytes)))
            .await?;
        let bytes = self.read(response, path).await?;
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Ok(Reply { value, text })
    }

    /// `GET path`, the reply's body as it is (a file download).
    pub async fn download(&self, path: &str) -> Result<Bytes, Error> {
        let response = self.request(Method::GET, path, None).await?;
        self.read(response, path).await
    }

    /// A request whose reply is JSON.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, Error> {
        let response = self.request(method, path, body).await?;
        let bytes = self.read(response, path).await?;
        let not_json = |reason: String| Error::Protocol {
            url: self.url(path),
            what: "a reply that is not JSON",
            reason,
        };
        let value = serde_json::from_slice(&bytes).map_err(|err| not_json(err.to_string()))?;
        let text = String::from_utf8(bytes.to_vec()).map_err(|err| not_json(err.to_string()))?;
        Ok(Reply { value, text })
    }

    /// `POST path` with a JSON body; the reply is an event stream.
    pub async fn events(&self, path: &str, body: &Value) -> Result<EventStream, Error> {
        let response = self.request(Method::POST, path, Some(body)).await?;
        if !response.status().is_success() {
            let status = response.status();
            let bytes = self.collect(response.into_body(), path).await?;
            return Err(api_error(status, &bytes));
        }
        Ok(EventStream {
            body: response.into_body(),
            decoder: SseDecoder::default(),
            pending: Vec::new(),
            url: self.url(path),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<http::Response<Incoming>, Error> {
        let body = body.map(|body| ("application/json", Bytes::from(body.to_string())));
        self.send(method, path, body).await
    }

    /// Sends a request with an optional `(content type, bytes)` body.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Bytes)>,
    ) -> Result<http::Response<Incoming>, Error> {
        let url = self.url(path);
        let mut builder = Request::builder().method(method).uri(&url);
        if let Some(key) = &self.api_key {
            builder = builder.header(API_KEY_HEADER, key.clone());
        }
        let payload = match body {
            Some((content_type, bytes)) => {
                builder = builder.header(header::CONTENT_TYPE, content_type);
                bytes
            }
            None => Bytes::new(),
        };
        let request = builder
            .body(Full::new(payload))
            .map_err(|err| Error::Config(format!("cannot build a request to {url}: {err}")))?;
        self.http.request(request).await.map_err(|err| {
            if err.is_connect() {
                Error::Unreachable {
                    url: self.base.clone(),
                    reason: connect_reason(&err),
                }
            } else {
                Error::Protocol {
                    url: self.base.clone(),
                    what: "no reply",
                    reason: error_chain(&err),
                }
            }
        })
    }

    /// The body of a 2xx reply, or the error a non-2xx one carries.
    async fn read(&self, response: http::Response<Incoming>, path: &str) -> Result<Bytes, Error> {
        let status = response.status();
        let bytes = self.collect(response.into_body(), path).await?;
        if status.is_success() {
            Ok(bytes)
        } else {
            Err(api_error(status, &bytes))
        }
    }

    async fn collect(&self, body: Incoming, path: &str) -> Result<Bytes, Error> {
        body.collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .map_err(|err| Error::Protocol {
                url: self.url(path),
                what: "a reply cut off",
                reason: error_chain(&err),
            })
    }
}

/// `{"error":{"code","message"}}` as [`Error::Api`]; any other body is
/// shown as it is (shortened), with the status's reason as its code.
pub fn api_error(status: StatusCode, body: &[u8]) -> Error {
    let parsed: Option<(String, String)> =
        serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|value| {
                let error = value.get("error")?;
                Some((
                    error.get("code")?.as_str()?.to_owned(),
                    error.get("message")?.as_str()?.to_owned(),
                ))
            });
    let (code, message) = parsed.unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        let message = if text.is_empty() {
            "the agent answered without an error body".to_owned()
        } else {
            let mut snippet: String = text.chars().take(BODY_SNIPPET).collect();
            if snippet.len() < text.len() {
                snippet.push('…');
            }
            snippet.replace('\n', " ")
        };
        let code = status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
            .replace(' ', "_");
        (code, message)
    });
    Error::Api {
        status: status.as_u16(),
        code,
        message,
    }
}

/// The events of one `exec/stream` reply, as they come.
#[derive(Debug)]
pub struct EventStream {
    body: Incoming,
    decoder: SseDecoder,
    /// Events decoded but not handed out yet, in reverse order.
    pending: Vec<SseEvent>,
    url: String,
}

impl EventStream {
    /// The next event, or `None` when the stream ended.
    pub async fn next(&mut self) -> Result<Option<SseEvent>, Error> {
        loop {
            if let Some(event) = self.pending.pop() {
                return Ok(Some(event));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(err)) => {
                    return Err(Error::Protocol {
                        url: self.url.clone(),
                        what: "an event stream cut off",
                        reason: error_chain(&err),
                    });
                }
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        let mut events = self.decoder.push(data);
                        events.reverse();
                        self.pending = events;
                    }
                }
            }
        }
    }
}

/// Percent-encodes one path segment (everything but RFC 3986 unreserved
/// characters), so an id or a name cannot reach another route.
pub fn segment(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Why a connection failed, in a few words (`connection refused`).
fn connect_reason(err: &(dyn std::error::Error + 'static)) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = source {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
                std::io::ErrorKind::TimedOut => "connection timed out".to_owned(),
                _ => io.to_string(),
            };
        }
        source = current.source();
    }
    error_chain(err)
}

/// `err` and its sources joined with `: `, repeated texts left out.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = source {
        let text = current.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = current.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_error_body_gives_message_code_and_status() {
        let body = br#"{"error":{"code":"sandbox_not_found","message":"sandbox abc not found"}}"#;

        let err = api_error(StatusCode::NOT_FOUND, body);

        assert_eq!(
            err.to_string(),
            "sandbox abc not found (sandbox_not_found, HTTP 404)"
        );
    }

    #[test]
    fn foreign_error_body_is_shown_on_one_line_with_the_status_reason() {
        let err = api_error(StatusCode::BAD_GATEWAY, b"<html>\nproxy says no\n</html>");

        assert_eq!(
            err.to_string(),
            "<html> proxy says no </html> (bad_gateway, HTTP 502)"
        );
    }

    #[test]
    fn url_without_scheme_means_http_and_keeps_its_prefix() {
        let client = Client::new("127.0.0.1:9000/petrel/", None).unwrap();

        assert_eq!(client.base_url(), "http://127.0.0.1:9000/petrel");
        assert_eq!(
            client.ws_url("/v1/sandboxes/x/pty"),
            "ws://127.0.0.1:9000/petrel/v1/sandboxes/x/pty"
        );
    }

    #[test]
    fn https_urls_are_refused() {
        let err = Client::new("https://agent.example:8080", None).unwrap_err();

        assert!(err.to_string().contains("only http://"), "{err}");
    }

    #[test]
    fn segments_cannot_escape_their_route() {
        let encoded = segment("../etc/x?y=1");

        assert_eq!(encoded, "..%2Fetc%2Fx%3Fy%3D1");
    }
}
