//! Startup cleanup: `petrel-*` dm devices and loop devices backed by our
//! files that a previous run (crashed, or stopped without removing its
//! snapshots) left behind.

use std::path::{Path, PathBuf};

use devicemapper::{DevId, DmName};
use tracing::{info, warn};

use crate::error::{DmSnapError, Result};
use crate::loops::detach_loop;
use crate::naming::is_petrel_device;
use crate::snapshot::{SnapshotManager, dm_options};

/// What `cleanup_stale` removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CleanupReport {
    /// Names of the dm devices removed.
    pub dm_devices: Vec<String>,
    /// Loop devices detached.
    pub loop_devices: Vec<PathBuf>,
}

impl SnapshotManager {
    /// Removes every `petrel-*` dm device, then detaches every loop device
    /// whose backing file lies below one of `owned_dirs` (where base images
    /// and CoW files live). Devices this manager made and still holds are
    /// kept, so it is safe at any time, but meant for startup. Every device
    /// is tried; the error lists all that failed.
    pub fn cleanup_stale(&self, owned_dirs: &[&Path]) -> Result<CleanupReport> {
        let mut report = CleanupReport::default();
        let mut errors = Vec::new();
        let live = self.live_names();
        match self.dm.list_devices() {
            Ok(devices) => {
                for (name, _, _) in devices {
                    let name = name.to_string();
                    if !is_petrel_device(&name) || live.contains(&name) {
                        continue;
                    }
                    match self.remove_device(&name) {
                        Ok(()) => report.dm_devices.push(name),
                        Err(err) => errors.push(err),
                    }
                }
            }
            Err(source) => errors.push(DmSnapError::dm("list", "(all devices)", source)),
        }
        let dirs: Vec<PathBuf> = owned_dirs
            .iter()
            .map(|dir| dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()))
            .collect();
        let in_use = self.loops.in_use();
        match bound_loops(Path::new("/sys/block")) {
            Ok(loops) => {
                for (device, backing) in loops {
                    if in_use.contains(&device) || !is_owned(&backing, &dirs) {
                        continue;
                    }
                    match detach_loop(&device) {
                        Ok(()) => report.loop_devices.push(device),
                        Err(source) => errors.push(DmSnapError::LoopDetach {
                            device,
                            file: PathBuf::from(backing),
                            source,
                        }),
                    }
                }
            }
            Err(err) => errors.push(err),
        }
        if !errors.is_empty() {
            return Err(DmSnapError::Incomplete {
                what: "cleanup of stale devices".to_string(),
                errors,
            });
        }
        info!(dm_devices = ?report.dm_devices, loop_devices = ?report.loop_devices, "stale devices cleaned up");
        Ok(report)
    }

    fn remove_device(&self, name: &str) -> Result<()> {
        let dm_name = DmName::new(name).map_err(|source| DmSnapError::dm("name", name, source))?;
        self.dm
            .device_remove(&DevId::Name(dm_name), dm_options())
            .map_err(|source| DmSnapError::dm("remove stale", name, source))?;
        warn!(name, "removed a stale dm device");
        Ok(())
    }
}

/// Bound loop devices and their backing files, from
/// `<sys_block>/loopN/loop/backing_file` (present only while bound).
fn bound_loops(sys_block: &Path) -> Result<Vec<(PathBuf, String)>> {
    let entries = std::fs::read_dir(sys_block)
        .map_err(|source| DmSnapError::io("list", sys_block, source))?;
    let mut loops = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| DmSnapError::io("list", sys_block, source))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file")) {
            loops.push((
                Path::new("/dev").join(&name),
                backing.trim_end_matches('\n').to_string(),
            ));
        }
    }
    loops.sort();
    Ok(loops)
}

/// Whether a backing file (as sysfs shows it, maybe with ` (deleted)`) lies
/// below one of `dirs`.
fn is_owned(backing: &str, dirs: &[PathBuf]) -> bool {
    let path = Path::new(backing.strip_suffix(" (deleted)").unwrap_or(backing));
    dirs.iter().any(|dir| path.starts_with(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backing_file_below_an_owned_dir_is_ours() {
        let dirs = [PathBuf::from("/var/lib/petrel")];

        let owned = is_owned("/var/lib/petrel/sandboxes/a/cow", &dirs);

        assert!(owned);
    }

    #[test]
    fn a_deleted_backing_file_below_an_owned_dir_is_ours() {
        let dirs = [PathBuf::from("/var/lib/petrel")];

        let owned = is_owned("/var/lib/petrel/templates/base/rootfs.img (deleted)", &dirs);

        assert!(owned);
    }

    #[test]
    fn a_sibling_dir_sharing_a_prefix_is_not_ours() {
        let dirs = [PathBuf::from("/var/lib/petrel")];

        let owned = is_owned("/var/lib/petrel2/disk.img", &dirs);

        assert!(!owned);
    }

    #[test]
    fn bound_loops_reads_backing_files_of_bound_loop_devices_only() {
        let sys = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(sys.path().join("loop0/loop")).unwrap();
        std::fs::write(
            sys.path().join("loop0/loop/backing_file"),
            "/data/base.img\n",
        )
        .unwrap();
        std::fs::create_dir_all(sys.path().join("loop1/loop")).unwrap();
        std::fs::create_dir_all(sys.path().join("sda")).unwrap();

        let loops = bound_loops(sys.path()).unwrap();

        assert_eq!(
            loops,
            [(PathBuf::from("/dev/loop0"), "/data/base.img".to_string())]
        );
    }
}
