//! The VM description and its translation into a QEMU command line.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::accel::Accel;
use crate::error::QemuError;

/// The QEMU binary: `$PETREL_QEMU` if set, else `qemu-system-x86_64` from PATH.
pub fn default_qemu_binary() -> PathBuf {
    std::env::var_os("PETREL_QEMU")
        .map_or_else(|| PathBuf::from("qemu-system-x86_64"), PathBuf::from)
}

/// Image format of a drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// A virtio-blk drive. The first drive of a [`VmConfig`] is `/dev/vda`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    pub path: PathBuf,
    pub format: DiskFormat,
    pub read_only: bool,
}

impl Drive {
    /// A writable raw image or block device.
    pub fn raw(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            format: DiskFormat::Raw,
            read_only: false,
        }
    }

    /// A writable qcow2 image (typically an overlay on a template's base).
    pub fn qcow2(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            format: DiskFormat::Qcow2,
            read_only: false,
        }
    }
}

/// One host-to-guest TCP forward of QEMU's user-mode network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortForward {
    pub host: SocketAddr,
    pub guest_port: u16,
}

/// The guest's network device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetConfig {
    /// No network device at all.
    None,
    /// QEMU's user-mode (slirp) network: guest 10.0.2.15/24, gateway
    /// 10.0.2.2, DNS 10.0.2.3, with TCP forwards from host addresses.
    ///
    /// With `restrict` (`restrict=on`) the guest can open no connection and
    /// send no packet out: not to the host (without it, 10.0.2.2 is the
    /// host's loopback, every local service included), not to the outside;
    /// only the `forwards` carry traffic. Without it the guest reaches the
    /// host's loopback and whatever the host reaches.
    User {
        forwards: Vec<PortForward>,
        restrict: bool,
    },
    /// An existing TAP device (`ip tuntap add ... mode tap`) in QEMU's
    /// network namespace.
    Tap { ifname: String, mac: String },
}

/// Everything QEMU needs to run one guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Names the VM in logs and errors.
    pub id: String,
    pub binary: PathBuf,
    pub accel: Accel,
    pub vcpus: u8,
    pub memory_mib: u32,
    /// An uncompressed ELF `vmlinux` with a PVH note.
    pub kernel: PathBuf,
    pub kernel_args: String,
    pub drives: Vec<Drive>,
    pub net: NetConfig,
    /// Guest RAM backed by this file (`share=on`), so the RAM can outlive the
    /// process (pause to disk with `x-ignore-shared`). `None`: anonymous RAM.
    pub memory_file: Option<PathBuf>,
    /// Map `memory_file` shared (guest writes reach the file: the VM's own
    /// RAM) or private (copy-on-write over a snapshot's RAM that many VMs
    /// map at once).
    pub memory_shared: bool,
    /// Run QEMU inside this network namespace (`/run/netns/NAME`), where its
    /// TAP device lives.
    pub netns: Option<PathBuf>,
    /// Start with `-incoming defer`, waiting for a migration stream.
    pub incoming: bool,
    /// Holds the QMP socket, the console log and QEMU's own log.
    pub run_dir: PathBuf,
    /// Confine the process (uid drop, private mount namespace, rlimits,
    /// cgroup); `None`: QEMU runs with the agent's privileges.
    pub jail: Option<jail::Jail>,
    /// `-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,
    /// resourcecontrol=deny`: QEMU's seccomp filter.
    pub seccomp: bool,
    /// TCG's translation cache in MiB (`tb-size`); `None`: QEMU's default
    /// (up to 1 GiB, which a memory limit must then allow for).
    pub tcg_tb_mib: Option<u32>,
    /// The console log is rotated (to `console.log.1`) past this size, so
    /// the two files together stay under twice this.
    pub console_cap_bytes: u64,
}

/// The descriptor number a TAP device is passed to QEMU on.
pub const TAP_FD: i32 = 100;

/// QEMU's seccomp filter with every optional deny turned on.
pub const SECCOMP_ARG: &str =
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// The default console cap: 1 MiB per file.
pub const CONSOLE_CAP_BYTES: u64 = 1 << 20;

impl VmConfig {
    /// A configuration with sane defaults (1 vCPU, 512 MiB, no drives, no
    /// network); fill in the kernel, drives and network.
    pub fn new(id: impl Into<String>, run_dir: impl Into<PathBuf>, accel: Accel) -> Self {
        Self {
            id: id.into(),
            binary: default_qemu_binary(),
            accel,
            vcpus: 1,
            memory_mib: 512,
            kernel: PathBuf::new(),
            kernel_args: String::new(),
            drives: Vec::new(),
            net: NetConfig::None,
            memory_file: None,
            memory_shared: true,
            netns: None,
            incoming: false,
            run_dir: run_dir.into(),
            jail: None,
            seccomp: false,
            tcg_tb_mib: None,
            console_cap_bytes: CONSOLE_CAP_BYTES,
        }
    }

    /// The directory QEMU may create files in (its sockets): the only
    /// writable directory a confined QEMU sees.
    pub fn socket_dir(&self) -> PathBuf {
        self.run_dir.join("vmm")
    }

    /// QMP's Unix socket.
    pub fn qmp_socket(&self) -> PathBuf {
        self.socket_dir().join("qmp.sock")
    }

    /// The guest's serial console as the agent writes it (capped, see
    /// [`VmConfig::console_cap_bytes`]).
    pub fn console_log(&self) -> PathBuf {
        self.run_dir.join("console.log")
    }

    /// The console's previous part after a rotation.
    pub fn console_log_old(&self) -> PathBuf {
        self.run_dir.join("console.log.1")
    }

    /// The Unix socket QEMU serves the serial console on; the agent drains
    /// it into [`VmConfig::console_log`].
    pub fn console_socket(&self) -> PathBuf {
        self.socket_dir().join("console.sock")
    }

    /// QEMU's own stdout and stderr.
    pub fn qemu_log(&self) -> PathBuf {
        self.run_dir.join("qemu.log")
    }

    /// Checks what QEMU would otherwise reject with a less helpful message.
    pub fn validate(&self) -> Result<(), QemuError> {
        if self.vcpus == 0 {
            return Err(QemuError::Config(format!(
                "vm {}: vcpus must be at least 1",
                self.id
            )));
        }
        if self.memory_mib < 64 {
            return Err(QemuError::Config(format!(
                "vm {}: memory_mib {} is below the 64 MiB minimum",
                self.id, self.memory_mib
            )));
        }
        if self.kernel.as_os_str().is_empty() {
            return Err(QemuError::Config(format!(
                "vm {}: no kernel given",
                self.id
            )));
        }
        for path in std::iter::once(&self.kernel).chain(self.drives.iter().map(|d| &d.path)) {
            check_exists(path)?;
        }
        Ok(())
    }

    /// The full argument list (without the binary).
    pub fn args(&self) -> Vec<OsString> {
        let mut args = Args::default();
        let mut machine = String::from("microvm,acpi=off");
        if self.memory_file.is_some() {
            machine.push_str(",memory-backend=mem0");
        }
        args.push("-M").push(machine);
        match self.accel {
            Accel::Kvm => args.push("-accel").push("kvm").push("-cpu").push("host"),
            Accel::Tcg => {
                let mut tcg = String::from(if self.vcpus > 1 {
                    "tcg,thread=multi"
                } else {
                    "tcg"
                });
                if let Some(mib) = self.tcg_tb_mib {
                    let _ = write!(tcg, ",tb-size={mib}");
                }
                args.push("-accel").push(tcg).push("-cpu").push("max")
            }
        };
        args.push("-smp").push(self.vcpus.to_string());
        args.push("-m").push(format!("{}M", self.memory_mib));
        if let Some(mem) = &self.memory_file {
            args.push("-object").push(format!(
                "memory-backend-file,id=mem0,size={}M,mem-path={},{}",
                self.memory_mib,
                mem.display(),
                // A private mapping opens the file read-only: the file
                // (a snapshot's RAM) stays untouched and may be read-only.
                if self.memory_shared {
                    "share=on"
                } else {
                    "share=off,readonly=on,rom=off"
                }
            ));
        }
        args.push("-nodefaults")
            .push("-no-user-config")
            .push("-nographic")
            .push("-no-reboot");
        args.push("-chardev")
            .push(format!(
                "socket,id=console,path={},server=on,wait=off",
                self.console_socket().display()
            ))
            .push("-serial")
            .push("chardev:console");
        args.push("-qmp").push(format!(
            "unix:{},server=on,wait=off",
            self.qmp_socket().display()
        ));
        args.push("-kernel").push(self.kernel.as_os_str());
        args.push("-append").push(self.kernel_args.as_str());
        for (index, drive) in self.drives.iter().enumerate() {
            // `cache=writeback` (QEMU's default semantics): writes go through
            // the host page cache and every guest flush (and the flush that
            // ends a migration, i.e. a pause or snapshot) reaches stable
            // storage with an fdatasync. `cache=unsafe` would drop them.
            let mut spec = format!(
                "id=drive{index},file={},format={},if=none,cache=writeback,discard=unmap",
                drive.path.display(),
                drive.format.as_str()
            );
            if drive.read_only {
                spec.push_str(",readonly=on");
            }
            args.push("-drive").push(spec);
            args.push("-device")
                .push(format!("virtio-blk-device,drive=drive{index}"));
        }
        match &self.net {
            NetConfig::None => {}
            NetConfig::User { forwards, restrict } => {
                let mut netdev = String::from("user,id=net0");
                if *restrict {
                    netdev.push_str(",restrict=on");
                }
                for f in forwards {
                    // Writing to a String cannot fail.
                    let _ = write!(
                        netdev,
                        ",hostfwd=tcp:{}:{}-:{}",
                        f.host.ip(),
                        f.host.port(),
                        f.guest_port
                    );
                }
                args.push("-netdev").push(netdev);
                args.push("-device").push("virtio-net-device,netdev=net0");
            }
            NetConfig::Tap { mac, .. } => {
                // Opened by the agent's child before it drops privileges
                // (see `vm.rs`): a confined QEMU cannot open a TAP itself.
                args.push("-netdev")
                    .push(format!("tap,id=net0,fd={TAP_FD}"));
                args.push("-device")
                    .push(format!("virtio-net-device,netdev=net0,mac={mac}"));
            }
        }
        args.push("-device").push("virtio-rng-device");
        if self.seccomp {
            args.push("-sandbox").push(SECCOMP_ARG);
        }
        if self.incoming {
            args.push("-incoming").push("defer");
        }
        args.0
    }
}

fn check_exists(path: &Path) -> Result<(), QemuError> {
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|source| QemuError::Io {
            what: "cannot use",
            path: path.to_path_buf(),
            source,
        })
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn push(&mut self, arg: impl Into<OsString>) -> &mut Self {
        self.0.push(arg.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(config: &VmConfig) -> String {
        config
            .args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn config() -> VmConfig {
        VmConfig {
            kernel: "/k/vmlinux".into(),
            kernel_args: "console=ttyS0 root=/dev/vda".into(),
            drives: vec![Drive::qcow2("/d/root.qcow2")],
            ..VmConfig::new("vm1", "/run/vm1", Accel::Tcg)
        }
    }

    #[test]
    fn args_use_microvm_without_acpi_and_tcg() {
        let args = joined(&config());

        assert!(args.starts_with("-M microvm,acpi=off -accel tcg -cpu max -smp 1 -m 512M"));
    }

    #[test]
    fn args_put_qmp_and_console_in_run_dir() {
        let args = joined(&config());

        assert!(args.contains("-qmp unix:/run/vm1/vmm/qmp.sock,server=on,wait=off"));
        assert!(args.contains(
            "-chardev socket,id=console,path=/run/vm1/vmm/console.sock,server=on,wait=off -serial chardev:console"
        ));
    }

    #[test]
    fn args_attach_drives_as_virtio_mmio_block_devices() {
        let args = joined(&config());

        assert!(args.contains(
            "-drive id=drive0,file=/d/root.qcow2,format=qcow2,if=none,cache=writeback,discard=unmap -device virtio-blk-device,drive=drive0"
        ));
    }

    #[test]
    fn drives_honour_guest_flushes() {
        let config = VmConfig {
            drives: vec![Drive::qcow2("/d/root.qcow2"), Drive::raw("/d/data.img")],
            ..config()
        };

        let args = joined(&config);

        assert_eq!(args.matches("cache=writeback").count(), 2);
        assert!(!args.contains("cache=unsafe"));
        assert!(!args.contains("cache.no-flush=on"));
    }

    #[test]
    fn args_forward_user_network_ports() {
        let forward = PortForward {
            host: "127.0.0.1:4000".parse().unwrap(),
            guest_port: 49983,
        };
        let config = VmConfig {
            net: NetConfig::User {
                forwards: vec![forward],
                restrict: false,
            },
            ..config()
        };

        let args = joined(&config);

        assert!(args.contains("-netdev user,id=net0,hostfwd=tcp:127.0.0.1:4000-:49983 -device virtio-net-device,netdev=net0"));
    }

    #[test]
    fn args_restrict_user_network_to_its_forwards() {
        let forward = PortForward {
            host: "127.0.0.1:4000".parse().unwrap(),
            guest_port: 49983,
        };
        let config = VmConfig {
            net: NetConfig::User {
                forwards: vec![forward],
                restrict: true,
            },
            ..config()
        };

        let args = joined(&config);

        assert!(
            args.contains("-netdev user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:4000-:49983 ")
        );
    }

    #[test]
    fn args_with_memory_file_use_shared_backend() {
        let config = VmConfig {
            memory_file: Some("/run/vm1/ram".into()),
            ..config()
        };

        let args = joined(&config);

        assert!(args.starts_with("-M microvm,acpi=off,memory-backend=mem0"));
        assert!(args.contains(
            "-object memory-backend-file,id=mem0,size=512M,mem-path=/run/vm1/ram,share=on"
        ));
    }

    #[test]
    fn args_with_kvm_use_host_cpu_and_multi_vcpu_tcg_uses_threads() {
        let kvm = VmConfig {
            accel: Accel::Kvm,
            ..config()
        };
        let tcg = VmConfig {
            vcpus: 2,
            ..config()
        };

        assert!(joined(&kvm).contains("-accel kvm -cpu host"));
        assert!(joined(&tcg).contains("-accel tcg,thread=multi -cpu max -smp 2"));
    }

    #[test]
    fn args_with_seccomp_deny_everything_optional() {
        let config = VmConfig {
            seccomp: true,
            tcg_tb_mib: Some(64),
            ..config()
        };

        let args = joined(&config);

        assert!(args.contains(
            "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
        ));
        assert!(args.contains("-accel tcg,tb-size=64"));
    }

    #[test]
    fn args_pass_tap_as_descriptor_and_map_private_ram_read_only() {
        let config = VmConfig {
            net: NetConfig::Tap {
                ifname: "tap0".into(),
                mac: "02:00:00:00:00:01".into(),
            },
            memory_file: Some("/snap/ram".into()),
            memory_shared: false,
            ..config()
        };

        let args = joined(&config);

        assert!(args.contains(
            "-netdev tap,id=net0,fd=100 -device virtio-net-device,netdev=net0,mac=02:00:00:00:00:01"
        ));
        assert!(args.contains("mem-path=/snap/ram,share=off,readonly=on,rom=off"));
    }

    #[test]
    fn validate_rejects_zero_vcpus() {
        let config = VmConfig {
            vcpus: 0,
            ..config()
        };

        let err = config.validate().unwrap_err();

        assert!(err.to_string().contains("vcpus must be at least 1"));
    }

    #[test]
    fn validate_rejects_missing_kernel_naming_the_path() {
        let config = config();

        let err = config.validate().unwrap_err();

        assert!(err.to_string().contains("/k/vmlinux"));
    }
}
