//! One Firecracker guest: its process (spawned, configured, confined,
//! killed) and the [`Vm`] operations on it.

use super::host::{create_dir, link_rootfs};
use super::layout::{
    API_SOCKET, GUEST_IFACE, MEM, RESUMED_MEMORY, ROOTFS_LINK, SNAPSHOT_DISK, VMM_DIR, VMSTATE,
    forget_restored, forget_resumed_memory,
};
use super::{console, user_mode_refused};
use crate::confine::VmmConfinement;
use crate::error::SandboxError;
use crate::vmm::{PauseStats, Vm, VmNetwork, VmSpec};
use async_trait::async_trait;
use fc_client::{
    BootSource, Drive, FirecrackerConfig, FirecrackerProcess, MachineConfiguration,
    NetworkInterface,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A Firecracker guest: `process` is set while Firecracker runs, and
/// `page_server` while that process was restored from a snapshot.
#[derive(Debug)]
pub(super) struct FirecrackerInstance {
    pub(super) binary: PathBuf,
    pub(super) spec: VmSpec,
    pub(super) process: Option<FirecrackerProcess>,
    pub(super) page_server: Option<uffd::ServerThread>,
    pub(super) confinement: Option<VmmConfinement>,
    /// The uid of the confined process while it runs.
    pub(super) uid: Option<u32>,
    /// Its cgroup while it runs (removed once it is gone).
    pub(super) cgroup: Option<jail::Cgroup>,
    /// The drain of its serial console (ends when it exits).
    pub(super) console: Option<console::Drain>,
}

impl FirecrackerInstance {
    pub(super) fn error(&self, err: impl std::fmt::Display) -> SandboxError {
        SandboxError::Firecracker {
            vm: self.spec.id.clone(),
            message: err.to_string(),
        }
    }

    pub(super) fn running(&self, operation: &str) -> Result<&FirecrackerProcess, SandboxError> {
        self.process
            .as_ref()
            .ok_or_else(|| self.error(format!("cannot {operation}: it is not running")))
    }

    pub(super) fn vmm_dir(&self) -> PathBuf {
        self.spec.run_dir.join(VMM_DIR)
    }

    /// Starts a fresh, unconfigured Firecracker in `network`'s namespace,
    /// working in its directory (where `rootfs` points at the root disk),
    /// confined when the backend is.
    pub(super) async fn spawn(
        &mut self,
        network: &VmNetwork,
    ) -> Result<FirecrackerProcess, SandboxError> {
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
    pub(super) fn release_cgroup(&mut self) {
        if let Some(cgroup) = self.cgroup.take()
            && let Err(err) = cgroup.remove()
        {
            tracing::warn!(vm = %self.spec.id, %err, "cannot remove Firecracker's cgroup");
        }
    }

    /// Gives `path` to the confined Firecracker's uid (nothing when
    /// unconfined).
    pub(super) fn give(&self, path: &Path) -> Result<(), SandboxError> {
        match self.uid {
            Some(uid) => jail::chown(path, uid, uid).map_err(|source| SandboxError::Confine {
                vm: self.spec.id.clone(),
                source,
            }),
            None => Ok(()),
        }
    }

    pub(super) async fn configure(&self, process: &FirecrackerProcess) -> Result<(), SandboxError> {
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

    /// Kills Firecracker (if running), then ends its page server and
    /// removes its cgroup.
    pub(super) async fn kill(&mut self) -> Result<(), SandboxError> {
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
    pub(super) fn stop_page_server(&mut self) {
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

    async fn boot_fresh(
        &mut self,
        _network: VmNetwork,
        _kernel_args: String,
    ) -> Result<Duration, SandboxError> {
        Err(SandboxError::Unsupported {
            backend: "firecracker",
            what: format!(
                "boot vm {} afresh from its disk (a filesystem-only pause or a reboot on \
                 resume): Firecracker sandboxes pause and resume with their memory",
                self.spec.id
            ),
        })
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
