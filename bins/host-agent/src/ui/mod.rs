//! The test UI at `GET /test` (placeholder: being written).

use axum::Router;

use crate::state::AppState;

/// `GET /test`.
pub fn router(state: AppState) -> Router {
    Router::new().with_state(state)
}
