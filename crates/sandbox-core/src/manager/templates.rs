//! Templates: their own base images, registration and pruning, warm
//! snapshots.

use super::names::NameUse;
use super::{
    GuestImages, Instant, Manager, ManagerError, Path, PathBuf, Persisted, SafeName, Sandbox,
    SandboxConfig, SandboxError, SandboxRecord, State, SystemTime, TEMPLATE_FILE, Table,
    TemplateInfo, Write, lock, new_id,
};

impl Manager {
    /// Adds or replaces a template: `templates/<name>/` gets its own base
    /// image (see [`import_base`]), `template.json` references the kernel.
    pub async fn register_template(
        &self,
        name: &str,
        images: &GuestImages,
        source: &str,
    ) -> Result<TemplateInfo, ManagerError> {
        let name = SafeName::new(name)?;
        images.check()?;
        // Templates and snapshots share one namespace.
        let _name = self.reserve_name(&name, NameUse::Template)?;
        let rootfs = import_base(&self.template_dir(&name), &images.rootfs).await?;
        let images = &GuestImages {
            kernel: images.kernel.clone(),
            rootfs,
        };
        let warm = self.warm_dir(&name, images);
        let info = TemplateInfo {
            name: name.to_string(),
            kernel: images.kernel.clone(),
            rootfs: images.rootfs.clone(),
            created_at: SystemTime::now(),
            size_bytes: std::fs::metadata(&images.rootfs).map_or(0, |m| m.len()),
            source: source.to_string(),
            // A warm snapshot made earlier for these very images stays valid.
            warm_snapshot: warm.join("vmstate.json").is_file().then(|| warm.clone()),
        };
        self.save_template(&name, &info)?;
        self.prune_template_files(&name, &info.rootfs, &warm);
        Ok(info)
    }

    /// Removes what a re-registration left unused in the template's
    /// directory: warm snapshots of other images that no sandbox started
    /// from, then base images (`rootfs-*`) other than `base` that no
    /// sandbox runs on and no snapshot's disk (named or warm, through its
    /// backing chain) is backed by. Skipped while a sandbox is between
    /// states (a create may be taking a base); when in doubt a file stays:
    /// it costs space, never data.
    pub(super) fn prune_template_files(&self, name: &SafeName, base: &Path, warm: &Path) {
        let settled = lock(&self.inner.infos).values().all(|info| {
            matches!(
                info.state,
                State::Running | State::Paused | State::Stopped | State::Error
            )
        });
        let all = lock(&self.inner.store).all::<Persisted>(Table::Sandboxes);
        let (true, Ok(all)) = (settled, all) else {
            tracing::debug!(template = %name, "not pruning template files now");
            return;
        };
        let records: Vec<SandboxRecord> = all.into_iter().filter_map(|(_, p)| p.record).collect();
        let dir = self.template_dir(name);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let entries: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        let named = |path: &Path, prefix: &str| {
            path.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        };
        let started_from: Vec<&Path> = records
            .iter()
            .filter_map(|r| r.config.snapshot.as_deref())
            .collect();
        for old in entries.iter().filter(|p| named(p, "warm-")) {
            if old == warm || started_from.contains(&old.as_path()) {
                continue;
            }
            if let Err(err) = std::fs::remove_dir_all(old) {
                tracing::warn!(dir = %old.display(), %err, "cannot remove an unused warm snapshot");
            }
        }
        let mut used = vec![canonical(base)];
        used.extend(records.iter().map(|r| canonical(&r.config.images.rootfs)));
        for parent in [dir.clone(), self.inner.config.data_dir.join("snapshots")] {
            let Ok(snapshots) = std::fs::read_dir(&parent) else {
                continue;
            };
            for disk in snapshots.flatten().map(|e| e.path().join("disk.qcow2")) {
                if !disk.is_file() {
                    continue;
                }
                match crate::disk::qcow2::backing_chain(&disk) {
                    Ok(chain) => used.extend(chain.iter().map(|p| canonical(p))),
                    Err(err) => {
                        tracing::warn!(disk = %disk.display(), %err, "not pruning base images: a backing chain is unreadable");
                        return;
                    }
                }
            }
        }
        for old in entries
            .iter()
            .filter(|p| named(p, "rootfs-") && p.is_file())
        {
            if used.contains(&canonical(old)) {
                continue;
            }
            match std::fs::remove_file(old) {
                Ok(()) => {
                    tracing::info!(base = %old.display(), "removed an unused template base image");
                }
                Err(err) => {
                    tracing::warn!(base = %old.display(), %err, "cannot remove an unused template base image");
                }
            }
        }
    }

    /// `data_dir/templates/<name>/`: the template's `template.json`, its
    /// base images and its warm snapshots.
    pub(super) fn template_dir(&self, name: &SafeName) -> PathBuf {
        name.join_under(&self.inner.config.data_dir.join("templates"))
    }

    /// Writes `info` to the template's `template.json` (a temporary file
    /// renamed over it, so readers see the old or the new one whole) and
    /// then to the store.
    pub(super) fn save_template(
        &self,
        name: &SafeName,
        info: &TemplateInfo,
    ) -> Result<(), ManagerError> {
        let dir = self.template_dir(name);
        let path = dir.join(TEMPLATE_FILE);
        let tmp = dir.join(format!("{TEMPLATE_FILE}.{}.tmp", new_id()?));
        let failed = |path: &std::path::Path, message: String| ManagerError::Store {
            path: path.to_path_buf(),
            message,
        };
        let json = serde_json::to_vec_pretty(info)
            .map_err(|e| failed(&path, format!("encoding the template: {e}")))?;
        std::fs::create_dir_all(&dir).map_err(|e| failed(&dir, e.to_string()))?;
        let written = std::fs::File::create(&tmp).and_then(|mut file| {
            file.write_all(&json)?;
            file.sync_all()
        });
        if let Err(err) = written.and_then(|()| std::fs::rename(&tmp, &path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(failed(&path, err.to_string()));
        }
        crate::durable::sync_dir(&dir)?;
        lock(&self.inner.store).put(Table::Templates, name.as_str(), info)
    }

    /// Where the warm snapshot of `name` with `images` lives: keyed by the
    /// images, the network mode (whose guest addresses it carries) and the
    /// default machine shape (the one it restores).
    pub(super) fn warm_dir(&self, name: &SafeName, images: &GuestImages) -> PathBuf {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        images.kernel.hash(&mut hasher);
        images.rootfs.hash(&mut hasher);
        std::fs::metadata(&images.rootfs)
            .map_or(0, |m| m.len())
            .hash(&mut hasher);
        self.inner.config.network.is_some().hash(&mut hasher);
        // The machine it restores (and a format of the snapshot that
        // records its shape).
        self.inner.config.default_vcpus.hash(&mut hasher);
        self.inner.config.default_memory_mib.hash(&mut hasher);
        "machine.json".hash(&mut hasher);
        self.template_dir(name)
            .join(format!("warm-{:016x}", hasher.finish()))
    }

    /// Boots a guest of template `name` once and keeps a snapshot of it,
    /// envd ready, from which later creates start in a fraction of a cold
    /// boot (a create falls back to a cold boot while there is none).
    pub async fn warm_template(&self, name: &str) -> Result<TemplateInfo, ManagerError> {
        let mut template = self.template(name)?;
        if template
            .warm_snapshot
            .as_ref()
            .is_some_and(|d| d.join("vmstate.json").is_file())
        {
            return Ok(template);
        }
        let name = SafeName::new(name)?;
        let images = GuestImages {
            kernel: template.kernel.clone(),
            rootfs: template.rootfs.clone(),
        };
        let dir = self.warm_dir(&name, &images);
        let partial = dir.with_extension("partial");
        let _ = std::fs::remove_dir_all(&partial);
        let _slot = self.reserve_warm()?;
        let start = Instant::now();
        // Of the default shape: the creates that name none restore it.
        let config = SandboxConfig {
            vcpus: self.inner.config.default_vcpus,
            memory_mib: self.inner.config.default_memory_mib,
            network: self.inner.config.network.clone(),
            rootfs_provider: self.inner.config.rootfs_provider.clone(),
            ..SandboxConfig::new(
                format!("warm-{}", new_id()?),
                images,
                &self.inner.config.data_dir,
            )
        };
        let mut sandbox = Sandbox::boot(self.inner.hypervisor.as_ref(), config).await?;
        // Durable when it returns (`Sandbox::snapshot`); the rename below
        // is made durable in its directory.
        let saved = sandbox.snapshot(&partial).await;
        let destroyed = sandbox.destroy().await;
        saved?;
        destroyed?;
        std::fs::rename(&partial, &dir).map_err(|e| ManagerError::Store {
            path: dir.clone(),
            message: format!("moving the warm snapshot into place: {e}"),
        })?;
        crate::durable::sync_parent(&dir)?;
        template.warm_snapshot = Some(dir);
        self.save_template(&name, &template)?;
        tracing::info!(template = %name, took_ms = start.elapsed().as_millis() as u64, "template warmed");
        Ok(template)
    }

    pub fn templates(&self) -> Result<Vec<TemplateInfo>, ManagerError> {
        Ok(lock(&self.inner.store)
            .all::<TemplateInfo>(Table::Templates)?
            .into_iter()
            .map(|(_, t)| t)
            .collect())
    }

    pub fn template(&self, name: &str) -> Result<TemplateInfo, ManagerError> {
        let name = SafeName::new(name)?;
        lock(&self.inner.store)
            .get(Table::Templates, name.as_str())?
            .ok_or_else(|| ManagerError::TemplateNotFound(name.to_string()))
    }

    /// Removes a template's record and its directory (`template.json`, its
    /// base images, warm snapshots; the kernel it references is not ours to
    /// delete); refused while a sandbox or snapshot uses it.
    pub fn delete_template(&self, name: &str) -> Result<(), ManagerError> {
        let template = self.template(name)?;
        let users: Vec<String> = lock(&self.inner.infos)
            .values()
            .filter(|i| i.template == template.name && i.state != State::Stopped)
            .map(|i| i.id.clone())
            .collect();
        let snapshots: Vec<String> = self
            .snapshots()?
            .into_iter()
            .filter(|s| s.template == template.name)
            .map(|s| s.name)
            .collect();
        if !users.is_empty() || !snapshots.is_empty() {
            return Err(ManagerError::Conflict(format!(
                "template {} is used by sandboxes {users:?} and snapshots {snapshots:?}",
                template.name
            )));
        }
        lock(&self.inner.store).delete(Table::Templates, &template.name)?;
        let dir = self.template_dir(&SafeName::new(&template.name)?);
        if let Err(err) = std::fs::remove_dir_all(&dir)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), %err, "cannot remove the template's directory");
        }
        Ok(())
    }
}

/// The template's own copy of the base image `source`, in its directory
/// `dir`: `rootfs-<key>.<ext>`, the key from the source's identity (device,
/// inode, size, modification time), so registering the same image again
/// reuses it, and a new image gets a new file while the sandboxes and
/// snapshots of the old one keep theirs. A sparse copy (a reflink, in
/// constant time, where the filesystem can), so later writes to the source
/// never reach sandboxes of the template. A `source` already in `dir` is
/// returned as is.
async fn import_base(dir: &Path, source: &Path) -> Result<PathBuf, ManagerError> {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    if source.parent() == Some(dir) {
        return Ok(source.to_path_buf());
    }
    let io = |what: &'static str, path: &Path, source: std::io::Error| {
        ManagerError::from(SandboxError::Io {
            what,
            path: path.to_path_buf(),
            source,
        })
    };
    let meta = std::fs::metadata(source).map_err(|e| io("stat base image", source, e))?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
    )
        .hash(&mut hasher);
    let ext = source
        .extension()
        .map_or_else(|| "img".to_string(), |e| e.to_string_lossy().into_owned());
    let base = dir.join(format!("rootfs-{:016x}.{ext}", hasher.finish()));
    if base.is_file() {
        return Ok(base);
    }
    std::fs::create_dir_all(dir).map_err(|e| io("create template directory", dir, e))?;
    let tmp = dir.join(format!(".import-{}.tmp", new_id()?));
    // Durable before it is named: snapshots and sandboxes will rely on it.
    let imported = crate::qemu::sparse_copy("template", source, &tmp)
        .await
        .and_then(|()| crate::durable::sync_file(&tmp))
        .map_err(ManagerError::from)
        .and_then(|()| {
            std::fs::rename(&tmp, &base).map_err(|e| io("rename base image to", &base, e))
        })
        .and_then(|()| crate::durable::sync_dir(dir).map_err(ManagerError::from));
    if let Err(err) = imported {
        let _ = std::fs::remove_file(&tmp);
        return Err(err);
    }
    tracing::info!(source = %source.display(), base = %base.display(), "template base image imported");
    Ok(base)
}

/// `path` with symlinks resolved, or as given when it cannot be.
fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}
