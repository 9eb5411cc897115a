//! HTTP/1.1 plumbing: one hyper client per [`EnvdClient`] (a connection per request), Connect
//! unary and server-streaming calls with the binary proto codec, and plain
//! HTTP requests for `/health`, `/files` and `/init`.
//!
//! [`EnvdClient`]: crate::EnvdClient

use std::{
    fmt::{self, Write as _},
    marker::PhantomData,
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use base64::Engine as _;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt as _};
use http::{HeaderValue, Method, Request, Response, Uri, header};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use prost::Message;
use tokio::time::Instant;
use tracing::{debug, trace};

use crate::{
    connect::{self, EnvelopeDecoder},
    error::{BoxError, EnvdError},
};

/// Time allowed to open one TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// TCP keepalive on every connection to a guest: a guest whose VMM died
/// (a crash, a guest kernel panic) never answers or resets, so without
/// probes a quiet stream to it would wait for hours. Idle 10 s, then a
/// probe every 5 s, given up after 3: such a connection fails in ~25 s,
/// while a live guest's kernel answers the probes of a quiet stream.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// See [`KEEPALIVE_IDLE`].
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// See [`KEEPALIVE_IDLE`].
pub const KEEPALIVE_RETRIES: u32 = 3;
/// `TCP_USER_TIMEOUT` on every connection to a guest: sent data left
/// unacknowledged this long fails the connection. Keepalive covers a quiet
/// connection; this covers one that is sending (an upload) to a guest that
/// died, which the kernel would otherwise retransmit to for ~15 minutes.
/// A live guest acknowledges within milliseconds, even paused for a
/// snapshot (seconds).
pub const USER_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest error body read from envd; the rest is dropped.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Extra time the client waits past a `Connect-Timeout-Ms` deadline so that
/// envd's own `deadline_exceeded` reply arrives first.
const DEADLINE_GRACE: Duration = Duration::from_secs(2);
/// Header carrying envd's access token.
const ACCESS_TOKEN_HEADER: &str = "x-access-token";
/// Largest reply body of a unary RPC (or a plain request such as `/init`)
/// the client collects; a bigger one fails with [`EnvdError::TooLarge`].
/// Directory listings are the biggest unary replies (about 200 bytes an
/// entry).
pub const MAX_UNARY_REPLY: usize = 32 * 1024 * 1024;

/// The body of a request to envd: whole, or streamed (file uploads).
pub(crate) type RequestBody = UnsyncBoxBody<Bytes, BoxError>;

/// A body held whole in memory.
pub(crate) fn whole(bytes: Bytes) -> RequestBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A stream of decoded messages of a Connect server stream.
pub(crate) type MessageStream<M> = BoxStream<'static, Result<M, EnvdError>>;

/// Shared HTTP state of a client; cheap to clone.
#[derive(Clone)]
pub(crate) struct Transport {
    addr: SocketAddr,
    http: Client<HttpConnector, RequestBody>,
    access_token: Option<Arc<str>>,
    request_timeout: Duration,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("addr", &self.addr)
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| "<redacted>"),
            )
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl Transport {
    pub(crate) fn new(addr: SocketAddr, request_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_keepalive(Some(KEEPALIVE_IDLE));
        connector.set_keepalive_interval(Some(KEEPALIVE_INTERVAL));
        connector.set_keepalive_retries(Some(KEEPALIVE_RETRIES));
        connector.set_tcp_user_timeout(Some(USER_TIMEOUT));
        // No idle connections are kept: a connection reused after the guest
        // was paused, restored or restarted its envd would fail with a reset
        // on a request that may already have been sent (and Process/Start
        // must not be retried). A fresh connection costs about a millisecond.
        let http = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        Self {
            addr,
            http,
            access_token: None,
            request_timeout,
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn set_access_token(&mut self, token: Option<String>) {
        self.access_token = token.map(Arc::from);
    }

    pub(crate) fn set_request_timeout(&mut self, timeout: Duration) {
        self.request_timeout = timeout;
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// A Connect unary call with the proto codec, bounded by the client's
    /// request timeout. `method` is `package.Service/Method`.
    pub(crate) async fn unary<Req, Resp>(
        &self,
        method: &str,
        request: &Req,
        user: Option<&str>,
    ) -> Result<Resp, EnvdError>
    where
        Req: Message,
        Resp: Message + Default,
    {
        let timeout = self.request_timeout;
        let call = async {
            let builder = self
                .rpc_builder(method, user)?
                .header(header::CONTENT_TYPE, connect::UNARY_CONTENT_TYPE)
                .header(
                    connect::TIMEOUT_HEADER,
                    connect::timeout_header_value(timeout),
                );
            let http_request = self.build(builder, Bytes::from(request.encode_to_vec()), method)?;
            debug!(addr = %self.addr, method, "envd unary call");
            let response = self.send(http_request, method).await?;
            let status = response.status();
            if !status.is_success() {
                return Err(self.rpc_error(method, response).await);
            }
            self.check_content_type(&response, connect::UNARY_CONTENT_TYPE, method)?;
            let body = self
                .read_body(response.into_body(), method, MAX_UNARY_REPLY)
                .await?;
            Resp::decode(body).map_err(|source| EnvdError::Decode {
                addr: self.addr,
                endpoint: method.to_owned(),
                what: "a protobuf reply",
                source: Box::new(source),
            })
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| EnvdError::Timeout {
                addr: self.addr,
                operation: method.to_owned(),
                timeout,
                last_failure: None,
            })?
    }

    /// A Connect server-streaming call with the proto codec. With a
    /// `timeout`, envd is told the deadline (`Connect-Timeout-Ms`) and the
    /// stream fails with [`EnvdError::Timeout`] if envd overruns it.
    pub(crate) async fn server_stream<Req, Resp>(
        &self,
        method: &str,
        request: &Req,
        user: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<MessageStream<Resp>, EnvdError>
    where
        Req: Message,
        Resp: Message + Default + 'static,
    {
        let deadline = timeout.map(|t| Instant::now() + t + DEADLINE_GRACE);
        let mut builder = self
            .rpc_builder(method, user)?
            .header(header::CONTENT_TYPE, connect::STREAM_CONTENT_TYPE);
        if let Some(timeout) = timeout {
            builder = builder.header(
                connect::TIMEOUT_HEADER,
                connect::timeout_header_value(timeout),
            );
        }
        let framed = connect::encode_envelope(0, &request.encode_to_vec()).map_err(|err| {
            EnvdError::InvalidRequest {
                addr: self.addr,
                endpoint: method.to_owned(),
                detail: err.to_string(),
            }
        })?;
        let http_request = self.build(builder, framed, method)?;
        debug!(addr = %self.addr, method, ?timeout, "envd server stream call");
        let response = with_deadline(deadline, self.send(http_request, method))
            .await
            .ok_or_else(|| self.stream_timeout(method, timeout))??;
        if !response.status().is_success() {
            return Err(self.rpc_error(method, response).await);
        }
        self.check_content_type(&response, connect::STREAM_CONTENT_TYPE, method)?;
        let state = StreamState::<Resp> {
            addr: self.addr,
            method: method.to_owned(),
            timeout,
            deadline,
            body: response.into_body(),
            decoder: EnvelopeDecoder::default(),
            finished: false,
            message: PhantomData,
        };
        Ok(stream::unfold(state, |mut state| async move {
            let item = state.next_message().await?;
            Some((item, state))
        })
        .boxed())
    }

    /// A plain HTTP request; returns the body of a 2xx reply (at most
    /// `limit` bytes, [`EnvdError::TooLarge`] beyond) and [`EnvdError::Http`]
    /// otherwise. `body` is `(content type, bytes)`.
    pub(crate) async fn plain(
        &self,
        method: Method,
        target: &str,
        body: Option<(&'static str, Bytes)>,
        timeout: Duration,
        limit: usize,
    ) -> Result<Bytes, EnvdError> {
        self.plain_with_headers(method, target, body, timeout, limit)
            .await
            .map(|(_, body)| body)
    }

    /// [`plain`](Self::plain), also returning the reply's headers.
    pub(crate) async fn plain_with_headers(
        &self,
        method: Method,
        target: &str,
        body: Option<(&'static str, Bytes)>,
        timeout: Duration,
        limit: usize,
    ) -> Result<(http::HeaderMap, Bytes), EnvdError> {
        let endpoint = format!("{method} {target}");
        let call = async {
            let body = body.map(|(content_type, bytes)| (content_type, whole(bytes)));
            let (parts, body) = self
                .plain_response(method, target, body)
                .await?
                .into_parts();
            let body = self.read_body(body, &endpoint, limit).await?;
            Ok((parts.headers, body))
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| EnvdError::Timeout {
                addr: self.addr,
                operation: endpoint.clone(),
                timeout,
                last_failure: None,
            })?
    }

    /// A plain HTTP request whose body may be streamed; returns the
    /// response of a 2xx reply (its body unread) and [`EnvdError::Http`]
    /// otherwise. No timeout: the caller bounds it.
    pub(crate) async fn plain_response(
        &self,
        method: Method,
        target: &str,
        body: Option<(&'static str, RequestBody)>,
    ) -> Result<Response<Incoming>, EnvdError> {
        let endpoint = format!("{method} {target}");
        let mut builder = self.builder(method, target, &endpoint)?;
        let payload = match body {
            Some((content_type, body)) => {
                builder = builder.header(header::CONTENT_TYPE, content_type);
                body
            }
            None => whole(Bytes::new()),
        };
        let http_request = builder
            .body(payload)
            .map_err(|err| EnvdError::InvalidRequest {
                addr: self.addr,
                endpoint: endpoint.clone(),
                detail: err.to_string(),
            })?;
        debug!(addr = %self.addr, endpoint, "envd HTTP call");
        let response = self.send(http_request, &endpoint).await?;
        let status = response.status();
        if !status.is_success() {
            let body = self.read_error_body(response.into_body()).await;
            return Err(EnvdError::Http {
                addr: self.addr,
                endpoint,
                status: status.as_u16(),
                message: connect::plain_error_message(status.as_u16(), &body),
            });
        }
        Ok(response)
    }

    fn builder(
        &self,
        method: Method,
        target: &str,
        endpoint: &str,
    ) -> Result<http::request::Builder, EnvdError> {
        let uri: Uri = format!("http://{}{target}", self.addr).parse().map_err(
            |err: http::uri::InvalidUri| EnvdError::InvalidRequest {
                addr: self.addr,
                endpoint: endpoint.to_owned(),
                detail: format!("invalid URI: {err}"),
            },
        )?;
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(token) = &self.access_token {
            let value = HeaderValue::from_str(token).map_err(|_| EnvdError::InvalidRequest {
                addr: self.addr,
                endpoint: endpoint.to_owned(),
                detail: "the access token is not a valid HTTP header value".to_owned(),
            })?;
            builder = builder.header(ACCESS_TOKEN_HEADER, value);
        }
        Ok(builder)
    }

    fn rpc_builder(
        &self,
        method: &str,
        user: Option<&str>,
    ) -> Result<http::request::Builder, EnvdError> {
        let mut builder = self
            .builder(Method::POST, &format!("/{method}"), method)?
            .header(connect::PROTOCOL_VERSION_HEADER, "1");
        if let Some(user) = user {
            builder = builder.header(header::AUTHORIZATION, basic_auth(user));
        }
        Ok(builder)
    }

    fn build(
        &self,
        builder: http::request::Builder,
        body: Bytes,
        endpoint: &str,
    ) -> Result<Request<RequestBody>, EnvdError> {
        builder
            .body(whole(body))
            .map_err(|err| EnvdError::InvalidRequest {
                addr: self.addr,
                endpoint: endpoint.to_owned(),
                detail: err.to_string(),
            })
    }

    async fn send(
        &self,
        request: Request<RequestBody>,
        endpoint: &str,
    ) -> Result<Response<Incoming>, EnvdError> {
        self.http.request(request).await.map_err(|err| {
            if err.is_connect() {
                EnvdError::Connect {
                    addr: self.addr,
                    endpoint: endpoint.to_owned(),
                    source: Box::new(err),
                }
            } else {
                EnvdError::Transport {
                    addr: self.addr,
                    endpoint: endpoint.to_owned(),
                    source: Box::new(err),
                }
            }
        })
    }

    /// The whole body, at most `limit` bytes ([`EnvdError::TooLarge`]
    /// beyond: reading stops there).
    async fn read_body(
        &self,
        body: Incoming,
        endpoint: &str,
        limit: usize,
    ) -> Result<Bytes, EnvdError> {
        Limited::new(body, limit)
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .map_err(|err| {
                if err.downcast_ref::<LengthLimitError>().is_some() {
                    EnvdError::TooLarge {
                        addr: self.addr,
                        endpoint: endpoint.to_owned(),
                        limit,
                    }
                } else {
                    EnvdError::Transport {
                        addr: self.addr,
                        endpoint: endpoint.to_owned(),
                        source: err,
                    }
                }
            })
    }

    /// The start of an error body; a body that cannot be read becomes a note.
    async fn read_error_body(&self, body: Incoming) -> Bytes {
        match Limited::new(body, MAX_ERROR_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(err) => Bytes::from(format!("(error body unreadable: {err})")),
        }
    }

    async fn rpc_error(&self, method: &str, response: Response<Incoming>) -> EnvdError {
        let status = response.status();
        let body = self.read_error_body(response.into_body()).await;
        let error = connect::parse_rpc_error(status.as_u16(), &body);
        debug!(addr = %self.addr, method, %status, code = %error.code, "envd RPC error");
        EnvdError::Rpc {
            addr: self.addr,
            method: method.to_owned(),
            code: error.code,
            message: error.message,
        }
    }

    fn check_content_type(
        &self,
        response: &Response<Incoming>,
        expected: &str,
        method: &str,
    ) -> Result<(), EnvdError> {
        let actual = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("");
        let essence = actual.split(';').next().unwrap_or("").trim();
        if essence.eq_ignore_ascii_case(expected) {
            Ok(())
        } else {
            Err(EnvdError::Protocol {
                addr: self.addr,
                endpoint: method.to_owned(),
                detail: format!(
                    "expected content type {expected}, got {:?} (status {})",
                    actual,
                    response.status().as_u16()
                ),
            })
        }
    }

    fn stream_timeout(&self, method: &str, timeout: Option<Duration>) -> EnvdError {
        EnvdError::Timeout {
            addr: self.addr,
            operation: method.to_owned(),
            timeout: timeout.unwrap_or_default(),
            last_failure: None,
        }
    }
}

/// `Basic base64("<user>:")`, the way E2B's SDKs select the guest user.
pub(crate) fn basic_auth(user: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:"));
    format!("Basic {encoded}")
}

/// Percent-encodes `value` for a query string (everything but RFC 3986
/// unreserved characters).
pub(crate) fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

async fn with_deadline<F: Future>(deadline: Option<Instant>, future: F) -> Option<F::Output> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, future).await.ok(),
        None => Some(future.await),
    }
}

/// Reading state of one server stream.
struct StreamState<M> {
    addr: SocketAddr,
    method: String,
    timeout: Option<Duration>,
    deadline: Option<Instant>,
    body: Incoming,
    decoder: EnvelopeDecoder,
    finished: bool,
    message: PhantomData<fn() -> M>,
}

impl<M: Message + Default> StreamState<M> {
    /// The next message, the stream's error, or `None` after a successful
    /// end-of-stream. Nothing is returned after the first error.
    async fn next_message(&mut self) -> Option<Result<M, EnvdError>> {
        if self.finished {
            return None;
        }
        let item = self.read_next().await;
        if !matches!(item, Some(Ok(_))) {
            self.finished = true;
        }
        item
    }

    async fn read_next(&mut self) -> Option<Result<M, EnvdError>> {
        loop {
            match self.decoder.next_envelope() {
                Err(err) => return Some(Err(self.protocol(err.to_string()))),
                Ok(Some(envelope)) if envelope.is_end_stream() => {
                    return self.end_stream(&envelope.payload);
                }
                Ok(Some(envelope)) if envelope.is_compressed() => {
                    return Some(Err(self.protocol(
                        "compressed envelope, but no compression was offered".into(),
                    )));
                }
                Ok(Some(envelope)) => {
                    trace!(addr = %self.addr, method = %self.method, len = envelope.payload.len(), "envd stream message");
                    return Some(M::decode(envelope.payload).map_err(|source| {
                        self.decode_error("a protobuf stream message", Box::new(source))
                    }));
                }
                Ok(None) => {}
            }
            let Some(frame) = with_deadline(self.deadline, self.body.frame()).await else {
                return Some(Err(EnvdError::Timeout {
                    addr: self.addr,
                    operation: self.method.clone(),
                    timeout: self.timeout.unwrap_or_default(),
                    last_failure: None,
                }));
            };
            match frame {
                None => {
                    let detail = match self.decoder.finish() {
                        Err(err) => err.to_string(),
                        Ok(()) => "body ended without an end-of-stream message".to_owned(),
                    };
                    return Some(Err(self.protocol(detail)));
                }
                Some(Err(err)) => {
                    return Some(Err(EnvdError::Transport {
                        addr: self.addr,
                        endpoint: self.method.clone(),
                        source: Box::new(err),
                    }));
                }
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.decoder.push(data);
                    }
                }
            }
        }
    }

    fn end_stream(&self, payload: &[u8]) -> Option<Result<M, EnvdError>> {
        match connect::parse_end_stream(payload) {
            Ok(None) => {
                debug!(addr = %self.addr, method = %self.method, "envd stream ended");
                None
            }
            Ok(Some(error)) => {
                debug!(addr = %self.addr, method = %self.method, code = %error.code, "envd stream failed");
                Some(Err(EnvdError::Rpc {
                    addr: self.addr,
                    method: self.method.clone(),
                    code: error.code,
                    message: error.message,
                }))
            }
            Err(source) => Some(Err(
                self.decode_error("the end-of-stream message", Box::new(source))
            )),
        }
    }

    fn protocol(&self, detail: String) -> EnvdError {
        EnvdError::Protocol {
            addr: self.addr,
            endpoint: self.method.clone(),
            detail,
        }
    }

    fn decode_error(&self, what: &'static str, source: BoxError) -> EnvdError {
        EnvdError::Decode {
            addr: self.addr,
            endpoint: self.method.clone(),
            what,
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_encodes_user_with_empty_password() {
        let value = basic_auth("root");

        assert_eq!(value, "Basic cm9vdDo=");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        let encoded = encode_query_value("/home/user/a b&c=d.txt");

        assert_eq!(encoded, "/home/user/a%20b%26c%3Dd.txt");
    }
}
