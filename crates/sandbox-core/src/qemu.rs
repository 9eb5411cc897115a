//! The QEMU `microvm` backend.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use qemu_vmm::{Accel, Drive, NetConfig, PortForward, QemuVm, VmConfig};

use crate::confine::VmmConfinement;
use crate::error::SandboxError;
use crate::vmm::{BackendKind, Hypervisor, PauseStats, Vm, VmNetwork, VmSpec};

/// The guest port envd listens on.
pub const ENVD_PORT: u16 = 49983;

/// Runs guests with `qemu-system-x86_64 -M microvm`.
#[derive(Debug, Clone)]
pub struct QemuBackend {
    pub binary: PathBuf,
    pub accel: Accel,
    /// How each QEMU is confined; `Err`: not at all, and why.
    pub confinement: Result<VmmConfinement, String>,
    /// QEMU's seccomp filter (`-sandbox`, see [`qemu_vmm::SECCOMP_ARG`]).
    pub seccomp: bool,
}

impl QemuBackend {
    /// The QEMU binary from `PETREL_QEMU` or PATH, with this accelerator
    /// (normally the outcome of [`qemu_vmm::probe_accelerator`]).
    /// Confined ([`VmmConfinement::for_host`]) when the agent runs as
    /// root, with QEMU's seccomp filter either way.
    pub fn new(accel: Accel) -> Self {
        let confinement = VmmConfinement::for_host(BackendKind::Qemu);
        if let Err(why) = &confinement {
            tracing::warn!(%why, "QEMU runs unconfined");
        }
        Self {
            binary: qemu_vmm::default_qemu_binary(),
            accel,
            confinement,
            seccomp: true,
        }
    }

    fn config(&self, spec: &VmSpec) -> VmConfig {
        let drive = if spec.root_disk_qcow2 {
            Drive::qcow2(&spec.root_disk)
        } else {
            Drive::raw(&spec.root_disk)
        };
        let mut drives = vec![drive];
        drives.extend(spec.extra_drives.iter().map(Drive::raw));
        VmConfig {
            binary: self.binary.clone(),
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            kernel: spec.kernel.clone(),
            kernel_args: spec.kernel_args.clone(),
            drives,
            net: net_config(&spec.network),
            netns: netns_of(&spec.network),
            // Guest RAM lives in a file of the VM's own, so a pause saves
            // only device state and the RAM file stays for resume.
            memory_file: Some(spec.run_dir.join("ram")),
            memory_shared: true,
            seccomp: self.seccomp,
            tcg_tb_mib: (self.accel == Accel::Tcg).then_some(crate::confine::TCG_TB_MIB),
            ..VmConfig::new(&spec.id, &spec.run_dir, self.accel)
        }
    }
}

fn net_config(network: &VmNetwork) -> NetConfig {
    match network {
        // Always isolated: with outbound access, slirp would also give the
        // guest the host's loopback at 10.0.2.2 (see network::resolve_internet).
        VmNetwork::UserForward { host } => NetConfig::User {
            forwards: vec![PortForward {
                host: *host,
                guest_port: ENVD_PORT,
            }],
            restrict: true,
        },
        VmNetwork::Tap { ifname, mac, .. } => NetConfig::Tap {
            ifname: ifname.clone(),
            mac: mac.clone(),
        },
    }
}

/// The namespace QEMU runs in for `network`.
fn netns_of(network: &VmNetwork) -> Option<PathBuf> {
    match network {
        VmNetwork::Tap { netns, .. } => netns.clone(),
        VmNetwork::UserForward { .. } => None,
    }
}

#[async_trait]
impl Hypervisor for QemuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }

    async fn create(&self, spec: VmSpec) -> Result<Box<dyn Vm>, SandboxError> {
        let config = self.config(&spec);
        config.validate().map_err(|source| SandboxError::Qemu {
            vm: spec.id.clone(),
            source,
        })?;
        Ok(Box::new(QemuInstance {
            config,
            base_image: spec.base_image.clone(),
            vm: None,
            confinement: self.confinement.as_ref().ok().cloned(),
            cgroup: None,
        }))
    }

    async fn adopt(&self, spec: VmSpec, pid: u32) -> Result<Box<dyn Vm>, SandboxError> {
        let mut config = self.config(&spec);
        // How the process was really started (its RAM may be a private
        // mapping of a snapshot), as recorded when it started.
        let started: StartedWith = read_json(&spec.run_dir.join("qemu.json"))?;
        config.memory_file = Some(started.memory_file);
        config.memory_shared = started.memory_shared;
        let vm = QemuVm::adopt(config.clone(), pid)
            .await
            .map_err(|source| SandboxError::Qemu {
                vm: spec.id.clone(),
                source,
            })?;
        let confinement = self.confinement.as_ref().ok().cloned();
        let cgroup = confinement
            .as_ref()
            .and_then(|c| c.cgroup(&spec.id, &spec.run_dir));
        Ok(Box::new(QemuInstance {
            config,
            base_image: spec.base_image.clone(),
            vm: Some(vm),
            confinement,
            cgroup,
        }))
    }

    fn release_leftovers(&self, id: &str, run_dir: &Path) {
        let Some(cgroup) = self
            .confinement
            .as_ref()
            .ok()
            .and_then(|c| c.cgroup(id, run_dir))
        else {
            return;
        };
        if let Err(err) = cgroup.remove() {
            tracing::warn!(vm = %id, %err, "cannot remove the cgroup of a lost VM");
        }
    }
}

/// A QEMU guest: `vm` is set while its process runs.
#[derive(Debug)]
struct QemuInstance {
    config: VmConfig,
    /// See [`VmSpec::base_image`].
    base_image: Option<PathBuf>,
    vm: Option<QemuVm>,
    confinement: Option<VmmConfinement>,
    /// The VMM's cgroup once made (removed on destroy).
    cgroup: Option<jail::Cgroup>,
}

impl Drop for QemuInstance {
    /// A running VM dropped without stop or detach (a failed caller, a
    /// panic): its QEMU is killed by `QemuVm`'s drop, and its cgroup must
    /// not outlive it.
    fn drop(&mut self) {
        if let Some(vm) = self.vm.take() {
            drop(vm);
            if let Some(cgroup) = self.cgroup.take()
                && let Err(err) = cgroup.remove()
            {
                tracing::warn!(vm = %self.config.id, %err, "cannot remove the cgroup of a dropped VM");
            }
        }
    }
}

/// Written to `run_dir/qemu.json` whenever QEMU starts, so a later agent run
/// can adopt the process.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct StartedWith {
    memory_file: PathBuf,
    memory_shared: bool,
}

/// Written beside a saved `vmstate`: how to load it again.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SavedState {
    /// Guest RAM is inside `vmstate` (the VM mapped its RAM privately);
    /// otherwise it is in the VM's own memory file (or a snapshot's `ram`).
    ram_in_state: bool,
}

impl QemuInstance {
    /// Spawns QEMU with `config` and records how, for adoption.
    async fn spawn(&mut self, config: VmConfig) -> Result<QemuVm, SandboxError> {
        let started = StartedWith {
            memory_file: config.memory_file.clone().unwrap_or_default(),
            memory_shared: config.memory_shared,
        };
        let (config, lease) = match &self.confinement {
            Some(confinement) => {
                let confined = confinement.prepare(&config, self.base_image.as_deref())?;
                self.cgroup = confined.cgroup;
                let config = VmConfig {
                    jail: Some(confined.jail),
                    ..config
                };
                (config, Some(confined.lease))
            }
            None => (config, None),
        };
        let vm = QemuVm::spawn(config).await.map_err(|e| self.err(e))?;
        // The process runs as the uid now: it keeps it busy.
        drop(lease);
        write_json(&self.config.run_dir.join("qemu.json"), &started)?;
        Ok(vm)
    }

    fn err(&self, source: qemu_vmm::QemuError) -> SandboxError {
        SandboxError::Qemu {
            vm: self.config.id.clone(),
            source,
        }
    }

    fn running(&mut self, operation: &str) -> Result<&mut QemuVm, SandboxError> {
        let id = self.config.id.clone();
        self.vm.as_mut().ok_or_else(|| SandboxError::Unsupported {
            backend: "qemu",
            what: format!("{operation} vm {id}: it is not running"),
        })
    }

    /// Stops the vCPUs and writes `dir/vmstate` (+ `vmstate.json`); the
    /// process stays, paused, and the disk image is flushed and released.
    async fn save(&mut self, dir: &Path, operation: &str) -> Result<PauseStats, SandboxError> {
        let start = Instant::now();
        create_dir(dir)?;
        let vm = self.running(operation)?;
        let saved = match vm.save_state(&dir.join("vmstate")).await {
            Ok(saved) => saved,
            Err(err) => {
                // Leave a running guest running when the save failed.
                let _ = vm.cont_vcpus().await;
                return Err(self.err(err));
            }
        };
        write_json(
            &dir.join("vmstate.json"),
            &SavedState {
                ram_in_state: saved.ram_in_state,
            },
        )?;
        Ok(PauseStats {
            took: start.elapsed(),
            state_bytes: saved.state_bytes,
        })
    }

    /// Puts a pause's saved state on stable storage: `vmstate` and
    /// `vmstate.json`, the RAM file (when the RAM is not in the state) and
    /// every writable drive (QEMU already flushed its own writes into them
    /// at the end of the migration: the drives are `cache=writeback`), then
    /// the names in `dir`, the run directory and the directory holding it.
    async fn sync_saved(&self, dir: &Path) -> Result<(), SandboxError> {
        let mut files = vec![dir.join("vmstate"), dir.join("vmstate.json")];
        if self.config.memory_shared {
            files.extend(self.config.memory_file.clone());
        }
        files.extend(
            self.config
                .drives
                .iter()
                .filter(|d| !d.read_only)
                .map(|d| d.path.clone()),
        );
        // The agent's record of an overlay's backing chain, where it has one.
        files.extend(
            self.config
                .drives
                .iter()
                .map(|d| crate::disk::qcow2::chain_record(&d.path))
                .filter(|record| record.is_file()),
        );
        let run_dir = self.config.run_dir.clone();
        let mut dirs = vec![dir.to_path_buf(), run_dir.clone()];
        dirs.extend(run_dir.parent().map(Path::to_path_buf));
        crate::durable::sync_all(files, dirs).await
    }

    /// The config of a new QEMU process for this stopped VM, attached to
    /// `network` with guest RAM in `memory_file`; refused while it runs.
    fn relaunch(
        &self,
        what: &str,
        network: &VmNetwork,
        memory_file: PathBuf,
        memory_shared: bool,
    ) -> Result<VmConfig, SandboxError> {
        if self.vm.is_some() {
            return Err(SandboxError::Unsupported {
                backend: "qemu",
                what: format!("{what} vm {}: it is running", self.config.id),
            });
        }
        Ok(VmConfig {
            net: net_config(network),
            netns: netns_of(network),
            memory_file: Some(memory_file),
            memory_shared,
            ..self.config.clone()
        })
    }

    /// Starts QEMU waiting for a migration and loads `dir/vmstate` into it,
    /// with guest RAM from `memory_file` when it is not in the state; the
    /// guest runs after if `run`, else its vCPUs stay stopped.
    async fn load(
        &mut self,
        dir: &Path,
        network: &VmNetwork,
        memory_file: PathBuf,
        memory_shared: bool,
        run: bool,
    ) -> Result<Duration, SandboxError> {
        let start = Instant::now();
        let saved: SavedState = read_json(&dir.join("vmstate.json"))?;
        let config = VmConfig {
            incoming: true,
            ..self.relaunch("restore", network, memory_file, memory_shared)?
        };
        let mut vm = self.spawn(config.clone()).await?;
        let state = dir.join("vmstate");
        let restored = if run {
            vm.restore_state(&state, saved.ram_in_state).await
        } else {
            vm.restore_state_stopped(&state, saved.ram_in_state).await
        };
        if let Err(err) = restored {
            let _ = vm.kill().await;
            return Err(self.err(err));
        }
        self.config = VmConfig {
            incoming: false,
            ..config
        };
        self.vm = Some(vm);
        Ok(start.elapsed())
    }
}

#[async_trait]
impl Vm for QemuInstance {
    fn id(&self) -> &str {
        &self.config.id
    }

    fn pid(&self) -> Option<u32> {
        self.vm.as_ref().map(QemuVm::pid)
    }

    fn console_log(&self) -> PathBuf {
        self.config.console_log()
    }

    async fn start(&mut self) -> Result<(), SandboxError> {
        if self.vm.is_some() {
            return Ok(());
        }
        let vm = self.spawn(self.config.clone()).await?;
        self.vm = Some(vm);
        Ok(())
    }

    async fn start_from_snapshot(
        &mut self,
        snapshot_dir: &Path,
        network: VmNetwork,
    ) -> Result<Duration, SandboxError> {
        // A private mapping of the snapshot's RAM: every sandbox started
        // from it shares the page cache and writes only to its own pages.
        self.load(
            snapshot_dir,
            &network,
            snapshot_dir.join("ram"),
            false,
            true,
        )
        .await
    }

    async fn snapshot(&mut self, snapshot_dir: &Path) -> Result<PauseStats, SandboxError> {
        let stats = self.save(snapshot_dir, "snapshot").await?;
        crate::crash::point("snapshot.state_saved");
        // The snapshot's own files are synced by `Sandbox::snapshot` once
        // it wrote its last one; the bases its disk relies on are synced
        // here.
        let copied = match copy_ram_and_disk(&self.config, snapshot_dir).await {
            Ok(()) => sync_backing_chain(&snapshot_dir.join("disk.qcow2")).await,
            Err(err) => Err(err),
        };
        crate::crash::point("snapshot.copied");
        let resumed = self.running("snapshot")?.cont_vcpus().await;
        copied?;
        resumed.map_err(|e| self.err(e))?;
        Ok(stats)
    }

    async fn pause(&mut self, state_dir: &Path) -> Result<PauseStats, SandboxError> {
        let stats = self.save(state_dir, "pause").await?;
        // Not paused until it is durable; a guest whose state cannot be
        // made so keeps running.
        if let Err(err) = self.sync_saved(state_dir).await {
            let _ = self.running("pause")?.cont_vcpus().await;
            return Err(err);
        }
        crate::crash::point("pause.state_saved");
        // The VMM must let go of the disk and RAM file before they are
        // handed to anyone else.
        if let Some(mut vm) = self.vm.take() {
            vm.kill().await.map_err(|e| self.err(e))?;
        }
        Ok(stats)
    }

    async fn resume(
        &mut self,
        state_dir: &Path,
        network: VmNetwork,
    ) -> Result<Duration, SandboxError> {
        // The sandbox's own RAM file: the one it ran on, or (after a start
        // from a snapshot, whose pause put the RAM in the state) a new one
        // the restore fills.
        let own_ram = self.config.run_dir.join("ram");
        // Stopped: the caller records that the guest is about to run (its
        // saved state goes stale then) and lets it run.
        self.load(state_dir, &network, own_ram, true, false).await
    }

    async fn boot_fresh(
        &mut self,
        network: VmNetwork,
        kernel_args: String,
    ) -> Result<Duration, SandboxError> {
        let start = Instant::now();
        // Its own RAM file, as after a resume: a clone started from a
        // snapshot no longer maps the snapshot's.
        let own_ram = self.config.run_dir.join("ram");
        let config = VmConfig {
            incoming: false,
            kernel_args,
            ..self.relaunch("boot afresh", &network, own_ram, true)?
        };
        let vm = self.spawn(config.clone()).await?;
        self.config = config;
        self.vm = Some(vm);
        Ok(start.elapsed())
    }

    async fn stop(&mut self) -> Result<(), SandboxError> {
        let Some(mut vm) = self.vm.take() else {
            return Ok(());
        };
        // The guest's disk is a throwaway overlay or is flushed by the
        // lifecycle layer before this: no need for a clean guest shutdown.
        vm.kill().await.map_err(|e| self.err(e))
    }

    async fn continue_if_stopped(&mut self) -> Result<bool, SandboxError> {
        let vm = self.running("continue")?;
        let status = vm.qmp().status().await;
        match status {
            // Stopped by the agent: `paused` (restored, not yet run) or
            // `postmigrate` (its state saved for a pause or snapshot); not
            // a guest that stopped itself (`internal-error`, `shutdown`...).
            Ok(status) if status == "paused" || status == "postmigrate" => {
                let cont = vm.cont_vcpus().await;
                cont.map_err(|e| self.err(e))?;
                Ok(true)
            }
            Ok(_) => Ok(false),
            Err(err) => Err(self.err(err)),
        }
    }

    fn detach(mut self: Box<Self>) {
        if let Some(vm) = self.vm.take() {
            vm.detach();
        }
    }

    async fn destroy(mut self: Box<Self>) -> Result<(), SandboxError> {
        self.stop().await?;
        // Also a cgroup left by an earlier run of a paused sandbox.
        let cgroup = self.cgroup.take().or_else(|| {
            self.confinement
                .as_ref()
                .and_then(|c| c.cgroup(&self.config.id, &self.config.run_dir))
        });
        if let Some(cgroup) = cgroup {
            cgroup.remove().map_err(|source| SandboxError::Confine {
                vm: self.config.id.clone(),
                source,
            })?;
        }
        let path = self.config.qmp_socket();
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(SandboxError::Io {
                what: "remove",
                path,
                source,
            }),
        }
    }
}

/// Copies the (paused, flushed) VM's RAM file and root disk into a snapshot.
async fn copy_ram_and_disk(config: &VmConfig, dir: &Path) -> Result<(), SandboxError> {
    let ram = config
        .memory_file
        .clone()
        .ok_or_else(|| SandboxError::Unsupported {
            backend: "qemu",
            what: format!("snapshot vm {}: it has no memory file", config.id),
        })?;
    let disk = config
        .drives
        .first()
        .cloned()
        .ok_or_else(|| SandboxError::Unsupported {
            backend: "qemu",
            what: format!("snapshot vm {}: it has no disk", config.id),
        })?;
    sparse_copy(&config.id, &ram, &dir.join("ram")).await?;
    let copy = dir.join("disk.qcow2");
    match disk.format {
        qemu_vmm::DiskFormat::Qcow2 => {
            sparse_copy(&config.id, &disk.path, &copy).await?;
            // The copy's header was written by the VMM: carry over the
            // agent's record of the chain instead.
            let chain = match crate::disk::qcow2::recorded_chain(&disk.path)? {
                Some(chain) => chain,
                None => crate::disk::qcow2::backing_chain(&disk.path)?,
            };
            crate::disk::qcow2::record_chain(&copy, &chain)
        }
        // A raw disk (sparse copy or dm-snapshot provider) becomes a
        // standalone qcow2: the snapshot's disk is always qcow2.
        qemu_vmm::DiskFormat::Raw => {
            raw_to_qcow2(&config.id, &disk.path, &copy).await?;
            crate::disk::qcow2::record_chain(&copy, &[])
        }
    }
}

/// Syncs the images `disk`'s recorded backing chain relies on (template
/// bases, the disks of earlier snapshots): a snapshot is only as durable as
/// its bases.
async fn sync_backing_chain(disk: &Path) -> Result<(), SandboxError> {
    let chain = crate::disk::qcow2::recorded_chain(disk)?.unwrap_or_default();
    crate::durable::sync_all(chain, Vec::new()).await
}

/// `qemu-img convert -O qcow2`: zeros become holes.
async fn raw_to_qcow2(vm: &str, from: &Path, to: &Path) -> Result<(), SandboxError> {
    let args: [&std::ffi::OsStr; 8] = [
        "convert".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "raw".as_ref(),
        "-O".as_ref(),
        "qcow2".as_ref(),
        from.as_os_str(),
        to.as_os_str(),
    ];
    crate::disk::run_tool(vm, "qemu-img", &args, to).await
}

/// `cp --sparse=always --reflink=auto`: constant time on reflink
/// filesystems, holes kept elsewhere.
pub(crate) async fn sparse_copy(vm: &str, from: &Path, to: &Path) -> Result<(), SandboxError> {
    let args: [&std::ffi::OsStr; 4] = [
        "--sparse=always".as_ref(),
        "--reflink=auto".as_ref(),
        from.as_os_str(),
        to.as_os_str(),
    ];
    crate::disk::run_tool(vm, "cp", &args, to).await
}

fn create_dir(dir: &Path) -> Result<(), SandboxError> {
    std::fs::create_dir_all(dir).map_err(|source| SandboxError::Io {
        what: "create directory",
        path: dir.to_path_buf(),
        source,
    })
}

pub(crate) fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), SandboxError> {
    let text = serde_json::to_vec_pretty(value).map_err(|e| SandboxError::Io {
        what: "encode",
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(path, text).map_err(|source| SandboxError::Io {
        what: "write",
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, SandboxError> {
    let text = std::fs::read(path).map_err(|source| SandboxError::Io {
        what: "read",
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|e| SandboxError::Io {
        what: "decode",
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })
}

/// How long a TCG guest gets to answer on envd after QEMU started.
pub const TCG_BOOT_TIMEOUT: Duration = Duration::from_mins(1);

/// How long a guest gets to answer on envd after its VMM started (boot or
/// resume): `PETREL_BOOT_TIMEOUT_SECS` if set (slow hosts, e.g. QEMU
/// emulated inside an emulated VM), else [`TCG_BOOT_TIMEOUT`].
pub fn default_boot_timeout() -> Duration {
    std::env::var("PETREL_BOOT_TIMEOUT_SECS")
        .ok()
        .and_then(|secs| secs.trim().parse().ok())
        .map_or(TCG_BOOT_TIMEOUT, Duration::from_secs)
}
