//! State shared by every handler.

use std::sync::Arc;
use std::time::Instant;

use sandbox_core::Manager;

use crate::config::AgentConfig;

/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    pub manager: Manager,
    pub config: Arc<AgentConfig>,
    /// The rules both APIs apply (see [`crate::policy`]).
    pub policy: Arc<crate::policy::Policy>,
    pub started_at: Instant,
}
