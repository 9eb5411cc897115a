//! The control plane's error: an HTTP status and E2B's JSON error body
//! `{"code": <status>, "message": "..."}`.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use sandbox_core::ManagerError;

use super::models::ErrorBody;

/// A failed control-plane request.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// 404 for a sandbox id that is unknown (or gone).
    pub fn sandbox_not_found(id: &str) -> Self {
        Self::not_found(format!("sandbox {id} not found"))
    }
}

/// The status of [`crate::policy::classify`], as on `/v1` (capacity: 503).
impl From<ManagerError> for ApiError {
    fn from(err: ManagerError) -> Self {
        let (status, _) = crate::policy::classify(&err);
        Self::new(status, err.to_string())
    }
}

impl From<crate::policy::Refusal> for ApiError {
    fn from(refusal: crate::policy::Refusal) -> Self {
        Self::new(refusal.status, refusal.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, message = %self.message, "e2b request failed");
        } else {
            tracing::debug!(status = %self.status, message = %self.message, "e2b request refused");
        }
        let body = ErrorBody {
            code: self.status.as_u16(),
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}
