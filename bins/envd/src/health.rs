//! `GET /health`.

use axum::http::StatusCode;

/// `GET /health`: 204 once the server accepts requests (no auth).
pub async fn health() -> StatusCode {
    StatusCode::NO_CONTENT
}
