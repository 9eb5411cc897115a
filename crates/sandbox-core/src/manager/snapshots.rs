//! Named snapshots and forks: taking, listing and deleting them.

use super::names::NameUse;
use super::{
    CreateSandbox, Duration, Manager, ManagerError, PathBuf, SafeName, SandboxInfo, SnapshotInfo,
    State, SystemTime, Table, lock, new_id,
};

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
        if let Err(err) = sandbox.snapshot(&dir).await {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(err.into());
        }
        let size_bytes = dmsnap::dir_size(&dir).unwrap_or(0);
        if let Err(err) = self.check_snapshot_bytes(size_bytes) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(err);
        }
        let template = self.get(id)?.template;
        let info = SnapshotInfo {
            name: name.to_string(),
            sandbox_id: id.to_string(),
            template: self.root_template(&template)?,
            created_at: SystemTime::now(),
            size_bytes,
        };
        lock(&self.inner.store).put(Table::Snapshots, name.as_str(), &info)?;
        Ok(info)
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
                internet: Some(source.internet),
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

    /// Deletes a snapshot; refused while sandboxes started from it exist
    /// (their disks are overlays of its disk).
    pub fn delete_snapshot(&self, name: &str) -> Result<(), ManagerError> {
        let name = SafeName::new(name)?;
        if lock(&self.inner.store)
            .get::<SnapshotInfo>(Table::Snapshots, name.as_str())?
            .is_none()
        {
            return Err(ManagerError::SnapshotNotFound(name.to_string()));
        }
        let users: Vec<String> = lock(&self.inner.infos)
            .values()
            .filter(|i| i.template == name.as_str() && i.state != State::Stopped)
            .map(|i| i.id.clone())
            .collect();
        if !users.is_empty() {
            return Err(ManagerError::Conflict(format!(
                "snapshot {name} is used by sandboxes {users:?}"
            )));
        }
        let dir = self.snapshot_dir(&name);
        if let Err(err) = std::fs::remove_dir_all(&dir)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            return Err(ManagerError::Store {
                path: dir,
                message: err.to_string(),
            });
        }
        lock(&self.inner.store).delete(Table::Snapshots, name.as_str())
    }

    pub(super) fn snapshot_dir(&self, name: &SafeName) -> PathBuf {
        name.join_under(&self.inner.config.data_dir.join("snapshots"))
    }
}
