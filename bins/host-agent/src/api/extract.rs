//! Extractors whose rejections are [`ApiError`]s, so a malformed request
//! gets the same JSON error form as every other failure.

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::MediaType;
use super::error::ApiError;

/// Middleware: a request with a body must declare the route's media type
/// (parameters such as `; charset=utf-8` aside); otherwise 415
/// `unsupported_media_type`. Bodiless requests (`Content-Length: 0` or
/// none, no `Transfer-Encoding`) pass.
pub async fn require_media_type(
    State(expected): State<MediaType>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0");
    let given = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    if !has_body || given.as_deref() == Some(expected.as_str()) {
        return next.run(request).await;
    }
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!(
            "the request body must be {} (Content-Type: {})",
            expected.as_str(),
            given.as_deref().unwrap_or("none")
        ),
    )
    .into_response()
}

/// A JSON request body (its `Content-Type` is checked by
/// [`require_media_type`]); an empty body reads as `{}`. The size limit is the route's
/// [`axum::extract::DefaultBodyLimit`] (413 beyond it).
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(text).map(JsonBody).map_err(|err| {
            let code = if err.is_data() {
                "invalid_request"
            } else {
                "invalid_json"
            };
            ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                code,
                format!("request body: {err}"),
            )
        })
    }
}

/// Path parameters (percent-decoded by the router).
#[derive(Debug, Clone, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// Query parameters.
#[derive(Debug, Clone, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);
