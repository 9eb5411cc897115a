//! One HTTP/1.1 request over a fresh connection to a Unix socket.
//!
//! Firecracker's API server handles one request at a time and its requests
//! are rare, so each call connects, sends, reads the whole answer and closes;
//! there is no connection pool to go stale across a process restart.

use std::path::Path;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use crate::error::FcError;

/// Status and body of an answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
}

/// Sends `method path` with an optional JSON `body` to the API server on
/// `socket` and returns its answer, whatever the status.
pub(crate) async fn exchange(
    socket: &Path,
    method: &Method,
    path: &str,
    body: Option<Bytes>,
) -> Result<Answer, FcError> {
    let http_error = |source| FcError::Http {
        socket: socket.to_path_buf(),
        method: method.clone(),
        path: path.to_owned(),
        source,
    };

    let mut builder = Request::builder()
        .method(method.clone())
        .uri(path)
        // hyper's low-level client adds no Host header; HTTP/1.1 wants one.
        .header(HOST, HeaderValue::from_static("localhost"))
        .header(ACCEPT, HeaderValue::from_static("application/json"));
    if body.is_some() {
        builder = builder.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    // An empty `Full` is an empty body: hyper then sends no Content-Length
    // on GET, which Firecracker would otherwise take for a body.
    let request = builder
        .body(Full::new(body.unwrap_or_default()))
        .map_err(|source| FcError::Request {
            method: method.clone(),
            path: path.to_owned(),
            source,
        })?;

    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| FcError::Connect {
            socket: socket.to_path_buf(),
            source,
        })?;
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http_error)?;

    let exchange = async move {
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        // `sender` is dropped here, which lets `connection` finish.
        Ok::<_, hyper::Error>(Answer { status, body })
    };
    let (answer, connection) = tokio::join!(exchange, connection);
    let answer = answer.map_err(http_error)?;
    if let Err(err) = connection {
        // The whole answer was read; a broken close is not worth failing for.
        tracing::debug!(socket = %socket.display(), %method, path, %err, "Firecracker API connection closed uncleanly");
    }
    Ok(answer)
}
