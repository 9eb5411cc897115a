//! Petrel's host agent as a library, so tests can run it in-process.
//!
//! - [`config`]: flags, environment variables and the TOML file.
//! - [`state`]: what every handler shares ([`AppState`]).
//! - [`auth`]: the guard in front of every route of the API listener
//!   (API keys held hashed, allowed hosts and origins).
//! - [`server`]: binds the listeners and serves until shutdown.
//! - [`api`]: the REST API under `/v1`, `/openapi.json`, `/metrics`.
//! - [`ui`]: the test UI at `GET /test`.
//! - [`e2b`]: the E2B-compatible control plane and the envd proxy.
//! - [`policy`]: the rules `/v1` and the E2B routes share (TTLs, caps,
//!   upload limit, error statuses).
//! - [`backend`]: which VMM backend `serve` runs (Firecracker or QEMU), and why.
//! - [`doctor`]: the host's capabilities and the choices made from them.
//!
//! It does not run VMs itself: [`sandbox_core::Manager`] does.

pub mod api;
pub mod auth;
pub mod backend;
pub mod config;
pub mod doctor;
pub mod e2b;
mod gone;
pub mod policy;
pub mod server;
pub mod state;
pub mod ui;

pub use config::AgentConfig;
pub use server::{RunningAgent, start};
pub use state::AppState;
