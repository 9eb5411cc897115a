//! The VMM abstraction: one trait over QEMU and Firecracker.
//!
//! A [`Hypervisor`] turns a backend-neutral [`VmSpec`] into a [`Vm`]; the
//! [`Vm`] is started, paused to disk, resumed, stopped and destroyed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;

use crate::disk::DiskFormat;
use crate::error::SandboxError;

/// Which VMM runs a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Qemu,
    Firecracker,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Qemu => "qemu",
            BackendKind::Firecracker => "firecracker",
        }
    }
}

/// How the host reaches the guest's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmNetwork {
    /// The VMM's user-mode network forwarding `host` to the guest's envd
    /// port (QEMU only; needs no privileges or namespaces). Isolated: the
    /// guest reaches neither the host nor anything beyond it.
    UserForward { host: SocketAddr },
    /// A TAP device that already exists, in network namespace `netns`
    /// (`/run/netns/NAME`; the VMM is started inside it) or in the agent's.
    Tap {
        ifname: String,
        mac: String,
        netns: Option<PathBuf>,
    },
}

/// A backend-neutral description of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    pub id: String,
    pub vcpus: u8,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub kernel_args: String,
    /// The root disk: a qcow2 overlay for QEMU, a raw image or block device
    /// for Firecracker.
    pub root_disk: PathBuf,
    pub root_disk_qcow2: bool,
    /// Further raw disks (writable), after the root disk: `/dev/vdb`, ...
    pub extra_drives: Vec<PathBuf>,
    pub network: VmNetwork,
    /// Per-VM directory for sockets and logs (owned by the caller).
    pub run_dir: PathBuf,
    /// The template's read-only base image the root disk is made over: a
    /// confined VMM may see it (besides the data dir's templates and
    /// snapshots) as a backing file.
    pub base_image: Option<PathBuf>,
}

impl VmSpec {
    /// The guest's serial console log inside `run_dir`.
    pub fn console_log(&self) -> PathBuf {
        self.run_dir.join("console.log")
    }
}

/// A VMM backend.
#[async_trait]
pub trait Hypervisor: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> BackendKind;

    /// Prepares a VM from `spec`; nothing runs the guest before [`Vm::start`].
    async fn create(&self, spec: VmSpec) -> Result<Box<dyn Vm>, SandboxError>;

    /// Takes over the running VMM process `pid` of `spec`, started by an
    /// earlier run of the agent.
    async fn adopt(&self, spec: VmSpec, pid: u32) -> Result<Box<dyn Vm>, SandboxError>;

    /// Removes what a VMM of VM `id` in `run_dir` may leave behind outside
    /// the run dir (QEMU: its cgroup) once its process is gone, for a
    /// sandbox the agent gives up without a [`Vm`] (lost at a restart).
    fn release_leftovers(&self, id: &str, run_dir: &Path) {
        let _ = (id, run_dir);
    }

    /// Whether `state_dir` holds a complete saved state written by
    /// [`Vm::pause`] (its last file is in place), as opposed to a save cut
    /// short. QEMU writes `vmstate.json` last.
    fn saved_state_complete(&self, state_dir: &Path) -> bool {
        state_dir.join("vmstate.json").is_file()
    }

    /// The root disk [`Vm::snapshot`] of this backend leaves in
    /// `snapshot_dir`, which the disk of a VM started from that snapshot is
    /// made over. QEMU: the qcow2 `disk.qcow2`.
    fn snapshot_disk(&self, snapshot_dir: &Path) -> (PathBuf, DiskFormat) {
        (snapshot_dir.join("disk.qcow2"), DiskFormat::Qcow2)
    }
}

/// One VM of a backend.
#[async_trait]
pub trait Vm: Send + Sync + std::fmt::Debug {
    fn id(&self) -> &str;

    /// The VMM process id, once started.
    fn pid(&self) -> Option<u32>;

    /// The guest's serial console log.
    fn console_log(&self) -> PathBuf;

    /// Boots the guest.
    async fn start(&mut self) -> Result<(), SandboxError>;

    /// Boots by loading a snapshot made by [`Vm::snapshot`] (instead of
    /// [`Vm::start`]); the spec's root disk must be an overlay of the
    /// snapshot's disk.
    async fn start_from_snapshot(
        &mut self,
        snapshot_dir: &Path,
        network: VmNetwork,
    ) -> Result<Duration, SandboxError>;

    /// Saves the running guest (state, memory, disk) into `snapshot_dir`
    /// and lets it continue.
    async fn snapshot(&mut self, snapshot_dir: &Path) -> Result<PauseStats, SandboxError>;

    /// Saves the guest's state (vCPUs, devices and memory) under `state_dir`
    /// and ends the VMM process. The root disk (and any memory file the
    /// backend keeps in the VM's run directory) stays in place for
    /// [`Vm::resume`].
    async fn pause(&mut self, state_dir: &Path) -> Result<PauseStats, SandboxError>;

    /// Starts a new VMM process that continues the guest saved by
    /// [`Vm::pause`], reachable through `network`. A backend that can leaves
    /// the vCPUs stopped until [`Vm::continue_if_stopped`] (QEMU), so the
    /// caller can record that the guest is about to run first.
    async fn resume(
        &mut self,
        state_dir: &Path,
        network: VmNetwork,
    ) -> Result<Duration, SandboxError>;

    /// Boots the guest afresh from its root disk, as it is, reachable
    /// through `network`, with kernel command line `kernel_args`: the
    /// resume of a filesystem-only pause (no saved state; memory and
    /// processes start over). A backend that cannot says so
    /// ([`SandboxError::Unsupported`]).
    async fn boot_fresh(
        &mut self,
        network: VmNetwork,
        kernel_args: String,
    ) -> Result<Duration, SandboxError>;

    /// Stops the guest and its VMM process (idempotent).
    async fn stop(&mut self) -> Result<(), SandboxError>;

    /// Lets an adopted guest whose vCPUs were left stopped (an agent that
    /// crashed mid-pause or mid-snapshot) run again; `true` if it had to.
    async fn continue_if_stopped(&mut self) -> Result<bool, SandboxError> {
        Ok(false)
    }

    /// Stops the VM if needed and removes what the backend made for it.
    async fn destroy(self: Box<Self>) -> Result<(), SandboxError>;

    /// Forgets the VMM process without stopping it.
    fn detach(self: Box<Self>);
}

/// What a pause wrote and took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PauseStats {
    pub took: Duration,
    /// Bytes of the state files on disk (device state, and memory when the
    /// backend does not keep it in a separate file).
    pub state_bytes: u64,
}

/// Whether process `pid` runs (a zombie does not: it holds nothing any
/// more and waits only to be reaped).
pub(crate) fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name in parentheses.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}
