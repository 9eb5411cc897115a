//! Extractors whose rejections are [`ApiError`]s, so a malformed request
//! gets the same JSON error form as every other failure.

use axum::extract::{FromRequest, FromRequestParts, Request};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON request body. The `Content-Type` is not checked (so `curl -d`
/// works); an empty body reads as `{}`. The size limit is the route's
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
