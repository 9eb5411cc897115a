//! A typed client for Firecracker's HTTP API over its Unix socket, and a
//! launcher for the `firecracker` process.
//!
//! - [`FcClient`] sends one request per connection (hyper 1 over a
//!   `tokio::net::UnixStream`) with the request bodies of [`models`](crate#models)
//!   encoded as Firecracker's swagger spells them. Error answers become
//!   [`FcError::Api`], carrying method, path, status and the decoded
//!   `fault_message`; connection errors name the socket.
//! - [`FirecrackerProcess`] starts `firecracker --api-sock PATH --id ID`,
//!   sends its output to a log file, waits (bounded) for the API to answer,
//!   and on [`kill`](FirecrackerProcess::kill) or drop kills it by its own
//!   pid and removes the API socket. [`find_firecracker`] locates the binary
//!   (`PETREL_FIRECRACKER`, then `PATH`). [`FirecrackerProcess::adopt`]
//!   takes over a firecracker an earlier run started (its command line must
//!   name the API socket, and the API must answer), then watches and kills
//!   it through a pidfd, so a reused pid is never signalled.
//!
//! What it does not do: no jailer, no network namespaces or TAP setup (a
//! command from [`FirecrackerConfig::command`] can be adjusted, e.g. with a
//! `pre_exec` hook, and handed to [`FirecrackerProcess::spawn_command`]), no
//! userfaultfd page-fault handler, and only the API calls Petrel uses (no
//! balloon, MMDS, entropy, pmem, hotplug, CPU templates or PATCH updates of
//! drives and interfaces). Requests carry no timeout of their own.
//!
//! # Models
//!
//! [`BootSource`], [`Drive`], [`MachineConfiguration`], [`NetworkInterface`],
//! [`Vsock`], [`Logger`], [`Metrics`], [`InstanceActionInfo`], [`Vm`],
//! [`SnapshotCreateParams`], [`SnapshotLoadParams`], and the answers
//! [`InstanceInfo`] and [`FirecrackerVersion`]. Optional fields are omitted
//! from the JSON when unset, since Firecracker rejects unknown fields.
//!
//! # Example
//!
//! ```no_run
//! use fc_client::{
//!     BootSource, FirecrackerConfig, FirecrackerProcess, InstanceState, MachineConfiguration,
//!     find_firecracker,
//! };
//!
//! # async fn boot() -> Result<(), Box<dyn std::error::Error>> {
//! let binary = find_firecracker().ok_or("firecracker not found")?;
//! let mut config = FirecrackerConfig::new(binary, "/run/petrel/vm-1.sock", "vm-1");
//! config.log_path = Some("/var/log/petrel/vm-1.log".into());
//! let mut vm = FirecrackerProcess::spawn(config).await?;
//!
//! let api = vm.client();
//! api.put_machine_config(&MachineConfiguration::new(2, 512)).await?;
//! let mut boot = BootSource::new("/var/lib/petrel/vmlinux");
//! boot.boot_args = Some("console=ttyS0 reboot=k panic=1".into());
//! api.put_boot_source(&boot).await?;
//! api.start_instance().await?;
//! assert_eq!(api.describe_instance().await?.state, InstanceState::Running);
//!
//! api.pause().await?;
//! vm.kill().await?;
//! # Ok(())
//! # }
//! ```

mod client;
mod error;
mod launcher;
mod models;
mod pidfd;
#[cfg(test)]
mod testing;
mod transport;

pub use client::FcClient;
pub use error::{FcError, LaunchError};
pub use http::{Method, StatusCode};
pub use launcher::{
    DEFAULT_READY_TIMEOUT, FIRECRACKER_ENV, FirecrackerConfig, FirecrackerProcess, find_firecracker,
};
pub use models::{
    ActionType, BootSource, CacheType, Drive, FirecrackerVersion, HugePages, InstanceActionInfo,
    InstanceInfo, InstanceState, IoEngine, LogLevel, Logger, MachineConfiguration, MemoryBackend,
    MemoryBackendType, Metrics, NetworkInterface, NetworkOverride, RateLimiter,
    SnapshotCreateParams, SnapshotLoadParams, SnapshotType, TokenBucket, Vm, VmState, Vsock,
    VsockOverride,
};
