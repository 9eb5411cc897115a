//! The sandbox lifecycle manager: many sandboxes, their states, TTLs,
//! snapshots and templates, persisted so an agent restart loses nothing.
//!
//! Every operation on one sandbox holds that sandbox's lock, so operations on
//! one sandbox run one at a time and different sandboxes proceed in parallel;
//! destroy does not wait behind a stuck one (it kills the sandbox's VMM
//! first, see `cancel.rs`). Template and snapshot names are reserved
//! atomically (`names.rs`).
//! States move only along the edges [`State`] documents; anything else is an
//! [`ManagerError::InvalidState`]. Records live in SQLite
//! (`data_dir/petrel.db`); on [`Manager::open`] running sandboxes are
//! re-adopted (or, when their VMM died, marked stopped and cleaned) and paused
//! ones stay resumable.

mod cancel;
mod egress;
mod lifecycle;
pub use lifecycle::GONE_POLL;
mod limits;
mod lineage;
mod names;
mod orphans;
mod pool;
mod reaper;
mod recovery;
mod snapshots;
mod store;
mod templates;
mod transitions;
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
use crate::sandbox::{
    BootTimings, ResumeTimings, Sandbox, SandboxConfig, SandboxRecord, SandboxState,
};
use crate::vmm::Hypervisor;
pub use pool::PoolStats;
use store::{Store, Table};
pub use types::{
    CreateSandbox, ListFilter, ManagerError, SandboxInfo, SnapshotInfo, StandsOn, State,
    TemplateInfo,
};

/// A template's metadata file in `data_dir/templates/<name>/`.
pub const TEMPLATE_FILE: &str = "template.json";

/// How long a sandbox stays paused before the reaper destroys it: 30 days.
pub const DEFAULT_PAUSED_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Sandboxes a warm template keeps ready by default (each costs a VM's
/// idle memory: see `docs/architecture.md`).
pub const DEFAULT_POOL_SIZE: usize = 2;

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
    /// from a snapshot (warm or named) use it only where it is qcow2 (on
    /// QEMU a qcow2 overlay of the snapshot's disk is the cheapest start),
    /// else the backend's default choice over the snapshot's disk.
    pub rootfs_provider: Option<Arc<dyn RootfsProvider>>,
    /// Sandboxes each warm template keeps restored and ready for creates
    /// (see `pool.rs`; filled by [`Manager::run_pool_filler`]); 0: none.
    pub pool_size: usize,
    /// Per-template sizes overriding `pool_size`.
    pub pool_sizes: BTreeMap<String, usize>,
}

impl ManagerConfig {
    /// 1 vCPU, 512 MiB, 5 minutes, at most 16 running, 64 paused (each for
    /// at most [`DEFAULT_PAUSED_TTL`]), 64 snapshots using 64 GiB, pools
    /// of [`DEFAULT_POOL_SIZE`].
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
            pool_size: DEFAULT_POOL_SIZE,
            pool_sizes: BTreeMap::new(),
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
    /// Template and snapshot names being created (see `names.rs`).
    names_pending: Mutex<std::collections::HashSet<String>>,
    /// Warm templates' pools of ready sandboxes (see `pool.rs`).
    pools: pool::Pools,
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
                names_pending: Mutex::new(std::collections::HashSet::new()),
                pools: pool::Pools::default(),
            }),
        };
        manager.recover(persisted).await;
        Ok(manager)
    }

    pub fn config(&self) -> &ManagerConfig {
        &self.inner.config
    }
}

/// A new sandbox id: 16 lowercase hex digits.
fn new_id() -> Result<String, ManagerError> {
    Ok(crate::sandbox::random_token()?[..16].to_string())
}
