//! Confines a VMM process: uid/gid drop, a private mount namespace whose
//! root holds only what the VMM needs, rlimits, and a cgroup with memory,
//! CPU and pids limits.
//!
//! A [`Jail`] describes the confinement (which host paths appear inside, at
//! the same absolute paths unless [`Bind::at`] moves them, read-only or
//! writable; the uid and gid; the rlimits; the cgroup to join; the working
//! directory). [`Jail::prepare`] turns it into a
//! [`Prepared`] in the parent, and [`Prepared::enter`], called from
//! `CommandExt::pre_exec`, confines the child just before it execs the
//! VMM. [`Cgroup`] creates and removes the cgroup (v2 or v1, see
//! [`Hierarchy::detect`]); [`UidPool`] hands out a uid per VMM.
//!
//! It does not start processes, does not install seccomp filters (QEMU's
//! `-sandbox` and Firecracker's built-in filter do that) and does not put
//! the VMM in a new PID namespace: the VMM must stay the direct child (and
//! the pid the agent records and later re-adopts), and a PID namespace
//! needs an extra init process between them.
//!
//! ```no_run
//! # fn demo() -> Result<(), jail::JailError> {
//! use std::os::unix::process::CommandExt;
//! let jail = jail::Jail {
//!     root: "/run/petrel-jail".into(),
//!     uid: 800_000,
//!     gid: 800_000,
//!     groups: Vec::new(),
//!     binds: jail::Jail::system_binds(),
//!     symlinks: jail::Jail::system_symlinks(),
//!     rlimits: jail::Rlimits::default(),
//!     cgroup_procs: Vec::new(),
//!     workdir: None,
//! };
//! let prepared = jail.prepare()?;
//! let mut command = std::process::Command::new("/usr/bin/true");
//! // SAFETY: `enter` only makes system calls on data prepared above.
//! unsafe { command.pre_exec(move || prepared.enter()) };
//! # Ok(()) }
//! ```

mod cgroup;
mod enter;
mod error;
mod uid;

use std::path::{Path, PathBuf};

pub use cgroup::{Cgroup, Hierarchy, Limits};
pub use enter::Prepared;
pub use error::JailError;
pub use uid::{UidLease, UidPool};

/// A host path that appears inside the jail, at the same path unless
/// `at` says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub path: PathBuf,
    pub writable: bool,
    /// Where it appears inside (absolute), when not at `path`: e.g. a
    /// device node made for this VMM (owned by its uid) shown at
    /// `/dev/userfaultfd`.
    pub at: Option<PathBuf>,
}

impl Bind {
    pub fn read_only(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            writable: false,
            at: None,
        }
    }

    pub fn writable(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            writable: true,
            at: None,
        }
    }

    /// This bind shown at `inside` instead of its own path.
    #[must_use]
    pub fn at(self, inside: impl Into<PathBuf>) -> Self {
        Self {
            at: Some(inside.into()),
            ..self
        }
    }

    /// The path inside the jail.
    pub fn target(&self) -> &Path {
        self.at.as_deref().unwrap_or(&self.path)
    }
}

/// Resource limits of the confined process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimits {
    /// `RLIMIT_NOFILE`.
    pub open_files: u64,
    /// `RLIMIT_NPROC`: processes and threads of the jail's uid.
    pub processes: u64,
    /// `RLIMIT_FSIZE`: the largest file the process may write (guest RAM
    /// file, disk image, saved state). Core dumps are always off.
    pub file_size: u64,
}

impl Default for Rlimits {
    fn default() -> Self {
        Self {
            open_files: 1024,
            processes: 256,
            file_size: 64 << 30,
        }
    }
}

/// How one VMM process is confined (see the crate docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jail {
    /// An existing empty host directory; a tmpfs is mounted on it in the
    /// child's private mount namespace and becomes its root. Many jails
    /// can share it (each mount is private to its process).
    pub root: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (e.g. `kvm` for `/dev/kvm`).
    pub groups: Vec<u32>,
    pub binds: Vec<Bind>,
    /// `(link, target)` symlinks inside the jail (e.g. `/lib` ->
    /// `usr/lib` on merged-/usr hosts).
    pub symlinks: Vec<(PathBuf, PathBuf)>,
    pub rlimits: Rlimits,
    /// `cgroup.procs` files the child joins (see [`Cgroup::procs_files`]).
    pub cgroup_procs: Vec<PathBuf>,
    /// The working directory inside the jail (`/` when `None`); it must
    /// be bound in.
    pub workdir: Option<PathBuf>,
}

impl Jail {
    /// What any dynamically linked VMM needs: `/usr` (binary, libraries,
    /// firmware) and the loader cache read-only, and the harmless device
    /// nodes `null`, `zero`, `urandom` and `random`. Directories of the
    /// top level that are real directories on this host (`/lib`, `/lib64`
    /// without merged /usr) are bound too.
    pub fn system_binds() -> Vec<Bind> {
        let mut binds = vec![Bind::read_only("/usr")];
        for dir in ["/lib", "/lib64", "/bin", "/sbin"] {
            if std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
                binds.push(Bind::read_only(dir));
            }
        }
        if Path::new("/etc/ld.so.cache").exists() {
            binds.push(Bind::read_only("/etc/ld.so.cache"));
        }
        for dev in ["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"] {
            binds.push(Bind::writable(dev));
        }
        binds
    }

    /// The top-level symlinks of a merged-/usr host (`/lib` -> `usr/lib`,
    /// ...), recreated inside so the loader's paths resolve.
    pub fn system_symlinks() -> Vec<(PathBuf, PathBuf)> {
        ["/lib", "/lib64", "/bin", "/sbin"]
            .into_iter()
            .filter_map(|link| {
                let target = std::fs::read_link(link).ok()?;
                Some((PathBuf::from(link), target))
            })
            .collect()
    }
}

/// Gives `path` to `uid`:`gid` (the VMM opens it after dropping root).
pub fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), JailError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| JailError::io("chown", path, e))
}

/// Whether this process can confine others (it runs as root).
pub fn can_confine() -> bool {
    nix::unistd::geteuid().is_root()
}
