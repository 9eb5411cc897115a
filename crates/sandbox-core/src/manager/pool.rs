//! Warm pools: per template, sandboxes restored from its warm snapshot
//! ahead of demand, so a create takes one in milliseconds instead of
//! restoring (and, under TCG, re-translating) a guest while the caller
//! waits.
//!
//! - **Size**: [`ManagerConfig::pool_size`](super::ManagerConfig) per warm
//!   template, overridden per template by `pool_sizes`; 0 turns it off.
//!   Only warm templates pool, and only sandboxes of the default shape
//!   (vCPUs, memory) and internet setting, which is what a create that
//!   names none asks for; anything else is a miss and restores as before.
//! - **Fill**: a restore of the warm snapshot, then one `bash -l -c true`
//!   in it, so a hit's first command does not pay the restored guest's
//!   first-process cost (fresh TCG translation or page faults).
//! - **Hit**: the pooled sandbox becomes the caller's (its id and hostname
//!   were given at restore; the caller's env vars arrive through one envd
//!   `/init`; TTL, metadata and auto-pause are host-side). A pooled guest
//!   that does not take its env is destroyed and the create restores.
//! - **Capacity, honestly**: pooled VMs count as running. The filler keeps
//!   one slot free for creates and a create that finds none evicts a
//!   pooled sandbox first.
//! - **Nothing to lose**: pooled sandboxes hold no user data and have no
//!   record, so a crash leaves them to the orphan sweep at the next start;
//!   a clean shutdown destroys them, as does a template change (a stale
//!   one is destroyed when met).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{
    Arc, BTreeMap, CreateSandbox, Handle, Manager, ManagerError, Persisted, Sandbox, SandboxConfig,
    SandboxInfo, State, lock, new_id,
};

/// How often the filler looks at the pools when nothing woke it.
const FILL_INTERVAL: Duration = Duration::from_secs(5);
/// Pause after a failed fill before the filler tries again.
const FILL_BACKOFF: Duration = Duration::from_secs(30);

/// One pooled sandbox and what a create must match to take it.
#[derive(Debug)]
struct Pooled {
    sandbox: Sandbox,
    /// The warm snapshot it was restored from: stale once the template's
    /// changes.
    warm_dir: PathBuf,
    /// The template's base image (what the warm snapshot's disk stands on).
    base: PathBuf,
    vcpus: u8,
    memory_mib: u32,
    internet: bool,
}

/// Per-template counters.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    hits: u64,
    misses: u64,
}

/// A template's pool as `/metrics` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStats {
    pub template: String,
    /// Its configured size.
    pub size: usize,
    /// Sandboxes ready in it now.
    pub ready: usize,
    /// Creates that took a pooled sandbox / that found none to take.
    pub hits: u64,
    pub misses: u64,
}

/// Every template's pool.
#[derive(Debug, Default)]
pub(super) struct Pools {
    ready: Mutex<HashMap<String, Vec<Pooled>>>,
    counters: Mutex<HashMap<String, Counters>>,
    /// Pooled sandboxes being restored (they hold VM slots).
    filling: AtomicUsize,
    /// Wakes the filler after a take.
    wake: tokio::sync::Notify,
}

impl Pools {
    /// VMs the pools hold: ready and being filled.
    pub(super) fn vms(&self) -> usize {
        lock(&self.ready).values().map(Vec::len).sum::<usize>()
            + self.filling.load(Ordering::SeqCst)
    }

    pub(super) fn filling(&self) -> usize {
        self.filling.load(Ordering::SeqCst)
    }

    /// The warm snapshot dirs and base images pooled sandboxes stand on.
    pub(super) fn stands_on(&self) -> Vec<PathBuf> {
        lock(&self.ready)
            .values()
            .flatten()
            .flat_map(|p| [p.warm_dir.clone(), p.base.clone()])
            .collect()
    }

    fn count(&self, template: &str, hit: bool) {
        let mut counters = lock(&self.counters);
        let entry = counters.entry(template.to_string()).or_default();
        if hit {
            entry.hits += 1;
        } else {
            entry.misses += 1;
        }
    }
}

/// The shape a create asks for, to match against pooled sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Wanted<'a> {
    pub warm_dir: &'a Path,
    pub vcpus: u8,
    pub memory_mib: u32,
    pub internet: bool,
}

impl Manager {
    /// The pool size of `template` (0: it does not pool).
    pub fn pool_size(&self, template: &str) -> usize {
        let config = &self.inner.config;
        config
            .pool_sizes
            .get(template)
            .copied()
            .unwrap_or(config.pool_size)
    }

    /// Every pooling template's size, readiness, hits and misses.
    pub fn pool_stats(&self) -> Vec<PoolStats> {
        let ready = lock(&self.inner.pools.ready);
        let counters = lock(&self.inner.pools.counters);
        let mut names: Vec<String> = self
            .templates()
            .unwrap_or_default()
            .into_iter()
            .map(|t| t.name)
            .filter(|name| self.pool_size(name) > 0)
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|template| {
                let counters = counters.get(&template).copied().unwrap_or_default();
                PoolStats {
                    size: self.pool_size(&template),
                    ready: ready.get(&template).map_or(0, Vec::len),
                    hits: counters.hits,
                    misses: counters.misses,
                    template,
                }
            })
            .collect()
    }

    /// Keeps every warm template's pool full until `stop` completes
    /// (checked between fills: a restore under way finishes, so nothing is
    /// left half made).
    pub async fn run_pool_filler(&self, stop: impl std::future::Future<Output = ()>) {
        let cadence = crate::refill::Cadence {
            idle: FILL_INTERVAL,
            backoff: FILL_BACKOFF,
        };
        crate::refill::keep_filled(
            "filling the warm pools",
            cadence,
            &self.inner.pools.wake,
            stop,
            || self.fill_pools(),
        )
        .await;
    }

    /// Restores sandboxes into every warm template's pool until each is
    /// full or no VM slot is left beyond the one kept for creates; one at
    /// a time, so a burst of creates is not starved of CPU by refills.
    pub async fn fill_pools(&self) -> Result<(), ManagerError> {
        for template in self.templates()? {
            let size = self.pool_size(&template.name);
            let Some(warm_dir) = template
                .warm_snapshot
                .clone()
                .filter(|d| size > 0 && d.join("vmstate.json").is_file())
            else {
                continue;
            };
            loop {
                let ready = lock(&self.inner.pools.ready)
                    .get(&template.name)
                    .map_or(0, Vec::len);
                if ready >= size || !self.reserve_pool_slot() {
                    break;
                }
                let filled = self.restore_pooled(&template, &warm_dir).await;
                self.inner.pools.filling.fetch_sub(1, Ordering::SeqCst);
                let pooled = filled?;
                lock(&self.inner.pools.ready)
                    .entry(template.name.clone())
                    .or_default()
                    .push(pooled);
            }
        }
        Ok(())
    }

    /// Counts one more pooled VM being restored, if that leaves a slot
    /// free for creates.
    fn reserve_pool_slot(&self) -> bool {
        let infos = lock(&self.inner.infos);
        if self.vms_in_use(&infos) + 1 >= self.inner.config.max_running {
            return false;
        }
        self.inner.pools.filling.fetch_add(1, Ordering::SeqCst);
        true
    }

    async fn restore_pooled(
        &self,
        info: &super::TemplateInfo,
        warm_dir: &Path,
    ) -> Result<Pooled, ManagerError> {
        let config = &self.inner.config;
        let template = info.name.as_str();
        let images = crate::GuestImages {
            kernel: info.kernel.clone(),
            rootfs: info.rootfs.clone(),
        };
        let internet = crate::network::resolve_internet(None, config.network.is_some())
            .map_err(ManagerError::InvalidRequest)?;
        let start = Instant::now();
        let sandbox = Sandbox::boot(
            self.inner.hypervisor.as_ref(),
            SandboxConfig {
                vcpus: config.default_vcpus,
                memory_mib: config.default_memory_mib,
                snapshot: Some(warm_dir.to_path_buf()),
                rootfs_provider: config
                    .rootfs_provider
                    .clone()
                    .filter(|p| p.name() == "qcow2"),
                network: config.network.clone(),
                internet: Some(internet),
                ..SandboxConfig::new(new_id()?, images, &config.data_dir)
            },
        )
        .await?;
        // A restored guest's first process pays for translating (under
        // TCG) or faulting in the code of bash and its libraries; pay it
        // here, so the caller's first command does not.
        let warm_up = sandbox
            .exec(envd_client::ExecRequest::new("/bin/bash").args(["-l", "-c", "true"]))
            .await;
        if let Err(err) = warm_up {
            let id = sandbox.id().to_string();
            if let Err(destroyed) = sandbox.destroy().await {
                tracing::warn!(sandbox = %id, err = %destroyed, "destroying a pooled sandbox whose warm-up failed");
            }
            return Err(err.into());
        }
        tracing::info!(template, sandbox = %sandbox.id(), took_ms = start.elapsed().as_millis() as u64, "pooled sandbox ready");
        Ok(Pooled {
            sandbox,
            warm_dir: warm_dir.to_path_buf(),
            base: info.rootfs.clone(),
            vcpus: config.default_vcpus,
            memory_mib: config.default_memory_mib,
            internet,
        })
    }

    /// A create of `template` served from its pool: `Ok(None)` on a miss
    /// (none of the wanted shape ready, or the pooled guest failed to take
    /// the caller's env), and the caller restores instead.
    pub(super) async fn create_from_pool(
        &self,
        template: &str,
        wanted: Wanted<'_>,
        request: &CreateSandbox,
        timeout: Duration,
    ) -> Result<Option<SandboxInfo>, ManagerError> {
        if self.pool_size(template) == 0 {
            return Ok(None);
        }
        let start = Instant::now();
        let handle: Handle = Arc::new(tokio::sync::Mutex::new(None));
        let mut guard = handle.lock().await;
        // Taken and entered under the table's lock: the VM slot moves from
        // the pool to the sandbox without a moment counted twice or not at all.
        let traffic_token = super::lifecycle::traffic_token(request)?;
        let (mut pooled, mut info, stale) = {
            let mut infos = lock(&self.inner.infos);
            let (taken, stale) = self.take_pooled(template, wanted);
            let Some(pooled) = taken else {
                drop(infos);
                self.inner.pools.count(template, false);
                Self::discard_pooled(stale);
                return Ok(None);
            };
            let mut info = super::lifecycle::starting_info(
                pooled.sandbox.id().to_string(),
                template.to_string(),
                (pooled.vcpus, pooled.memory_mib),
                pooled.internet,
                request,
                timeout,
            );
            info.traffic_token = traffic_token;
            infos.insert(info.id.clone(), info.clone());
            (pooled, info, stale)
        };
        Self::discard_pooled(stale);
        self.inner.pools.wake.notify_one();
        let id = info.id.clone();
        lock(&self.inner.handles).insert(id.clone(), handle.clone());
        // As any create: a crash from here on is rolled back at the next start.
        if let Err(err) = self.record_intent(&id, Some(pooled.sandbox.record())) {
            self.forget(&id);
            destroy_pooled(pooled).await;
            return Err(err);
        }
        crate::crash::point("pool.taken");
        if !request.env_vars.is_empty()
            && let Err(err) = pooled.sandbox.add_env_vars(&request.env_vars).await
        {
            tracing::warn!(sandbox = %id, %err, "a pooled sandbox did not take its env; restoring instead");
            self.forget(&id);
            self.inner.pools.count(template, false);
            destroy_pooled(pooled).await;
            return Ok(None);
        }
        info.state = State::Running;
        info.envd_addr = Some(pooled.sandbox.envd().addr());
        info.envd_access_token = pooled.sandbox.access_token().to_string();
        info.timings_ms =
            BTreeMap::from([("pool".to_string(), start.elapsed().as_millis() as u64)]);
        let persisted = Persisted {
            info: info.clone(),
            record: Some(pooled.sandbox.record()),
        };
        *guard = Some(pooled.sandbox);
        lock(&self.inner.infos).insert(id.clone(), info.clone());
        self.save(&persisted)?;
        self.inner.pools.count(template, true);
        tracing::info!(sandbox = %id, template, took_ms = start.elapsed().as_millis() as u64, "managed sandbox created from the pool");
        Ok(Some(info))
    }

    /// Takes a pooled sandbox of `template` matching `wanted`, and the
    /// stale ones met on the way (of another warm snapshot) to discard.
    fn take_pooled(&self, template: &str, wanted: Wanted<'_>) -> (Option<Pooled>, Vec<Pooled>) {
        let mut ready = lock(&self.inner.pools.ready);
        let Some(entries) = ready.get_mut(template) else {
            return (None, Vec::new());
        };
        let (stale, fresh): (Vec<Pooled>, Vec<Pooled>) = entries
            .drain(..)
            .partition(|p| p.warm_dir != wanted.warm_dir);
        *entries = fresh;
        let position = entries.iter().position(|p| {
            (p.vcpus, p.memory_mib, p.internet)
                == (wanted.vcpus, wanted.memory_mib, wanted.internet)
        });
        (position.map(|i| entries.remove(i)), stale)
    }

    /// Destroys pooled sandboxes in the background.
    fn discard_pooled(pooled: Vec<Pooled>) {
        for pooled in pooled {
            tokio::spawn(destroy_pooled(pooled));
        }
    }

    /// Makes room for a create at capacity: destroys one pooled sandbox
    /// (of any template). Whether there was one.
    pub(super) async fn evict_pooled(&self) -> bool {
        let victim = {
            let mut ready = lock(&self.inner.pools.ready);
            ready.values_mut().find_map(Vec::pop)
        };
        let Some(pooled) = victim else {
            return false;
        };
        tracing::info!(sandbox = %pooled.sandbox.id(), "at capacity: a pooled sandbox makes room for a create");
        destroy_pooled(pooled).await;
        true
    }

    /// Destroys the pooled sandboxes of `template` (every template:
    /// `None`), waiting for them; for shutdown and template changes.
    pub(super) async fn drain_pools(&self, template: Option<&str>) {
        let drained: Vec<Pooled> = {
            let mut ready = lock(&self.inner.pools.ready);
            match template {
                Some(name) => ready.remove(name).unwrap_or_default(),
                None => ready.drain().flat_map(|(_, v)| v).collect(),
            }
        };
        for pooled in drained {
            destroy_pooled(pooled).await;
        }
    }

    /// [`Manager::drain_pools`] for `template` without waiting (from a
    /// synchronous caller).
    pub(super) fn drain_pool_in_background(&self, template: &str) {
        let drained = lock(&self.inner.pools.ready)
            .remove(template)
            .unwrap_or_default();
        Self::discard_pooled(drained);
    }
}

/// Destroys a pooled sandbox, nobody's yet: a failure is logged (what is
/// left is the orphan sweep's at the next start).
async fn destroy_pooled(pooled: Pooled) {
    let id = pooled.sandbox.id().to_string();
    if let Err(err) = pooled.sandbox.destroy().await {
        tracing::warn!(sandbox = %id, %err, "destroying a pooled sandbox failed");
    }
}
