//! Taking over at start what an earlier run left (re-adopting VMs,
//! cleaning what died) and handing over at shutdown.

use super::{
    Arc, Handle, Hypervisor, Manager, ManagerError, Path, PathBuf, Persisted, Sandbox,
    SandboxRecord, State, SystemTime, Table, lock,
};

impl Manager {
    /// Takes over the sandboxes `persisted` by an earlier run, then removes
    /// the dm devices and networks no sandbox owns any more.
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
        for (id, entry) in persisted {
            self.reattach(id, entry).await;
        }
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

    pub(super) async fn reattach(&self, id: String, entry: Persisted) {
        let mut info = entry.info;
        let sandbox = match entry.record {
            Some(record) if matches!(info.state, State::Running | State::Paused) => {
                match Sandbox::reattach(
                    self.inner.hypervisor.as_ref(),
                    record.clone(),
                    self.inner.config.network.clone(),
                )
                .await
                {
                    Ok(sandbox) => Some(sandbox),
                    Err(err) => {
                        tracing::warn!(sandbox = %id, %err, "cannot reattach: marking stopped and cleaning up");
                        clean_dead(self.inner.hypervisor.as_ref(), &record);
                        info.state = State::Stopped;
                        info.error = Some(format!("lost at agent restart: {err}"));
                        info.envd_addr = None;
                        None
                    }
                }
            }
            Some(record) => {
                // Interrupted mid-operation by the crash.
                clean_dead(self.inner.hypervisor.as_ref(), &record);
                info.error = Some(format!(
                    "interrupted while {} by an agent restart",
                    info.state
                ));
                info.state = State::Stopped;
                info.envd_addr = None;
                None
            }
            None => None,
        };
        if info.state == State::Paused && info.paused_at.is_none() {
            // Paused by a version that did not record when: its expiry
            // counts from now.
            info.paused_at = Some(SystemTime::now());
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
    /// them for the next [`Manager::open`].
    pub async fn shutdown(&self) -> Result<(), ManagerError> {
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

/// Kills what is left of a sandbox whose VM cannot be taken over and
/// removes its files.
fn clean_dead(hypervisor: &dyn Hypervisor, record: &SandboxRecord) {
    if let Some(pid) = record.vmm_pid {
        let run_dir = record
            .config
            .data_dir
            .join("sandboxes")
            .join(&record.config.id);
        // Only a process whose command line names this sandbox's dir.
        let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*run_dir.to_string_lossy()));
        if ours {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let run_dir = record
        .config
        .data_dir
        .join("sandboxes")
        .join(&record.config.id);
    hypervisor.release_leftovers(&record.config.id, &run_dir);
    if let Err(err) = std::fs::remove_dir_all(&run_dir)
        && err.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %run_dir.display(), %err, "cannot remove a dead sandbox's files");
    }
}
