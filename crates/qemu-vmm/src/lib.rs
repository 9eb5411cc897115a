//! Run Linux guests under QEMU's `microvm` machine.
//!
//! This crate knows QEMU and nothing else: it turns a [`VmConfig`] into a
//! `qemu-system-x86_64 -M microvm,acpi=off` command line (virtio-mmio block,
//! net and rng devices, serial console on a socket drained into a capped log,
//! QMP on a Unix socket, optionally confined by a [`jail::Jail`] and QEMU's
//! seccomp filter,
//! optional guest RAM in a shared `memory-backend-file`), runs and stops the
//! process ([`QemuVm`]), talks QMP ([`QmpClient`]), and decides by a real probe
//! whether KVM can be used or QEMU must fall back to TCG ([`probe_accelerator`]),
//! and saves and restores a VM's state to and from files
//! ([`QemuVm::save_state`], [`QemuVm::restore_state`]).
//!
//! It does not build disks, networks or guest images, and knows nothing about
//! sandboxes or envd: `sandbox-core` composes those.
//!
//! ```no_run
//! # async fn demo() -> Result<(), qemu_vmm::QemuError> {
//! use qemu_vmm::{Accel, Drive, NetConfig, QemuVm, VmConfig};
//! let config = VmConfig {
//!     kernel: "/var/cache/petrel/images/kernel-x/vmlinux".into(),
//!     kernel_args: "console=ttyS0 root=/dev/vda rw".into(),
//!     drives: vec![Drive::qcow2("/tmp/vm/root.qcow2")],
//!     net: NetConfig::None,
//!     ..VmConfig::new("vm1", "/tmp/vm", Accel::Tcg)
//! };
//! let mut vm = QemuVm::spawn(config).await?;
//! println!("qemu pid {}", vm.pid());
//! vm.shutdown(std::time::Duration::from_secs(2)).await?;
//! # Ok(()) }
//! ```

mod accel;
mod config;
mod console;
mod error;
mod qmp;
mod snapshot;
mod vm;

pub use accel::{Accel, AccelProbe, ProbeOutcome, probe_accelerator, qemu_version};
pub use config::{
    CONSOLE_CAP_BYTES, DiskFormat, Drive, NetConfig, PortForward, SECCOMP_ARG, TAP_FD, VmConfig,
    default_qemu_binary,
};
pub use console::{drain_to_log, log_tail};
pub use error::QemuError;
pub use qmp::QmpClient;
pub use snapshot::MigrationStats;
pub use vm::{QemuVm, absolute_binary};
