//! The QEMU `microvm` backend.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use qemu_vmm::{Accel, Drive, NetConfig, PortForward, QemuVm, VmConfig};

use crate::error::SandboxError;
use crate::vmm::{BackendKind, Hypervisor, Vm, VmNetwork, VmSpec};

/// The guest port envd listens on.
pub const ENVD_PORT: u16 = 49983;

/// Runs guests with `qemu-system-x86_64 -M microvm`.
#[derive(Debug, Clone)]
pub struct QemuBackend {
    pub binary: PathBuf,
    pub accel: Accel,
}

impl QemuBackend {
    /// The QEMU binary from `PETREL_QEMU` or PATH, with this accelerator
    /// (normally the outcome of [`qemu_vmm::probe_accelerator`]).
    pub fn new(accel: Accel) -> Self {
        Self {
            binary: qemu_vmm::default_qemu_binary(),
            accel,
        }
    }

    fn config(&self, spec: &VmSpec) -> VmConfig {
        let drive = if spec.root_disk_qcow2 {
            Drive::qcow2(&spec.root_disk)
        } else {
            Drive::raw(&spec.root_disk)
        };
        let net = match &spec.network {
            VmNetwork::UserForward { host } => NetConfig::User {
                forwards: vec![PortForward {
                    host: *host,
                    guest_port: ENVD_PORT,
                }],
            },
            VmNetwork::Tap { ifname, mac } => NetConfig::Tap {
                ifname: ifname.clone(),
                mac: mac.clone(),
            },
        };
        VmConfig {
            binary: self.binary.clone(),
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            kernel: spec.kernel.clone(),
            kernel_args: spec.kernel_args.clone(),
            drives: vec![drive],
            net,
            ..VmConfig::new(&spec.id, &spec.run_dir, self.accel)
        }
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
        Ok(Box::new(QemuInstance { config, vm: None }))
    }
}

/// A QEMU guest: `vm` is set while its process runs.
#[derive(Debug)]
struct QemuInstance {
    config: VmConfig,
    vm: Option<QemuVm>,
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
        let vm = QemuVm::spawn(self.config.clone())
            .await
            .map_err(|source| SandboxError::Qemu {
                vm: self.config.id.clone(),
                source,
            })?;
        self.vm = Some(vm);
        Ok(())
    }

    async fn stop(&mut self) -> Result<(), SandboxError> {
        let Some(mut vm) = self.vm.take() else {
            return Ok(());
        };
        // The guest's disk is a throwaway overlay or is flushed by the
        // lifecycle layer before this: no need for a clean guest shutdown.
        vm.kill().await.map_err(|source| SandboxError::Qemu {
            vm: self.config.id.clone(),
            source,
        })
    }

    async fn destroy(mut self: Box<Self>) -> Result<(), SandboxError> {
        self.stop().await?;
        for path in [self.config.qmp_socket()] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(SandboxError::Io {
                        what: "remove",
                        path,
                        source,
                    });
                }
            }
        }
        Ok(())
    }
}

/// How long a TCG guest gets to answer on envd after QEMU started.
pub const TCG_BOOT_TIMEOUT: Duration = Duration::from_mins(1);
