//! Petrel's orchestrator core: boots guests from a template's kernel and root
//! image on a VMM backend, waits for the in-guest agent (envd) and runs
//! commands and file operations through it.
//!
//! - [`vmm`]: the [`Hypervisor`]/[`Vm`] traits every backend implements, and
//!   the backend-neutral [`VmSpec`].
//! - [`qemu`]: the QEMU `microvm` backend (KVM when a probe shows it works,
//!   TCG otherwise); [`firecracker`]: the Firecracker backend.
//! - [`disk`]: per-sandbox copy-on-write root disks behind one trait
//!   ([`RootfsProvider`]: qcow2 overlay, sparse copy, dm-snapshot) and
//!   [`choose_provider`], which picks one for a backend and says why.
//! - [`confine`]: how VMM processes are confined (uid, mount namespace,
//!   rlimits, cgroup; see the `jail` crate).
//! - [`durable`]: fsync helpers every save path uses before it reports
//!   success.
//! - [`sandbox`]: one sandbox's cold boot, exec and teardown, with rollback of
//!   everything it made when a step fails.
//!
//! - [`manager`]: many sandboxes with states, TTLs, snapshots, templates,
//!   persisted in SQLite and re-adopted after an agent restart;
//! - pause to disk and resume ([`Sandbox::pause`], [`Sandbox::resume`]).
//!
//! - [`network`]: per-sandbox network namespaces (TAP, NAT, egress policy).
//!
//! It
//! has no HTTP API (that is `bins/host-agent`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), sandbox_core::SandboxError> {
//! use sandbox_core::{GuestImages, QemuBackend, Sandbox, SandboxConfig};
//! let images = GuestImages::from_env()?;
//! let backend = QemuBackend::new(qemu_vmm::Accel::Tcg);
//! let sandbox = Sandbox::boot(&backend, SandboxConfig::new("sbx1", images, "/tmp/petrel")).await?;
//! let out = sandbox.exec_shell("echo hello").await?;
//! assert_eq!(out.stdout, b"hello\n");
//! sandbox.destroy().await?;
//! # Ok(()) }
//! ```

pub mod confine;
pub mod crash;
pub mod disk;
pub mod durable;
mod error;
pub mod firecracker;
mod identity;
mod images;
pub mod manager;
pub mod network;
pub mod qemu;
mod refill;
mod rollback;
pub mod sandbox;
pub mod snapshot;
pub mod vmm;

pub use disk::{RootfsProvider, choose_provider};
pub use error::SandboxError;
pub use firecracker::FirecrackerBackend;
pub use images::GuestImages;
pub use manager::{
    CreateSandbox, DEFAULT_PAUSED_TTL, DEFAULT_POOL_SIZE, GONE_POLL, ListFilter, Manager,
    ManagerConfig, ManagerError, PoolStats, SandboxInfo, SnapshotInfo, StandsOn, State,
    TemplateInfo,
};
pub use network::NetworkPool;
pub use qemu::{QemuBackend, default_boot_timeout};
pub use sandbox::{
    BootTimings, ResumeTimings, Sandbox, SandboxConfig, SandboxRecord, SandboxRecordConfig,
    SandboxState,
};
pub use vmm::{BackendKind, Hypervisor, PauseStats, Vm, VmNetwork, VmSpec};
