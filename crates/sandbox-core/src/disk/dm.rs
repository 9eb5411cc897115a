//! The dm-snapshot provider (`dmsnap`): a persistent device-mapper snapshot
//! over a shared read-only loop device of the base and a sparse per-sandbox
//! CoW file (`root.cow`), created in constant time; the VM gets the raw
//! block device `/dev/dm-N` through the symlink `root.dm`.
//!
//! One provider per process ([`DmProvider::shared`]): the base loop devices
//! are refcounted across every sandbox of the process. It needs a kernel
//! with device-mapper, dm-snapshot and loop, and root.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use dmsnap::{Snapshot, SnapshotManager, SnapshotSpec};

use super::{
    DM_COW_FILE, DM_LINK, DiskFormat, RootDisk, RootfsProvider, qcow2_base_unsupported,
    remove_file_if_exists,
};
use crate::error::SandboxError;
use crate::vmm::BackendKind;

/// The process's dm provider, once made.
static SHARED: Mutex<Option<Arc<DmProvider>>> = Mutex::new(None);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Root disks as dm-snapshots over the base.
#[derive(Debug)]
pub struct DmProvider {
    manager: SnapshotManager,
    /// The live snapshot of each sandbox, by sandbox id.
    live: Mutex<HashMap<String, Snapshot>>,
}

impl DmProvider {
    /// The process's dm provider, made on first use; `Err` says why
    /// dm-snapshots are unusable here (no device-mapper, not root, ...).
    pub fn shared() -> Result<Arc<DmProvider>, String> {
        let mut shared = lock(&SHARED);
        if let Some(provider) = shared.as_ref() {
            return Ok(Arc::clone(provider));
        }
        let provider = Arc::new(Self::new()?);
        *shared = Some(Arc::clone(&provider));
        Ok(provider)
    }

    /// A provider of its own, with its own loop registry, beside the
    /// process's [`shared`](Self::shared) one (which an agent uses: teardown
    /// and reattach go through it). For tests that play an earlier process.
    pub fn new() -> Result<DmProvider, String> {
        if !dmsnap::device_mapper_available() {
            return Err(
                "the host kernel has no device-mapper (/proc/misc, /dev/mapper/control)"
                    .to_string(),
            );
        }
        if !nix::unistd::geteuid().is_root() {
            return Err("device-mapper and loop devices need root".to_string());
        }
        let manager =
            SnapshotManager::new().map_err(|err| format!("opening device-mapper: {err}"))?;
        Ok(DmProvider {
            manager,
            live: Mutex::new(HashMap::new()),
        })
    }

    /// The process's dm provider if one was made.
    pub fn existing() -> Option<Arc<DmProvider>> {
        lock(&SHARED).clone()
    }

    /// Removes the `petrel-*` dm devices this provider does not hold (left
    /// by an earlier run for sandboxes that are gone), and the loop devices
    /// over files below `owned_dirs` that none of its devices uses. Adopt
    /// (restore) the devices of running sandboxes first. The names of the
    /// removed devices and loops.
    pub fn cleanup_stale(&self, owned_dirs: &[&Path]) -> Result<Vec<String>, SandboxError> {
        let report =
            self.manager
                .cleanup_stale(owned_dirs)
                .map_err(|err| SandboxError::Rootfs {
                    provider: "dm".to_string(),
                    message: err.to_string(),
                })?;
        Ok(report
            .dm_devices
            .into_iter()
            .chain(
                report
                    .loop_devices
                    .iter()
                    .map(|path| path.display().to_string()),
            )
            .collect())
    }

    fn disk_error(sandbox: &str, err: &dmsnap::DmSnapError) -> SandboxError {
        SandboxError::Disk {
            sandbox: sandbox.to_string(),
            message: format!("dm-snapshot: {err}"),
        }
    }

    /// Points `run_dir/root.dm` at the snapshot's device and keeps it live.
    fn link(
        &self,
        sandbox: &str,
        run_dir: &Path,
        snapshot: Snapshot,
    ) -> Result<RootDisk, SandboxError> {
        let link = run_dir.join(DM_LINK);
        let linked = remove_file_if_exists(&link).and_then(|()| {
            std::os::unix::fs::symlink(snapshot.device(), &link).map_err(|source| {
                SandboxError::Io {
                    what: "link the dm device at",
                    path: link.clone(),
                    source,
                }
            })
        });
        if let Err(err) = linked {
            if let Err(undo) = self.manager.remove(snapshot) {
                tracing::error!(sandbox, %undo, "removing the dm-snapshot of a failed link");
            }
            return Err(err);
        }
        lock(&self.live).insert(sandbox.to_string(), snapshot);
        Ok(RootDisk {
            path: link,
            format: DiskFormat::Raw,
        })
    }
}

#[async_trait]
impl RootfsProvider for DmProvider {
    fn name(&self) -> &'static str {
        "dm"
    }

    fn supports(&self, _backend: BackendKind) -> bool {
        true
    }

    // The dmsnap calls are a few ioctls and loop attaches: short enough to
    // run inline.
    async fn create(
        &self,
        sandbox: &str,
        base: &Path,
        base_format: DiskFormat,
        run_dir: &Path,
    ) -> Result<RootDisk, SandboxError> {
        if base_format == DiskFormat::Qcow2 {
            return Err(qcow2_base_unsupported(self.name(), base));
        }
        let spec = SnapshotSpec::new(sandbox, base, run_dir.join(DM_COW_FILE));
        let snapshot = self
            .manager
            .create(&spec)
            .map_err(|err| Self::disk_error(sandbox, &err))?;
        self.link(sandbox, run_dir, snapshot)
    }

    async fn restore(
        &self,
        sandbox: &str,
        base: &Path,
        run_dir: &Path,
    ) -> Result<RootDisk, SandboxError> {
        if lock(&self.live).contains_key(sandbox) {
            return Ok(super::locate(run_dir));
        }
        let spec = SnapshotSpec::new(sandbox, base, run_dir.join(DM_COW_FILE));
        let name = dmsnap::device_name(sandbox).map_err(|err| Self::disk_error(sandbox, &err))?;
        let exists = self
            .manager
            .device_exists(&name)
            .map_err(|err| Self::disk_error(sandbox, &err))?;
        // Live after an agent restart (its VM kept running): taken over as
        // is; else rebuilt from the CoW file (after a pause).
        let snapshot = if exists {
            self.manager.adopt(&spec)
        } else {
            self.manager.restore(&spec)
        }
        .map_err(|err| Self::disk_error(sandbox, &err))?;
        self.link(sandbox, run_dir, snapshot)
    }

    async fn release(&self, sandbox: &str, _run_dir: &Path) -> Result<(), SandboxError> {
        let snapshot = lock(&self.live).remove(sandbox);
        match snapshot {
            Some(snapshot) => self
                .manager
                .remove(snapshot)
                .map_err(|err| Self::disk_error(sandbox, &err)),
            // Not ours: made by an earlier run (`cleanup_stale` removes it).
            None => Ok(()),
        }
    }

    async fn remove(&self, sandbox: &str, run_dir: &Path) -> Result<(), SandboxError> {
        let released = self.release(sandbox, run_dir).await;
        let link = remove_file_if_exists(&run_dir.join(DM_LINK));
        let cow = remove_file_if_exists(&run_dir.join(DM_COW_FILE));
        released.and(link).and(cow)
    }
}
