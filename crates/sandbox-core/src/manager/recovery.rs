//! Taking over at start what an earlier run left, and handing over at
//! shutdown.
//!
//! Every step of an operation that makes or removes host resources is
//! preceded by a durable record of the state it leads through (starting,
//! pausing, resuming, stopping; a resumed guest's new VMM as soon as it
//! runs). At start, [`decide`] maps each record's state and what exists on
//! the host (its VMM process, a complete saved state) to one action that
//! completes or rolls back the interrupted operation; then whatever no
//! record owns is removed (`orphans.rs`).

use std::collections::HashSet;

use super::{
    Arc, Handle, Manager, ManagerError, Path, PathBuf, Persisted, Sandbox, SandboxState, State,
    SystemTime, Table, lock, orphans,
};

impl Manager {
    /// Takes over the sandboxes `persisted` by an earlier run (completing or
    /// rolling back what a crash interrupted), then removes what no record
    /// owns: VMM processes, run dirs, partial files, dm devices, networks.
    pub(super) async fn recover(&self, persisted: Vec<(String, Persisted)>) {
        // Where the bases and CoW files of an earlier run's dm devices lie.
        let mut disk_dirs: Vec<PathBuf> = vec![self.inner.config.data_dir.clone()];
        for (_, entry) in &persisted {
            if let Some(dir) = entry
                .record
                .as_ref()
                .and_then(|r| r.config.images.rootfs.parent())
            {
                disk_dirs.push(dir.to_path_buf());
            }
        }
        let vmms = orphans::vmm_processes(&self.inner.config.data_dir.join("sandboxes"));
        let known: HashSet<String> = persisted.iter().map(|(id, _)| id.clone()).collect();
        for (id, entry) in persisted {
            let pids = vmms.get(&id).cloned().unwrap_or_default();
            self.recover_one(id, entry, &pids).await;
        }
        self.sweep_orphans(&known, &vmms).await;
        self.cleanup_stale_disks(&disk_dirs);
        if let Some(pool) = &self.inner.config.network {
            let mut in_use = Vec::new();
            for handle in lock(&self.inner.handles).values() {
                if let Ok(guard) = handle.try_lock()
                    && let Some(slot) = guard.as_ref().and_then(|s| s.record().net_slot)
                {
                    in_use.push(slot);
                }
            }
            match pool.cleanup_stale(&in_use).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "removed stale sandbox networks"),
                Err(err) => tracing::warn!(%err, "stale network cleanup incomplete"),
            }
        }
    }

    /// Removes dm-snapshot devices (and their loops) that an earlier run
    /// left for sandboxes that are gone; reattached ones were adopted and
    /// stay. Only where dm-snapshots are in use.
    pub(super) fn cleanup_stale_disks(&self, dirs: &[PathBuf]) {
        let configured = self
            .inner
            .config
            .rootfs_provider
            .as_ref()
            .is_some_and(|provider| provider.name() == "dm");
        let dm = match crate::disk::DmProvider::existing() {
            Some(dm) => dm,
            None if configured => match crate::disk::DmProvider::shared() {
                Ok(dm) => dm,
                Err(_) => return,
            },
            None => return,
        };
        let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
        match dm.cleanup_stale(&dirs) {
            Ok(removed) if removed.is_empty() => {}
            Ok(removed) => tracing::info!(?removed, "removed stale dm devices and loops"),
            Err(err) => tracing::warn!(%err, "stale dm device cleanup incomplete"),
        }
    }

    /// Brings one record back to a state that can be explained, by
    /// [`decide`]: the interrupted operation is completed or rolled back,
    /// never at the cost of a saved state.
    async fn recover_one(&self, id: String, entry: Persisted, pids: &[u32]) {
        let mut info = entry.info;
        let run_dir = self.inner.config.data_dir.join("sandboxes").join(&id);
        let facts = Facts {
            vmm_alive: !pids.is_empty(),
            state_saved: self
                .inner
                .hypervisor
                .saved_state_complete(&run_dir.join("state"))
                || crate::sandbox::is_filesystem_only(&run_dir.join("state")),
            guest_ran: entry
                .record
                .as_ref()
                .is_some_and(|r| r.state == SandboxState::Running && r.vmm_pid.is_some()),
        };
        let action = decide(info.state, facts);
        tracing::info!(sandbox = %id, state = %info.state, ?facts, ?action, "recovering");
        let was = info.state;
        let mut record = entry.record;
        match action {
            Action::RollBack | Action::FinishDestroy => {
                self.discard(&id, pids).await;
                if let Err(err) = lock(&self.inner.store).delete(Table::Sandboxes, &id) {
                    tracing::error!(sandbox = %id, %err, "cannot remove the record of an interrupted create or destroy");
                }
                return;
            }
            Action::Adopt => {
                if let Some(r) = record.as_mut()
                    && !r.vmm_pid.is_some_and(|p| pids.contains(&p))
                {
                    r.vmm_pid = pids.first().copied();
                }
                info.state = State::Running;
            }
            Action::FinishPause | Action::KeepPaused => {
                // The saved state holds; a VMM still there only holds it.
                orphans::kill_all(pids).await;
                self.inner.hypervisor.release_leftovers(&id, &run_dir);
                if let Some(r) = record.as_mut() {
                    r.state = SandboxState::Paused;
                    r.vmm_pid = None;
                    r.envd_addr = None;
                    r.net_slot = None;
                }
                info.state = State::Paused;
            }
            Action::Lost => {
                self.discard(&id, pids).await;
                info.state = State::Stopped;
                info.error = Some(format!(
                    "lost at agent restart: its VMM was gone while {was}, and nothing was saved"
                ));
                record = None;
            }
            Action::Broken => {
                orphans::kill_all(pids).await;
                self.inner.hypervisor.release_leftovers(&id, &run_dir);
                if let Some(r) = record.as_mut() {
                    r.state = SandboxState::Broken;
                    r.vmm_pid = None;
                    r.envd_addr = None;
                    r.net_slot = None;
                }
                info.state = State::Error;
                info.error = Some(format!(
                    "interrupted while {was} by an agent restart after the guest ran: its saved state no longer matches its disk; files kept until destroyed"
                ));
            }
            Action::Keep => {}
        }
        info.envd_addr = None;
        let sandbox = match record {
            Some(record) if info.state != State::Stopped => match Sandbox::reattach(
                self.inner.hypervisor.as_ref(),
                record,
                self.inner.config.network.clone(),
            )
            .await
            {
                Ok(sandbox) => Some(sandbox),
                Err(err) => {
                    tracing::warn!(sandbox = %id, %err, "cannot reattach: marking stopped and cleaning up");
                    self.discard(&id, pids).await;
                    info.state = State::Stopped;
                    info.error = Some(format!("lost at agent restart: {err}"));
                    None
                }
            },
            _ => None,
        };
        if info.state == State::Running {
            info.envd_addr = sandbox.as_ref().map(|s| s.envd().addr());
        }
        if info.state == State::Paused && info.paused_at.is_none() {
            // Paused by a version that did not record when (or by an
            // interrupted pause): its expiry counts from now.
            info.paused_at = Some(SystemTime::now());
        }
        if action != Action::Keep {
            tracing::info!(sandbox = %id, from = %was, to = %info.state, "recovered");
        }
        let persisted = Persisted {
            info: info.clone(),
            record: sandbox.as_ref().map(Sandbox::record),
        };
        if let Err(err) = lock(&self.inner.store).put(Table::Sandboxes, &id, &persisted) {
            tracing::error!(sandbox = %id, %err, "cannot persist reattached sandbox");
        }
        lock(&self.inner.infos).insert(id.clone(), info);
        lock(&self.inner.handles).insert(id, Arc::new(tokio::sync::Mutex::new(sandbox)));
    }

    /// Leaves every sandbox as it is (running VMs keep running) and records
    /// them for the next [`Manager::open`]; pooled sandboxes, nobody's yet,
    /// are destroyed (the next start refills the pools), and networks being
    /// removed in the background are waited for.
    pub async fn shutdown(&self) -> Result<(), ManagerError> {
        self.drain_pools(None).await;
        if let Some(network) = &self.inner.config.network {
            network.settle().await;
        }
        let handles: Vec<(String, Handle)> = lock(&self.inner.handles).drain().collect();
        for (id, handle) in handles {
            let mut guard = handle.lock().await;
            if let Some(sandbox) = guard.take() {
                let record = sandbox.detach();
                if let Some(info) = lock(&self.inner.infos).get(&id).cloned() {
                    self.save(&Persisted {
                        info,
                        record: Some(record),
                    })?;
                }
            }
        }
        Ok(())
    }
}

/// What exists on the host for one sandbox record at recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Facts {
    /// A VMM process of the sandbox runs (found by its command line).
    vmm_alive: bool,
    /// Its run dir holds a complete saved state (`state/`).
    state_saved: bool,
    /// The record is of a running guest: for a resume, the restored guest
    /// ran (its saved state is stale from then on).
    guest_ran: bool,
}

/// What recovery does with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Take the running VMM over (continue its vCPUs if a pause or snapshot
    /// stopped them; a slow envd is waited for in the background).
    Adopt,
    /// The pause's save completed: end the VMM, keep the saved state.
    FinishPause,
    /// Paused on disk, as saved (a VMM of an unfinished resume that never
    /// ran the guest is ended).
    KeepPaused,
    /// An unacknowledged create: remove all it made, forget it.
    RollBack,
    /// Complete the destroy: remove all, forget it.
    FinishDestroy,
    /// Its VMM died and nothing was saved: stopped, files removed.
    Lost,
    /// Its saved state no longer matches its disk: `error`, files kept.
    Broken,
    /// Nothing to do (stopped, error).
    Keep,
}

/// The recovery table: recorded state × what exists on the host. A saved
/// state is never deleted: only sandboxes with none (or no longer valid
/// and kept) are given up.
fn decide(state: State, facts: Facts) -> Action {
    let Facts {
        vmm_alive,
        state_saved,
        guest_ran,
    } = facts;
    match state {
        State::Starting => Action::RollBack,
        State::Stopping => Action::FinishDestroy,
        State::Running if vmm_alive => Action::Adopt,
        State::Running => Action::Lost,
        State::Pausing => match (vmm_alive, state_saved) {
            (true, true) => Action::FinishPause,
            (true, false) => Action::Adopt,
            (false, true) => Action::KeepPaused,
            (false, false) => Action::Lost,
        },
        State::Resuming if guest_ran && vmm_alive => Action::Adopt,
        State::Resuming if guest_ran => Action::Broken,
        State::Resuming | State::Paused if state_saved => Action::KeepPaused,
        State::Resuming | State::Paused => Action::Broken,
        State::Stopped | State::Error => Action::Keep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(vmm_alive: bool, state_saved: bool, guest_ran: bool) -> Facts {
        Facts {
            vmm_alive,
            state_saved,
            guest_ran,
        }
    }

    #[test]
    fn recovery_never_gives_up_a_saved_state() {
        // Every combination of facts, for every state.
        for state in State::ALL {
            for bits in 0..8u8 {
                let f = facts(bits & 1 != 0, bits & 2 != 0, bits & 4 != 0);
                let action = decide(state, f);
                // Only an unacknowledged create and a destroy under way
                // remove files that hold a complete saved state (a running
                // guest's state dir is stale: the guest ran since).
                if f.state_saved
                    && !matches!(state, State::Starting | State::Stopping | State::Running)
                {
                    assert!(
                        !matches!(
                            action,
                            Action::Lost | Action::RollBack | Action::FinishDestroy
                        ),
                        "{state} {f:?} -> {action:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn interrupted_operations_complete_or_roll_back() {
        assert_eq!(
            decide(State::Starting, facts(true, false, false)),
            Action::RollBack
        );
        assert_eq!(
            decide(State::Stopping, facts(true, true, true)),
            Action::FinishDestroy
        );
        assert_eq!(
            decide(State::Running, facts(true, false, true)),
            Action::Adopt
        );
        assert_eq!(
            decide(State::Running, facts(false, false, true)),
            Action::Lost
        );
        assert_eq!(
            decide(State::Pausing, facts(true, true, true)),
            Action::FinishPause
        );
        assert_eq!(
            decide(State::Pausing, facts(true, false, true)),
            Action::Adopt
        );
        assert_eq!(
            decide(State::Pausing, facts(false, true, true)),
            Action::KeepPaused
        );
        assert_eq!(
            decide(State::Resuming, facts(true, true, false)),
            Action::KeepPaused
        );
        assert_eq!(
            decide(State::Resuming, facts(false, true, false)),
            Action::KeepPaused
        );
        assert_eq!(
            decide(State::Resuming, facts(true, true, true)),
            Action::Adopt
        );
        assert_eq!(
            decide(State::Resuming, facts(false, true, true)),
            Action::Broken
        );
        assert_eq!(
            decide(State::Paused, facts(false, false, false)),
            Action::Broken
        );
        assert_eq!(
            decide(State::Error, facts(false, false, false)),
            Action::Keep
        );
    }
}
