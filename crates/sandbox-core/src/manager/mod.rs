//! The sandbox lifecycle manager: many sandboxes, their states, TTLs,
//! snapshots and templates, persisted so an agent restart loses nothing.
//!
//! Every operation on one sandbox holds that sandbox's lock, so operations on
//! one sandbox run one at a time and different sandboxes proceed in parallel.
//! States move only along the edges [`State`] documents; anything else is an
//! [`ManagerError::InvalidState`]. Records live in SQLite
//! (`data_dir/petrel.db`); on [`Manager::open`] running sandboxes are
//! re-adopted (or, when their VMM died, marked stopped and cleaned) and paused
//! ones stay resumable.

mod limits;
mod store;
mod types;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use envd_client::{EnvdClient, ExecOutput, ExecRequest};
use safename::SafeName;
use serde::{Deserialize, Serialize};

use crate::disk::RootfsProvider;
use crate::error::SandboxError;
use crate::images::GuestImages;
use crate::sandbox::{BootTimings, Sandbox, SandboxConfig, SandboxRecord, SandboxState};
use crate::vmm::Hypervisor;
use store::{Store, Table};
pub use types::{
    CreateSandbox, ListFilter, ManagerError, SandboxInfo, SnapshotInfo, State, TemplateInfo,
};

/// A template's metadata file in `data_dir/templates/<name>/`.
pub const TEMPLATE_FILE: &str = "template.json";

/// How long a sandbox stays paused before the reaper destroys it: 30 days.
pub const DEFAULT_PAUSED_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Limits and defaults.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Holds `petrel.db`, `sandboxes/`, `snapshots/`, `templates/`.
    pub data_dir: PathBuf,
    pub default_vcpus: u8,
    pub default_memory_mib: u32,
    pub max_vcpus: u8,
    pub max_memory_mib: u32,
    pub default_timeout: Duration,
    /// VMs at most (sandboxes starting, running, pausing, resuming, and
    /// template warm-ups); more is [`ManagerError::Capacity`].
    pub max_running: usize,
    /// Paused sandboxes at most; a pause beyond is [`ManagerError::Quota`].
    pub max_paused: usize,
    /// A sandbox paused this long is destroyed by the reaper.
    pub paused_ttl: Duration,
    /// Named snapshots (forks' included; templates' warm snapshots not) at
    /// most, and the disk space they may use together; a snapshot beyond
    /// either is [`ManagerError::Quota`].
    pub max_snapshots: usize,
    pub max_snapshot_bytes: u64,
    /// Per-sandbox network namespaces; `None`: QEMU's user-mode network.
    pub network: Option<Arc<crate::network::NetworkPool>>,
    /// Makes cold-booted sandboxes' root disks; `None`:
    /// [`crate::disk::choose_provider`]'s choice for the backend. Starts
    /// from a snapshot (warm or named) always use a qcow2 overlay of the
    /// snapshot's disk, the only base they have.
    pub rootfs_provider: Option<Arc<dyn RootfsProvider>>,
}

impl ManagerConfig {
    /// 1 vCPU, 512 MiB, 5 minutes, at most 16 running, 64 paused (each for
    /// at most [`DEFAULT_PAUSED_TTL`]), 64 snapshots using 64 GiB.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            default_vcpus: 1,
            default_memory_mib: 512,
            max_vcpus: 8,
            max_memory_mib: 8192,
            default_timeout: Duration::from_secs(300),
            max_running: 16,
            max_paused: 64,
            paused_ttl: DEFAULT_PAUSED_TTL,
            max_snapshots: 64,
            max_snapshot_bytes: 64 << 30,
            network: None,
            rootfs_provider: None,
        }
    }
}

/// What the store keeps per sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Persisted {
    info: SandboxInfo,
    /// `None` once the sandbox's files are gone (stopped).
    record: Option<SandboxRecord>,
}

type Handle = Arc<tokio::sync::Mutex<Option<Sandbox>>>;

/// The lifecycle manager. Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ManagerConfig,
    hypervisor: Arc<dyn Hypervisor>,
    store: Mutex<Store>,
    infos: Mutex<HashMap<String, SandboxInfo>>,
    handles: Mutex<HashMap<String, Handle>>,
    /// Template warm-up boots under way (they hold VMs).
    warming: std::sync::atomic::AtomicUsize,
    /// Snapshots being taken (they count against `max_snapshots`).
    snapshots_pending: Mutex<usize>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Manager {
    /// Opens (or creates) the store in `config.data_dir` and takes over the
    /// sandboxes of an earlier run.
    pub async fn open(
        config: ManagerConfig,
        hypervisor: Arc<dyn Hypervisor>,
    ) -> Result<Self, ManagerError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| ManagerError::Store {
            path: config.data_dir.clone(),
            message: e.to_string(),
        })?;
        let store = Store::open(&config.data_dir.join("petrel.db"))?;
        let persisted: Vec<(String, Persisted)> = store.all(Table::Sandboxes)?;
        let manager = Self {
            inner: Arc::new(Inner {
                config,
                hypervisor,
                store: Mutex::new(store),
                infos: Mutex::new(HashMap::new()),
                handles: Mutex::new(HashMap::new()),
                warming: std::sync::atomic::AtomicUsize::new(0),
                snapshots_pending: Mutex::new(0),
            }),
        };
        // Where the bases and CoW files of an earlier run's dm devices lie.
        let mut disk_dirs: Vec<PathBuf> = vec![manager.inner.config.data_dir.clone()];
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
            manager.reattach(id, entry).await;
        }
        manager.cleanup_stale_disks(&disk_dirs);
        if let Some(pool) = &manager.inner.config.network {
            let mut in_use = Vec::new();
            for handle in lock(&manager.inner.handles).values() {
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
        Ok(manager)
    }

    /// Removes dm-snapshot devices (and their loops) that an earlier run
    /// left for sandboxes that are gone; reattached ones were adopted and
    /// stay. Only where dm-snapshots are in use.
    fn cleanup_stale_disks(&self, dirs: &[PathBuf]) {
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

    async fn reattach(&self, id: String, entry: Persisted) {
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

    pub fn config(&self) -> &ManagerConfig {
        &self.inner.config
    }

    // ---- templates ------------------------------------------------------

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
    fn prune_template_files(&self, name: &SafeName, base: &Path, warm: &Path) {
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
    fn template_dir(&self, name: &SafeName) -> PathBuf {
        name.join_under(&self.inner.config.data_dir.join("templates"))
    }

    /// Writes `info` to the template's `template.json` (a temporary file
    /// renamed over it, so readers see the old or the new one whole) and
    /// then to the store.
    fn save_template(&self, name: &SafeName, info: &TemplateInfo) -> Result<(), ManagerError> {
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
        lock(&self.inner.store).put(Table::Templates, name.as_str(), info)
    }

    /// Where the warm snapshot of `name` with `images` lives: keyed by the
    /// images and the network mode, whose guest addresses it carries.
    fn warm_dir(&self, name: &SafeName, images: &GuestImages) -> PathBuf {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        images.kernel.hash(&mut hasher);
        images.rootfs.hash(&mut hasher);
        std::fs::metadata(&images.rootfs)
            .map_or(0, |m| m.len())
            .hash(&mut hasher);
        self.inner.config.network.is_some().hash(&mut hasher);
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
        let config = SandboxConfig {
            network: self.inner.config.network.clone(),
            rootfs_provider: self.inner.config.rootfs_provider.clone(),
            ..SandboxConfig::new(
                format!("warm-{}", new_id()?),
                images,
                &self.inner.config.data_dir,
            )
        };
        let mut sandbox = Sandbox::boot(self.inner.hypervisor.as_ref(), config).await?;
        let saved = sandbox.snapshot(&partial).await;
        let destroyed = sandbox.destroy().await;
        saved?;
        destroyed?;
        std::fs::rename(&partial, &dir).map_err(|e| ManagerError::Store {
            path: dir.clone(),
            message: format!("moving the warm snapshot into place: {e}"),
        })?;
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

    // ---- sandboxes --------------------------------------------------------

    /// Creates and boots a sandbox from a template (cold boot) or from a
    /// snapshot of the same name.
    pub async fn create(&self, request: CreateSandbox) -> Result<SandboxInfo, ManagerError> {
        let name = SafeName::new(&request.template)?;
        let config = &self.inner.config;
        let vcpus = request.vcpus.unwrap_or(config.default_vcpus);
        let memory_mib = request.memory_mib.unwrap_or(config.default_memory_mib);
        if vcpus == 0 || vcpus > config.max_vcpus {
            return Err(ManagerError::InvalidRequest(format!(
                "vcpus must be 1..={}, got {vcpus}",
                config.max_vcpus
            )));
        }
        if !(128..=config.max_memory_mib).contains(&memory_mib) {
            return Err(ManagerError::InvalidRequest(format!(
                "memory_mib must be 128..={}, got {memory_mib}",
                config.max_memory_mib
            )));
        }
        let internet = crate::network::resolve_internet(request.internet, config.network.is_some())
            .map_err(ManagerError::InvalidRequest)?;
        let (template, images, snapshot) = self.resolve_source(&name)?;
        let timeout = request.timeout.unwrap_or(config.default_timeout);
        let id = new_id()?;
        let now = SystemTime::now();
        let mut info = SandboxInfo {
            id: id.clone(),
            template,
            state: State::Starting,
            vcpus,
            memory_mib,
            created_at: now,
            end_at: now + timeout,
            auto_pause: request.auto_pause,
            internet,
            metadata: request.metadata,
            env_vars: request.env_vars.clone(),
            envd_addr: None,
            envd_access_token: String::new(),
            error: None,
            timings_ms: BTreeMap::new(),
            paused_at: None,
        };
        let handle: Handle = Arc::new(tokio::sync::Mutex::new(None));
        let mut guard = handle.lock().await;
        {
            // Capacity is checked and the slot taken under one lock.
            let mut infos = lock(&self.inner.infos);
            self.admit(&infos, None, State::Starting)?;
            infos.insert(id.clone(), info.clone());
        }
        lock(&self.inner.handles).insert(id.clone(), handle.clone());
        let start = Instant::now();
        // A start from a snapshot needs a qcow2 overlay of its disk: the
        // default choice unless qcow2 is what is configured.
        let rootfs_provider = config
            .rootfs_provider
            .clone()
            .filter(|p| snapshot.is_none() || p.name() == "qcow2");
        let sandbox_config = SandboxConfig {
            vcpus,
            memory_mib,
            env_vars: request.env_vars,
            snapshot,
            rootfs_provider,
            network: config.network.clone(),
            internet: Some(internet),
            ..SandboxConfig::new(&id, images, &config.data_dir)
        };
        match Sandbox::boot(self.inner.hypervisor.as_ref(), sandbox_config).await {
            Ok(sandbox) => {
                info.state = State::Running;
                info.envd_addr = Some(sandbox.envd().addr());
                info.envd_access_token = sandbox.access_token().to_string();
                info.timings_ms = boot_timings(sandbox.timings());
                let persisted = Persisted {
                    info: info.clone(),
                    record: Some(sandbox.record()),
                };
                *guard = Some(sandbox);
                lock(&self.inner.infos).insert(id.clone(), info.clone());
                self.save(&persisted)?;
                tracing::info!(sandbox = %id, template = %info.template, took_ms = start.elapsed().as_millis() as u64, "managed sandbox created");
                Ok(info)
            }
            Err(err) => {
                // Sandbox::boot removed what it made; forget the sandbox.
                lock(&self.inner.infos).remove(&id);
                lock(&self.inner.handles).remove(&id);
                Err(err.into())
            }
        }
    }

    fn resolve_source(
        &self,
        name: &SafeName,
    ) -> Result<(String, GuestImages, Option<PathBuf>), ManagerError> {
        let store = lock(&self.inner.store);
        if let Some(snapshot) = store.get::<SnapshotInfo>(Table::Snapshots, name.as_str())? {
            let template: TemplateInfo = store
                .get(Table::Templates, &snapshot.template)?
                .ok_or_else(|| ManagerError::TemplateNotFound(snapshot.template.clone()))?;
            let images = GuestImages {
                kernel: template.kernel,
                rootfs: template.rootfs,
            };
            return Ok((snapshot.name.clone(), images, Some(self.snapshot_dir(name))));
        }
        let template: TemplateInfo = store
            .get(Table::Templates, name.as_str())?
            .ok_or_else(|| ManagerError::TemplateNotFound(name.to_string()))?;
        // The fast path when the template is warm; a cold boot otherwise.
        let warm = template
            .warm_snapshot
            .filter(|dir| dir.join("vmstate.json").is_file());
        Ok((
            template.name,
            GuestImages {
                kernel: template.kernel,
                rootfs: template.rootfs,
            },
            warm,
        ))
    }

    pub fn get(&self, id: &str) -> Result<SandboxInfo, ManagerError> {
        lock(&self.inner.infos)
            .get(id)
            .cloned()
            .ok_or_else(|| ManagerError::SandboxNotFound(id.to_string()))
    }

    /// The disk space the sandbox's files take (root disk overlay or CoW
    /// file, RAM file, saved state): allocated blocks, so sparse files count
    /// what they really use. 0 once they are gone.
    pub fn disk_usage(&self, id: &str) -> Result<u64, ManagerError> {
        let id = SafeName::new(id)?;
        self.get(id.as_str())?;
        let dir = id.join_under(&self.inner.config.data_dir.join("sandboxes"));
        if !dir.exists() {
            return Ok(0);
        }
        dmsnap::dir_size(&dir).map_err(|err| ManagerError::Store {
            path: dir,
            message: err.to_string(),
        })
    }

    /// Sandboxes matching `filter`, oldest first.
    pub fn list(&self, filter: &ListFilter) -> Vec<SandboxInfo> {
        let mut out: Vec<SandboxInfo> = lock(&self.inner.infos)
            .values()
            .filter(|i| filter.states.is_empty() || filter.states.contains(&i.state))
            .filter(|i| {
                filter
                    .metadata
                    .iter()
                    .all(|(k, v)| i.metadata.get(k) == Some(v))
            })
            .filter(|i| filter.template.as_ref().is_none_or(|t| &i.template == t))
            .cloned()
            .collect();
        out.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        out
    }

    /// Runs a command in a running sandbox.
    pub async fn exec(&self, id: &str, request: ExecRequest) -> Result<ExecOutput, ManagerError> {
        let envd = self.envd(id).await?;
        envd.exec(request).await.map_err(|source| {
            ManagerError::from(crate::SandboxError::Envd {
                sandbox: id.to_string(),
                source: Box::new(source),
            })
        })
    }

    /// The envd client of a running sandbox (files, streams, proxying).
    pub async fn envd(&self, id: &str) -> Result<EnvdClient, ManagerError> {
        let handle = self.handle(id)?;
        let guard = handle.lock().await;
        self.require(id, &[State::Running], "use envd")?;
        guard
            .as_ref()
            .map(|s| s.envd().clone())
            .ok_or_else(|| ManagerError::SandboxNotFound(id.to_string()))
    }

    /// Saves a running sandbox to disk; it holds no VMM process after this.
    pub async fn pause(&self, id: &str) -> Result<SandboxInfo, ManagerError> {
        let handle = self.handle(id)?;
        let mut guard = handle.lock().await;
        self.transition(id, &[State::Running], State::Pausing, "pause")?;
        let sandbox = guard
            .as_mut()
            .ok_or_else(|| ManagerError::SandboxNotFound(id.to_string()))?;
        match sandbox.pause().await {
            Ok(stats) => self.finish(id, sandbox, State::Paused, |info| {
                info.envd_addr = None;
                info.paused_at = Some(SystemTime::now());
                info.timings_ms
                    .insert("pause".into(), stats.took.as_millis() as u64);
            }),
            Err(err) => self.fail(id, sandbox, err),
        }
    }

    /// Continues a paused sandbox; the TTL starts again from now.
    pub async fn resume(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> Result<SandboxInfo, ManagerError> {
        let handle = self.handle(id)?;
        let mut guard = handle.lock().await;
        self.transition(id, &[State::Paused], State::Resuming, "resume")?;
        let sandbox = guard
            .as_mut()
            .ok_or_else(|| ManagerError::SandboxNotFound(id.to_string()))?;
        let ttl = timeout.unwrap_or(self.inner.config.default_timeout);
        match sandbox.resume().await {
            Ok(took) => {
                let addr = sandbox.envd().addr();
                self.finish(id, sandbox, State::Running, |info| {
                    info.envd_addr = Some(addr);
                    info.paused_at = None;
                    info.end_at = SystemTime::now() + ttl;
                    info.timings_ms
                        .insert("resume".into(), took.as_millis() as u64);
                })
            }
            Err(err) => self.fail(id, sandbox, err),
        }
    }

    /// Stops a sandbox in any state and removes its files and record.
    pub async fn destroy(&self, id: &str) -> Result<(), ManagerError> {
        let handle = self.handle(id)?;
        let mut guard = handle.lock().await;
        let previous = self.get(id)?.state;
        self.set_state(id, State::Stopping);
        let result = match guard.take() {
            Some(sandbox) => sandbox.destroy().await.map_err(ManagerError::from),
            None => Ok(()),
        };
        lock(&self.inner.infos).remove(id);
        lock(&self.inner.handles).remove(id);
        let forgotten = lock(&self.inner.store).delete(Table::Sandboxes, id);
        tracing::info!(sandbox = %id, from = %previous, ok = result.is_ok(), "managed sandbox destroyed");
        result.and(forgotten)
    }

    /// Sets the TTL to `timeout` from now (shorter or longer).
    pub fn set_timeout(&self, id: &str, timeout: Duration) -> Result<SandboxInfo, ManagerError> {
        self.update_end(id, SystemTime::now() + timeout, false)
    }

    /// Extends the TTL to at least `timeout` from now; never shortens it.
    pub fn extend_timeout(&self, id: &str, timeout: Duration) -> Result<SandboxInfo, ManagerError> {
        self.update_end(id, SystemTime::now() + timeout, true)
    }

    fn update_end(
        &self,
        id: &str,
        end_at: SystemTime,
        only_extend: bool,
    ) -> Result<SandboxInfo, ManagerError> {
        let info = {
            let mut infos = lock(&self.inner.infos);
            let info = infos
                .get_mut(id)
                .ok_or_else(|| ManagerError::SandboxNotFound(id.to_string()))?;
            if !only_extend || end_at > info.end_at {
                info.end_at = end_at;
            }
            info.clone()
        };
        self.save_info(&info)?;
        Ok(info)
    }

    // ---- snapshots ------------------------------------------------------

    /// Saves a running sandbox as snapshot `name` (it keeps running); new
    /// sandboxes can be created from it by name.
    pub async fn snapshot(&self, id: &str, name: &str) -> Result<SnapshotInfo, ManagerError> {
        let name = SafeName::new(name)?;
        if lock(&self.inner.store)
            .get::<SnapshotInfo>(Table::Snapshots, name.as_str())?
            .is_some()
            || lock(&self.inner.store)
                .get::<TemplateInfo>(Table::Templates, name.as_str())?
                .is_some()
        {
            return Err(ManagerError::Conflict(format!(
                "a template or snapshot named {name} exists"
            )));
        }
        let handle = self.handle(id)?;
        let mut guard = handle.lock().await;
        self.require(id, &[State::Running], "snapshot")?;
        let _slot = self.reserve_snapshot()?;
        let sandbox = guard
            .as_mut()
            .ok_or_else(|| ManagerError::SandboxNotFound(id.to_string()))?;
        let dir = self.snapshot_dir(&name);
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
    fn root_template(&self, name: &str) -> Result<String, ManagerError> {
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

    fn snapshot_dir(&self, name: &SafeName) -> PathBuf {
        name.join_under(&self.inner.config.data_dir.join("snapshots"))
    }

    // ---- TTL ------------------------------------------------------------

    /// Starts the reaper: every `interval`, running sandboxes past their
    /// end are killed, or paused when they asked for auto-pause.
    pub fn spawn_reaper(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let manager = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            loop {
                ticker.tick().await;
                manager.reap().await;
            }
        })
    }

    /// One pass of the reaper: running sandboxes past their end are
    /// destroyed (paused with `auto_pause`; destroyed all the same when the
    /// paused quota is full), paused ones past `paused_ttl` destroyed.
    pub async fn reap(&self) {
        let now = SystemTime::now();
        let expired: Vec<(String, bool)> = lock(&self.inner.infos)
            .values()
            .filter(|i| i.state == State::Running && i.end_at <= now)
            .map(|i| (i.id.clone(), i.auto_pause))
            .collect();
        for (id, auto_pause) in expired {
            let result = if auto_pause {
                match self.pause(&id).await {
                    Err(err @ ManagerError::Quota { .. }) => {
                        tracing::warn!(sandbox = %id, %err, "cannot auto-pause a timed-out sandbox: destroying it");
                        self.destroy(&id).await
                    }
                    other => other.map(drop),
                }
            } else {
                self.destroy(&id).await
            };
            match result {
                Ok(()) => tracing::info!(sandbox = %id, paused = auto_pause, "sandbox timed out"),
                Err(err) => tracing::warn!(sandbox = %id, %err, "timeout handling failed"),
            }
        }
        for id in self.expired_paused(now) {
            match self.destroy(&id).await {
                Ok(()) => tracing::info!(sandbox = %id, "paused sandbox expired: destroyed"),
                Err(err) => {
                    tracing::warn!(sandbox = %id, %err, "destroying an expired paused sandbox failed");
                }
            }
        }
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

    // ---- helpers ----------------------------------------------------------

    fn handle(&self, id: &str) -> Result<Handle, ManagerError> {
        lock(&self.inner.handles)
            .get(id)
            .cloned()
            .ok_or_else(|| ManagerError::SandboxNotFound(id.to_string()))
    }

    fn require(
        &self,
        id: &str,
        allowed: &[State],
        operation: &'static str,
    ) -> Result<State, ManagerError> {
        let state = self.get(id)?.state;
        if allowed.contains(&state) {
            Ok(state)
        } else {
            Err(ManagerError::InvalidState {
                id: id.to_string(),
                state,
                operation,
            })
        }
    }

    /// Moves `id` from one of `from` to `to`, admitted by
    /// [`Manager::admit`] (capacity, paused quota) under the same lock.
    fn transition(
        &self,
        id: &str,
        from: &[State],
        to: State,
        operation: &'static str,
    ) -> Result<(), ManagerError> {
        let mut infos = lock(&self.inner.infos);
        let state = infos
            .get(id)
            .ok_or_else(|| ManagerError::SandboxNotFound(id.to_string()))?
            .state;
        if !from.contains(&state) {
            return Err(ManagerError::InvalidState {
                id: id.to_string(),
                state,
                operation,
            });
        }
        self.admit(&infos, Some(state), to)?;
        if let Some(info) = infos.get_mut(id) {
            info.state = to;
        }
        Ok(())
    }

    fn set_state(&self, id: &str, state: State) {
        if let Some(info) = lock(&self.inner.infos).get_mut(id) {
            info.state = state;
        }
    }

    fn finish(
        &self,
        id: &str,
        sandbox: &Sandbox,
        state: State,
        update: impl FnOnce(&mut SandboxInfo),
    ) -> Result<SandboxInfo, ManagerError> {
        let info = {
            let mut infos = lock(&self.inner.infos);
            let info = infos
                .get_mut(id)
                .ok_or_else(|| ManagerError::SandboxNotFound(id.to_string()))?;
            info.state = state;
            info.error = None;
            update(info);
            info.clone()
        };
        self.save(&Persisted {
            info: info.clone(),
            record: Some(sandbox.record()),
        })?;
        Ok(info)
    }

    /// Records a failed operation. The sandbox keeps the state its VM is
    /// really in (a failed pause leaves it running; a failed resume leaves
    /// it paused) when that is known, `error` otherwise.
    fn fail(
        &self,
        id: &str,
        sandbox: &Sandbox,
        err: crate::SandboxError,
    ) -> Result<SandboxInfo, ManagerError> {
        let state = match sandbox.state() {
            SandboxState::Running => State::Running,
            SandboxState::Paused => State::Paused,
        };
        let message = err.to_string();
        let _ = self.finish(id, sandbox, state, |info| info.error = Some(message));
        Err(err.into())
    }

    fn save(&self, persisted: &Persisted) -> Result<(), ManagerError> {
        lock(&self.inner.store).put(Table::Sandboxes, &persisted.info.id, persisted)
    }

    fn save_info(&self, info: &SandboxInfo) -> Result<(), ManagerError> {
        let store = lock(&self.inner.store);
        let mut persisted: Persisted = store
            .get(Table::Sandboxes, &info.id)?
            .ok_or_else(|| ManagerError::SandboxNotFound(info.id.clone()))?;
        persisted.info = info.clone();
        store.put(Table::Sandboxes, &info.id, &persisted)
    }
}

/// Kills what is left of a sandbox whose VM cannot be taken over and
/// removes its files.
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
    let imported = crate::qemu::sparse_copy("template", source, &tmp)
        .await
        .map_err(ManagerError::from)
        .and_then(|()| {
            std::fs::rename(&tmp, &base).map_err(|e| io("rename base image to", &base, e))
        });
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

impl State {
    /// States in which the sandbox holds (or is about to hold) a VM.
    fn holds_vm(self) -> bool {
        matches!(
            self,
            State::Starting | State::Running | State::Pausing | State::Resuming
        )
    }
}

fn boot_timings(t: BootTimings) -> BTreeMap<String, u64> {
    [
        ("prepare", t.prepare),
        ("vm_start", t.vm_started),
        ("envd_ready", t.envd_ready),
        ("init", t.init),
        ("create", t.total),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.as_millis() as u64))
    .collect()
}

/// A new sandbox id: 16 lowercase hex digits.
fn new_id() -> Result<String, ManagerError> {
    Ok(crate::sandbox::random_token()?[..16].to_string())
}
