//! Saving a VM's state to a file and restoring it (QMP migration to and from
//! a file the agent opens and passes to QEMU as `fd:`), the QEMU half of pause/resume and snapshots.
//!
//! With guest RAM in a `memory-backend-file` and the `x-ignore-shared`
//! capability, the state file holds only device state (tens of KB): the RAM
//! stays in its own file. Without a memory file, the RAM goes into the state
//! file too.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::error::QemuError;
use crate::qmp::QmpClient;
use crate::vm::QemuVm;

/// No bandwidth cap: the default 128 MiB/s applies even to a paused VM
/// saving to a local file.
const MAX_BANDWIDTH: u64 = 1 << 40;

/// How long a save or restore of a VM with `memory_mib` of RAM may take: a
/// minute plus one second per 8 MiB of RAM (the RAM may be in the state
/// file, and TCG on a loaded host is slow), e.g. 2 minutes for 512 MiB.
/// Finite, so a stuck QEMU fails the pause instead of hanging it.
pub fn migration_timeout(memory_mib: u32) -> Duration {
    Duration::from_secs(60 + u64::from(memory_mib) / 8)
}
/// The name the state file's descriptor gets in QEMU (`getfd`).
const MIGRATION_FD: &str = "petrel-migration";

/// What a save or restore took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationStats {
    pub took: Duration,
    /// Size of the state file.
    pub state_bytes: u64,
    /// Whether guest RAM is in the state file (it is not when the RAM was a
    /// shared memory file, which then holds it).
    pub ram_in_state: bool,
}

impl QemuVm {
    /// Pauses the guest (QMP `stop`) and writes its state to `state_file`.
    /// The guest stays paused; the caller decides whether to kill QEMU.
    pub async fn save_state(&mut self, state_file: &Path) -> Result<MigrationStats, QemuError> {
        let start = Instant::now();
        let ignore_shared = self.config().memory_file.is_some() && self.config().memory_shared;
        let file = open_state(state_file, true)?;
        let deadline = migration_timeout(self.config().memory_mib);
        let qmp = self.qmp();
        qmp.execute("stop", None).await?;
        prepare_migration(qmp, ignore_shared).await?;
        qmp.send_fd(MIGRATION_FD, file.as_fd()).await?;
        drop(file);
        qmp.execute(
            "migrate",
            Some(json!({ "uri": format!("fd:{MIGRATION_FD}") })),
        )
        .await?;
        wait_migration(qmp, "migrate to file", deadline).await?;
        let state_bytes = std::fs::metadata(state_file).map_or(0, |m| m.len());
        Ok(MigrationStats {
            took: start.elapsed(),
            state_bytes,
            ram_in_state: !ignore_shared,
        })
    }

    /// Loads `state_file` into a QEMU started with `incoming: true` (and the
    /// same devices and memory size as the saved VM), then resumes the
    /// guest. `ram_in_state` is what [`QemuVm::save_state`] reported: when
    /// false, the RAM comes from this VM's memory file (which must hold the
    /// saved RAM: the same file, or a private mapping of it).
    pub async fn restore_state(
        &mut self,
        state_file: &Path,
        ram_in_state: bool,
    ) -> Result<MigrationStats, QemuError> {
        self.restore(state_file, ram_in_state, true).await
    }

    /// [`QemuVm::restore_state`] leaving the vCPUs stopped (QMP status
    /// `paused`): the caller records that the guest is about to run, then
    /// lets it run with [`QemuVm::cont_vcpus`].
    pub async fn restore_state_stopped(
        &mut self,
        state_file: &Path,
        ram_in_state: bool,
    ) -> Result<MigrationStats, QemuError> {
        self.restore(state_file, ram_in_state, false).await
    }

    async fn restore(
        &mut self,
        state_file: &Path,
        ram_in_state: bool,
        run: bool,
    ) -> Result<MigrationStats, QemuError> {
        let start = Instant::now();
        if !self.config().incoming {
            return Err(QemuError::Config(format!(
                "vm {}: restore needs a QEMU started with incoming: true",
                self.config().id
            )));
        }
        if !ram_in_state && self.config().memory_file.is_none() {
            return Err(QemuError::Config(format!(
                "vm {}: the state has no RAM and the VM has no memory file to take it from",
                self.config().id
            )));
        }
        let ignore_shared = !ram_in_state;
        let file = open_state(state_file, false)?;
        let deadline = migration_timeout(self.config().memory_mib);
        let qmp = self.qmp();
        prepare_migration(qmp, ignore_shared).await?;
        qmp.send_fd(MIGRATION_FD, file.as_fd()).await?;
        drop(file);
        qmp.execute(
            "migrate-incoming",
            Some(json!({ "uri": format!("fd:{MIGRATION_FD}") })),
        )
        .await?;
        wait_incoming(qmp, deadline).await?;
        if run {
            qmp.execute("cont", None).await?;
        }
        let state_bytes = std::fs::metadata(state_file).map_or(0, |m| m.len());
        Ok(MigrationStats {
            took: start.elapsed(),
            state_bytes,
            ram_in_state,
        })
    }

    /// Pauses the guest's vCPUs (QMP `stop`), keeping the process.
    pub async fn stop_vcpus(&mut self) -> Result<(), QemuError> {
        self.qmp().execute("stop", None).await.map(drop)
    }

    /// Resumes the guest's vCPUs (QMP `cont`).
    pub async fn cont_vcpus(&mut self) -> Result<(), QemuError> {
        self.qmp().execute("cont", None).await.map(drop)
    }
}

/// Opens a state file in the agent (new files 0600) for QEMU to use through
/// a passed descriptor: a confined QEMU cannot open paths outside its jail.
fn open_state(path: &Path, write: bool) -> Result<File, QemuError> {
    let mut options = OpenOptions::new();
    if write {
        options.write(true).create(true).truncate(true).mode(0o600);
    } else {
        options.read(true);
    }
    options.open(path).map_err(|source| QemuError::Io {
        what: if write {
            "create state file"
        } else {
            "open state file"
        },
        path: path.to_path_buf(),
        source,
    })
}

async fn prepare_migration(qmp: &mut QmpClient, ignore_shared: bool) -> Result<(), QemuError> {
    // Set explicitly every time: a capability set for an incoming
    // migration stays set for the next outgoing one.
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": ignore_shared }] })),
    )
    .await?;
    qmp.execute(
        "migrate-set-parameters",
        Some(json!({ "max-bandwidth": MAX_BANDWIDTH })),
    )
    .await?;
    Ok(())
}

async fn wait_migration(
    qmp: &mut QmpClient,
    what: &str,
    deadline: Duration,
) -> Result<(), QemuError> {
    let start = Instant::now();
    loop {
        let info = qmp.execute("query-migrate", None).await?;
        match info.get("status").and_then(Value::as_str) {
            Some("completed") => return Ok(()),
            Some(status @ ("failed" | "cancelled")) => {
                return Err(QemuError::QmpCommand {
                    command: what.to_string(),
                    class: status.to_string(),
                    desc: info
                        .get("error-desc")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                });
            }
            _ if start.elapsed() > deadline => {
                return Err(qmp.deadline_error(what, deadline));
            }
            _ => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

/// After `migrate-incoming` the guest stays paused once the load is done.
async fn wait_incoming(qmp: &mut QmpClient, deadline: Duration) -> Result<(), QemuError> {
    let start = Instant::now();
    loop {
        let status = qmp.status().await?;
        match status.as_str() {
            "paused" | "postmigrate" | "prelaunch" => return Ok(()),
            "inmigrate" if start.elapsed() < deadline => {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            "inmigrate" => return Err(qmp.deadline_error("migrate-incoming", deadline)),
            other => {
                let info = qmp
                    .execute("query-migrate", None)
                    .await
                    .unwrap_or(Value::Null);
                return Err(QemuError::QmpCommand {
                    command: "migrate-incoming".to_string(),
                    class: other.to_string(),
                    desc: info
                        .get("error-desc")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_timeout_grows_with_ram_and_is_finite() {
        let small = migration_timeout(512);
        let big = migration_timeout(8192);

        assert_eq!(small, Duration::from_secs(124));
        assert!(big > small);
        assert!(big < Duration::from_secs(3600));
    }
}
