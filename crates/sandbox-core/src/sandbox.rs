//! One sandbox: a guest booted from a template's images, reachable through
//! envd, torn down with every resource it made.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use envd_client::{ENVD_PORT, EnvdClient, ExecOutput, ExecRequest, InitRequest};
use netns::Network;

use crate::disk;
use crate::error::SandboxError;
use crate::images::GuestImages;
use crate::network::{NetworkPool, resolve_internet};
use crate::qemu::default_boot_timeout;
use crate::rollback::{Rollback, remove_dir_if_exists};
use crate::vmm::{Hypervisor, PauseStats, Vm, VmNetwork, VmSpec};

/// The guest's address on QEMU's user-mode network, and what it routes to.
const USER_NET_KERNEL_ARGS: &str =
    "ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off petrel.dns=10.0.2.3";

/// What to boot.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Names the sandbox (hostname, run directory, logs).
    pub id: String,
    pub images: GuestImages,
    /// The sandbox's own directory is `data_dir/sandboxes/<id>`.
    pub data_dir: PathBuf,
    pub vcpus: u8,
    pub memory_mib: u32,
    /// How long the guest gets to answer on envd.
    pub boot_timeout: Duration,
    /// Default environment of every process in the guest.
    pub env_vars: BTreeMap<String, String>,
    /// Start from this snapshot (made by [`Sandbox::snapshot`]) instead of
    /// a cold boot; `images` must be the snapshot's template images.
    pub snapshot: Option<PathBuf>,
    /// Give the sandbox its own network namespace from this pool; `None`:
    /// QEMU's user-mode network with a forward from a local port.
    pub network: Option<Arc<NetworkPool>>,
    /// Outbound internet; `None`: the network's default. See
    /// [`crate::network::resolve_internet`]: on by default in a namespace;
    /// QEMU's user-mode network is always isolated, so there `None` means
    /// off and `Some(true)` is refused. Private ranges, the host and other
    /// sandboxes are unreachable either way.
    pub internet: Option<bool>,
    /// Makes the root disk; `None`: [`disk::choose_provider`]'s choice for
    /// the backend (qcow2 overlay on QEMU).
    pub rootfs_provider: Option<Arc<dyn disk::RootfsProvider>>,
    /// Further raw disk images the guest sees, writable, as `/dev/vdb`,
    /// `/dev/vdc`, ... (QEMU only; the caller owns the files).
    pub extra_drives: Vec<PathBuf>,
    /// Appended to the guest kernel's command line at a cold boot (e.g.
    /// `tsc_early_khz=` for the outer VM of a nested-KVM test); empty by
    /// default.
    pub extra_kernel_args: String,
}

impl SandboxConfig {
    /// 1 vCPU, 512 MiB, [`default_boot_timeout`], no extra env.
    pub fn new(id: impl Into<String>, images: GuestImages, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            id: id.into(),
            images,
            data_dir: data_dir.into(),
            vcpus: 1,
            memory_mib: 512,
            boot_timeout: default_boot_timeout(),
            env_vars: BTreeMap::new(),
            snapshot: None,
            network: None,
            internet: None,
            rootfs_provider: None,
            extra_drives: Vec::new(),
            extra_kernel_args: String::new(),
        }
    }
}

/// How long each step of a cold boot took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BootTimings {
    /// Disk overlay and run directory.
    pub prepare: Duration,
    /// VMM process started (QMP or API answering).
    pub vm_started: Duration,
    /// From VMM start until envd answered `/health`.
    pub envd_ready: Duration,
    /// `/init` (token, env, clock).
    pub init: Duration,
    pub total: Duration,
}

/// What a later agent run needs to take a sandbox over (see
/// [`Sandbox::reattach`]); the lifecycle manager persists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SandboxRecord {
    pub config: SandboxRecordConfig,
    pub token: String,
    pub state: SandboxState,
    /// The VMM process while running.
    pub vmm_pid: Option<u32>,
    /// Where envd is reached while running.
    pub envd_addr: Option<SocketAddr>,
    /// The network namespace slot while running (none: user-mode network).
    #[serde(default)]
    pub net_slot: Option<u16>,
}

/// The persisted part of a [`SandboxConfig`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SandboxRecordConfig {
    pub id: String,
    pub images: GuestImages,
    pub data_dir: PathBuf,
    pub vcpus: u8,
    pub memory_mib: u32,
    pub env_vars: BTreeMap<String, String>,
    pub snapshot: Option<PathBuf>,
    #[serde(default = "default_true")]
    pub internet: bool,
    #[serde(default)]
    pub extra_drives: Vec<PathBuf>,
}

fn default_true() -> bool {
    true
}

/// Whether the guest runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SandboxState {
    Running,
    /// Saved to disk; no VMM process.
    Paused,
    /// A resume let the guest run and then failed, and saving it again
    /// failed too: the saved state no longer matches its RAM and disk. No
    /// VMM process; the files stay for inspection until destroyed.
    Broken,
}

/// A booted sandbox.
#[derive(Debug)]
pub struct Sandbox {
    id: String,
    run_dir: PathBuf,
    vm: Box<dyn Vm>,
    envd: EnvdClient,
    token: String,
    images: GuestImages,
    data_dir: PathBuf,
    vcpus: u8,
    memory_mib: u32,
    snapshot: Option<PathBuf>,
    env_vars: BTreeMap<String, String>,
    boot_timeout: Duration,
    state: SandboxState,
    timings: BootTimings,
    pool: Option<Arc<NetworkPool>>,
    /// The sandbox's namespace while it runs.
    net: Option<Network>,
    internet: bool,
    /// What made the root disk: releases it at pause, restores it at resume.
    provider: Arc<dyn disk::RootfsProvider>,
    /// The read-only image the root disk is made over (see [`root_base`]).
    root_base: (PathBuf, disk::DiskFormat),
    extra_drives: Vec<PathBuf>,
}

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
                    provider,
                    root_base,
                    extra_drives: config.extra_drives,
                })
            }
            Err(err) => Err(undo.unwind(&mut made, err).await),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The client of this sandbox's envd (token already set).
    pub fn envd(&self) -> &EnvdClient {
        &self.envd
    }

    /// Adds `env_vars` to the environment of every later process (envd
    /// `/init`, which also sets the guest clock); kept for resumes.
    pub async fn add_env_vars(
        &mut self,
        env_vars: &BTreeMap<String, String>,
    ) -> Result<(), SandboxError> {
        self.envd
            .init(&init_request(&self.token, env_vars))
            .await
            .map_err(|source| SandboxError::Envd {
                sandbox: self.id.clone(),
                source: Box::new(source),
            })?;
        self.env_vars
            .extend(env_vars.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(())
    }

    /// What [`Sandbox::reattach`] needs after an agent restart.
    pub fn record(&self) -> SandboxRecord {
        SandboxRecord {
            config: SandboxRecordConfig {
                id: self.id.clone(),
                images: self.images.clone(),
                data_dir: self.data_dir.clone(),
                vcpus: self.vcpus,
                memory_mib: self.memory_mib,
                env_vars: self.env_vars.clone(),
                snapshot: self.snapshot.clone(),
                internet: self.internet,
                extra_drives: self.extra_drives.clone(),
            },
            token: self.token.clone(),
            state: self.state,
            vmm_pid: self.vm.pid(),
            envd_addr: (self.state == SandboxState::Running).then(|| self.envd.addr()),
            net_slot: self.net.as_ref().map(|n| n.slot().index()),
        }
    }

    /// Takes over a sandbox of an earlier agent run: a running one by
    /// adopting its VMM process (it must still run and envd answer), a
    /// paused one as it lies on disk.
    pub async fn reattach(
        hypervisor: &dyn Hypervisor,
        record: SandboxRecord,
        pool: Option<Arc<NetworkPool>>,
    ) -> Result<Self, SandboxError> {
        let rc = record.config;
        let config = SandboxConfig {
            vcpus: rc.vcpus,
            memory_mib: rc.memory_mib,
            env_vars: rc.env_vars,
            snapshot: rc.snapshot,
            network: pool.clone(),
            // A user-mode sandbox is isolated whatever an older record says.
            internet: Some(rc.internet && pool.is_some()),
            extra_drives: rc.extra_drives,
            ..SandboxConfig::new(rc.id, rc.images, rc.data_dir)
        };
        let run_dir = config.data_dir.join("sandboxes").join(&config.id);
        let provider = disk::provider_of(&run_dir)?;
        let placeholder = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let mut net = None;
        let (vm, envd) = match (record.state, record.vmm_pid, record.envd_addr) {
            (SandboxState::Running, Some(pid), Some(addr)) => {
                // The VM runs on its disk: a dm device is taken over as is.
                let (base, _) = root_base(hypervisor, &config.images, config.snapshot.as_deref());
                provider.restore(&config.id, &base, &run_dir).await?;
                let adopted: Result<_, SandboxError> = async {
                    let attach = match (record.net_slot, &pool) {
                        (Some(slot), Some(pool)) => Attach::Namespace(
                            net.insert(pool.adopt(slot, config.internet.unwrap_or(true)).await?),
                        ),
                        (Some(slot), None) => {
                            return Err(SandboxError::Network(format!(
                                "sandbox {} ran in network slot {slot} but no network pool is configured",
                                config.id
                            )));
                        }
                        (None, _) => Attach::User(addr),
                    };
                    let mut vm = hypervisor
                        .adopt(vm_spec(&config, &run_dir, &attach), pid)
                        .await?;
                    // An agent that crashed mid-pause or mid-snapshot left
                    // the vCPUs stopped.
                    if vm.continue_if_stopped().await? {
                        tracing::info!(sandbox = %config.id, "adopted guest was stopped: continued");
                    }
                    let envd = EnvdClient::new(addr).with_access_token(record.token.clone());
                    // A slow guest is kept: it is waited for in the
                    // background, and the agent serves meanwhile.
                    if envd.wait_healthy(Duration::from_millis(500)).await.is_err() {
                        let (id, slow) = (config.id.clone(), envd.clone());
                        let patience = config.boot_timeout;
                        tokio::spawn(async move {
                            match slow.wait_healthy(patience).await {
                                Ok(took) => tracing::info!(sandbox = %id, took_ms = took.as_millis() as u64, "adopted guest's envd answers"),
                                Err(err) => tracing::warn!(sandbox = %id, %err, "adopted guest's envd does not answer; kept running (destroy it if it stays so)"),
                            }
                        });
                    }
                    Ok((vm, envd))
                }
                .await;
                match adopted {
                    Ok(adopted) => adopted,
                    Err(err) => {
                        // What was taken over goes back (the caller cleans up).
                        if let (Some(pool), Some(net)) = (&pool, net.take()) {
                            let _ = pool.remove(net).await;
                        }
                        if let Err(undo) = provider.release(&config.id, &run_dir).await {
                            tracing::warn!(sandbox = %config.id, %undo, "releasing the disk of a failed reattach");
                        }
                        return Err(err);
                    }
                }
            }
            (SandboxState::Paused | SandboxState::Broken, _, _) => {
                let vm = hypervisor
                    .create(vm_spec(&config, &run_dir, &Attach::User(placeholder)))
                    .await?;
                (vm, EnvdClient::new(placeholder))
            }
            (state, pid, addr) => {
                return Err(SandboxError::InvalidState {
                    sandbox: config.id,
                    operation: format!("reattach (pid {pid:?}, envd {addr:?})"),
                    state,
                });
            }
        };
        tracing::info!(sandbox = %config.id, state = ?record.state, "sandbox reattached");
        let base = root_base(hypervisor, &config.images, config.snapshot.as_deref());
        Ok(Self {
            id: config.id,
            run_dir,
            vm,
            envd,
            token: record.token,
            images: config.images,
            data_dir: config.data_dir,
            vcpus: config.vcpus,
            memory_mib: config.memory_mib,
            snapshot: config.snapshot,
            env_vars: config.env_vars,
            boot_timeout: config.boot_timeout,
            state: record.state,
            timings: BootTimings::default(),
            pool,
            net,
            internet: config.internet.unwrap_or(false),
            provider,
            root_base: base,
            extra_drives: config.extra_drives,
        })
    }

    /// Leaves the VMM process running when this handle is dropped (agent
    /// shutdown: sandboxes keep running and are reattached at the next
    /// start).
    pub fn detach(self) -> SandboxRecord {
        let record = self.record();
        self.vm.detach();
        record
    }

    /// The envd access token `/init` gave the guest.
    pub fn access_token(&self) -> &str {
        &self.token
    }

    pub fn timings(&self) -> BootTimings {
        self.timings
    }

    /// The VMM process id.
    pub fn vmm_pid(&self) -> Option<u32> {
        self.vm.pid()
    }

    /// The guest's serial console log (in the run directory).
    pub fn console_log(&self) -> PathBuf {
        self.vm.console_log()
    }

    /// The sandbox's directory (disk, sockets, logs).
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    pub fn state(&self) -> SandboxState {
        self.state
    }

    /// Saves the running guest (memory, devices, disk) into `dir` as a
    /// snapshot that new sandboxes can start from; the sandbox keeps running.
    /// Returns once every file of the snapshot, `dir`'s name in its parent
    /// and the images its disk is backed by are on stable storage.
    pub async fn snapshot(&mut self, dir: &Path) -> Result<PauseStats, SandboxError> {
        self.require(SandboxState::Running, "snapshot")?;
        let stats = self.vm.snapshot(dir).await?;
        crate::snapshot::save_token(dir, &self.token)?;
        crate::snapshot::save_shape(
            dir,
            crate::snapshot::MachineShape {
                vcpus: self.vcpus,
                memory_mib: self.memory_mib,
            },
        )?;
        crate::durable::sync_dir_contents_blocking(dir.to_path_buf()).await?;
        tracing::info!(sandbox = %self.id, dir = %dir.display(), took_ms = stats.took.as_millis() as u64, "sandbox snapshotted");
        Ok(stats)
    }

    /// Saves the guest to disk and ends its VMM process; the sandbox keeps
    /// its disk, memory and identity for [`Sandbox::resume`]. Returns once
    /// the saved state, the RAM and the disk are on stable storage (the
    /// backend syncs them before it ends the VMM).
    pub async fn pause(&mut self) -> Result<PauseStats, SandboxError> {
        self.require(SandboxState::Running, "pause")?;
        let state_dir = self.run_dir.join("state");
        // The state of an earlier pause is stale (the guest ran since): a
        // state directory with its `vmstate.json` is then always this
        // pause's, complete (recovery relies on it).
        match std::fs::remove_dir_all(&state_dir) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SandboxError::Io {
                    what: "remove the stale saved state",
                    path: state_dir,
                    source,
                });
            }
        }
        let stats = self.vm.pause(&state_dir).await?;
        self.state = SandboxState::Paused;
        crate::crash::point("pause.vm_stopped");
        // Nor a dm device: its writes are in the CoW file until resume.
        if let Err(err) = self.provider.release(&self.id, &self.run_dir).await {
            tracing::error!(sandbox = %self.id, %err, "releasing the paused sandbox's root disk failed");
        }
        // A paused sandbox holds no network slot.
        if let (Some(pool), Some(net)) = (&self.pool, self.net.take())
            && let Err(err) = pool.remove(net).await
        {
            tracing::error!(sandbox = %self.id, %err, "removing the paused sandbox's network failed");
        }
        crate::crash::point("pause.released");
        tracing::info!(sandbox = %self.id, took_ms = stats.took.as_millis() as u64, state_bytes = stats.state_bytes, "sandbox paused");
        Ok(stats)
    }

    /// Continues a paused sandbox in a new VMM process: memory, processes
    /// and files as they were; the guest clock is set to now. See
    /// [`Sandbox::resume_with`] for what a failure leaves.
    pub async fn resume(&mut self) -> Result<Duration, SandboxError> {
        self.resume_with(&|_| Ok(())).await
    }

    /// [`Sandbox::resume`], and `on_running` is called once the restored guest runs, with the record
    /// of the running VM (pid, network), so the caller can make it durable:
    /// from then on the saved state is stale. A failure after that point
    /// saves the guest again (the sandbox stays paused, consistent), or,
    /// when that fails too, leaves it [`SandboxState::Broken`].
    pub async fn resume_with(
        &mut self,
        on_running: &(dyn Fn(&SandboxRecord) -> Result<(), SandboxError> + Send + Sync),
    ) -> Result<Duration, SandboxError> {
        self.require(SandboxState::Paused, "resume")?;
        let start = Instant::now();
        let mut undo = Rollback::new(format!("resume of sandbox {}", self.id));
        self.provider
            .restore(&self.id, &self.root_base.0, &self.run_dir)
            .await?;
        undo.push("release the root disk", |s: &mut Sandbox| {
            Box::pin(s.release_disk())
        });
        let attach = match &self.pool {
            Some(pool) => match pool.create(self.internet).await {
                Ok(net) => {
                    undo.push("remove the network", |s: &mut Sandbox| {
                        Box::pin(s.release_network())
                    });
                    Attach::Namespace(self.net.insert(net))
                }
                Err(err) => return Err(undo.unwind(self, err).await),
            },
            None => match free_local_port() {
                Ok(port) => Attach::User(port),
                Err(err) => return Err(undo.unwind(self, err).await),
            },
        };
        let (network, envd_addr) = (attach.vm_network(), attach.envd_addr());
        // Until the guest runs, the saved state holds: stopping the new VMM
        // is all it takes.
        undo.push("stop the VMM", |s: &mut Sandbox| {
            Box::pin(async move {
                s.state = SandboxState::Paused;
                s.vm.stop().await
            })
        });
        let vm_took = match self.vm.resume(&self.run_dir.join("state"), network).await {
            Ok(took) => took,
            Err(err) => return Err(undo.unwind(self, err).await),
        };
        self.state = SandboxState::Running;
        self.envd = EnvdClient::new(envd_addr).with_access_token(self.token.clone());
        if let Err(err) = on_running(&self.record()) {
            // The guest has not run yet (its vCPUs wait).
            return Err(undo.unwind(self, err).await);
        }
        crate::crash::point("resume.vm_restored");
        // From here on the saved state is stale: a failure saves the guest
        // again before the VMM, network and disk are let go.
        undo.push("save the guest again", |s: &mut Sandbox| {
            Box::pin(s.save_again())
        });
        let ready = match self.vm.continue_if_stopped().await {
            Ok(_) => self.resume_guest(envd_addr).await,
            Err(err) => Err(err),
        };
        let ready = match ready {
            Ok(ready) => ready,
            Err(err) => {
                let err = undo.unwind(self, err).await;
                return Err(SandboxError::ResumeFailed {
                    sandbox: self.id.clone(),
                    outcome: if self.state == SandboxState::Paused {
                        "the guest was saved again and stays paused"
                    } else {
                        "saving the guest again failed too; its files are kept (state error) until it is destroyed"
                    },
                    source: Box::new(err),
                });
            }
        };
        undo.commit();
        // The saved state is stale now that the guest ran: free its space.
        let state_dir = self.run_dir.join("state");
        if let Err(err) = std::fs::remove_dir_all(&state_dir) {
            tracing::warn!(sandbox = %self.id, %err, "cannot remove the stale saved state");
        }
        let took = start.elapsed();
        tracing::info!(
            sandbox = %self.id,
            vm_restore_ms = vm_took.as_millis() as u64,
            envd_ready_ms = ready.as_millis() as u64,
            took_ms = took.as_millis() as u64,
            "sandbox resumed"
        );
        Ok(took)
    }

    /// The guest side of a resume: envd answers, `/init` (token, env, clock).
    async fn resume_guest(&mut self, envd_addr: SocketAddr) -> Result<Duration, SandboxError> {
        let envd = EnvdClient::new(envd_addr);
        let ready = wait_for_envd(&envd, self.boot_timeout, self.vm.pid())
            .await
            .map_err(|message| SandboxError::EnvdNotReady {
                sandbox: self.id.clone(),
                message,
                console: qemu_vmm::log_tail(&self.vm.console_log(), 30),
            })?;
        let envd = envd.with_access_token(self.token.clone());
        let init = init_request(&self.token, &self.env_vars);
        envd.init(&init)
            .await
            .map_err(|source| SandboxError::Envd {
                sandbox: self.id.clone(),
                source: Box::new(source),
            })?;
        self.envd = envd;
        Ok(ready)
    }

    /// Saves a guest whose resume failed after it ran (its saved state is
    /// stale) and ends its VMM: paused and consistent again, or
    /// [`SandboxState::Broken`] (files kept) when the save fails.
    async fn save_again(&mut self) -> Result<(), SandboxError> {
        let state_dir = self.run_dir.join("state");
        let _ = std::fs::remove_dir_all(&state_dir);
        match self.vm.pause(&state_dir).await {
            Ok(_) => {
                self.state = SandboxState::Paused;
                Ok(())
            }
            Err(err) => {
                self.state = SandboxState::Broken;
                Err(err)
            }
        }
    }

    /// Removes the network a resume made (a paused sandbox holds none).
    async fn release_network(&mut self) -> Result<(), SandboxError> {
        match (&self.pool, self.net.take()) {
            (Some(pool), Some(net)) => pool.remove(net).await,
            _ => Ok(()),
        }
    }

    /// Undoes the disk restore of a resume that failed (the sandbox stays
    /// paused and holds no device).
    async fn release_disk(&mut self) -> Result<(), SandboxError> {
        self.provider.release(&self.id, &self.run_dir).await
    }

    fn require(&self, state: SandboxState, operation: &str) -> Result<(), SandboxError> {
        if self.state == state {
            Ok(())
        } else {
            Err(SandboxError::InvalidState {
                sandbox: self.id.clone(),
                operation: operation.to_string(),
                state: self.state,
            })
        }
    }

    /// Runs a command in the guest and collects its output.
    pub async fn exec(&self, request: ExecRequest) -> Result<ExecOutput, SandboxError> {
        self.require(SandboxState::Running, "exec")?;
        self.envd
            .exec(request)
            .await
            .map_err(|source| SandboxError::Envd {
                sandbox: self.id.clone(),
                source: Box::new(source),
            })
    }

    /// Runs `bash -l -c <command>` in the guest as the default user.
    pub async fn exec_shell(&self, command: &str) -> Result<ExecOutput, SandboxError> {
        self.exec(ExecRequest::shell(command)).await
    }

    /// Stops the VM and removes the sandbox's files. Every step is tried; the
    /// error lists all that failed.
    pub async fn destroy(self) -> Result<(), SandboxError> {
        let start = Instant::now();
        let net = self.pool.as_deref().zip(self.net);
        let result = teardown(&self.id, Some(self.vm), net, &self.run_dir).await;
        tracing::info!(sandbox = %self.id, ok = result.is_ok(), took_ms = start.elapsed().as_millis() as u64, "sandbox destroyed");
        result
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
        made.net = Some(pool.create(config.internet.unwrap_or(true)).await?);
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

/// The read-only base of a sandbox's root disk: its snapshot's disk, else
/// its template's raw image.
fn root_base(
    hypervisor: &dyn Hypervisor,
    images: &GuestImages,
    snapshot: Option<&Path>,
) -> (PathBuf, disk::DiskFormat) {
    match snapshot {
        Some(snapshot) => hypervisor.snapshot_disk(snapshot),
        None => (images.rootfs.clone(), disk::DiskFormat::Raw),
    }
}

fn init_request(token: &str, env_vars: &BTreeMap<String, String>) -> InitRequest {
    InitRequest {
        access_token: Some(token.to_string()),
        env_vars: env_vars.clone(),
        timestamp: Some(SystemTime::now()),
        ..InitRequest::default()
    }
}

/// Stops the VM (if any) and removes the run directory, collecting errors.
/// Waits until envd answers, at most `timeout`, and no longer than the
/// VMM process `pid` lives (a destroy that killed it ends the wait at
/// once). The error says which.
async fn wait_for_envd(
    envd: &EnvdClient,
    timeout: Duration,
    pid: Option<u32>,
) -> Result<Duration, String> {
    let vmm_gone = async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if pid.is_some_and(|pid| !crate::vmm::process_alive(pid)) {
                return;
            }
        }
    };
    tokio::select! {
        ready = envd.wait_healthy(timeout) => ready.map_err(|err| err.to_string()),
        () = vmm_gone => Err(format!(
            "the VMM process {} ended before envd answered",
            pid.unwrap_or_default()
        )),
    }
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

async fn teardown(
    id: &str,
    vm: Option<Box<dyn Vm>>,
    net: Option<(&NetworkPool, Network)>,
    run_dir: &Path,
) -> Result<(), SandboxError> {
    let mut errors = Vec::new();
    // The VMM goes first: it holds the TAP and the disk.
    if let Some(vm) = vm
        && let Err(err) = vm.destroy().await
    {
        errors.push(err.to_string());
    }
    crate::crash::point("destroy.vm_stopped");
    if let Some((pool, net)) = net
        && let Err(err) = pool.remove(net).await
    {
        errors.push(err.to_string());
    }
    if let Err(err) = disk::remove_root_disk(id, run_dir).await {
        errors.push(err.to_string());
    }
    match std::fs::remove_dir_all(run_dir) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => errors.push(format!("remove {}: {err}", run_dir.display())),
    }
    crate::crash::point("destroy.removed");
    if errors.is_empty() {
        Ok(())
    } else {
        Err(SandboxError::Teardown {
            resource: format!("sandbox {id}"),
            errors,
        })
    }
}

/// How the host reaches a sandbox's guest.
enum Attach<'a> {
    /// QEMU's user-mode network, envd forwarded from this local address.
    User(SocketAddr),
    /// The sandbox's own network namespace.
    Namespace(&'a Network),
}

impl Attach<'_> {
    fn vm_network(&self) -> VmNetwork {
        match self {
            Attach::User(host) => VmNetwork::UserForward { host: *host },
            Attach::Namespace(net) => VmNetwork::Tap {
                ifname: net.guest().tap_name.clone(),
                mac: net.guest().mac.clone(),
                netns: Some(net.netns_path().to_path_buf()),
            },
        }
    }

    fn envd_addr(&self) -> SocketAddr {
        match self {
            Attach::User(host) => *host,
            Attach::Namespace(net) => SocketAddr::from((net.host_reachable_ip(), ENVD_PORT)),
        }
    }

    /// The guest's address, gateway and DNS on the kernel command line.
    fn kernel_args(&self) -> String {
        match self {
            Attach::User(_) => USER_NET_KERNEL_ARGS.to_string(),
            Attach::Namespace(net) => {
                let guest = net.guest();
                match guest.kernel_dns_arg() {
                    Some(dns) => format!("{} {dns}", guest.kernel_ip_arg()),
                    None => guest.kernel_ip_arg(),
                }
            }
        }
    }
}

/// The VM of a sandbox: its overlay disk in `run_dir`, attached as `attach`.
fn vm_spec(config: &SandboxConfig, run_dir: &Path, attach: &Attach<'_>) -> VmSpec {
    VmSpec {
        id: config.id.clone(),
        vcpus: config.vcpus,
        memory_mib: config.memory_mib,
        kernel: config.images.kernel.clone(),
        kernel_args: format!(
            "console=ttyS0 root=/dev/vda rw init=/sbin/petrel-init panic=-1 quiet tsc=reliable {} petrel.hostname={}{}{}",
            attach.kernel_args(),
            config.id,
            if config.extra_kernel_args.is_empty() {
                ""
            } else {
                " "
            },
            config.extra_kernel_args
        ),
        root_disk: disk::locate(run_dir).path,
        root_disk_qcow2: disk::locate(run_dir).is_qcow2(),
        extra_drives: config.extra_drives.clone(),
        network: attach.vm_network(),
        run_dir: run_dir.to_path_buf(),
        base_image: Some(config.images.rootfs.clone()),
    }
}

fn free_local_port() -> Result<SocketAddr, SandboxError> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|source| SandboxError::Io {
            what: "reserve a local port on",
            path: PathBuf::from("127.0.0.1"),
            source,
        })?;
    listener.local_addr().map_err(|source| SandboxError::Io {
        what: "read the local port of",
        path: PathBuf::from("127.0.0.1"),
        source,
    })
}

/// A fresh 128-bit access token for the sandbox's envd, in hex.
pub(crate) fn random_token() -> Result<String, SandboxError> {
    Ok(crate::identity::host_random(16)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
