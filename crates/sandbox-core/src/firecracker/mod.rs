//! The Firecracker backend (on `fc-client`).
//!
//! Needs a `firecracker` binary and a usable KVM. Guests get their root disk
//! as a raw image or block device and their network through a TAP device;
//! Firecracker has no user-mode network.
//!
//! Pause and snapshots use Firecracker's own snapshots: `vmstate` (vCPU and
//! device state) and `mem` (all of guest memory) in the state or snapshot
//! directory. Resume and start from a snapshot load them into a fresh
//! process with the Uffd memory backend: a page server thread of this
//! process ([`uffd::UffdServer`]) fills guest pages from `mem` on first
//! touch, so the file is shared read-only by every VM restored from it and
//! must not change while they live (a later save writes new files and
//! renames them into place). A resumed guest is served from `run_dir/memory`,
//! a second name of its saved `mem`, as the state dir goes once it ran. A restored Firecracker is adoptable after an
//! agent restart: the run directory records which memory file it was
//! restored from and its page-server handshake's regions, and
//! [`Hypervisor::adopt`] starts a page server that takes the process's
//! userfaultfd over ([`uffd::UffdServer::spawn_adopted`]); between the two
//! agents the guest waits on its next page fault.
//!
//! Firecracker works in its own directory `run_dir/vmm` (its API and page
//! server sockets, snapshot files while it writes them) and opens the root
//! disk as `rootfs`, a symlink there to the spec's disk: the path saved in
//! a snapshot is then relative, and a VM restored from it opens its own
//! disk, never the disk of the VM that was saved.
//!
//! When the agent runs as root, each Firecracker is confined as its jailer
//! would: its own uid from a range with no capabilities, a private mount
//! namespace holding only its directory, kernel, root disk, `/dev/kvm`,
//! `/dev/net/tun` and a `/dev/userfaultfd` node of its own, rlimits, a
//! cgroup sized from the VM, in the sandbox's network namespace, under
//! Firecracker's own seccomp filter (see [`crate::confine`]). It writes
//! snapshots into its directory; the agent moves them into place, owned by
//! root, and gives a restored Firecracker a copy of `vmstate`. No PID
//! namespace: Firecracker stays the agent's direct child, as QEMU does.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fc_client::{
    BootSource, Drive, FirecrackerConfig, FirecrackerProcess, MachineConfiguration, MemoryBackend,
    MemoryBackendType, NetworkInterface, NetworkOverride, SnapshotCreateParams, SnapshotLoadParams,
    SnapshotType,
};

mod console;
mod host;

use host::{
    check_socket_paths, check_tap, copy_file, create_dir, file_size, link_rootfs, move_into,
};

use crate::confine::VmmConfinement;
use crate::error::SandboxError;
use crate::vmm::{BackendKind, Hypervisor, PauseStats, Vm, VmNetwork, VmSpec};

/// Runs guests with Firecracker.
#[derive(Debug, Clone)]
pub struct FirecrackerBackend {
    pub binary: PathBuf,
    /// How each Firecracker is confined; `Err`: not at all, and why.
    pub confinement: Result<VmmConfinement, String>,
}

impl FirecrackerBackend {
    /// The backend if a `firecracker` binary is found (`PETREL_FIRECRACKER`
    /// or PATH), confined ([`VmmConfinement::for_host`]) when the agent
    /// runs as root.
    pub fn find() -> Option<Self> {
        fc_client::find_firecracker().map(Self::with_binary)
    }

    /// The backend running `binary`, confined as [`FirecrackerBackend::find`]'s.
    pub fn with_binary(binary: PathBuf) -> Self {
        // Absolute: a confined Firecracker starts in its own directory.
        let binary = std::path::absolute(&binary).unwrap_or(binary);
        let confinement = VmmConfinement::for_host(BackendKind::Firecracker);
        if let Err(why) = &confinement {
            tracing::warn!(%why, "Firecracker runs unconfined");
        }
        Self {
            binary,
            confinement,
        }
    }
}

#[async_trait]
impl Hypervisor for FirecrackerBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Firecracker
    }

    async fn create(&self, spec: VmSpec) -> Result<Box<dyn Vm>, SandboxError> {
        if spec.root_disk_qcow2 {
            return Err(SandboxError::Unsupported {
                backend: "firecracker",
                what: "boot from a qcow2 disk (it needs a raw image or block device)".to_string(),
            });
        }
        if !spec.extra_drives.is_empty() {
            return Err(SandboxError::Unsupported {
                backend: "firecracker",
                what: "attach extra drives".to_string(),
            });
        }
        // The network is checked where it is used (start, restore): a
        // paused VM is prepared before it has one.
        check_socket_paths(&spec)?;
        Ok(Box::new(FirecrackerInstance {
            binary: self.binary.clone(),
            spec,
            process: None,
            page_server: None,
            confinement: self.confinement.as_ref().ok().cloned(),
            uid: None,
            cgroup: None,
            console: None,
        }))
    }

    /// Takes over Firecracker `pid` (started by an earlier agent run); a
    /// guest restored from a snapshot gets a new page server that takes
    /// the process's userfaultfd over (see
    /// [`uffd::UffdServer::spawn_adopted`]).
    async fn adopt(&self, spec: VmSpec, pid: u32) -> Result<Box<dyn Vm>, SandboxError> {
        let error = |message: String| SandboxError::Firecracker {
            vm: spec.id.clone(),
            message,
        };
        let vmm_dir = spec.run_dir.join(VMM_DIR);
        let mut config = FirecrackerConfig::new(&self.binary, vmm_dir.join(API_SOCKET), &spec.id);
        config.log_path = Some(spec.console_log());
        // Drained first: Firecracker may be waiting on a full console FIFO
        // (it logs the API request below there too). It holds its own
        // writer and keeper: ours are not needed.
        let (console, _writer, _keeper) =
            console::Drain::start(&spec.id, &spec.run_dir, &spec.console_log())?;
        let process = FirecrackerProcess::adopt(pid, config)
            .await
            .map_err(|e| error(e.to_string()))?;
        let page_server = match restored_from(&spec.run_dir)? {
            Some(restored) => Some(
                uffd::UffdServer::spawn_adopted(
                    pid,
                    vmm_dir.join(UFFD_SOCKET),
                    restored.memory_file,
                    &spec.run_dir.join(REGIONS_RECORD),
                    uffd::ServerOptions::default(),
                )
                .map_err(|e| error(e.to_string()))?,
            ),
            None => None,
        };
        let confinement = self.confinement.as_ref().ok().cloned();
        let cgroup = confinement
            .as_ref()
            .and_then(|c| c.cgroup(&spec.id, &spec.run_dir));
        let uid = match confinement {
            Some(_) => Some(host::process_uid(pid)?),
            None => None,
        };
        Ok(Box::new(FirecrackerInstance {
            binary: self.binary.clone(),
            spec,
            process: Some(process),
            page_server,
            confinement,
            uid,
            cgroup,
            console: Some(console),
        }))
    }

    fn release_leftovers(&self, id: &str, run_dir: &Path) {
        if let Some(cgroup) = self
            .confinement
            .as_ref()
            .ok()
            .and_then(|c| c.cgroup(id, run_dir))
            && let Err(err) = cgroup.remove()
        {
            tracing::warn!(vm = %id, %err, "cannot remove the cgroup of a lost VM");
        }
    }

    /// The save renames its memory file into place last.
    fn saved_state_complete(&self, state_dir: &Path) -> bool {
        state_dir.join(VMSTATE).is_file() && state_dir.join(MEM).is_file()
    }

    /// A raw copy of the root disk (Firecracker has no qcow2).
    fn snapshot_disk(&self, snapshot_dir: &Path) -> (PathBuf, crate::disk::DiskFormat) {
        (
            snapshot_dir.join(SNAPSHOT_DISK),
            crate::disk::DiskFormat::Raw,
        )
    }
}

/// Firecracker's own directory inside a VM's run directory: its working
/// directory, the only one it can write when confined.
const VMM_DIR: &str = "vmm";
/// The API socket in [`VMM_DIR`].
const API_SOCKET: &str = "api.sock";
/// The page server's socket in [`VMM_DIR`].
const UFFD_SOCKET: &str = "uffd.sock";
/// The root disk's symlink in [`VMM_DIR`], as the drive is configured and
/// saved.
const ROOTFS_LINK: &str = "rootfs";
/// vCPU and device state in a state or snapshot directory.
const VMSTATE: &str = "vmstate";
/// Guest memory in a state or snapshot directory.
const MEM: &str = "mem";
/// The root disk's copy in a snapshot directory.
const SNAPSHOT_DISK: &str = "disk.raw";
/// The guest network interface, as configured and saved.
const GUEST_IFACE: &str = "eth0";
/// In the run directory (the agent's, not the VMM's): which memory file
/// the running Firecracker was restored from ([`Restored`]); absent for a
/// guest that booted.
const RESTORED_RECORD: &str = "firecracker.json";
/// In the run directory: the guest memory regions of the restored
/// Firecracker's page-server handshake, for a page server that takes over.
const REGIONS_RECORD: &str = "uffd-regions.json";

/// In the run directory: the memory a resumed Firecracker is served from,
/// a second name of its state dir's `mem` (which goes once the guest ran).
const RESUMED_MEMORY: &str = "memory";
/// Written to [`RESTORED_RECORD`] when Firecracker is restored.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Restored {
    memory_file: PathBuf,
}

/// What the running Firecracker of `run_dir` was restored from, if it was.
fn restored_from(run_dir: &Path) -> Result<Option<Restored>, SandboxError> {
    let path = run_dir.join(RESTORED_RECORD);
    if path.exists() {
        crate::qemu::read_json(&path).map(Some)
    } else {
        Ok(None)
    }
}

/// Removes the memory file a resumed Firecracker of `run_dir` was served
/// from (once no Firecracker of it runs).
fn forget_resumed_memory(run_dir: &Path) -> Result<(), SandboxError> {
    crate::disk::remove_file_if_exists(&run_dir.join(RESUMED_MEMORY))
}

/// Firecracker refuses user-mode networks: it needs a TAP device.
fn user_mode_refused() -> SandboxError {
    SandboxError::Unsupported {
        backend: "firecracker",
        what: "use a user-mode network (it needs a TAP device)".to_string(),
    }
}

/// Forgets how an earlier Firecracker of `run_dir` was restored.
fn forget_restored(run_dir: &Path) -> Result<(), SandboxError> {
    crate::disk::remove_file_if_exists(&run_dir.join(RESTORED_RECORD))?;
    crate::disk::remove_file_if_exists(&run_dir.join(REGIONS_RECORD))
}

/// A Firecracker guest: `process` is set while Firecracker runs, and
/// `page_server` while that process was restored from a snapshot.
#[derive(Debug)]
struct FirecrackerInstance {
    binary: PathBuf,
    spec: VmSpec,
    process: Option<FirecrackerProcess>,
    page_server: Option<uffd::ServerThread>,
    confinement: Option<VmmConfinement>,
    /// The uid of the confined process while it runs.
    uid: Option<u32>,
    /// Its cgroup while it runs (removed once it is gone).
    cgroup: Option<jail::Cgroup>,
    /// The drain of its serial console (ends when it exits).
    console: Option<console::Drain>,
}

impl FirecrackerInstance {
    fn error(&self, err: impl std::fmt::Display) -> SandboxError {
        SandboxError::Firecracker {
            vm: self.spec.id.clone(),
            message: err.to_string(),
        }
    }

    fn running(&self, operation: &str) -> Result<&FirecrackerProcess, SandboxError> {
        self.process
            .as_ref()
            .ok_or_else(|| self.error(format!("cannot {operation}: it is not running")))
    }

    fn vmm_dir(&self) -> PathBuf {
        self.spec.run_dir.join(VMM_DIR)
    }

    /// Starts a fresh, unconfigured Firecracker in `network`'s namespace,
    /// working in its directory (where `rootfs` points at the root disk),
    /// confined when the backend is.
    async fn spawn(&mut self, network: &VmNetwork) -> Result<FirecrackerProcess, SandboxError> {
        let vmm_dir = self.vmm_dir();
        create_dir(&vmm_dir)?;
        link_rootfs(&self.spec, &vmm_dir)?;
        let mut config =
            FirecrackerConfig::new(&self.binary, vmm_dir.join(API_SOCKET), &self.spec.id);
        config.log_path = Some(self.spec.console_log());
        config.output = Some(console::fifo(&self.spec.run_dir));
        config.ready_timeout = Duration::from_secs(5);
        if let Some(old) = self.console.take() {
            old.abort();
        }
        let (drain, writer, keeper) =
            console::Drain::start(&self.spec.id, &self.spec.run_dir, &self.spec.console_log())?;
        self.console = Some(drain);
        let mut command = config.command();
        command.current_dir(&vmm_dir);
        let keeper_fd = std::os::fd::AsRawFd::as_raw_fd(&keeper);
        // SAFETY: the hook runs in the forked child before exec and only
        // clears close-on-exec on `keeper_fd` (open in the parent until
        // the spawn returns) with fcntl, in the child's own table.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                if libc::fcntl(keeper_fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        if let VmNetwork::Tap {
            netns: Some(netns), ..
        } = network
        {
            netns::command_in_netns(&mut command, netns).map_err(|e| self.error(e))?;
        }
        let confined = match &self.confinement {
            Some(confinement) => {
                Some(confinement.prepare_firecracker(&self.spec, &self.binary, &vmm_dir)?)
            }
            None => None,
        };
        if let Some(confined) = &confined {
            let prepared = confined
                .jail
                .prepare()
                .map_err(|source| SandboxError::Confine {
                    vm: self.spec.id.clone(),
                    source,
                })?;
            // SAFETY: the hook runs in the forked child before exec, after
            // the network namespace hook, and only makes the system calls
            // of `Prepared::enter` on data prepared above and owned by it.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                    prepared.enter()
                });
            }
        }
        let spawned = FirecrackerProcess::spawn_command(config, command).await;
        // Firecracker has its own writer and keeper now (or is gone).
        drop(writer);
        drop(keeper);
        match confined {
            Some(confined) => {
                // The process runs as the uid now (it keeps it busy), or
                // failed: then its cgroup goes.
                self.cgroup = confined.cgroup;
                self.uid = Some(confined.lease.uid());
                if spawned.is_err() {
                    self.release_cgroup();
                    self.uid = None;
                }
            }
            None => self.uid = None,
        }
        spawned.map_err(|e| self.error(e))
    }

    /// Removes the cgroup of a Firecracker that is gone.
    fn release_cgroup(&mut self) {
        if let Some(cgroup) = self.cgroup.take()
            && let Err(err) = cgroup.remove()
        {
            tracing::warn!(vm = %self.spec.id, %err, "cannot remove Firecracker's cgroup");
        }
    }

    /// Gives `path` to the confined Firecracker's uid (nothing when
    /// unconfined).
    fn give(&self, path: &Path) -> Result<(), SandboxError> {
        match self.uid {
            Some(uid) => jail::chown(path, uid, uid).map_err(|source| SandboxError::Confine {
                vm: self.spec.id.clone(),
                source,
            }),
            None => Ok(()),
        }
    }

    async fn configure(&self, process: &FirecrackerProcess) -> Result<(), SandboxError> {
        let api = process.client();
        let mut boot = BootSource::new(&self.spec.kernel);
        boot.boot_args = Some(self.spec.kernel_args.clone());
        api.put_boot_source(&boot)
            .await
            .map_err(|e| self.error(e))?;
        api.put_machine_config(&MachineConfiguration::new(
            self.spec.vcpus,
            u64::from(self.spec.memory_mib),
        ))
        .await
        .map_err(|e| self.error(e))?;
        api.put_drive(&Drive::new("rootfs", ROOTFS_LINK, true, false))
            .await
            .map_err(|e| self.error(e))?;
        if let VmNetwork::Tap { ifname, mac, .. } = &self.spec.network {
            let mut iface = NetworkInterface::new(GUEST_IFACE, ifname);
            iface.guest_mac = Some(mac.clone());
            api.put_network_interface(&iface)
                .await
                .map_err(|e| self.error(e))?;
        }
        api.start_instance().await.map_err(|e| self.error(e))
    }

    /// Pauses the vCPUs and writes a full snapshot into `dir` (`vmstate`,
    /// `mem`). The files are written under new names and renamed into
    /// place, so a memory file that a page server still maps is never
    /// changed. The vCPUs stay paused on success; on failure they are
    /// resumed and the partial files removed.
    async fn save(&self, dir: &Path, operation: &str) -> Result<PauseStats, SandboxError> {
        let start = Instant::now();
        create_dir(dir)?;
        let api = self.running(operation)?.client();
        api.pause().await.map_err(|e| self.error(e))?;
        let (vmstate, mem) = (dir.join(VMSTATE), dir.join(MEM));
        // Written where a confined Firecracker can write, then moved into
        // `dir` and made root's.
        let vmm_dir = self.vmm_dir();
        let (vmstate_new, mem_new) = (vmm_dir.join("vmstate.new"), vmm_dir.join("mem.new"));
        let params = SnapshotCreateParams {
            snapshot_type: SnapshotType::Full,
            snapshot_path: vmstate_new.clone(),
            mem_file_path: mem_new.clone(),
        };
        let saved = match api.create_snapshot(&params).await {
            Ok(()) => move_into(&vmstate_new, &vmstate).and_then(|()| move_into(&mem_new, &mem)),
            Err(err) => Err(self.error(err)),
        };
        if let Err(err) = saved {
            crate::disk::remove_file_if_exists(&vmstate_new)?;
            crate::disk::remove_file_if_exists(&mem_new)?;
            // Leave a running guest running when the save failed.
            if let Err(resume) = api.resume().await {
                tracing::warn!(vm = %self.spec.id, error = %resume, "cannot resume the guest after a failed save");
            }
            return Err(err);
        }
        Ok(PauseStats {
            took: start.elapsed(),
            state_bytes: file_size(&vmstate)? + file_size(&mem)?,
        })
    }

    /// Starts a fresh Firecracker and loads `dir/vmstate` into it, guest
    /// memory served from `memory` (a copy of `dir/mem`, or it) by a page
    /// server, reachable through `network`; the guest runs when this
    /// returns.
    async fn load(
        &mut self,
        dir: &Path,
        memory: &Path,
        network: VmNetwork,
    ) -> Result<Duration, SandboxError> {
        let start = Instant::now();
        if self.process.is_some() {
            return Err(self.error("cannot restore: it is running"));
        }
        let VmNetwork::Tap { ifname, netns, .. } = &network else {
            return Err(user_mode_refused());
        };
        // Firecracker running as root silently makes a missing TAP, which
        // leaves the guest unreachable: make sure it is there.
        check_tap(ifname, netns.as_deref())
            .await
            .map_err(|e| self.error(e))?;
        // A page server left over by a failed restore of this VM.
        self.stop_page_server();
        let vmm_dir = self.vmm_dir();
        create_dir(&vmm_dir)?;
        let socket = vmm_dir.join(UFFD_SOCKET);
        crate::disk::remove_file_if_exists(&socket)?;
        // Recorded first: an agent that adopts this Firecracker later
        // serves its faults from the same file, with the same regions.
        forget_restored(&self.spec.run_dir)?;
        crate::qemu::write_json(
            &self.spec.run_dir.join(RESTORED_RECORD),
            &Restored {
                memory_file: memory.to_path_buf(),
            },
        )?;
        let options = uffd::ServerOptions {
            regions_record: Some(self.spec.run_dir.join(REGIONS_RECORD)),
            ..uffd::ServerOptions::default()
        };
        let server = uffd::UffdServer::bind_with_options(&socket, memory, options)
            .and_then(uffd::UffdServer::spawn)
            .map_err(|e| self.error(e))?;
        self.page_server = Some(server);
        let mut process = match self.spawn(&network).await {
            Ok(process) => process,
            Err(err) => {
                self.stop_page_server();
                return Err(err);
            }
        };
        // Firecracker reads its own copy of the (small) vmstate and
        // connects to the page server as its uid.
        let vmstate = vmm_dir.join(VMSTATE);
        let handed = copy_file(&dir.join(VMSTATE), &vmstate)
            .and_then(|()| self.give(&vmstate))
            .and_then(|()| self.give(&socket));
        if let Err(err) = handed {
            if let Err(kill) = process.kill().await {
                tracing::warn!(vm = %self.spec.id, error = %kill, "cannot kill Firecracker after a failed restore");
            }
            self.stop_page_server();
            self.release_cgroup();
            return Err(err);
        }
        let params = SnapshotLoadParams {
            mem_backend: MemoryBackend {
                backend_type: MemoryBackendType::Uffd,
                backend_path: socket,
            },
            resume_vm: Some(true),
            network_overrides: vec![NetworkOverride {
                iface_id: GUEST_IFACE.to_string(),
                host_dev_name: ifname.clone(),
            }],
            ..SnapshotLoadParams::from_file(vmstate, memory)
        };
        if let Err(err) = process.client().load_snapshot(&params).await {
            let err = self.error(err);
            if let Err(kill) = process.kill().await {
                tracing::warn!(vm = %self.spec.id, error = %kill, "cannot kill Firecracker after a failed load");
            }
            self.stop_page_server();
            self.release_cgroup();
            return Err(err);
        }
        self.process = Some(process);
        self.spec.network = network;
        Ok(start.elapsed())
    }

    /// Kills Firecracker (if running), then ends its page server and
    /// removes its cgroup.
    async fn kill(&mut self) -> Result<(), SandboxError> {
        let killed = match self.process.take() {
            Some(mut process) => process.kill().await.map(drop).map_err(|e| self.error(e)),
            None => Ok(()),
        };
        // The page server must outlive the process it serves: a VM whose
        // server is gone hangs on its next fault.
        self.stop_page_server();
        if killed.is_ok() {
            self.release_cgroup();
            self.uid = None;
        }
        killed
    }

    /// Stops and joins the page server; only when no Firecracker uses it.
    fn stop_page_server(&mut self) {
        let Some(server) = self.page_server.take() else {
            return;
        };
        match server.stop_and_join() {
            Ok(report) => tracing::debug!(
                vm = %self.spec.id,
                exit = ?report.exit,
                faults = report.stats.faults_served,
                bytes_copied = report.stats.bytes_copied,
                "page server ended"
            ),
            Err(error) => {
                tracing::warn!(vm = %self.spec.id, %error, "page server failed");
            }
        }
    }
}

#[async_trait]
impl Vm for FirecrackerInstance {
    fn id(&self) -> &str {
        &self.spec.id
    }

    fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(FirecrackerProcess::pid)
    }

    fn console_log(&self) -> PathBuf {
        // Firecracker writes the guest's serial console to its stdout.
        self.spec.console_log()
    }

    async fn start(&mut self) -> Result<(), SandboxError> {
        if self.process.is_some() {
            return Ok(());
        }
        let network = self.spec.network.clone();
        if let VmNetwork::UserForward { .. } = network {
            return Err(user_mode_refused());
        }
        forget_restored(&self.spec.run_dir)?;
        forget_resumed_memory(&self.spec.run_dir)?;
        let mut process = self.spawn(&network).await?;
        if let Err(err) = self.configure(&process).await {
            let _ = process.kill().await;
            self.release_cgroup();
            return Err(err);
        }
        self.process = Some(process);
        Ok(())
    }

    async fn start_from_snapshot(
        &mut self,
        snapshot_dir: &Path,
        network: VmNetwork,
    ) -> Result<Duration, SandboxError> {
        // Every VM started from the snapshot maps its `mem` through its own
        // page server: the file is read, never written, and the snapshot
        // outlives the sandboxes started from it.
        forget_resumed_memory(&self.spec.run_dir)?;
        self.load(snapshot_dir, &snapshot_dir.join(MEM), network)
            .await
    }

    async fn snapshot(&mut self, snapshot_dir: &Path) -> Result<PauseStats, SandboxError> {
        let stats = self.save(snapshot_dir, "snapshot").await?;
        // The vCPUs are paused and the block device idle: the disk is
        // consistent with the saved state.
        let copied = crate::qemu::sparse_copy(
            &self.spec.id,
            &self.spec.root_disk,
            &snapshot_dir.join(SNAPSHOT_DISK),
        )
        .await;
        let resumed = self
            .running("snapshot")?
            .client()
            .resume()
            .await
            .map_err(|e| self.error(e));
        copied?;
        resumed?;
        Ok(stats)
    }

    async fn pause(&mut self, state_dir: &Path) -> Result<PauseStats, SandboxError> {
        let stats = self.save(state_dir, "pause").await?;
        // Durable before it counts as paused: state, memory, the disk and
        // the names of the state dir and run dir.
        let run_dir = self.spec.run_dir.clone();
        let mut dirs = vec![state_dir.to_path_buf(), run_dir.clone()];
        dirs.extend(run_dir.parent().map(Path::to_path_buf));
        let files = vec![
            state_dir.join(VMSTATE),
            state_dir.join(MEM),
            self.spec.root_disk.clone(),
        ];
        if let Err(err) = crate::durable::sync_all(files, dirs).await {
            if let Err(resume) = self.running("pause")?.client().resume().await {
                tracing::warn!(vm = %self.spec.id, error = %resume, "cannot resume the guest after a failed sync");
            }
            return Err(err);
        }
        // Firecracker must let go of the disk and TAP before they are handed
        // to anyone else; its page server (after a resume) ends with it,
        // and the memory it served with them.
        self.kill().await?;
        forget_resumed_memory(&self.spec.run_dir)?;
        Ok(stats)
    }

    async fn resume(
        &mut self,
        state_dir: &Path,
        network: VmNetwork,
    ) -> Result<Duration, SandboxError> {
        // The guest's memory is served from its saved `mem` for as long as
        // it runs (an agent that adopts it later serves it too), but the
        // state dir goes once the guest ran: a second name in the run dir
        // keeps the file, while the state dir stays complete until then.
        let memory = self.spec.run_dir.join(RESUMED_MEMORY);
        forget_resumed_memory(&self.spec.run_dir)?;
        std::fs::hard_link(state_dir.join(MEM), &memory).map_err(|source| SandboxError::Io {
            what: "link the saved memory for the resumed guest",
            path: memory.clone(),
            source,
        })?;
        let loaded = self.load(state_dir, &memory, network).await;
        if loaded.is_err() {
            forget_resumed_memory(&self.spec.run_dir)?;
        }
        loaded
    }

    async fn stop(&mut self) -> Result<(), SandboxError> {
        self.kill().await
    }

    fn detach(mut self: Box<Self>) {
        // Dropping FirecrackerProcess kills it; keep it alive on purpose.
        // Its page server (after a restore) ends here, as it would when
        // this process exits: a restored guest then waits on its next
        // fault until an agent adopts it and takes its faults over.
        std::mem::forget(self.process.take());
        self.stop_page_server();
        if let Some(console) = self.console.take() {
            console.abort();
        }
    }

    async fn destroy(mut self: Box<Self>) -> Result<(), SandboxError> {
        self.stop().await?;
        // Also a cgroup left by an earlier run of a paused sandbox.
        if let Some(cgroup) = self
            .confinement
            .as_ref()
            .and_then(|c| c.cgroup(&self.spec.id, &self.spec.run_dir))
        {
            cgroup.remove().map_err(|source| SandboxError::Confine {
                vm: self.spec.id.clone(),
                source,
            })?;
        }
        forget_restored(&self.spec.run_dir)?;
        forget_resumed_memory(&self.spec.run_dir)?;
        crate::disk::remove_file_if_exists(&console::fifo(&self.spec.run_dir))?;
        let vmm_dir = self.vmm_dir();
        match std::fs::remove_dir_all(&vmm_dir) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(SandboxError::Io {
                what: "remove Firecracker's directory",
                path: vmm_dir,
                source: err,
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spec on a TAP in `run_dir` (also for `host`'s tests).
    pub(super) fn tap_spec(run_dir: &str) -> VmSpec {
        VmSpec {
            id: "vm1".to_string(),
            vcpus: 1,
            memory_mib: 128,
            kernel: PathBuf::from("/vmlinux"),
            kernel_args: String::new(),
            root_disk: PathBuf::from("/disk.raw"),
            root_disk_qcow2: false,
            extra_drives: Vec::new(),
            network: VmNetwork::Tap {
                ifname: "tap0".to_string(),
                mac: "02:00:00:00:00:01".to_string(),
                netns: None,
            },
            run_dir: PathBuf::from(run_dir),
            base_image: None,
        }
    }

    #[tokio::test]
    async fn create_and_start_refuse_what_firecracker_cannot_do_saying_so() {
        let backend = FirecrackerBackend {
            binary: PathBuf::from("/nonexistent/firecracker"),
            confinement: Err("a unit test".to_string()),
        };
        let refusal = |spec: VmSpec| {
            let backend = backend.clone();
            async move {
                match backend.create(spec).await {
                    Err(SandboxError::Unsupported { backend, what }) => {
                        format!("{backend}: {what}")
                    }
                    other => panic!("expected a refusal, got {other:?}"),
                }
            }
        };
        let run_dir = "/var/lib/petrel/sandboxes/vm1";

        let mut user_mode_vm = backend
            .create(VmSpec {
                network: VmNetwork::UserForward {
                    host: "127.0.0.1:1".parse().unwrap(),
                },
                ..tap_spec(run_dir)
            })
            .await
            .unwrap();
        let user_mode = match user_mode_vm.start().await {
            Err(SandboxError::Unsupported { backend, what }) => format!("{backend}: {what}"),
            other => panic!("expected a refusal, got {other:?}"),
        };
        let qcow2 = refusal(VmSpec {
            root_disk_qcow2: true,
            ..tap_spec(run_dir)
        })
        .await;
        let drives = refusal(VmSpec {
            extra_drives: vec![PathBuf::from("/data.img")],
            ..tap_spec(run_dir)
        })
        .await;

        assert!(user_mode.contains("user-mode network"), "{user_mode}");
        assert!(qcow2.contains("qcow2"), "{qcow2}");
        assert!(drives.contains("extra drives"), "{drives}");
    }
}
