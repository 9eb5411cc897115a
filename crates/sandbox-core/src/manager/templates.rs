//! Templates: their own base images, registration and pruning, warm
//! snapshots.

use std::sync::atomic::Ordering;

use super::lineage::canonical;
use super::names::NameUse;
use super::{
    GuestImages, Instant, Manager, ManagerError, Path, PathBuf, SafeName, Sandbox, SandboxConfig,
    SandboxError, StandsOn, State, SystemTime, TEMPLATE_FILE, Table, TemplateInfo, Write, lock,
    new_id,
};
use crate::rollback::{Rollback, remove_dir_if_exists};

impl Manager {
    /// Adds or replaces a template: `templates/<name>/` gets its own base
    /// image (see [`import_base`]), `template.json` references the kernel.
    /// Then the template's files that nothing stands on any more are pruned
    /// (see [`Manager::prune_template_files`]): an old base image and warm
    /// snapshot stay while a sandbox (of any state but stopped) or a
    /// snapshot stands on them, and go with their last dependent.
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
        crate::crash::point("template.imported");
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
        // Pooled sandboxes of the old images would hand out the old guest.
        self.drain_pools(Some(name.as_str())).await;
        self.prune_template_files(&name);
        Ok(info)
    }

    /// Prunes every template's files that nothing stands on (see
    /// [`Manager::prune_template_files`]); after a snapshot is deleted or a
    /// sandbox destroyed, whose last dependent may have gone with it.
    pub(super) fn prune_unreferenced(&self) {
        let templates = match self.templates() {
            Ok(templates) => templates,
            Err(err) => {
                tracing::warn!(%err, "not pruning template files: templates unreadable");
                return;
            }
        };
        for template in templates {
            if let Ok(name) = SafeName::new(&template.name) {
                self.prune_template_files(&name);
            }
        }
    }

    /// Removes the template's base images (`rootfs-*`) and warm snapshots
    /// (`warm-*`) other than its current ones that nothing stands on: no
    /// sandbox record (of any state but stopped) and no snapshot, as the
    /// lineage in the store says (see the `lineage` module). Skipped while
    /// a sandbox is between states or a warm-up runs (a create may be
    /// taking a base): the next registration, snapshot delete or destroy
    /// prunes. When in doubt a file stays: it costs space, never data.
    pub(super) fn prune_template_files(&self, name: &SafeName) {
        let settled = lock(&self.inner.infos).values().all(|info| {
            matches!(
                info.state,
                State::Running | State::Paused | State::Stopped | State::Error
            )
        }) && self.inner.warming.load(Ordering::SeqCst) == 0
            && self.inner.pools.filling() == 0;
        let (true, Ok(template), Ok(dependents)) =
            (settled, self.template(name.as_str()), self.dependents())
        else {
            tracing::debug!(template = %name, "not pruning template files now");
            return;
        };
        let images = GuestImages {
            kernel: template.kernel.clone(),
            rootfs: template.rootfs.clone(),
        };
        let mut bases = vec![canonical(&template.rootfs)];
        let mut warms = vec![canonical(&self.warm_dir(name, &images))];
        warms.extend(template.warm_snapshot.as_deref().map(canonical));
        // Pooled sandboxes have no record but stand on a warm snapshot too.
        for path in self.inner.pools.stands_on() {
            warms.push(canonical(&path));
            bases.push(canonical(&path));
        }
        for dependent in &dependents {
            match &dependent.stands_on {
                StandsOn::Base { file } => bases.push(canonical(file)),
                StandsOn::Warm { dir, base } => {
                    warms.push(canonical(dir));
                    bases.push(canonical(base));
                }
                StandsOn::Snapshot { .. } | StandsOn::Nothing => {}
            }
        }
        let Ok(entries) = std::fs::read_dir(self.template_dir(name)) else {
            return;
        };
        for path in entries.flatten().map(|e| e.path()) {
            let file_name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let removed = if file_name.starts_with("warm-") && !warms.contains(&canonical(&path)) {
                std::fs::remove_dir_all(&path)
            } else if file_name.starts_with("rootfs-")
                && path.is_file()
                && !bases.contains(&canonical(&path))
            {
                std::fs::remove_file(&path)
            } else {
                continue;
            };
            match removed {
                Ok(()) => {
                    tracing::info!(template = %name, path = %path.display(), "removed a template file nothing stands on");
                }
                Err(err) => {
                    tracing::warn!(template = %name, path = %path.display(), %err, "cannot remove a template file nothing stands on");
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
        let mut undo = Rollback::new(format!("warm-up of template {name}"));
        {
            let partial = partial.clone();
            undo.push("remove the partial warm snapshot", move |&mut ()| {
                Box::pin(async move { remove_dir_if_exists(&partial) })
            });
        }
        let warmed: Result<TemplateInfo, ManagerError> = async {
            let mut sandbox = Sandbox::boot(self.inner.hypervisor.as_ref(), config).await?;
            crate::crash::point("template.warm_booted");
            // Durable when it returns (`Sandbox::snapshot`); the rename below
            // is made durable in its directory.
            let saved = sandbox.snapshot(&partial).await;
            crate::crash::point("template.warm_saved");
            // The warm-up guest goes whatever happened.
            let destroyed = sandbox.destroy().await;
            saved?;
            destroyed?;
            std::fs::rename(&partial, &dir).map_err(|e| ManagerError::Store {
                path: dir.clone(),
                message: format!("moving the warm snapshot into place: {e}"),
            })?;
            {
                let dir = dir.clone();
                undo.push("remove the unrecorded warm snapshot", move |&mut ()| {
                    Box::pin(async move { remove_dir_if_exists(&dir) })
                });
            }
            crate::durable::sync_parent(&dir)?;
            template.warm_snapshot = Some(dir.clone());
            self.save_template(&name, &template)?;
            Ok(template)
        }
        .await;
        let template = match warmed {
            Ok(template) => {
                undo.commit();
                template
            }
            Err(err) => return Err(undo.unwind(&mut (), err).await),
        };
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
    /// delete). Refused ([`ManagerError::Conflict`], naming them) while
    /// anything stands on the template: a sandbox of it in any state but
    /// stopped (started from it, or from one of its snapshots) or a
    /// snapshot of it. A stopped sandbox's record keeps the template's
    /// name only.
    pub fn delete_template(&self, name: &str) -> Result<(), ManagerError> {
        let template = self.template(name)?;
        let infos: Vec<(String, State, String)> = lock(&self.inner.infos)
            .values()
            .filter(|i| i.state != State::Stopped)
            .map(|i| (i.id.clone(), i.state, i.template.clone()))
            .collect();
        let mut dependents = Vec::new();
        for (id, state, from) in infos {
            if self.root_template(&from)? == template.name {
                dependents.push(format!("sandbox {id} ({state})"));
            }
        }
        dependents.sort();
        dependents.extend(
            self.snapshots()?
                .into_iter()
                .filter(|s| s.template == template.name)
                .map(|s| format!("snapshot {}", s.name)),
        );
        if !dependents.is_empty() {
            return Err(ManagerError::Conflict(format!(
                "template {} has dependents: {}; delete them first",
                template.name,
                dependents.join(", ")
            )));
        }
        lock(&self.inner.store).delete(Table::Templates, &template.name)?;
        // Its pooled sandboxes are nobody's yet: they go with it.
        self.drain_pool_in_background(&template.name);
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
