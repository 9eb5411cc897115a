//! What the manager admits: running VMs (capacity), paused sandboxes (count
//! and age) and snapshots (count and bytes).
//!
//! Every path that starts a VM (create, which covers starts from a snapshot
//! and forks; resume; template warm-up) passes [`Manager::admit`] under the
//! one lock of the sandbox table, so two concurrent starts cannot both take
//! the last slot and no path can skip the check: a state change into a
//! VM-holding state is only made through it. Pool refills take their slot
//! under the same lock (`pool.rs`), and leave one free for creates.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use super::{Manager, ManagerError, SandboxInfo, SnapshotInfo, State, Table, lock};

/// A VM slot held by a template warm-up (counted as running until dropped).
pub(super) struct WarmSlot<'a>(&'a AtomicUsize);

impl Drop for WarmSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A snapshot being taken (counted against the snapshot count until
/// dropped).
pub(super) struct SnapshotSlot<'a>(&'a std::sync::Mutex<usize>);

impl Drop for SnapshotSlot<'_> {
    fn drop(&mut self) {
        let mut pending = lock(self.0);
        *pending = pending.saturating_sub(1);
    }
}

impl Manager {
    /// VMs held now: sandboxes starting, running, pausing or resuming,
    /// warm-up boots and pooled sandboxes (ready or being restored).
    pub(super) fn vms_in_use(&self, infos: &HashMap<String, SandboxInfo>) -> usize {
        infos.values().filter(|i| i.state.holds_vm()).count()
            + self.inner.warming.load(Ordering::SeqCst)
            + self.inner.pools.vms()
    }

    /// Whether a sandbox may move from `from` (`None`: a new one) to `to`,
    /// judged with the table `infos` locked: into a VM-holding state only
    /// below `max_running` ([`ManagerError::Capacity`]); into `pausing` only
    /// below `max_paused` ([`ManagerError::Quota`]).
    pub(super) fn admit(
        &self,
        infos: &HashMap<String, SandboxInfo>,
        from: Option<State>,
        to: State,
    ) -> Result<(), ManagerError> {
        let config = &self.inner.config;
        if to.holds_vm() && !from.is_some_and(State::holds_vm) {
            let running = self.vms_in_use(infos);
            if running >= config.max_running {
                return Err(ManagerError::Capacity {
                    running,
                    limit: config.max_running,
                });
            }
        }
        if to == State::Pausing {
            let paused = infos
                .values()
                .filter(|i| matches!(i.state, State::Paused | State::Pausing))
                .count();
            if paused >= config.max_paused {
                return Err(ManagerError::Quota {
                    what: "paused sandboxes",
                    used: paused as u64,
                    limit: config.max_paused as u64,
                    hint: "resume or delete a paused sandbox first",
                });
            }
        }
        Ok(())
    }

    /// Fails with [`ManagerError::Capacity`] when no VM could start now.
    pub(super) fn check_capacity(&self) -> Result<(), ManagerError> {
        self.admit(&lock(&self.inner.infos), None, State::Starting)
    }

    /// Takes a VM slot for a warm-up boot, or fails like a create would.
    pub(super) fn reserve_warm(&self) -> Result<WarmSlot<'_>, ManagerError> {
        let infos = lock(&self.inner.infos);
        self.admit(&infos, None, State::Starting)?;
        self.inner.warming.fetch_add(1, Ordering::SeqCst);
        Ok(WarmSlot(&self.inner.warming))
    }

    /// Takes a place for one more snapshot: refused
    /// ([`ManagerError::Quota`]) at `max_snapshots` snapshots (those being
    /// taken included) or when they already use `max_snapshot_bytes`.
    pub(super) fn reserve_snapshot(&self) -> Result<SnapshotSlot<'_>, ManagerError> {
        let config = &self.inner.config;
        let mut pending = lock(&self.inner.snapshots_pending);
        let snapshots: Vec<(String, SnapshotInfo)> =
            lock(&self.inner.store).all(Table::Snapshots)?;
        let count = snapshots.len() + *pending;
        if count >= config.max_snapshots {
            return Err(ManagerError::Quota {
                what: "snapshots",
                used: count as u64,
                limit: config.max_snapshots as u64,
                hint: "delete a snapshot first",
            });
        }
        let bytes: u64 = snapshots.iter().map(|(_, s)| s.size_bytes).sum();
        if bytes >= config.max_snapshot_bytes {
            return Err(ManagerError::Quota {
                what: "snapshot bytes",
                used: bytes,
                limit: config.max_snapshot_bytes,
                hint: "delete a snapshot first",
            });
        }
        *pending += 1;
        Ok(SnapshotSlot(&self.inner.snapshots_pending))
    }

    /// Whether a new snapshot of `new_bytes` fits beside the stored ones;
    /// [`ManagerError::Quota`] when it does not.
    pub(super) fn check_snapshot_bytes(&self, new_bytes: u64) -> Result<(), ManagerError> {
        let limit = self.inner.config.max_snapshot_bytes;
        let stored: u64 = lock(&self.inner.store)
            .all::<SnapshotInfo>(Table::Snapshots)?
            .iter()
            .map(|(_, s)| s.size_bytes)
            .sum();
        let used = stored.saturating_add(new_bytes);
        if used > limit {
            return Err(ManagerError::Quota {
                what: "snapshot bytes",
                used,
                limit,
                hint: "the new snapshot was removed; delete a snapshot first",
            });
        }
        Ok(())
    }

    /// Paused sandboxes paused for longer than `paused_ttl`.
    pub(super) fn expired_paused(&self, now: SystemTime) -> Vec<String> {
        let ttl = self.inner.config.paused_ttl;
        lock(&self.inner.infos)
            .values()
            .filter(|i| i.state == State::Paused)
            .filter(|i| {
                i.paused_at
                    .and_then(|at| at.checked_add(ttl))
                    .is_some_and(|end| end <= now)
            })
            .map(|i| i.id.clone())
            .collect()
    }
}
