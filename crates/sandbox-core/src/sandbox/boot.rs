//! Making a sandbox: run dir, root disk, network, VMM, envd ready and
//! `/init`, each step undone by one rollback when a later one fails.

use super::{
    Attach, BootTimings, Sandbox, SandboxConfig, SandboxState, free_local_port, init_request,
    random_token, root_base, vm_spec, wait_for_envd,
};
use crate::disk;
use crate::error::SandboxError;
use crate::network::{NetworkPool, resolve_internet};
use crate::rollback::{Rollback, remove_dir_if_exists};
use crate::vmm::{Hypervisor, Vm};
use envd_client::EnvdClient;
use netns::Network;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

impl Sandbox {
    /// Cold-boots a sandbox: run directory, copy-on-write root disk, VM,
    /// envd ready, `/init`. When a step fails, everything made so far is
    /// removed and the step's error returned.
    pub async fn boot(
        hypervisor: &dyn Hypervisor,
        config: SandboxConfig,
    ) -> Result<Self, SandboxError> {
        let start = Instant::now();
        config.images.check()?;
        let internet = resolve_internet(config.internet, config.network.is_some())
            .map_err(|why| SandboxError::Network(format!("sandbox {}: {why}", config.id)))?;
        if !config.egress.is_empty() && config.network.is_none() {
            return Err(SandboxError::Network(format!(
                "sandbox {}: egress rules need per-sandbox network namespaces",
                config.id
            )));
        }
        let config = SandboxConfig {
            internet: Some(internet),
            ..config
        };
        let run_dir = config.data_dir.join("sandboxes").join(&config.id);
        if run_dir.exists() {
            return Err(SandboxError::Io {
                what: "sandbox directory already exists:",
                path: run_dir,
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }
        std::fs::create_dir_all(&run_dir).map_err(|source| SandboxError::Io {
            what: "create sandbox directory",
            path: run_dir.clone(),
            source,
        })?;
        let mut made = Made {
            vm: None,
            net: None,
            pool: config.network.clone(),
        };
        let mut undo = Rollback::new(format!("boot of sandbox {}", config.id));
        {
            let (id, dir) = (config.id.clone(), run_dir.clone());
            undo.push(
                "remove the root disk and the sandbox directory",
                move |_| {
                    Box::pin(async move {
                        let disk = disk::remove_root_disk(&id, &dir).await;
                        disk.and(remove_dir_if_exists(&dir))
                    })
                },
            );
        }
        let provider = match &config.rootfs_provider {
            Some(provider) => Arc::clone(provider),
            None => match disk::choose_provider(hypervisor.kind(), None) {
                Ok((provider, _why)) => provider,
                Err(err) => return Err(undo.unwind(&mut made, err).await),
            },
        };
        let steps = boot_steps(
            hypervisor, &config, &*provider, &run_dir, &mut made, &mut undo, start,
        );
        match steps.await {
            Ok((envd, token, timings)) => {
                undo.commit();
                let net = made.net.take();
                let vm = made.vm.take().ok_or_else(|| SandboxError::Unsupported {
                    backend: hypervisor.kind().as_str(),
                    what: "return a VM".to_string(),
                })?;
                tracing::info!(
                    sandbox = %config.id,
                    backend = hypervisor.kind().as_str(),
                    pid = vm.pid(),
                    prepare_ms = timings.prepare.as_millis() as u64,
                    vm_started_ms = timings.vm_started.as_millis() as u64,
                    envd_ready_ms = timings.envd_ready.as_millis() as u64,
                    total_ms = timings.total.as_millis() as u64,
                    "sandbox created"
                );
                let root_base = root_base(hypervisor, &config.images, config.snapshot.as_deref());
                Ok(Self {
                    id: config.id,
                    run_dir,
                    vm,
                    envd,
                    token,
                    images: config.images,
                    data_dir: config.data_dir,
                    vcpus: config.vcpus,
                    memory_mib: config.memory_mib,
                    snapshot: config.snapshot,
                    env_vars: config.env_vars,
                    boot_timeout: config.boot_timeout,
                    state: SandboxState::Running,
                    timings,
                    pool: config.network,
                    net,
                    internet,
                    egress: config.egress,
                    provider,
                    root_base,
                    extra_drives: config.extra_drives,
                })
            }
            Err(err) => Err(undo.unwind(&mut made, err).await),
        }
    }
}

async fn boot_steps(
    hypervisor: &dyn Hypervisor,
    config: &SandboxConfig,
    provider: &dyn disk::RootfsProvider,
    run_dir: &Path,
    made: &mut Made,
    undo: &mut Rollback<Made>,
    start: Instant,
) -> Result<(EnvdClient, String, BootTimings), SandboxError> {
    {
        let (base, base_format) = root_base(hypervisor, &config.images, config.snapshot.as_deref());
        // Under the fixed name vm_spec() finds (disk::locate).
        provider
            .create(&config.id, &base, base_format, run_dir)
            .await?;
    }
    crate::crash::point("create.disk_made");
    if let Some(pool) = &config.network {
        // Sandbox::boot resolved `internet` before calling this.
        made.net = Some(
            pool.create(config.internet.unwrap_or(true), &config.egress)
                .await?,
        );
        undo.push("remove the network", |m: &mut Made| {
            Box::pin(m.remove_network())
        });
    }
    let prepare = start.elapsed();
    let token = random_token()?;
    // A host port for envd; QEMU may lose a race for it, so retry a few times.
    undo.push("destroy the VMM", |m: &mut Made| Box::pin(m.destroy_vm()));
    let mut attempt = 0;
    let (envd_addr, vm_started) = loop {
        attempt += 1;
        let attach = match made.net.as_ref() {
            Some(net) => Attach::Namespace(net),
            None => Attach::User(free_local_port()?),
        };
        let spec = vm_spec(config, run_dir, &attach);
        let vm_start = Instant::now();
        let vm = made.vm.insert(hypervisor.create(spec).await?);
        let started = match &config.snapshot {
            Some(snapshot) => vm
                .start_from_snapshot(snapshot, attach.vm_network())
                .await
                .map(drop),
            None => vm.start().await,
        };
        match started {
            Ok(()) => {
                crate::crash::point("create.vm_started");
                break (attach.envd_addr(), vm_start.elapsed());
            }
            Err(err)
                if attempt < 3
                    && matches!(attach, Attach::User(_))
                    && err.to_string().contains("host forwarding") =>
            {
                tracing::debug!(sandbox = %config.id, "host port taken, retrying");
                if let Some(vm) = made.vm.take() {
                    vm.destroy().await?;
                }
            }
            Err(err) => return Err(err),
        }
    };
    let ready_start = Instant::now();
    let envd = EnvdClient::new(envd_addr);
    let pid = made.vm.as_ref().and_then(|vm| vm.pid());
    if let Err(message) = wait_for_envd(&envd, config.boot_timeout, pid).await {
        let console = made
            .vm
            .as_ref()
            .map(|vm| qemu_vmm::log_tail(&vm.console_log(), 30))
            .unwrap_or_default();
        return Err(SandboxError::EnvdNotReady {
            sandbox: config.id.clone(),
            message,
            console,
        });
    }
    let envd_ready = vm_started + ready_start.elapsed();
    let init_start = Instant::now();
    let mut init = init_request(&token, &config.env_vars);
    if config.snapshot.is_some() {
        init = crate::identity::with_clone_identity(init, &config.id)?;
    }
    // A guest restored from a snapshot still has the snapshotted sandbox's
    // token, and envd takes a new one only from a caller showing it.
    let envd = match config
        .snapshot
        .as_deref()
        .map(crate::snapshot::token)
        .transpose()?
    {
        Some(Some(old)) => envd.with_access_token(old),
        _ => envd,
    };
    let reply = envd
        .init(&init)
        .await
        .map_err(|source| SandboxError::Envd {
            sandbox: config.id.clone(),
            source: Box::new(source),
        })?;
    let envd = envd.with_access_token(token.clone());
    if config.snapshot.is_some() && !reply.identity_applied {
        crate::identity::set_by_shell(&envd, &config.id, config.boot_timeout).await?;
    }
    let timings = BootTimings {
        prepare,
        vm_started,
        envd_ready,
        init: init_start.elapsed(),
        total: start.elapsed(),
    };
    Ok((envd, token, timings))
}

/// What a boot has made so far, for its rollback: the VMM and the
/// network (the run dir and disk are undone by path).
struct Made {
    vm: Option<Box<dyn Vm>>,
    net: Option<Network>,
    pool: Option<Arc<NetworkPool>>,
}

impl Made {
    async fn destroy_vm(&mut self) -> Result<(), SandboxError> {
        match self.vm.take() {
            Some(vm) => vm.destroy().await,
            None => Ok(()),
        }
    }

    async fn remove_network(&mut self) -> Result<(), SandboxError> {
        match (&self.pool, self.net.take()) {
            (Some(pool), Some(net)) => pool.remove(net).await,
            _ => Ok(()),
        }
    }
}
