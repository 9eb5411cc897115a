//! Starting and stopping the agent: manager, listeners, reaper.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::Router;
use qemu_vmm::AccelProbe;
use sandbox_core::{
    BackendKind, FirecrackerBackend, GuestImages, Hypervisor, Manager, ManagerConfig, NetworkPool,
    QemuBackend, RootfsProvider,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backend::{Choice, Facts, KvmVerdict};
use crate::config::{AccelChoice, AgentConfig, RootfsProviderChoice};
use crate::state::AppState;

/// A running agent (in-process: tests and `main`).
#[derive(Debug)]
pub struct RunningAgent {
    /// Where the REST API, the UI and the E2B control plane answer.
    pub api_addr: SocketAddr,
    /// Where the E2B envd proxy answers, if configured.
    pub sandbox_addr: Option<SocketAddr>,
    pub state: AppState,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningAgent {
    /// Stops serving; running sandboxes are left running and recorded, so
    /// the next start re-adopts them.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        self.state
            .manager
            .shutdown()
            .await
            .context("recording sandboxes at shutdown")
    }

    /// Stops serving and destroys every sandbox (tests).
    pub async fn shutdown_and_destroy_all(self) -> Result<()> {
        let manager = self.state.manager.clone();
        for info in manager.list(&sandbox_core::ListFilter::default()) {
            manager
                .destroy(&info.id)
                .await
                .with_context(|| format!("destroying {}", info.id))?;
        }
        self.shutdown().await
    }
}

/// Starts the agent: opens the manager (re-adopting sandboxes of an earlier
/// run), registers the `base` template, binds the listeners and serves.
pub async fn start(config: AgentConfig) -> Result<RunningAgent> {
    let started = Instant::now();
    let guard = crate::auth::Guard::from_config(&config).context("the configured API keys")?;
    anyhow::ensure!(
        guard.has_keys(),
        "no API key is configured: every request would be refused; pass --api-key e2b_<32 hex> \
         (or PETREL_API_KEYS, or api_key_sha256 in the config file)"
    );
    if let Some(domain) = &config.sandbox_domain
        && let Some(problem) = crate::config::sandbox_domain_problem(domain)
    {
        anyhow::bail!("the sandbox domain {domain:?} is not usable: {problem}");
    }
    create_private_dir(&config.data_dir)?;
    let images = base_images(&config)?;
    let network = network_pool(&config)?;
    let hypervisor = hypervisor(&config, images.as_ref(), network.is_some()).await?;
    let rootfs_provider = rootfs_provider(&config, hypervisor.kind())?;
    let manager_config = ManagerConfig {
        default_vcpus: config.default_vcpus,
        default_memory_mib: config.default_memory_mib,
        max_running: config.max_sandboxes,
        max_paused: config.max_paused,
        paused_ttl: Duration::from_secs(config.paused_ttl_s),
        max_snapshots: config.max_snapshots,
        max_snapshot_bytes: config.max_snapshot_bytes,
        network,
        rootfs_provider,
        pool_size: config.pool_size,
        pool_sizes: config.template_pool_sizes.clone(),
        ..ManagerConfig::new(&config.data_dir)
    };
    let manager = Manager::open(manager_config, hypervisor)
        .await
        .context("opening the sandbox manager")?;
    let (stop, stopped) = watch::channel(false);
    let mut warming = None;
    if let Some(images) = &images {
        manager
            .register_template("base", images, "images/build.sh")
            .await
            .context("registering the base template")?;
        if config.warm_templates {
            // Creates cold-boot until the warm snapshot exists; then the
            // pools fill from it, until the agent stops.
            let manager = manager.clone();
            let mut stopped = stopped.clone();
            warming = Some(tokio::spawn(async move {
                if let Err(err) = manager.warm_template("base").await {
                    tracing::warn!(%err, "warming the base template failed; creates cold-boot");
                    return;
                }
                manager
                    .run_pool_filler(async move {
                        let _ = stopped.changed().await;
                    })
                    .await;
            }));
        }
    }
    let state = AppState {
        policy: Arc::new(crate::policy::Policy::new(&config)),
        manager: manager.clone(),
        config: Arc::new(config.clone()),
        started_at: Instant::now(),
    };
    let mut tasks: Vec<JoinHandle<()>> = warming.into_iter().collect();
    if let Some(network) = manager.config().network.clone() {
        // After Manager::open removed what a crashed run left; the spares
        // are removed when the agent stops (shutdown awaits this task).
        let mut stopped = stopped.clone();
        tasks.push(tokio::spawn(async move {
            network
                .run_spares(async move {
                    let _ = stopped.changed().await;
                })
                .await;
        }));
    }
    tasks.push(tokio::spawn({
        let reaper = manager.spawn_reaper(Duration::from_millis(500));
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.changed().await;
            reaper.abort();
        }
    }));
    // One guard in front of every route of this listener (and its 404s).
    let api = Router::new()
        .merge(crate::api::router(state.clone()))
        .merge(crate::ui::router(state.clone()))
        .merge(crate::e2b::control_router(state.clone()))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(guard),
            crate::auth::guard,
        ));
    let (api_addr, task) = serve(config.listen, api, stopped.clone()).await?;
    tasks.push(task);
    let sandbox_addr = match config.sandbox_listen {
        Some(addr) => {
            let (addr, task) = serve(
                addr,
                crate::e2b::proxy_router(state.clone()),
                stopped.clone(),
            )
            .await?;
            tasks.push(task);
            Some(addr)
        }
        None => None,
    };
    tracing::info!(%api_addr, ?sandbox_addr, took_ms = started.elapsed().as_millis() as u64, "host agent serving");
    Ok(RunningAgent {
        api_addr,
        sandbox_addr,
        state,
        stop,
        tasks,
    })
}

/// `dir` (and its parents) created, and `dir` itself made 0700: it holds
/// the database (envd tokens), saved RAM and snapshots.
fn create_private_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating data dir {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making data dir {} private (0700)", dir.display()))
}

async fn serve(
    addr: SocketAddr,
    router: Router,
    mut stopped: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr().context("reading the bound address")?;
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.changed().await;
        };
        if let Err(err) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(%local, %err, "server failed");
        }
    });
    Ok((local, task))
}

/// The namespace pool, unless sandboxes use QEMU's user-mode network
/// (also what `host-agent install --purge` takes over).
pub fn network_pool(config: &AgentConfig) -> Result<Option<Arc<NetworkPool>>> {
    if !config.network.namespaces() {
        tracing::info!("sandboxes use QEMU's user-mode network");
        return Ok(None);
    }
    let first = config.net_slot_first;
    let end = first
        .checked_add(config.net_slot_count)
        .context("net_slot_first + net_slot_count overflows")?;
    let policy = sandbox_core::network::EgressPolicy {
        smtp: config.net_allow_smtp,
        max_connections: config.net_max_connections,
        new_connections_per_sec: config.net_new_connections_per_sec,
        ..sandbox_core::network::EgressPolicy::default()
    };
    let pool = NetworkPool::new(first..end)
        .with_context(|| format!("creating the network slot pool {first}..{end}"))?
        .with_policy(policy)
        .with_spares(config.net_spares)
        .with_background_release();
    tracing::info!(slots = ?(first..end), "sandboxes get their own network namespaces");
    Ok(Some(Arc::new(pool)))
}

/// The configured rootfs provider, checked usable here with `backend`;
/// `None`: the backend's default choice.
fn rootfs_provider(
    config: &AgentConfig,
    backend: BackendKind,
) -> Result<Option<Arc<dyn RootfsProvider>>> {
    let requested = config.rootfs_provider.map(RootfsProviderChoice::as_str);
    let (provider, why) = sandbox_core::choose_provider(backend, requested).with_context(|| {
        format!(
            "rootfs_provider {} cannot be used here",
            requested.unwrap_or("(default)")
        )
    })?;
    tracing::info!(provider = provider.name(), reason = %why, "rootfs provider");
    Ok(requested.is_some().then_some(provider))
}

fn base_images(config: &AgentConfig) -> Result<Option<GuestImages>> {
    match (&config.kernel, &config.rootfs) {
        (Some(kernel), Some(rootfs)) => {
            let images = GuestImages {
                kernel: kernel.clone(),
                rootfs: rootfs.clone(),
            };
            images.check().context("the base template's images")?;
            Ok(Some(images))
        }
        (None, None) => Ok(None),
        _ => anyhow::bail!("--kernel and --rootfs go together"),
    }
}

/// The VMM backend [`crate::backend::decide`] picks: Firecracker, or QEMU
/// with the probed (or forced) accelerator. `namespaces`: sandboxes get
/// network namespaces.
async fn hypervisor(
    config: &AgentConfig,
    images: Option<&GuestImages>,
    namespaces: bool,
) -> Result<Arc<dyn Hypervisor>> {
    let probe = match (config.accel, images) {
        (AccelChoice::Auto, Some(images)) => {
            let probe = AccelProbe::new(
                &images.kernel,
                &images.rootfs,
                Some(&config.data_dir),
                &config.data_dir,
            );
            let outcome = qemu_vmm::probe_accelerator(&probe).await;
            tracing::info!(accel = %outcome.accel, reason = %outcome.reason, cached = outcome.cached, "accelerator");
            Some(outcome)
        }
        _ => None,
    };
    let facts = Facts {
        kvm: KvmVerdict::of(config.accel, probe.as_ref()),
        firecracker: fc_client::find_firecracker(),
        namespaces,
    };
    let choice = crate::backend::decide(config.vmm, &facts).map_err(anyhow::Error::msg)?;
    tracing::info!(backend = %choice.describe(), "vmm backend");
    Ok(match choice {
        Choice::Qemu { accel, .. } => Arc::new(QemuBackend::new(accel)),
        Choice::Firecracker { binary, .. } => Arc::new(FirecrackerBackend::with_binary(binary)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VmmChoice;

    #[tokio::test]
    async fn serve_refuses_firecracker_where_kvm_is_not_usable_saying_why() {
        let config = AgentConfig {
            vmm: VmmChoice::Firecracker,
            accel: AccelChoice::Tcg,
            ..AgentConfig::default()
        };

        let err = hypervisor(&config, None, true)
            .await
            .unwrap_err()
            .to_string();

        assert!(
            err.starts_with("--vmm firecracker cannot run here:") && err.contains("--vmm qemu"),
            "{err}"
        );
    }
}
