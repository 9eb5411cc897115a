//! The Firecracker backend (on `fc-client`).
//!
//! Needs a `firecracker` binary and a usable KVM. Guests get their root disk
//! as a raw image or block device and their network through a TAP device;
//! Firecracker has no user-mode network.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use fc_client::{
    BootSource, Drive, FirecrackerConfig, FirecrackerProcess, MachineConfiguration,
    NetworkInterface,
};

use crate::error::SandboxError;
use crate::vmm::{BackendKind, Hypervisor, PauseStats, Vm, VmNetwork, VmSpec};

/// Runs guests with Firecracker.
#[derive(Debug, Clone)]
pub struct FirecrackerBackend {
    pub binary: PathBuf,
}

impl FirecrackerBackend {
    /// The backend if a `firecracker` binary is found (`PETREL_FIRECRACKER`
    /// or PATH).
    pub fn find() -> Option<Self> {
        fc_client::find_firecracker().map(|binary| Self { binary })
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
        if let VmNetwork::UserForward { .. } = spec.network {
            return Err(SandboxError::Unsupported {
                backend: "firecracker",
                what: "use a user-mode network (it needs a TAP device)".to_string(),
            });
        }
        Ok(Box::new(FirecrackerInstance {
            binary: self.binary.clone(),
            spec,
            process: None,
        }))
    }

    async fn adopt(&self, spec: VmSpec, _pid: u32) -> Result<Box<dyn Vm>, SandboxError> {
        Err(SandboxError::Unsupported {
            backend: "firecracker",
            what: format!("adopt vm {} after a restart yet", spec.id),
        })
    }
}

#[derive(Debug)]
struct FirecrackerInstance {
    binary: PathBuf,
    spec: VmSpec,
    process: Option<FirecrackerProcess>,
}

impl FirecrackerInstance {
    fn error(&self, err: impl std::fmt::Display) -> SandboxError {
        SandboxError::Firecracker {
            vm: self.spec.id.clone(),
            message: err.to_string(),
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
        api.put_drive(&Drive::new("rootfs", &self.spec.root_disk, true, false))
            .await
            .map_err(|e| self.error(e))?;
        if let VmNetwork::Tap { ifname, mac, .. } = &self.spec.network {
            let mut iface = NetworkInterface::new("eth0", ifname);
            iface.guest_mac = Some(mac.clone());
            api.put_network_interface(&iface)
                .await
                .map_err(|e| self.error(e))?;
        }
        api.start_instance().await.map_err(|e| self.error(e))
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
        let mut config = FirecrackerConfig::new(
            &self.binary,
            self.spec.run_dir.join("firecracker.sock"),
            &self.spec.id,
        );
        config.log_path = Some(self.spec.console_log());
        config.ready_timeout = Duration::from_secs(5);
        let mut command = config.command();
        if let VmNetwork::Tap {
            netns: Some(netns), ..
        } = &self.spec.network
        {
            netns::command_in_netns(&mut command, netns).map_err(|e| self.error(e))?;
        }
        let process = FirecrackerProcess::spawn_command(config, command)
            .await
            .map_err(|e| self.error(e))?;
        if let Err(err) = self.configure(&process).await {
            let mut process = process;
            let _ = process.kill().await;
            return Err(err);
        }
        self.process = Some(process);
        Ok(())
    }

    async fn start_from_snapshot(
        &mut self,
        _snapshot_dir: &Path,
        _network: VmNetwork,
    ) -> Result<Duration, SandboxError> {
        Err(SandboxError::Unsupported {
            backend: "firecracker",
            what: "start from a snapshot yet".to_string(),
        })
    }

    async fn snapshot(&mut self, _snapshot_dir: &Path) -> Result<PauseStats, SandboxError> {
        Err(SandboxError::Unsupported {
            backend: "firecracker",
            what: "snapshot yet".to_string(),
        })
    }

    async fn pause(&mut self, _state_dir: &Path) -> Result<PauseStats, SandboxError> {
        Err(SandboxError::Unsupported {
            backend: "firecracker",
            what: "pause yet (snapshot/create + Uffd restore come with the lifecycle work)"
                .to_string(),
        })
    }

    async fn resume(
        &mut self,
        _state_dir: &Path,
        _network: VmNetwork,
    ) -> Result<Duration, SandboxError> {
        Err(SandboxError::Unsupported {
            backend: "firecracker",
            what: "resume yet".to_string(),
        })
    }

    async fn stop(&mut self) -> Result<(), SandboxError> {
        let Some(mut process) = self.process.take() else {
            return Ok(());
        };
        process.kill().await.map(drop).map_err(|e| self.error(e))
    }

    fn detach(self: Box<Self>) {
        // Dropping FirecrackerProcess kills it; keep it alive on purpose.
        std::mem::forget(self.process);
    }

    async fn destroy(mut self: Box<Self>) -> Result<(), SandboxError> {
        self.stop().await
    }
}
