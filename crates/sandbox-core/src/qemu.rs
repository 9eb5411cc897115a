//! The QEMU `microvm` backend.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use qemu_vmm::{Accel, Drive, NetConfig, PortForward, QemuVm, VmConfig};

use crate::error::SandboxError;
use crate::vmm::{BackendKind, Hypervisor, PauseStats, Vm, VmNetwork, VmSpec};

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
        VmConfig {
            binary: self.binary.clone(),
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            kernel: spec.kernel.clone(),
            kernel_args: spec.kernel_args.clone(),
            drives: vec![drive],
            net: net_config(&spec.network),
            // Guest RAM lives in a file of the VM's own, so a pause saves
            // only device state and the RAM file stays for resume.
            memory_file: Some(spec.run_dir.join("ram")),
            memory_shared: true,
            ..VmConfig::new(&spec.id, &spec.run_dir, self.accel)
        }
    }
}

fn net_config(network: &VmNetwork) -> NetConfig {
    match network {
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

    async fn pause(&mut self, state_dir: &Path) -> Result<PauseStats, SandboxError> {
        let start = Instant::now();
        let id = self.config.id.clone();
        let qemu_err = |source| SandboxError::Qemu {
            vm: id.clone(),
            source,
        };
        let Some(vm) = self.vm.as_mut() else {
            return Err(SandboxError::Unsupported {
                backend: "qemu",
                what: format!("pause vm {}: it is not running", self.config.id),
            });
        };
        std::fs::create_dir_all(state_dir).map_err(|source| SandboxError::Io {
            what: "create state directory",
            path: state_dir.to_path_buf(),
            source,
        })?;
        let saved = vm.save_state(&state_dir.join("vmstate")).await;
        let saved = match saved {
            Ok(saved) => saved,
            Err(err) => {
                // Leave a running guest running when the save failed.
                let _ = vm.cont_vcpus().await;
                return Err(qemu_err(err));
            }
        };
        // The VMM must let go of the disk and RAM file before they are
        // handed to anyone else.
        if let Some(mut vm) = self.vm.take() {
            vm.kill().await.map_err(qemu_err)?;
        }
        Ok(PauseStats {
            took: start.elapsed(),
            state_bytes: saved.state_bytes,
        })
    }

    async fn resume(
        &mut self,
        state_dir: &Path,
        network: VmNetwork,
    ) -> Result<Duration, SandboxError> {
        let start = Instant::now();
        if self.vm.is_some() {
            return Err(SandboxError::Unsupported {
                backend: "qemu",
                what: format!("resume vm {}: it is running", self.config.id),
            });
        }
        let config = VmConfig {
            net: net_config(&network),
            incoming: true,
            ..self.config.clone()
        };
        let id = config.id.clone();
        let qemu_err = |source| SandboxError::Qemu {
            vm: id.clone(),
            source,
        };
        let mut vm = QemuVm::spawn(config.clone()).await.map_err(qemu_err)?;
        if let Err(err) = vm.restore_state(&state_dir.join("vmstate")).await {
            let _ = vm.kill().await;
            return Err(qemu_err(err));
        }
        self.config = VmConfig {
            incoming: false,
            ..config
        };
        self.vm = Some(vm);
        Ok(start.elapsed())
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
