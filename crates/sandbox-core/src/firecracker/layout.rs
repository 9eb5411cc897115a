//! Where a Firecracker VM keeps its files: its own directory in the run
//! directory, the saved-state files, and the records that let a later
//! agent run take a restored Firecracker over.

use std::path::{Path, PathBuf};

use crate::error::SandboxError;

/// Firecracker's own directory inside a VM's run directory: its working
/// directory, the only one it can write when confined.
pub(super) const VMM_DIR: &str = "vmm";
/// The API socket in [`VMM_DIR`].
pub(super) const API_SOCKET: &str = "api.sock";
/// The page server's socket in [`VMM_DIR`].
pub(super) const UFFD_SOCKET: &str = "uffd.sock";
/// The root disk's symlink in [`VMM_DIR`], as the drive is configured and
/// saved.
pub(super) const ROOTFS_LINK: &str = "rootfs";
/// vCPU and device state in a state or snapshot directory.
pub(super) const VMSTATE: &str = "vmstate";
/// Guest memory in a state or snapshot directory.
pub(super) const MEM: &str = "mem";
/// The root disk's copy in a snapshot directory.
pub(super) const SNAPSHOT_DISK: &str = "disk.raw";
/// The guest network interface, as configured and saved.
pub(super) const GUEST_IFACE: &str = "eth0";
/// In the run directory (the agent's, not the VMM's): which memory file
/// the running Firecracker was restored from ([`Restored`]); absent for a
/// guest that booted.
pub(super) const RESTORED_RECORD: &str = "firecracker.json";
/// In the run directory: the guest memory regions of the restored
/// Firecracker's page-server handshake, for a page server that takes over.
pub(super) const REGIONS_RECORD: &str = "uffd-regions.json";

/// In the run directory: the memory a resumed Firecracker is served from,
/// a second name of its state dir's `mem` (which goes once the guest ran).
pub(super) const RESUMED_MEMORY: &str = "memory";
/// Written to [`RESTORED_RECORD`] when Firecracker is restored.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Restored {
    pub(super) memory_file: PathBuf,
}

/// What the running Firecracker of `run_dir` was restored from, if it was.
pub(super) fn restored_from(run_dir: &Path) -> Result<Option<Restored>, SandboxError> {
    let path = run_dir.join(RESTORED_RECORD);
    if path.exists() {
        crate::qemu::read_json(&path).map(Some)
    } else {
        Ok(None)
    }
}

/// Removes the memory file a resumed Firecracker of `run_dir` was served
/// from (once no Firecracker of it runs).
pub(super) fn forget_resumed_memory(run_dir: &Path) -> Result<(), SandboxError> {
    crate::disk::remove_file_if_exists(&run_dir.join(RESUMED_MEMORY))
}

/// Forgets how an earlier Firecracker of `run_dir` was restored.
pub(super) fn forget_restored(run_dir: &Path) -> Result<(), SandboxError> {
    crate::disk::remove_file_if_exists(&run_dir.join(RESTORED_RECORD))?;
    crate::disk::remove_file_if_exists(&run_dir.join(REGIONS_RECORD))
}
