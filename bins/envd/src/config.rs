//! Static configuration of an envd server (what the CLI sets).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The port envd listens on inside the guest.
pub const DEFAULT_PORT: u16 = 49_983;

/// The user processes run as when a request names none.
pub const DEFAULT_USER: &str = "user";

/// Keepalive period used when a stream request has no `Keepalive-Ping-Interval`.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(50);

/// Configuration of one envd server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on (`0.0.0.0:49983` in a guest, `127.0.0.1:0` in tests).
    pub listen: SocketAddr,
    /// Default user for processes and file operations; when it does not exist
    /// on this system the user envd runs as is used instead (with a warning).
    pub default_user: String,
    /// Default working directory for processes; the user's home when unset.
    pub default_workdir: Option<PathBuf>,
    /// Keepalive period for streams whose request has no
    /// `Keepalive-Ping-Interval` header.
    pub default_keepalive: Duration,
    /// Access token required from the start (normally set later by `POST /init`).
    pub access_token: Option<String>,
    /// Whether `POST /init` may set the system's hostname and reseed its
    /// CRNG (on in a guest, which envd owns; off on a host and in tests).
    pub manage_identity: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
            default_user: DEFAULT_USER.to_owned(),
            default_workdir: None,
            default_keepalive: DEFAULT_KEEPALIVE,
            access_token: None,
            manage_identity: true,
        }
    }
}

impl Config {
    /// A configuration for tests and host use: listen on `127.0.0.1:0`.
    pub fn localhost() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            manage_identity: false,
            ..Self::default()
        }
    }
}
