//! One sandbox: a guest booted from a template's images, reachable through
//! envd, torn down with every resource it made.
//!
//! `boot.rs` makes one (cold or from a snapshot) wired as `attach.rs` says, `pause.rs` pauses,
//! resumes and snapshots it, `reattach.rs` hands it from one agent run to
//! the next; this file holds the types, exec and destroy.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use envd_client::{EnvdClient, ExecOutput, ExecRequest, InitRequest};
use netns::Network;

use crate::disk;
use crate::error::SandboxError;
use crate::images::GuestImages;
use crate::network::{EgressRules, NetworkPool};
use crate::qemu::default_boot_timeout;
use crate::vmm::Vm;

mod attach;
mod boot;
mod pause;
pub(crate) use pause::is_filesystem_only;
mod reattach;

use attach::{Attach, free_local_port, root_base, vm_spec};

/// The guest's address on QEMU's user-mode network, and what it routes to.
pub(super) const USER_NET_KERNEL_ARGS: &str =
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
    /// The sandbox's own allow and deny ranges (namespace networks only).
    pub egress: EgressRules,
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
            egress: EgressRules::default(),
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

/// How long each step of a resume took (each from the previous step's end).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResumeTimings {
    /// The rootfs provider restored the disk.
    pub disk: Duration,
    /// A network namespace taken (a spare) or made.
    pub network: Duration,
    /// The new VMM loaded the saved state (vCPUs not yet running).
    pub vm_restore: Duration,
    /// From `cont` until envd answered `/health`: under TCG mostly the
    /// fresh translation of the guest code that answers.
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
    pub egress: EgressRules,
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
    egress: EgressRules,
    /// What made the root disk: releases it at pause, restores it at resume.
    provider: Arc<dyn disk::RootfsProvider>,
    /// The read-only image the root disk is made over (see [`root_base`]).
    root_base: (PathBuf, disk::DiskFormat),
    extra_drives: Vec<PathBuf>,
}

impl Sandbox {
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
                egress: self.egress.clone(),
                extra_drives: self.extra_drives.clone(),
            },
            token: self.token.clone(),
            state: self.state,
            vmm_pid: self.vm.pid(),
            envd_addr: (self.state == SandboxState::Running).then(|| self.envd.addr()),
            net_slot: self.net.as_ref().map(|n| n.slot().index()),
        }
    }

    /// The sandbox's own egress ranges.
    pub fn egress(&self) -> &EgressRules {
        &self.egress
    }

    /// Replaces the sandbox's own egress ranges: at once on its network
    /// while it runs (connections already open to a range now denied are
    /// cut), and for every later resume. Rules need a namespace network;
    /// clearing them never fails for want of one.
    pub async fn set_egress(&mut self, egress: EgressRules) -> Result<(), SandboxError> {
        let Some(pool) = &self.pool else {
            if egress.is_empty() {
                return Ok(());
            }
            return Err(SandboxError::Network(format!(
                "sandbox {}: egress rules need per-sandbox network namespaces",
                self.id
            )));
        };
        if let Some(net) = self.net.as_mut() {
            net.set_policy(pool.policy_for(self.internet, &egress))
                .await
                .map_err(|err| {
                    SandboxError::Network(format!(
                        "sandbox {}: setting its egress rules: {err}",
                        self.id
                    ))
                })?;
        }
        self.egress = egress;
        Ok(())
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

fn init_request(token: &str, env_vars: &BTreeMap<String, String>) -> InitRequest {
    InitRequest {
        access_token: Some(token.to_string()),
        env_vars: env_vars.clone(),
        timestamp: Some(SystemTime::now()),
        ..InitRequest::default()
    }
}

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

/// Stops the VM (if any) and removes the run directory, collecting errors.
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

/// A fresh 128-bit access token for the sandbox's envd, in hex.
pub(crate) fn random_token() -> Result<String, SandboxError> {
    Ok(crate::identity::host_random(16)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
