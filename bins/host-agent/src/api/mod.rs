//! The REST API under `/v1` (placeholder: being written).

use axum::Router;

use crate::state::AppState;

/// `/v1/...`, `/openapi.json`, `/metrics`.
pub fn router(state: AppState) -> Router {
    Router::new().with_state(state)
}
