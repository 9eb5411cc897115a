//! The files a snapshot directory holds beside the VMM's own state
//! (`vmstate`, `disk.qcow2`, RAM): the envd token of the snapshotted guest
//! and the machine shape (vCPUs, memory) a start from it must keep.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::SandboxError;

/// The vCPUs and memory a snapshotted guest ran with. A VM restored from
/// the snapshot must have the same: QEMU refuses a migration stream into
/// other RAM, and the guest kernel knows its CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineShape {
    pub vcpus: u8,
    pub memory_mib: u32,
}

impl std::fmt::Display for MachineShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plural = if self.vcpus == 1 { "" } else { "s" };
        write!(f, "{} vCPU{plural} and {} MiB", self.vcpus, self.memory_mib)
    }
}

/// The file in a snapshot directory holding its [`MachineShape`].
const SHAPE_FILE: &str = "machine.json";

pub(crate) fn save_shape(dir: &Path, shape: MachineShape) -> Result<(), SandboxError> {
    crate::qemu::write_json(&dir.join(SHAPE_FILE), &shape)
}

/// The machine shape a snapshot was taken with; `None` for a snapshot made
/// before shapes were recorded.
pub fn shape(dir: &Path) -> Result<Option<MachineShape>, SandboxError> {
    let path = dir.join(SHAPE_FILE);
    if !path.exists() {
        return Ok(None);
    }
    crate::qemu::read_json(&path).map(Some)
}

/// The file in a snapshot directory holding the envd access token of the
/// snapshotted guest (owner-only).
const TOKEN_FILE: &str = "envd-token";

pub(crate) fn save_token(dir: &Path, token: &str) -> Result<(), SandboxError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join(TOKEN_FILE);
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(token.as_bytes()))
        .map_err(|source| SandboxError::Io {
            what: "save the snapshot's envd token",
            path,
            source,
        })
}

/// The envd token saved with a snapshot; `None` for a snapshot made before
/// tokens were saved (its envd accepts a new token without one).
pub(crate) fn token(dir: &Path) -> Result<Option<String>, SandboxError> {
    let path = dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(token) => Ok(Some(token.trim().to_string()).filter(|t| !t.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SandboxError::Io {
            what: "read the snapshot's envd token",
            path,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_round_trips_and_is_none_for_an_old_snapshot() {
        // Arrange
        let dir = tempfile::tempdir().unwrap();
        let old = tempfile::tempdir().unwrap();
        let shape_in = MachineShape {
            vcpus: 2,
            memory_mib: 256,
        };

        // Act
        save_shape(dir.path(), shape_in).unwrap();

        // Assert
        assert_eq!(shape(dir.path()).unwrap(), Some(shape_in));
        assert_eq!(shape(old.path()).unwrap(), None);
        assert_eq!(shape_in.to_string(), "2 vCPUs and 256 MiB");
    }
}
