//! The E2B-compatible control plane and envd proxy (placeholder: being
//! written).

use axum::Router;

use crate::state::AppState;

/// E2B's control-plane routes (`/sandboxes`, `/v2/sandboxes`, ...).
pub fn control_router(state: AppState) -> Router {
    Router::new().with_state(state)
}

/// The envd proxy served on `--sandbox-listen`.
pub fn proxy_router(state: AppState) -> Router {
    Router::new().with_state(state)
}
