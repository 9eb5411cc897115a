//! [`SnapshotManager`]: create, restore and remove a sandbox's dm-snapshot
//! (`petrel-<sandbox>`: `snapshot <base loop> <cow loop> P 8`).

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use devicemapper::{DM, DevId, DmName, DmOptions};
use tracing::{info, warn};

use crate::cow::{self, CHUNK_SECTORS};
use crate::error::{DmSnapError, Result};
use crate::loops::{BaseLease, LoopDev, LoopRegistry, lock};
use crate::naming::device_name;

/// What a sandbox's root disk is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSpec {
    /// The sandbox id (a `SafeName`); the dm device is `petrel-<sandbox>`.
    pub sandbox: String,
    /// The template's read-only base image (raw), never written.
    pub base: PathBuf,
    /// The sandbox's CoW file: made by `create`, reused by `restore`.
    pub cow: PathBuf,
}

impl SnapshotSpec {
    pub fn new(
        sandbox: impl Into<String>,
        base: impl Into<PathBuf>,
        cow: impl Into<PathBuf>,
    ) -> Self {
        Self {
            sandbox: sandbox.into(),
            base: base.into(),
            cow: cow.into(),
        }
    }
}

/// A live snapshot device. Give it back with [`SnapshotManager::remove`];
/// dropping it leaves the device and its loops in place (`cleanup_stale`
/// removes them at the next start).
#[derive(Debug)]
#[must_use = "a snapshot not removed keeps its dm device and loop devices"]
pub struct Snapshot {
    pub(crate) sandbox: String,
    pub(crate) name: String,
    pub(crate) device: PathBuf,
    pub(crate) major: u32,
    pub(crate) minor: u32,
    pub(crate) size_bytes: u64,
    pub(crate) base: PathBuf,
    pub(crate) cow: LoopDev,
    pub(crate) lease: BaseLease,
}

impl Snapshot {
    pub fn sandbox(&self) -> &str {
        &self.sandbox
    }

    /// The dm device name, `petrel-<sandbox>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The block device to give the VM, e.g. `/dev/dm-3`.
    pub fn device(&self) -> &Path {
        &self.device
    }

    /// `major:minor` of the dm device.
    pub fn devno(&self) -> String {
        format!("{}:{}", self.major, self.minor)
    }

    /// Size of the device: the base image's size.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    pub fn cow_file(&self) -> &Path {
        &self.cow.file
    }

    /// The base image's shared read-only loop device.
    pub fn base_loop(&self) -> &LoopDev {
        self.lease.device()
    }

    /// The CoW file's own loop device.
    pub fn cow_loop(&self) -> &LoopDev {
        &self.cow
    }
}

/// Makes and removes snapshot devices. One per process: it owns the
/// [`LoopRegistry`] that shares base loop devices. `Send + Sync`.
pub struct SnapshotManager {
    pub(crate) dm: DM,
    pub(crate) loops: LoopRegistry,
    /// Names of the devices this manager made and has not removed.
    pub(crate) live: Mutex<HashSet<String>>,
}

impl fmt::Debug for SnapshotManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotManager")
            .field("loops", &self.loops)
            .field("live", &self.live)
            .finish_non_exhaustive()
    }
}

/// Our devices are internal: udev's disk and subsystem rules (blkid probes,
/// `/dev/disk/by-*`) are skipped.
pub(crate) fn dm_options() -> DmOptions {
    DmOptions::private()
}

impl SnapshotManager {
    /// Opens `/dev/mapper/control`; fails without device-mapper or root.
    pub fn new() -> Result<Self> {
        Self::with_loops(LoopRegistry::new())
    }

    /// A manager over a given loop registry.
    pub fn with_loops(loops: LoopRegistry) -> Result<Self> {
        let dm = DM::new().map_err(|source| DmSnapError::Control { source })?;
        Ok(Self {
            dm,
            loops,
            live: Mutex::new(HashSet::new()),
        })
    }

    /// The registry of base and CoW loop devices.
    pub fn loops(&self) -> &LoopRegistry {
        &self.loops
    }

    /// A new snapshot: makes the sparse CoW file at `spec.cow` (which must not
    /// exist), attaches it and the base, and activates `petrel-<sandbox>`.
    /// Constant time whatever the base's size. On failure nothing is left
    /// behind.
    pub fn create(&self, spec: &SnapshotSpec) -> Result<Snapshot> {
        let name = device_name(&spec.sandbox)?;
        self.ensure_absent(&name)?;
        let base_bytes = base_size(&spec.base)?;
        cow::create(&spec.cow, cow::cow_size(base_bytes))?;
        let snapshot = self.assemble(spec, name, base_bytes).inspect_err(|_| {
            if let Err(err) = std::fs::remove_file(&spec.cow) {
                warn!(cow = %spec.cow.display(), %err, "removing the CoW file of a failed create");
            }
        })?;
        info!(sandbox = %spec.sandbox, device = %snapshot.device.display(), base = %spec.base.display(), cow = %spec.cow.display(), "snapshot created");
        Ok(snapshot)
    }

    /// Rebuilds the device of an existing CoW file (after `remove` for a
    /// pause, or after an agent restart and `cleanup_stale`): every write the
    /// sandbox made is there again. The base must be the one the CoW was made
    /// over; the CoW file's header is checked before dm sees it.
    pub fn restore(&self, spec: &SnapshotSpec) -> Result<Snapshot> {
        let name = device_name(&spec.sandbox)?;
        self.ensure_absent(&name)?;
        let base_bytes = base_size(&spec.base)?;
        cow::check(&spec.cow)?;
        let snapshot = self.assemble(spec, name, base_bytes)?;
        info!(sandbox = %spec.sandbox, device = %snapshot.device.display(), cow = %spec.cow.display(), "snapshot restored");
        Ok(snapshot)
    }

    /// Removes the dm device, syncs the CoW file, detaches the CoW loop and
    /// gives the base loop back (detached if this was its last user). Every
    /// step is tried; the error lists all that failed. The CoW file stays
    /// (for `restore`); delete it to discard the sandbox's writes.
    pub fn remove(&self, snapshot: Snapshot) -> Result<()> {
        let mut errors = Vec::new();
        match DmName::new(&snapshot.name) {
            Ok(dm_name) => {
                if let Err(source) = self.dm.device_remove(&DevId::Name(dm_name), dm_options()) {
                    errors.push(DmSnapError::dm("remove", &snapshot.name, source));
                }
            }
            Err(source) => errors.push(DmSnapError::dm("name", &snapshot.name, source)),
        }
        if let Err(source) = File::open(&snapshot.cow.file).and_then(|f| f.sync_all()) {
            errors.push(DmSnapError::io("sync CoW file", &snapshot.cow.file, source));
        }
        if let Err(err) = self.loops.detach_private(&snapshot.cow) {
            errors.push(err);
        }
        if let Err(err) = self.loops.release(snapshot.lease) {
            errors.push(err);
        }
        lock(&self.live).remove(&snapshot.name);
        if errors.is_empty() {
            info!(sandbox = %snapshot.sandbox, name = %snapshot.name, "snapshot removed");
            return Ok(());
        }
        Err(DmSnapError::Incomplete {
            what: format!("removing dm device {}", snapshot.name),
            errors,
        })
    }

    /// Whether a dm device of that name exists.
    pub fn device_exists(&self, name: &str) -> Result<bool> {
        let dm_name = DmName::new(name).map_err(|source| DmSnapError::dm("name", name, source))?;
        Ok(self.dm.device_info(&DevId::Name(dm_name)).is_ok())
    }

    /// Names of the devices this manager made and has not removed.
    pub(crate) fn live_names(&self) -> HashSet<String> {
        lock(&self.live).clone()
    }

    fn ensure_absent(&self, name: &str) -> Result<()> {
        if self.device_exists(name)? {
            return Err(DmSnapError::DeviceExists {
                name: name.to_string(),
            });
        }
        Ok(())
    }

    /// Loops, then the dm device; undoes what it did when a step fails.
    fn assemble(&self, spec: &SnapshotSpec, name: String, base_bytes: u64) -> Result<Snapshot> {
        let lease = self.loops.acquire(&spec.base)?;
        let cow = match self.loops.attach_private(&spec.cow) {
            Ok(cow) => cow,
            Err(err) => {
                self.give_back(None, lease);
                return Err(err);
            }
        };
        match self.activate(&name, lease.device(), &cow, base_bytes) {
            Ok((major, minor, device)) => {
                lock(&self.live).insert(name.clone());
                Ok(Snapshot {
                    sandbox: spec.sandbox.clone(),
                    name,
                    device,
                    major,
                    minor,
                    size_bytes: base_bytes,
                    base: spec.base.clone(),
                    cow,
                    lease,
                })
            }
            Err(err) => {
                self.give_back(Some(&cow), lease);
                Err(err)
            }
        }
    }

    fn give_back(&self, cow: Option<&LoopDev>, lease: BaseLease) {
        if let Some(cow) = cow
            && let Err(err) = self.loops.detach_private(cow)
        {
            warn!(%err, "rollback: detaching the CoW loop");
        }
        if let Err(err) = self.loops.release(lease) {
            warn!(%err, "rollback: releasing the base loop");
        }
    }

    /// Creates the dm device, loads the snapshot table, resumes it.
    fn activate(
        &self,
        name: &str,
        base: &LoopDev,
        cow: &LoopDev,
        base_bytes: u64,
    ) -> Result<(u32, u32, PathBuf)> {
        let dm_name = DmName::new(name).map_err(|source| DmSnapError::dm("name", name, source))?;
        let id = DevId::Name(dm_name);
        let table = [(
            0,
            base_bytes / 512,
            "snapshot".to_string(),
            snapshot_params(base, cow),
        )];
        let info = self
            .dm
            .device_create(dm_name, None, dm_options())
            .map_err(|source| DmSnapError::dm("create", name, source))?;
        let loaded = self
            .dm
            .table_load(&id, &table, dm_options())
            .map_err(|source| DmSnapError::dm("load snapshot table into", name, source))
            .and_then(|_| {
                self.dm
                    .device_suspend(&id, dm_options())
                    .map_err(|source| DmSnapError::dm("resume", name, source))
            });
        let device = info.device();
        let node = loaded.and_then(|_| device_node(name, device.major, device.minor));
        match node {
            Ok(node) => Ok((device.major, device.minor, node)),
            Err(err) => {
                if let Err(undo) = self.dm.device_remove(&id, dm_options()) {
                    warn!(name, %undo, "rollback: removing the dm device");
                }
                Err(err)
            }
        }
    }
}

/// `<origin> <cow> P <chunk>`: a persistent snapshot of 4 KiB chunks.
fn snapshot_params(base: &LoopDev, cow: &LoopDev) -> String {
    format!("{} {} P {CHUNK_SECTORS}", base.devno(), cow.devno())
}

/// The base image's size, which must be a whole number of sectors.
fn base_size(base: &Path) -> Result<u64> {
    let len = std::fs::metadata(base)
        .map_err(|source| DmSnapError::io("stat base image", base, source))?
        .len();
    if len == 0 || !len.is_multiple_of(512) {
        return Err(DmSnapError::BadBase {
            path: base.to_path_buf(),
            reason: format!("size {len} is not a positive multiple of 512 bytes"),
        });
    }
    Ok(len)
}

/// The node devtmpfs made for a block device (`/dev/dm-N`), found through
/// `/sys/dev/block/MAJ:MIN/uevent`.
pub(crate) fn device_node(name: &str, major: u32, minor: u32) -> Result<PathBuf> {
    let fail = |reason: String| DmSnapError::DeviceNode {
        name: name.to_string(),
        major,
        minor,
        reason,
    };
    let uevent = format!("/sys/dev/block/{major}:{minor}/uevent");
    let text =
        std::fs::read_to_string(&uevent).map_err(|err| fail(format!("reading {uevent}: {err}")))?;
    let devname =
        devname_from_uevent(&text).ok_or_else(|| fail(format!("{uevent} has no DEVNAME")))?;
    let node = Path::new("/dev").join(devname);
    if !node.exists() {
        return Err(fail(format!(
            "{} does not exist (is /dev a devtmpfs?)",
            node.display()
        )));
    }
    Ok(node)
}

fn devname_from_uevent(text: &str) -> Option<&str> {
    text.lines().find_map(|line| line.strip_prefix("DEVNAME="))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loop_dev(minor: u32, file: &str) -> LoopDev {
        LoopDev {
            path: PathBuf::from(format!("/dev/loop{minor}")),
            major: 7,
            minor,
            file: PathBuf::from(file),
        }
    }

    #[test]
    fn the_table_is_a_persistent_snapshot_of_4k_chunks() {
        let params = snapshot_params(&loop_dev(0, "/base.img"), &loop_dev(3, "/cow"));

        assert_eq!(params, "7:0 7:3 P 8");
    }

    #[test]
    fn devname_comes_from_the_uevent_file() {
        let text = "MAJOR=253\nMINOR=2\nDEVNAME=dm-2\nDEVTYPE=disk\nDISKSEQ=12\n";

        let devname = devname_from_uevent(text);

        assert_eq!(devname, Some("dm-2"));
    }

    #[test]
    fn a_base_that_is_not_whole_sectors_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("odd.img");
        std::fs::write(&base, vec![0u8; 1000]).unwrap();

        let err = base_size(&base).unwrap_err();

        assert!(err.to_string().contains("odd.img"), "{err}");
    }
}
