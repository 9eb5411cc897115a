//! The API's one error type, [`ApiError`], and its JSON form
//! `{"error":{"code":"…","message":"…"}}`.
//!
//! Statuses are honest: 400 for a bad request (including a name that fails
//! [`safename::SafeName`]), 404 for something unknown, 409 for a sandbox in
//! the wrong state or a name in use, 413 for a body over the limit, 429 for
//! a quota (`quota_exceeded`) or the upload limit (`too_many_uploads`), 503
//! when the host is out of capacity, 502/504 when envd in the guest failed
//! or timed out, 500 for the rest. Manager and envd failures map through
//! [`crate::policy`], as on the E2B routes.

use axum::Json;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use envd_client::EnvdError;
use sandbox_core::ManagerError;
use serde::Serialize;

/// A failed API request: an HTTP status, a stable machine-readable `code`
/// and a human-readable `message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// The `code` of an error response, left in the response's extensions so
/// the metrics middleware can count errors by code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub &'static str);

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 `invalid_request`.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 404 `file_not_found` for a path in a sandbox, or the generic mapping
    /// of `err` otherwise.
    pub fn from_file_error(path: &str, err: EnvdError) -> Self {
        if err.is_not_found() {
            Self::new(
                StatusCode::NOT_FOUND,
                "file_not_found",
                format!("{path}: not found in the sandbox"),
            )
        } else {
            Self::from(err)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, code = self.code, message = %self.message, "request failed");
        } else {
            tracing::debug!(status = %self.status, code = self.code, message = %self.message, "request refused");
        }
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        response.extensions_mut().insert(ErrorCode(self.code));
        response
    }
}

/// The mapping of [`crate::policy::classify`], shared with the E2B routes.
impl From<ManagerError> for ApiError {
    fn from(err: ManagerError) -> Self {
        let (status, code) = crate::policy::classify(&err);
        Self::new(status, code, err.to_string())
    }
}

impl From<crate::policy::Refusal> for ApiError {
    fn from(refusal: crate::policy::Refusal) -> Self {
        Self::new(refusal.status, refusal.code, refusal.message)
    }
}

impl From<safename::SafeNameError> for ApiError {
    fn from(err: safename::SafeNameError) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_name",
            format!("invalid name: {err}"),
        )
    }
}

/// envd's Connect codes as statuses ([`crate::policy::classify_envd`]).
impl From<EnvdError> for ApiError {
    fn from(err: EnvdError) -> Self {
        let (status, code) = crate::policy::classify_envd(&err);
        Self::new(status, code, err.to_string())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        let status = rejection.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "invalid_body"
        };
        Self::new(status, code, rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::new(rejection.status(), "invalid_path", rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(rejection.status(), "invalid_query", rejection.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_503() {
        let err = ManagerError::Capacity {
            running: 2,
            limit: 2,
        };

        let api = ApiError::from(err);

        assert_eq!(
            (api.status, api.code),
            (StatusCode::SERVICE_UNAVAILABLE, "capacity")
        );
    }

    #[test]
    fn invalid_state_is_409() {
        let err = ManagerError::InvalidState {
            id: "abc".into(),
            state: sandbox_core::State::Paused,
            operation: "pause",
        };

        let api = ApiError::from(err);

        assert_eq!(
            (api.status, api.code),
            (StatusCode::CONFLICT, "invalid_state")
        );
    }

    #[test]
    fn traversal_name_is_400() {
        let err = safename::SafeName::new("../x").map(drop).unwrap_err();

        let api = ApiError::from(ManagerError::from(err));

        assert_eq!(
            (api.status, api.code),
            (StatusCode::BAD_REQUEST, "invalid_name")
        );
    }

    #[test]
    fn error_body_is_the_documented_json() {
        let err = ApiError::new(
            StatusCode::NOT_FOUND,
            "sandbox_not_found",
            "no such sandbox",
        );

        let body = serde_json::to_value(Body {
            error: Inner {
                code: err.code,
                message: &err.message,
            },
        })
        .unwrap();

        assert_eq!(
            body,
            serde_json::json!({"error": {"code": "sandbox_not_found", "message": "no such sandbox"}})
        );
    }
}
