//! The library behind the `petrel` operator CLI (see `src/main.rs` for the
//! commands): a client of the host agent's HTTP API and what the commands
//! print.
//!
//! - [`cli`]: the command line (clap);
//! - [`config`]: URL and API key from flags, environment and config file;
//! - [`client`]: JSON requests, error replies, the `exec/stream` events
//!   ([`sse`] decodes them);
//! - [`commands`]: one function per subcommand;
//! - [`shell`]: the interactive terminal over the `pty` WebSocket;
//! - [`output`]: tables, `key: value` blocks, times and sizes;
//! - [`progress`]: the spinner of long operations.
//!
//! It speaks plain HTTP and WebSocket only (no TLS), runs no VM and reads
//! nothing of the agent's files: everything goes through `/v1`.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use petrel::output::{self, Sandbox};
//!
//! let client = petrel::client::Client::new("http://127.0.0.1:8080", None)?;
//! let reply = client.get("/v1/sandboxes").await?;
//! let sandboxes: Vec<Sandbox> = output::view(&reply.value)?;
//! print!("{}", petrel::commands::sandbox::sandbox_table(&sandboxes));
//! # Ok(()) }
//! ```

pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod output;
pub mod progress;
pub mod shell;
pub mod sse;
