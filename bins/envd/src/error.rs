//! The envd error type and its mapping to Connect codes and HTTP statuses.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use connectrpc_axum::{Code, ConnectError};
use std::io;

/// Everything that can go wrong while serving a request or starting the server.
#[derive(Debug, thiserror::Error)]
pub enum EnvdError {
    /// The path, process or watcher does not exist (`not_found`, 404).
    #[error("{0}")]
    NotFound(String),
    /// The entry already exists (`already_exists`, 409).
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is malformed (`invalid_argument`, 400).
    #[error("{0}")]
    InvalidArgument(String),
    /// The request cannot be done in the current state (`failed_precondition`).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The operation is not permitted (`permission_denied`, 403).
    #[error("{0}")]
    PermissionDenied(String),
    /// Missing or wrong credentials (`unauthenticated`, 401).
    #[error("{0}")]
    Unauthenticated(String),
    /// The disk is full (`resource_exhausted`; 507 on `/files`).
    #[error("{0}")]
    StorageFull(String),
    /// The deadline of the request passed (`deadline_exceeded`, 504).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The feature is not implemented (`unimplemented`, 501).
    #[error("{0}")]
    Unimplemented(String),
    /// Anything else (`internal`, 500).
    #[error("{0}")]
    Internal(String),
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address that was asked for.
        addr: std::net::SocketAddr,
        /// Why it failed.
        source: io::Error,
    },
}

impl EnvdError {
    /// Maps an I/O error about `what` to the closest error kind.
    pub fn io(what: impl std::fmt::Display, err: &io::Error) -> Self {
        let message = format!("{what}: {err}");
        match err.kind() {
            io::ErrorKind::NotFound => Self::NotFound(message),
            io::ErrorKind::AlreadyExists => Self::AlreadyExists(message),
            io::ErrorKind::PermissionDenied => Self::PermissionDenied(message),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Self::StorageFull(message),
            io::ErrorKind::NotADirectory
            | io::ErrorKind::IsADirectory
            | io::ErrorKind::InvalidInput
            | io::ErrorKind::InvalidFilename
            | io::ErrorKind::DirectoryNotEmpty => Self::InvalidArgument(message),
            _ => Self::Internal(message),
        }
    }

    /// The Connect code of this error.
    pub fn code(&self) -> Code {
        match self {
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::StorageFull(_) => Code::ResourceExhausted,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::Unimplemented(_) => Code::Unimplemented,
            Self::Internal(_) | Self::Bind { .. } => Code::Internal,
        }
    }

    /// The HTTP status used by the plain HTTP endpoints (`/files`, `/init`, ...).
    pub fn http_status(&self) -> StatusCode {
        match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::AlreadyExists(_) => StatusCode::CONFLICT,
            Self::InvalidArgument(_) | Self::FailedPrecondition(_) => StatusCode::BAD_REQUEST,
            Self::PermissionDenied(_) => StatusCode::FORBIDDEN,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::StorageFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            Self::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Unimplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Self::Internal(_) | Self::Bind { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<EnvdError> for ConnectError {
    fn from(err: EnvdError) -> Self {
        ConnectError::new(err.code(), err.to_string())
    }
}

/// Plain HTTP endpoints answer `{"code": <http status>, "message": ...}`.
impl IntoResponse for EnvdError {
    fn into_response(self) -> Response {
        let status = self.http_status();
        let body = serde_json::json!({ "code": status.as_u16(), "message": self.to_string() });
        (status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_io_error_maps_to_not_found() {
        let err = io::Error::from(io::ErrorKind::NotFound);

        let mapped = EnvdError::io("stat /x", &err);

        assert_eq!(mapped.code(), Code::NotFound);
        assert_eq!(mapped.http_status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn full_disk_maps_to_insufficient_storage() {
        let err = io::Error::from(io::ErrorKind::StorageFull);

        let mapped = EnvdError::io("write /x", &err);

        assert_eq!(mapped.http_status(), StatusCode::INSUFFICIENT_STORAGE);
    }
}
