//! `envd`: Petrel's in-guest agent, speaking E2B's envd wire protocol so
//! the official E2B SDKs work unchanged.
//!
//! It serves, over plain HTTP/1.1 (port 49983 in a guest):
//! - the Connect services `process.Process` (start/attach/feed/signal
//!   processes, optionally on a pty) and `filesystem.Filesystem` (stat,
//!   list, mkdir, move, remove, inotify watches), JSON and binary codecs;
//! - `GET /health`, `GET|POST /files`, `POST /init`, `GET /envs`,
//!   `GET /metrics`.
//!
//! It does not manage VMs, networking or snapshots, and it has no TLS: it
//! trusts the host-side proxy in front of it. The contract is
//! `shared/spec/envd-wire.md`.
//!
//! # Example
//!
//! Start a server in-process on an ephemeral port:
//!
//! ```no_run
//! # async fn demo() -> Result<(), envd::EnvdError> {
//! let server = envd::Server::bind(envd::Config::localhost()).await?;
//! let running = server.spawn();
//! println!("envd at {}", running.url());
//! running.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub mod auth;
pub mod config;
pub mod error;
pub mod files;
pub mod filesystem;
pub mod health;
pub mod identity;
pub mod init;
pub mod metrics;
pub mod oom;
pub mod process;
pub mod rpc;
pub mod server;
pub mod state;
pub mod user;
pub mod xattr;

pub use config::Config;
pub use error::EnvdError;
pub use server::{RunningServer, Server, router};
pub use state::{AppState, SharedState};

/// The E2B envd version whose feature set this envd implements; the
/// control plane reports it as `envdVersion` so the SDKs enable features.
pub const ENVD_COMPAT_VERSION: &str = "0.6.4";
