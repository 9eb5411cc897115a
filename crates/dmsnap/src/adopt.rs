//! [`SnapshotManager::adopt`]: taking over a snapshot device that an earlier
//! run of the agent made and left live (its sandbox's VM kept running across
//! the restart). The device's loop devices are found from its dm table and
//! sysfs, checked against the spec, and registered as this manager's own.

use std::path::{Path, PathBuf};

use devicemapper::{DevId, DmFlags, DmName};
use tracing::info;

use crate::error::{DmSnapError, Result};
use crate::loops::{LoopDev, lock};
use crate::naming::device_name;
use crate::snapshot::{Snapshot, SnapshotManager, SnapshotSpec, device_node, dm_options};

impl SnapshotManager {
    /// Takes over `petrel-<sandbox>`, left live by an earlier process: reads
    /// its table, checks that it is a snapshot whose origin and CoW loop
    /// devices are bound to `spec.base` and `spec.cow`, and registers both
    /// loops (the base one shared as if this manager had attached it), so
    /// [`remove`](Self::remove) and [`cleanup_stale`](Self::cleanup_stale)
    /// treat the device as this manager's. Nothing is changed on the device;
    /// a VM using it goes on undisturbed. Adopt before making new snapshots
    /// of the same base (the registry shares one loop device per base).
    pub fn adopt(&self, spec: &SnapshotSpec) -> Result<Snapshot> {
        let name = device_name(&spec.sandbox)?;
        if lock(&self.live).contains(&name) {
            return Err(not_adoptable(&name, "this manager holds it already"));
        }
        let dm_name =
            DmName::new(&name).map_err(|source| DmSnapError::dm("name", &name, source))?;
        let (info, table) = self
            .dm
            .table_status(
                &DevId::Name(dm_name),
                dm_options().set_flags(DmFlags::DM_STATUS_TABLE),
            )
            .map_err(|source| DmSnapError::dm("read the table of", &name, source))?;
        let [(0, sectors, target, params)] = table.as_slice() else {
            return Err(not_adoptable(
                &name,
                format!("its table has {} targets, not one from 0", table.len()),
            ));
        };
        if target != "snapshot" {
            return Err(not_adoptable(&name, format!("its target is {target}")));
        }
        let (origin, cow) = parse_snapshot_params(params)
            .ok_or_else(|| not_adoptable(&name, format!("snapshot parameters {params:?}")))?;
        let sys = Path::new("/sys/dev/block");
        let base_loop = bound_loop(sys, origin, &spec.base).map_err(|r| not_adoptable(&name, r))?;
        let cow_loop = bound_loop(sys, cow, &spec.cow).map_err(|r| not_adoptable(&name, r))?;
        let device = info.device();
        let node = device_node(&name, device.major, device.minor)?;
        let lease = self.loops.adopt_base(&spec.base, base_loop)?;
        self.loops.adopt_private(&cow_loop);
        lock(&self.live).insert(name.clone());
        info!(sandbox = %spec.sandbox, device = %node.display(), cow = %spec.cow.display(), "snapshot adopted");
        Ok(Snapshot {
            sandbox: spec.sandbox.clone(),
            name,
            device: node,
            major: device.major,
            minor: device.minor,
            size_bytes: sectors * 512,
            base: spec.base.clone(),
            cow: cow_loop,
            lease,
        })
    }
}

fn not_adoptable(name: &str, reason: impl Into<String>) -> DmSnapError {
    DmSnapError::NotAdoptable {
        name: name.to_string(),
        reason: reason.into(),
    }
}

/// `(origin, cow)` device numbers of a `snapshot` target's parameters,
/// `<origin> <cow> P <chunk>` (persistent only: that is what we make).
fn parse_snapshot_params(params: &str) -> Option<((u32, u32), (u32, u32))> {
    let mut words = params.split_whitespace();
    let origin = parse_devno(words.next()?)?;
    let cow = parse_devno(words.next()?)?;
    (words.next()? == "P").then_some((origin, cow))
}

fn parse_devno(word: &str) -> Option<(u32, u32)> {
    let (major, minor) = word.split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The loop device `major:minor` (under `sys`, normally `/sys/dev/block`)
/// if it is bound to `file`; else why not.
fn bound_loop(
    sys: &Path,
    (major, minor): (u32, u32),
    file: &Path,
) -> std::result::Result<LoopDev, String> {
    let dir = sys.join(format!("{major}:{minor}"));
    let target = std::fs::read_link(&dir).map_err(|err| format!("{}: {err}", dir.display()))?;
    let kernel_name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| n.starts_with("loop"))
        .ok_or_else(|| format!("{major}:{minor} is not a loop device"))?;
    let backing_path = dir.join("loop/backing_file");
    let backing = std::fs::read_to_string(&backing_path)
        .map_err(|err| format!("{}: {err}", backing_path.display()))?;
    let backing = PathBuf::from(backing.trim_end_matches('\n'));
    let expected = file
        .canonicalize()
        .map_err(|err| format!("{}: {err}", file.display()))?;
    if backing != expected {
        return Err(format!(
            "/dev/{kernel_name} is bound to {}, not {}",
            backing.display(),
            expected.display()
        ));
    }
    Ok(LoopDev {
        path: Path::new("/dev").join(kernel_name),
        major,
        minor,
        file: file.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_params_give_origin_and_cow() {
        let parsed = parse_snapshot_params("7:0 7:3 P 8");

        assert_eq!(parsed, Some(((7, 0), (7, 3))));
    }

    #[test]
    fn non_persistent_snapshot_params_are_refused() {
        let parsed = parse_snapshot_params("7:0 7:3 N 8");

        assert_eq!(parsed, None);
    }

    /// A fake `/sys/dev/block` with `7:5` -> `loop5` bound to `backing`.
    fn fake_sys(dir: &Path, backing: &Path) -> PathBuf {
        let sys = dir.join("dev-block");
        let device = dir.join("devices/virtual/block/loop5");
        std::fs::create_dir_all(device.join("loop")).unwrap();
        std::fs::write(
            device.join("loop/backing_file"),
            format!("{}\n", backing.display()),
        )
        .unwrap();
        std::fs::create_dir_all(&sys).unwrap();
        std::os::unix::fs::symlink(&device, sys.join("7:5")).unwrap();
        sys
    }

    #[test]
    fn bound_loop_finds_the_device_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cow = dir.path().join("root.cow");
        std::fs::write(&cow, b"").unwrap();
        let sys = fake_sys(dir.path(), &cow.canonicalize().unwrap());

        let found = bound_loop(&sys, (7, 5), &cow).unwrap();

        assert_eq!(found.path, Path::new("/dev/loop5"));
        assert_eq!(found.devno(), "7:5");
    }

    #[test]
    fn bound_loop_refuses_a_device_bound_to_another_file() {
        let dir = tempfile::tempdir().unwrap();
        let cow = dir.path().join("root.cow");
        std::fs::write(&cow, b"").unwrap();
        let sys = fake_sys(dir.path(), Path::new("/elsewhere/other.cow"));

        let err = bound_loop(&sys, (7, 5), &cow).unwrap_err();

        assert!(err.contains("/elsewhere/other.cow"), "{err}");
    }
}
