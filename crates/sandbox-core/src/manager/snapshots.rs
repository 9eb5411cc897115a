//! Named snapshots and forks: taking, listing and deleting them.

use super::lineage::sandbox_stands_on;
use super::names::NameUse;
use super::{
    CreateSandbox, Duration, Manager, ManagerError, PathBuf, SafeName, SandboxInfo, SnapshotInfo,
    StandsOn, State, SystemTime, Table, lock, new_id,
};
use crate::rollback::{Rollback, remove_dir_if_exists};

impl Manager {
    /// Saves a running sandbox as snapshot `name` (it keeps running); new
    /// sandboxes can be created from it by name.
    pub async fn snapshot(&self, id: &str, name: &str) -> Result<SnapshotInfo, ManagerError> {
        let name = SafeName::new(name)?;
        // Held until the record is stored: a concurrent snapshot (or
        // template) of this name is a conflict, not a second writer.
        let _name = self.reserve_name(&name, NameUse::Snapshot)?;
        let handle = self.handle(id)?;
        let mut guard = handle.lock().await;
        self.require(id, &[State::Running], "snapshot")?;
        let _slot = self.reserve_snapshot()?;
        crate::crash::point("snapshot.recorded");
        let sandbox = guard
            .as_mut()
            .ok_or_else(|| ManagerError::SandboxNotFound(id.to_string()))?;
        let dir = self.snapshot_dir(&name);
        // The name is ours and unrecorded: a directory there is a leftover
        // of an interrupted snapshot, not anyone's data.
        if let Err(err) = std::fs::remove_dir_all(&dir)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            return Err(ManagerError::Store {
                path: dir,
                message: format!("removing a leftover snapshot directory: {err}"),
            });
        }
        let mut undo = Rollback::new(format!("snapshot {name} of sandbox {id}"));
        {
            let dir = dir.clone();
            undo.push("remove the partial snapshot", move |&mut ()| {
                Box::pin(async move { remove_dir_if_exists(&dir) })
            });
        }
        let taken: Result<SnapshotInfo, ManagerError> = async {
            sandbox.snapshot(&dir).await?;
            crate::crash::point("snapshot.continued");
            // Its disk is a copy of the sandbox's overlay, backed by what the
            // sandbox stands on; or self-contained (empty chain) when the
            // sandbox's disk was raw.
            let stands_on = match crate::disk::qcow2::recorded_chain(&dir.join("disk.qcow2")) {
                Ok(Some(chain)) if chain.is_empty() => StandsOn::Nothing,
                _ => sandbox_stands_on(&sandbox.record()),
            };
            let size_bytes = dmsnap::dir_size(&dir).unwrap_or(0);
            self.check_snapshot_bytes(size_bytes)?;
            let template = self.get(id)?.template;
            let info = SnapshotInfo {
                name: name.to_string(),
                sandbox_id: id.to_string(),
                template: self.root_template(&template)?,
                created_at: SystemTime::now(),
                size_bytes,
                stands_on: Some(stands_on),
            };
            lock(&self.inner.store).put(Table::Snapshots, name.as_str(), &info)?;
            Ok(info)
        }
        .await;
        match taken {
            Ok(info) => {
                undo.commit();
                Ok(info)
            }
            Err(err) => Err(undo.unwind(&mut (), err).await),
        }
    }

    /// `count` new sandboxes continuing a running one: a snapshot
    /// (`fork-<hex>`, listed like any other, deletable once its forks are
    /// gone) and one start from it per fork. Each fork's outcome is
    /// reported on its own.
    pub async fn fork(
        &self,
        id: &str,
        count: usize,
        timeout: Option<Duration>,
    ) -> Result<Vec<Result<SandboxInfo, ManagerError>>, ManagerError> {
        if !(1..=20).contains(&count) {
            return Err(ManagerError::InvalidRequest(format!(
                "count must be 1..=20, got {count}"
            )));
        }
        let source = self.get(id)?;
        // No snapshot for forks that could not start.
        self.check_capacity()?;
        let name = format!("fork-{}", new_id()?);
        self.snapshot(id, &name).await?;
        crate::crash::point("fork.snapshotted");
        let mut forks = Vec::with_capacity(count);
        for _ in 0..count {
            let request = CreateSandbox {
                template: name.clone(),
                vcpus: Some(source.vcpus),
                memory_mib: Some(source.memory_mib),
                timeout,
                env_vars: source.env_vars.clone(),
                metadata: source.metadata.clone(),
                auto_pause: source.auto_pause,
                auto_pause_filesystem: source.auto_pause_filesystem,
                auto_resume: source.auto_resume,
                internet: Some(source.internet),
                host_mask: source.host_mask.clone(),
                egress: source.egress.clone(),
                private_traffic: source.traffic_token.is_some(),
            };
            forks.push(self.create(request).await);
        }
        Ok(forks)
    }

    /// The template at the root of `name`, which may itself be a snapshot.
    pub(super) fn root_template(&self, name: &str) -> Result<String, ManagerError> {
        let store = lock(&self.inner.store);
        match store.get::<SnapshotInfo>(Table::Snapshots, name)? {
            Some(snapshot) => Ok(snapshot.template),
            None => Ok(name.to_string()),
        }
    }

    pub fn snapshots(&self) -> Result<Vec<SnapshotInfo>, ManagerError> {
        Ok(lock(&self.inner.store)
            .all::<SnapshotInfo>(Table::Snapshots)?
            .into_iter()
            .map(|(_, s)| s)
            .collect())
    }

    /// Deletes a snapshot; refused ([`ManagerError::Conflict`], naming
    /// them) while anything stands on it: sandboxes started from it in any
    /// state but stopped (their disks are overlays of its disk), and
    /// snapshots taken from such sandboxes (their disks back onto its
    /// disk). Delete those first, newest first. Then prunes the template
    /// files nothing stands on any more (see
    /// [`Manager::register_template`]).
    pub fn delete_snapshot(&self, name: &str) -> Result<(), ManagerError> {
        let name = SafeName::new(name)?;
        let Some(info) =
            lock(&self.inner.store).get::<SnapshotInfo>(Table::Snapshots, name.as_str())?
        else {
            return Err(ManagerError::SnapshotNotFound(name.to_string()));
        };
        let refuse = |dependents: Vec<String>| {
            ManagerError::Conflict(format!(
                "snapshot {name} has dependents: {}; delete them first",
                dependents.join(", ")
            ))
        };
        let dependents = self.snapshot_dependents(name.as_str())?;
        if !dependents.is_empty() {
            return Err(refuse(dependents));
        }
        // The row goes first, then a second look: a start that resolved
        // the snapshot before is in the sandbox table by then (the delete
        // is refused) or finds the row gone and starts nothing (see
        // `require_snapshot`). A crash before the files go leaves unlisted
        // files, never a listed snapshot without them.
        lock(&self.inner.store).delete(Table::Snapshots, name.as_str())?;
        let dependents = self.snapshot_dependents(name.as_str())?;
        if !dependents.is_empty() {
            lock(&self.inner.store).put(Table::Snapshots, name.as_str(), &info)?;
            return Err(refuse(dependents));
        }
        let dir = self.snapshot_dir(&name);
        if let Err(err) = std::fs::remove_dir_all(&dir)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), %err, "cannot remove a deleted snapshot's files");
        }
        tracing::info!(snapshot = %name, stands_on = ?info.stands_on, "snapshot deleted");
        self.prune_unreferenced();
        Ok(())
    }

    pub(super) fn snapshot_dir(&self, name: &SafeName) -> PathBuf {
        name.join_under(&self.inner.config.data_dir.join("snapshots"))
    }
}
