//! Pause, resume and snapshots of a running sandbox.

use super::{
    Attach, ResumeTimings, Sandbox, SandboxRecord, SandboxState, free_local_port, init_request,
    wait_for_envd,
};
use crate::error::SandboxError;
use crate::rollback::Rollback;
use crate::vmm::PauseStats;
use envd_client::{EnvdClient, ExecRequest};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

impl Sandbox {
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
        let state_dir = self.fresh_state_dir()?;
        let stats = self.vm.pause(&state_dir).await?;
        self.state = SandboxState::Paused;
        crate::crash::point("pause.vm_stopped");
        self.release_paused().await;
        tracing::info!(sandbox = %self.id, took_ms = stats.took.as_millis() as u64, state_bytes = stats.state_bytes, "sandbox paused");
        Ok(stats)
    }

    /// E2B's filesystem-only pause: the guest flushes its files to its
    /// disk, the VMM process ends, and memory is dropped (the RAM file
    /// removed); [`Sandbox::resume`] then boots the guest afresh from the
    /// disk, so files stay and processes start over. Needs a responding
    /// envd (the flush runs through it); on failure the sandbox keeps
    /// running.
    pub async fn pause_filesystem(&mut self) -> Result<PauseStats, SandboxError> {
        self.require(SandboxState::Running, "pause")?;
        let start = Instant::now();
        let state_dir = self.fresh_state_dir()?;
        let flushed = self
            .exec(
                ExecRequest::new("/bin/sync")
                    .user("root")
                    .timeout(FLUSH_TIMEOUT),
            )
            .await?;
        if flushed.exit_code != 0 {
            return Err(SandboxError::Disk {
                sandbox: self.id.clone(),
                message: format!(
                    "flushing its files for a filesystem-only pause: sync in the guest exited {}",
                    flushed.exit_code
                ),
            });
        }
        self.vm.stop().await?;
        self.state = SandboxState::Paused;
        crate::crash::point("pause_filesystem.vm_stopped");
        let ram = self.run_dir.join("ram");
        if let Err(err) = std::fs::remove_file(&ram)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(sandbox = %self.id, %err, "cannot remove the dropped RAM file");
        }
        // Disk, then the marker: a state dir with the marker always has
        // its disk on stable storage (recovery relies on it).
        crate::durable::sync_dir_contents_blocking(self.run_dir.clone()).await?;
        mark_filesystem_only(&state_dir).await?;
        self.release_paused().await;
        let stats = PauseStats {
            took: start.elapsed(),
            state_bytes: 0,
        };
        tracing::info!(sandbox = %self.id, took_ms = stats.took.as_millis() as u64, "sandbox paused (filesystem only)");
        Ok(stats)
    }

    /// The state dir of a new pause, the stale one of an earlier pause
    /// removed (the guest ran since): a state directory with its
    /// `vmstate.json` or filesystem-only marker is then always this
    /// pause's, complete (recovery relies on it).
    fn fresh_state_dir(&self) -> Result<std::path::PathBuf, SandboxError> {
        let state_dir = self.run_dir.join("state");
        match std::fs::remove_dir_all(&state_dir) {
            Ok(()) => Ok(state_dir),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(state_dir),
            Err(source) => Err(SandboxError::Io {
                what: "remove the stale saved state",
                path: state_dir,
                source,
            }),
        }
    }

    /// What a paused sandbox no longer holds: its dm device (its writes
    /// are in the CoW file until resume) and its network slot.
    async fn release_paused(&mut self) {
        if let Err(err) = self.provider.release(&self.id, &self.run_dir).await {
            tracing::error!(sandbox = %self.id, %err, "releasing the paused sandbox's root disk failed");
        }
        if let (Some(pool), Some(net)) = (&self.pool, self.net.take())
            && let Err(err) = pool.release(net).await
        {
            tracing::error!(sandbox = %self.id, %err, "removing the paused sandbox's network failed");
        }
        crate::crash::point("pause.released");
    }

    /// Continues a paused sandbox in a new VMM process: memory, processes
    /// and files as they were; the guest clock is set to now. See
    /// [`Sandbox::resume_with`] for what a failure leaves.
    pub async fn resume(&mut self) -> Result<ResumeTimings, SandboxError> {
        self.resume_with(&|_| Ok(())).await
    }

    /// Whether the sandbox is paused without memory (a filesystem-only
    /// pause): its resume boots afresh from the disk.
    pub fn paused_filesystem_only(&self) -> bool {
        self.state == SandboxState::Paused && is_filesystem_only(&self.run_dir.join("state"))
    }

    /// [`Sandbox::resume`], and `on_running` is called once the restored guest runs, with the record
    /// of the running VM (pid, network), so the caller can make it durable:
    /// from then on the saved state is stale. A failure after that point
    /// saves the guest again (the sandbox stays paused, consistent), or,
    /// when that fails too, leaves it [`SandboxState::Broken`].
    pub async fn resume_with(
        &mut self,
        on_running: &(dyn Fn(&SandboxRecord) -> Result<(), SandboxError> + Send + Sync),
    ) -> Result<ResumeTimings, SandboxError> {
        self.resume_as(false, on_running).await
    }

    /// [`Sandbox::resume_with`]; with `reboot` the guest boots afresh from
    /// its disk even where its memory was saved (E2B's `memory: false` on
    /// connect: the saved memory is dropped once the guest ran). A sandbox
    /// paused filesystem-only always boots afresh; a failure after its
    /// guest ran leaves it paused filesystem-only.
    pub async fn resume_as(
        &mut self,
        reboot: bool,
        on_running: &(dyn Fn(&SandboxRecord) -> Result<(), SandboxError> + Send + Sync),
    ) -> Result<ResumeTimings, SandboxError> {
        self.require(SandboxState::Paused, "resume")?;
        let reboot = reboot || self.paused_filesystem_only();
        let start = Instant::now();
        let mut step = Instant::now();
        let mut lap = move || {
            let now = Instant::now();
            let took = now - step;
            step = now;
            took
        };
        let mut undo = Rollback::new(format!("resume of sandbox {}", self.id));
        self.provider
            .restore(&self.id, &self.root_base.0, &self.run_dir)
            .await?;
        let disk = lap();
        undo.push("release the root disk", |s: &mut Sandbox| {
            Box::pin(s.release_disk())
        });
        let attach = match &self.pool {
            Some(pool) => match pool.create(self.internet, &self.egress).await {
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
        // A fresh boot reads its network from the command line, which must
        // follow this attachment (a sandbox reattached while paused was
        // given a placeholder one).
        let kernel_args = super::attach::guest_kernel_args(&self.id, &attach, "");
        let network_took = lap();
        // Until the guest runs, the saved state holds: stopping the new VMM
        // is all it takes.
        undo.push("stop the VMM", |s: &mut Sandbox| {
            Box::pin(async move {
                s.state = SandboxState::Paused;
                s.vm.stop().await
            })
        });
        let started = if reboot {
            self.vm.boot_fresh(network, kernel_args).await
        } else {
            self.vm.resume(&self.run_dir.join("state"), network).await
        };
        if let Err(err) = started {
            return Err(undo.unwind(self, err).await);
        }
        let vm_restore = lap();
        self.state = SandboxState::Running;
        self.envd = EnvdClient::new(envd_addr).with_access_token(self.token.clone());
        if let Err(err) = on_running(&self.record()) {
            // The guest has not run yet (its vCPUs wait).
            return Err(undo.unwind(self, err).await);
        }
        crate::crash::point("resume.vm_restored");
        // From here on the saved state is stale: a failure saves the guest
        // again before the VMM, network and disk are let go. A guest booted
        // afresh has nothing in memory worth saving: it is stopped (above),
        // and its disk, flushed by the kernel as it went, is what a next
        // resume boots from.
        if reboot {
            undo.push("keep the pause filesystem-only", |s: &mut Sandbox| {
                Box::pin(async move {
                    let state_dir = s.fresh_state_dir()?;
                    mark_filesystem_only(&state_dir).await
                })
            });
        } else {
            undo.push("save the guest again", |s: &mut Sandbox| {
                Box::pin(s.save_again())
            });
        }
        let ready = match self.vm.continue_if_stopped().await {
            Ok(_) => self.resume_guest(envd_addr).await,
            Err(err) => Err(err),
        };
        let (envd_ready, init) = match ready {
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
        let timings = ResumeTimings {
            disk,
            network: network_took,
            vm_restore,
            envd_ready,
            init,
            total: start.elapsed(),
        };
        tracing::info!(
            sandbox = %self.id,
            disk_ms = timings.disk.as_millis() as u64,
            network_ms = timings.network.as_millis() as u64,
            vm_restore_ms = timings.vm_restore.as_millis() as u64,
            envd_ready_ms = timings.envd_ready.as_millis() as u64,
            init_ms = timings.init.as_millis() as u64,
            took_ms = timings.total.as_millis() as u64,
            reboot,
            "sandbox resumed"
        );
        Ok(timings)
    }

    /// The guest side of a resume: envd answers, `/init` (token, env,
    /// clock); how long each took.
    async fn resume_guest(
        &mut self,
        envd_addr: SocketAddr,
    ) -> Result<(Duration, Duration), SandboxError> {
        let envd = EnvdClient::new(envd_addr);
        let ready = wait_for_envd(&envd, self.boot_timeout, self.vm.pid())
            .await
            .map_err(|message| SandboxError::EnvdNotReady {
                sandbox: self.id.clone(),
                message,
                console: qemu_vmm::log_tail(&self.vm.console_log(), 30),
            })?;
        let init_start = Instant::now();
        let envd = envd.with_access_token(self.token.clone());
        let init = init_request(&self.token, &self.env_vars);
        envd.init(&init)
            .await
            .map_err(|source| SandboxError::Envd {
                sandbox: self.id.clone(),
                source: Box::new(source),
            })?;
        self.envd = envd;
        Ok((ready, init_start.elapsed()))
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
}

/// The marker a filesystem-only pause leaves in the state dir.
const FILESYSTEM_ONLY: &str = "filesystem-only";

/// Time the guest has to flush its files for a filesystem-only pause.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether `state_dir` is that of a filesystem-only pause.
pub(crate) fn is_filesystem_only(state_dir: &Path) -> bool {
    state_dir.join(FILESYSTEM_ONLY).is_file()
}

/// Leaves the marker of a filesystem-only pause in `state_dir`, durably.
async fn mark_filesystem_only(state_dir: &Path) -> Result<(), SandboxError> {
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| SandboxError::Io { what, path, source }
    };
    std::fs::create_dir_all(state_dir).map_err(io("create the state directory", state_dir))?;
    let marker = state_dir.join(FILESYSTEM_ONLY);
    std::fs::write(&marker, b"memory dropped; resume boots from the disk\n")
        .map_err(io("write the filesystem-only marker", &marker))?;
    let mut dirs = vec![state_dir.to_path_buf()];
    dirs.extend(state_dir.parent().map(Path::to_path_buf));
    crate::durable::sync_all(vec![marker], dirs).await
}
