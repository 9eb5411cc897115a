//! Host-side client of envd, the agent running inside every Petrel guest.
//!
//! [`EnvdClient`] talks plain HTTP/1.1 to envd (guest port 49983) the way
//! `/work/shared/spec/envd-wire.md` describes, using the **binary proto
//! codec** of the Connect protocol for RPCs:
//!
//! - readiness: [`EnvdClient::wait_healthy`] polls `GET /health`;
//! - setup: [`EnvdClient::init`] sends `POST /init` (token, env, user, clock);
//! - processes: [`EnvdClient::exec`] runs a command to completion and collects
//!   its output, [`EnvdClient::exec_stream`] yields its events as they come,
//!   plus [`send_signal`](EnvdClient::send_signal),
//!   [`list_processes`](EnvdClient::list_processes) and stdin helpers;
//! - terminals: [`EnvdClient::start_pty`] runs a process on a
//!   pseudo-terminal of a given size, [`send_pty_input`](EnvdClient::send_pty_input)
//!   types into it, [`resize_pty`](EnvdClient::resize_pty) resizes it;
//! - files: [`read_file`](EnvdClient::read_file) /
//!   [`write_file`](EnvdClient::write_file) over `/files` (and their
//!   streamed forms, which hold no whole file in memory), and
//!   [`stat`](EnvdClient::stat), [`make_dir`](EnvdClient::make_dir),
//!   [`list_dir`](EnvdClient::list_dir), [`remove`](EnvdClient::remove)
//!   over the `Filesystem` service.
//!
//! Everything the client collects is capped: exec output at
//! [`ExecRequest::output_limit`] per stream (the rest dropped, and
//! [`ExecOutput::stdout_truncated`] says so), unary replies at
//! [`MAX_UNARY_REPLY`], whole-file reads at [`MAX_FILE_READ`] (beyond a cap:
//! [`EnvdError::TooLarge`]), stream messages at 64 MiB.
//!
//! Every failure is an [`EnvdError`] naming the address and endpoint;
//! [`EnvdError::code`] gives the Connect code (`"not_found"`, ...).
//!
//! It does not speak the JSON codec (that is for E2B's SDKs),
//! `Process/Connect`, client streams or directory watches, and it neither
//! starts guests nor finds their address: `sandbox-core` does that.
//!
//! ```no_run
//! # async fn demo() -> Result<(), envd_client::EnvdError> {
//! use std::{net::SocketAddr, time::Duration};
//! use envd_client::{EnvdClient, ExecRequest};
//!
//! let client = EnvdClient::new(SocketAddr::from(([10, 11, 0, 2], 49983)));
//! let took = client.wait_healthy(Duration::from_secs(10)).await?;
//! println!("envd ready after {took:?}");
//!
//! let out = client.exec(ExecRequest::shell("echo hello").user("root")).await?;
//! assert_eq!(out.stdout, b"hello\n");
//! assert_eq!(out.exit_code, 0);
//!
//! client.write_file("/tmp/greeting", Some("root"), &b"hi"[..]).await?;
//! let back = client.read_file("/tmp/greeting", Some("root")).await?;
//! assert_eq!(back, b"hi");
//! # Ok(()) }
//! ```

mod connect;
mod error;
mod files;
mod health;
mod init;
mod process;
mod pty;
mod transport;

use std::{net::SocketAddr, time::Duration};

pub use error::{BoxError, EnvdError};
pub use files::{FileDownload, FileEntry, FileKind, FileStream, MAX_FILE_READ};
pub use init::{InitReply, InitRequest};
pub use process::{
    DEFAULT_OUTPUT_LIMIT, ExecEvent, ExecOutput, ExecRequest, ExecStream, ProcessInfo, Signal,
};
pub use pty::{PtyEvent, PtyStream};

use transport::Transport;
pub use transport::{KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_RETRIES, MAX_UNARY_REPLY};

/// The port envd listens on inside the guest.
pub const ENVD_PORT: u16 = 49983;

/// How long a unary RPC or plain HTTP request may take unless
/// [`EnvdClient::with_request_timeout`] says otherwise.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_mins(1);

/// A client of one envd instance at `http://{addr}`.
///
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct EnvdClient {
    transport: Transport,
}

impl EnvdClient {
    /// A client of envd at `http://{addr}`; no connection is made yet.
    /// Must be used inside a tokio runtime.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            transport: Transport::new(addr, DEFAULT_REQUEST_TIMEOUT),
        }
    }

    /// Sends `token` as `X-Access-Token` on every request.
    #[must_use]
    pub fn with_access_token(mut self, token: impl Into<String>) -> Self {
        self.transport.set_access_token(Some(token.into()));
        self
    }

    /// Bounds each unary RPC and plain HTTP request (not process streams,
    /// whose bound is [`ExecRequest::timeout`]).
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.transport.set_request_timeout(timeout);
        self
    }

    /// The address of envd.
    pub fn addr(&self) -> SocketAddr {
        self.transport.addr()
    }
}
