//! How VMM processes are confined on this host: the policy on top of the
//! `jail` crate (which uid, which paths, which limits).
//!
//! Each QEMU runs as its own uid from a range (see [`jail::UidPool`]), in a
//! private mount namespace whose root holds `/usr` (binary, libraries,
//! firmware) read-only, a few harmless device nodes, its run dir, and
//! read-only its kernel, its disks' backing files and a snapshot's RAM; with
//! rlimits on open files, processes and file size; in a cgroup
//! `petrel/<sandbox>-<hash>` whose memory limit is the guest's RAM plus
//! [`VmmConfinement::memory_overhead_mib`]; and under QEMU's seccomp filter.
//! Firecracker gets the same ([`VmmConfinement::prepare_firecracker`]),
//! with its own directory, root disk and devices in place of QEMU's files,
//! under its built-in seccomp filter.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use jail::{Bind, Cgroup, Hierarchy, Jail, Limits, Rlimits, UidLease, UidPool};
use qemu_vmm::{Accel, DiskFormat, NetConfig, VmConfig};

use crate::error::SandboxError;

/// The default uid range: one uid per running VMM. Far above login users
/// and the usual subordinate-uid ranges (100000 + 65536 × n for the first
/// users); an operator can move it.
pub const DEFAULT_UID_FIRST: u32 = 1_900_000_000;
pub const DEFAULT_UID_COUNT: u32 = 65_536;

/// QEMU's own memory beyond guest RAM: its RSS under TCG is about 130 MB
/// after boot (heap, device emulation, slirp), plus the TCG translation
/// cache, capped at [`TCG_TB_MIB`]; the rest is headroom for I/O buffers.
pub const DEFAULT_MEMORY_OVERHEAD_MIB: u32 = 384;

/// The TCG translation cache of a confined QEMU, in MiB (QEMU's default is
/// up to 1 GiB, which the memory limit would have to allow).
pub const TCG_TB_MIB: u32 = 128;

/// Where the jail roots are mounted (an empty directory; each VMM mounts
/// its own tmpfs there in its private mount namespace).
pub const DEFAULT_JAIL_ROOT: &str = "/run/petrel/vmm-root";

/// Turns confinement off for debugging: `off` (or `0`) for every VMM,
/// `off:qemu` or `off:firecracker` for that backend's only.
pub const ENV_OFF: &str = "PETREL_VMM_CONFINE";

/// The confinement policy of a VMM backend.
#[derive(Debug, Clone)]
pub struct VmmConfinement {
    pub uids: UidPool,
    pub jail_root: PathBuf,
    /// The cgroup hierarchy, or why there is none (the VMM then runs
    /// without a cgroup, and `doctor` says so).
    pub cgroups: Result<Hierarchy, String>,
    /// Added to guest RAM for the cgroup memory limit.
    pub memory_overhead_mib: u32,
    /// Added to the largest of guest RAM and disk sizes for `RLIMIT_FSIZE`.
    pub file_size_slack_mib: u64,
}

/// What a confined spawn holds until QEMU runs.
#[derive(Debug)]
pub struct Confined {
    pub jail: Jail,
    pub cgroup: Option<Cgroup>,
    /// Keep until the process runs as the uid.
    pub lease: UidLease,
}

impl VmmConfinement {
    /// The host's policy for `backend`'s VMMs: `Err` (with the reason)
    /// when this process is not root or [`ENV_OFF`] turns it off.
    pub fn for_host(backend: crate::BackendKind) -> Result<Self, String> {
        if let Ok(value) = std::env::var(ENV_OFF)
            && (value == "off" || value == "0" || value == format!("off:{}", backend.as_str()))
        {
            return Err(format!("turned off by {ENV_OFF}={value}"));
        }
        if !jail::can_confine() {
            return Err("the agent does not run as root, so it cannot drop a VMM to another uid or give it a mount namespace".to_string());
        }
        Ok(Self {
            uids: UidPool::new(DEFAULT_UID_FIRST, DEFAULT_UID_COUNT),
            jail_root: PathBuf::from(DEFAULT_JAIL_ROOT),
            cgroups: Hierarchy::detect().map_err(|e| e.to_string()),
            memory_overhead_mib: DEFAULT_MEMORY_OVERHEAD_MIB,
            file_size_slack_mib: 1024,
        })
    }

    /// The cgroup limits of a VM with `vcpus` and `memory_mib`: memory =
    /// RAM + overhead; CPU = one core per vCPU plus a quarter for QEMU's
    /// main loop and I/O threads; pids = 128 + 16 per vCPU (QEMU's threads:
    /// vCPUs, RCU, its I/O worker pool of up to 64).
    pub fn limits(&self, vcpus: u8, memory_mib: u32) -> Limits {
        Limits {
            memory_bytes: (u64::from(memory_mib) + u64::from(self.memory_overhead_mib)) << 20,
            cpu_percent: u32::from(vcpus) * 100 + 25,
            pids: 128 + 16 * u32::from(vcpus),
        }
    }

    /// The cgroup of the VM with `id` in `run_dir` (named after both, so
    /// agents with different data dirs never share one).
    pub fn cgroup(&self, id: &str, run_dir: &Path) -> Option<Cgroup> {
        let hierarchy = self.cgroups.as_ref().ok()?;
        Some(Cgroup::new(hierarchy, &cgroup_name(id, run_dir)))
    }

    /// Makes everything `config` needs for a confined QEMU spawn: a uid,
    /// the cgroup with its limits, files the VMM writes given to its uid,
    /// and the jail (what it sees, its rlimits).
    pub fn prepare(
        &self,
        config: &VmConfig,
        base_image: Option<&Path>,
    ) -> Result<Confined, SandboxError> {
        let own_dir = config.socket_dir();
        let vm = Vm {
            id: &config.id,
            run_dir: &config.run_dir,
            vcpus: config.vcpus,
            memory_mib: config.memory_mib,
            kvm: config.accel == Accel::Kvm,
            own_dir: &own_dir,
        };
        self.confine(&vm, |uid| qemu_binds(config, base_image, uid))
    }

    /// Makes everything a confined Firecracker needs, like
    /// [`prepare`](Self::prepare): it sees its own directory `vmm_dir`
    /// (writable, its working directory: API and page server sockets, the
    /// `rootfs` link, snapshot files while they are written), its kernel
    /// read-only, its root disk, `/dev/kvm`, `/dev/net/tun` and a
    /// `/dev/userfaultfd` node of its own (Firecracker's Uffd memory
    /// backend opens it; the host's is root's only).
    pub fn prepare_firecracker(
        &self,
        spec: &crate::vmm::VmSpec,
        binary: &Path,
        vmm_dir: &Path,
    ) -> Result<Confined, SandboxError> {
        let vm = Vm {
            id: &spec.id,
            run_dir: &spec.run_dir,
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            kvm: true,
            own_dir: vmm_dir,
        };
        let err = |source| SandboxError::Confine {
            vm: spec.id.clone(),
            source,
        };
        let mut confined = self.confine(&vm, |uid| {
            jail::chown(vmm_dir, uid, uid).map_err(err)?;
            jail::chown(&spec.root_disk, uid, uid).map_err(err)?;
            let mut binds = vec![
                Bind::writable(vmm_dir),
                Bind::read_only(&spec.kernel),
                Bind::writable(&spec.root_disk),
            ];
            if !binary.starts_with("/usr") {
                // Its build links only the C library (or nothing).
                binds.push(Bind::read_only(binary));
            }
            // It opens the TAP by name and its userfaultfd itself.
            for device in [HOST_TUN, HOST_USERFAULTFD] {
                binds.extend(own_device(device, vmm_dir, uid).map_err(err)?);
            }
            let disk = std::fs::metadata(&spec.root_disk).map_or(0, |m| m.len());
            Ok((binds, disk))
        })?;
        confined.jail.workdir = Some(vmm_dir.to_path_buf());
        Ok(confined)
    }

    /// The part common to every backend: a uid, the cgroup, the jail
    /// around `backend_binds(uid)` (binds and the largest file the VMM
    /// writes besides guest RAM) with `/dev/kvm` when `vm.kvm`, inputs
    /// made readable for the VMM group, rlimits.
    fn confine(
        &self,
        vm: &Vm<'_>,
        backend_binds: impl FnOnce(u32) -> Result<(Vec<Bind>, u64), SandboxError>,
    ) -> Result<Confined, SandboxError> {
        let err = |source| SandboxError::Confine {
            vm: vm.id.to_string(),
            source,
        };
        let lease = self.uids.allocate().map_err(err)?;
        let uid = lease.uid();
        std::fs::create_dir_all(&self.jail_root).map_err(|source| SandboxError::Io {
            what: "create jail root",
            path: self.jail_root.clone(),
            source,
        })?;
        let cgroup = self.cgroup(vm.id, vm.run_dir);
        let limits = self.limits(vm.vcpus, vm.memory_mib);
        if let Some(cgroup) = &cgroup {
            cgroup.create(limits).map_err(err)?;
        }
        let mut binds = Jail::system_binds();
        let (own, largest_file) = backend_binds(uid)?;
        binds.extend(own);
        let largest = largest_file.max(u64::from(vm.memory_mib) << 20);
        let mut groups = Vec::new();
        if vm.kvm {
            binds.extend(own_device(HOST_KVM, vm.own_dir, uid).map_err(err)?);
        }
        dedup(&mut binds);
        let vmm_gid = self.uids.range().0.saturating_sub(1);
        for bind in &binds {
            if !bind.writable && !bind.path.starts_with("/usr") && !bind.path.starts_with("/dev") {
                ensure_group_readable(&bind.path, vmm_gid).map_err(err)?;
            }
        }
        groups.push(vmm_gid);
        let jail = Jail {
            root: self.jail_root.clone(),
            uid,
            gid: uid,
            groups,
            binds,
            symlinks: Jail::system_symlinks(),
            rlimits: Rlimits {
                open_files: 1024,
                processes: u64::from(limits.pids),
                file_size: largest + (self.file_size_slack_mib << 20),
            },
            cgroup_procs: cgroup.as_ref().map(Cgroup::procs_files).unwrap_or_default(),
            workdir: None,
        };
        Ok(Confined {
            jail,
            cgroup,
            lease,
        })
    }
}

/// What [`VmmConfinement::confine`] needs to know of a VM.
struct Vm<'a> {
    id: &'a str,
    run_dir: &'a Path,
    vcpus: u8,
    memory_mib: u32,
    kvm: bool,
    /// The VMM's own directory (its uid's), where its device nodes are made.
    own_dir: &'a Path,
}

/// The host's userfaultfd device (Linux 6.1+).
const HOST_USERFAULTFD: &str = "/dev/userfaultfd";
/// The tun driver's device (Firecracker opens its TAP by name).
const HOST_TUN: &str = "/dev/net/tun";
/// KVM.
const HOST_KVM: &str = "/dev/kvm";

/// A node like the host's `device` made in `dir` for `uid` (0600), bound
/// at the device's path in the jail, as Firecracker's jailer makes its
/// device nodes: host nodes may be root's only (no udev), and a VMM
/// should not need a host group. Nothing when the host has no such device.
fn own_device(device: &str, dir: &Path, uid: u32) -> Result<Option<Bind>, jail::JailError> {
    let device = Path::new(device);
    if !device.exists() {
        return Ok(None);
    }
    let name = device
        .file_name()
        .map_or_else(|| "device".into(), |n| n.to_string_lossy().into_owned());
    let own = dir.join(format!("dev-{name}"));
    own_device_node(device, &own, uid)?;
    Ok(Some(Bind::writable(own).at(device)))
}

/// Makes `node`, a character device like `device`, owned by `uid`, mode
/// 0600 (as Firecracker's jailer does for its chroot's device nodes).
fn own_device_node(device: &Path, node: &Path, uid: u32) -> Result<(), jail::JailError> {
    use std::os::unix::fs::MetadataExt;
    let io = |path: &Path, source| jail::JailError::Io {
        what: "make device node",
        path: path.to_path_buf(),
        source,
    };
    let rdev = std::fs::metadata(device).map_err(|e| io(device, e))?.rdev();
    match std::fs::remove_file(node) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(node, e)),
        _ => {}
    }
    nix::sys::stat::mknod(
        node,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        rdev,
    )
    .map_err(|e| io(node, e.into()))?;
    jail::chown(node, uid, uid)
}

/// QEMU's own binds: its socket dir and RAM file (given to `uid`), its
/// kernel, its drives and their backing chains, `resolv.conf` for
/// user-mode DNS; and the largest file it writes (a disk).
fn qemu_binds(
    config: &VmConfig,
    base_image: Option<&Path>,
    uid: u32,
) -> Result<(Vec<Bind>, u64), SandboxError> {
    let err = |source| SandboxError::Confine {
        vm: config.id.clone(),
        source,
    };
    let mut binds = Vec::new();
    if let Ok(binary) = qemu_vmm::absolute_binary(&config.binary)
        && !binary.starts_with("/usr")
        && let Some(prefix) = binary.parent().and_then(Path::parent)
        && prefix != Path::new("/")
    {
        // A QEMU outside /usr (e.g. /opt/qemu/bin/...) brings its
        // libraries and firmware in its prefix.
        binds.push(Bind::read_only(prefix));
    }
    // The run dir stays the agent's (its records must not be writable
    // by the VMM): only the socket directory, the RAM file and the
    // disks are the VMM's.
    let sockets = config.socket_dir();
    std::fs::create_dir_all(&sockets).map_err(|source| SandboxError::Io {
        what: "create socket directory",
        path: sockets.clone(),
        source,
    })?;
    jail::chown(&sockets, uid, uid).map_err(err)?;
    binds.push(Bind::writable(&sockets));
    binds.push(Bind::read_only(&config.kernel));
    let mut trusted = trusted_roots(config);
    trusted.extend(base_image.map(|b| b.canonicalize().unwrap_or_else(|_| b.to_path_buf())));
    let mut largest = 0;
    for drive in &config.drives {
        largest = largest.max(virtual_size(&drive.path, drive.format));
        binds.push(if drive.read_only {
            Bind::read_only(&drive.path)
        } else {
            Bind::writable(&drive.path)
        });
        if !drive.read_only {
            jail::chown(&drive.path, uid, uid).map_err(err)?;
        }
        if drive.format == DiskFormat::Qcow2 {
            // The agent's record of the chain; without one (a disk
            // made before chains were recorded) the headers, which a
            // VMM could have rewritten, limited to petrel's stores.
            let (chain, recorded) = match crate::disk::qcow2::recorded_chain(&drive.path)? {
                Some(chain) => (chain, true),
                None => (crate::disk::qcow2::backing_chain(&drive.path)?, false),
            };
            for backing in chain {
                let canonical = backing.canonicalize().unwrap_or_else(|_| backing.clone());
                if !recorded && !trusted.iter().any(|root| canonical.starts_with(root)) {
                    return Err(SandboxError::Disk {
                        sandbox: config.id.clone(),
                        message: format!(
                            "backing file {} of {} is not recorded by the agent and lies outside the base image, templates/ and snapshots/; refusing to show it to the VMM",
                            backing.display(),
                            drive.path.display()
                        ),
                    });
                }
                binds.push(Bind::read_only(backing));
            }
        }
    }
    if let Some(ram) = &config.memory_file {
        if config.memory_shared {
            // QEMU would create it in a directory it cannot write.
            if !ram.exists() {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600)
                    .open(ram)
                    .map_err(|source| SandboxError::Io {
                        what: "create RAM file",
                        path: ram.clone(),
                        source,
                    })?;
            }
            jail::chown(ram, uid, uid).map_err(err)?;
            binds.push(Bind::writable(ram));
        } else {
            // A snapshot's RAM, mapped privately and opened read-only.
            binds.push(Bind::read_only(ram));
        }
    }
    if matches!(config.net, NetConfig::User { .. }) && Path::new("/etc/resolv.conf").exists() {
        // QEMU's user-mode DNS forwards to the host's resolvers.
        binds.push(Bind::read_only("/etc/resolv.conf"));
    }
    Ok((binds, largest))
}

/// Where backing files may live: the data dir's templates and snapshots
/// (not other sandboxes), besides the template's base image.
fn trusted_roots(config: &VmConfig) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    // run_dir is DATA_DIR/sandboxes/ID.
    if let Some(data_dir) = config.run_dir.parent().and_then(Path::parent) {
        let data_dir = data_dir
            .canonicalize()
            .unwrap_or_else(|_| data_dir.to_path_buf());
        roots.push(data_dir.join("templates"));
        roots.push(data_dir.join("snapshots"));
    }
    roots
}

/// `<id>-<8 hex digits of a hash of run_dir>` (FNV-1a, stable across runs).
pub fn cgroup_name(id: &str, run_dir: &Path) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in run_dir.as_os_str().as_encoded_bytes() {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    format!("{id}-{hash:08x}")
}

/// Makes a read-only input (kernel, backing file, snapshot RAM) readable
/// by the VMM group when "other" cannot read it (petrel's files are 0600):
/// group `gid`, `g+r`. Every VMM has that group, but each sees only the
/// files bound into its own jail.
fn ensure_group_readable(path: &Path, gid: u32) -> Result<(), jail::JailError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let io = |e| jail::JailError::Io {
        what: "make readable for the VMM",
        path: path.to_path_buf(),
        source: e,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() || meta.mode() & 0o004 != 0 {
        return Ok(());
    }
    if meta.gid() != gid {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(io)?;
    }
    if meta.mode() & 0o040 == 0 {
        let mut permissions = meta.permissions();
        permissions.set_mode((meta.mode() & 0o7777) | 0o040);
        std::fs::set_permissions(path, permissions).map_err(io)?;
    }
    Ok(())
}

/// Keeps the first bind of each path inside the jail.
fn dedup(binds: &mut Vec<Bind>) {
    let mut seen: Vec<PathBuf> = Vec::new();
    binds.retain(|b| {
        let target = b.target().to_path_buf();
        if seen.contains(&target) {
            false
        } else {
            seen.push(target);
            true
        }
    });
}

/// The guest-visible size of a drive: a qcow2 header's size field, else
/// the file's length (0 when unreadable, e.g. a block device).
fn virtual_size(path: &Path, format: DiskFormat) -> u64 {
    use std::io::{Read, Seek, SeekFrom};
    if format == DiskFormat::Qcow2 {
        let mut field = [0_u8; 8];
        let read = std::fs::File::open(path).and_then(|mut f| {
            f.seek(SeekFrom::Start(24))?;
            f.read_exact(&mut field)
        });
        if read.is_ok() {
            return u64::from_be_bytes(field);
        }
    }
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Confinement features, each on or off with the reason, for `doctor`.
pub fn report(
    confinement: &Result<VmmConfinement, String>,
    seccomp: &Result<(), String>,
) -> Vec<(&'static str, String)> {
    let mut lines = Vec::new();
    match confinement {
        Ok(c) => {
            let (first, end) = c.uids.range();
            lines.push((
                "vmm uid drop",
                format!("on (a uid per VMM from {first}..{end}, no capabilities)"),
            ));
            lines.push((
                "vmm mount ns",
                format!("on (private mount namespace, pivot_root into a tmpfs at {} holding /usr read-only, its kernel and backing files read-only, its disks, RAM file and socket dir; Firecracker: its own directory, kernel, root disk, /dev/kvm, /dev/net/tun and a /dev/userfaultfd node of its own)", c.jail_root.display()),
            ));
            lines.push((
                "vmm rlimits",
                "on (open files, processes, file size; no core dumps)".to_string(),
            ));
            lines.push((
                "vmm cgroup",
                match &c.cgroups {
                    Ok(h) => format!(
                        "on, {} (memory = guest RAM + {} MiB, CPU, pids)",
                        h.describe(),
                        c.memory_overhead_mib
                    ),
                    Err(why) => format!("off ({why})"),
                },
            ));
        }
        Err(why) => {
            for label in ["vmm uid drop", "vmm mount ns", "vmm rlimits", "vmm cgroup"] {
                lines.push((label, format!("off ({why})")));
            }
        }
    }
    lines.push((
        "vmm seccomp",
        match seccomp {
            Ok(()) => format!(
                "on (QEMU -sandbox {}; Firecracker: its built-in filter)",
                qemu_vmm::SECCOMP_ARG
            ),
            Err(why) => format!("off for QEMU ({why}); Firecracker: its built-in filter"),
        },
    ));
    lines.push((
        "vmm pid ns",
        "off (the VMM must stay the agent's direct child, whose pid is recorded and re-adopted after a restart; a PID namespace needs an init in between. QEMU cannot fork (seccomp spawn=deny), neither VMM sees /proc, and its own uid cannot signal other processes)".to_string(),
    ));
    lines
}

/// Whether `binary` has QEMU's seccomp support (`-sandbox` in its help).
pub fn qemu_seccomp(binary: &Path) -> Result<(), String> {
    let output = std::process::Command::new(binary)
        .arg("-help")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    if String::from_utf8_lossy(&output.stdout).contains("-sandbox") {
        Ok(())
    } else {
        Err(format!(
            "{} was built without seccomp (no -sandbox)",
            binary.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_name_differs_per_run_dir_and_is_stable() {
        let a = cgroup_name("sb", Path::new("/var/lib/petrel/sandboxes/sb"));
        let b = cgroup_name("sb", Path::new("/tmp/other/sandboxes/sb"));

        assert_ne!(a, b);
        assert_eq!(
            a,
            cgroup_name("sb", Path::new("/var/lib/petrel/sandboxes/sb"))
        );
        assert!(a.starts_with("sb-"));
    }

    #[test]
    fn limits_add_the_overhead_to_guest_ram() {
        let confinement = VmmConfinement {
            uids: UidPool::new(1, 1),
            jail_root: PathBuf::from("/x"),
            cgroups: Err("test".into()),
            memory_overhead_mib: 100,
            file_size_slack_mib: 0,
        };

        let limits = confinement.limits(2, 512);

        assert_eq!(limits.memory_bytes, 612 << 20);
        assert_eq!(limits.cpu_percent, 225);
        assert_eq!(limits.pids, 160);
    }
}
