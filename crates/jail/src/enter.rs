//! Entering a jail in a forked child, between fork and exec.
//!
//! Everything that allocates (path strings, the list of steps) or can block
//! for long (opening cgroup files) happens in [`Jail::prepare`], in the
//! parent; [`Prepared::enter`] then only makes raw system calls, which is
//! what a child of a multi-threaded process may do before exec.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::Jail;
use crate::error::JailError;

/// One step of building the jail's root, with its paths as C strings.
#[derive(Debug)]
enum Step {
    Mkdir(CString),
    /// An empty file to bind a non-directory onto.
    Touch(CString),
    Bind {
        source: CString,
        target: CString,
        writable: bool,
    },
    Symlink {
        target: CString,
        link: CString,
    },
}

/// A jail ready to be entered by a forked child ([`Prepared::enter`]).
#[derive(Debug)]
pub struct Prepared {
    root: CString,
    workdir: CString,
    steps: Vec<Step>,
    cgroup_procs: Vec<OwnedFd>,
    rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
}

fn cstring(path: &Path) -> Result<CString, JailError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| JailError::BadPath(path.to_path_buf()))
}

/// `root` + the absolute `path`.
fn inside(root: &Path, path: &Path) -> Result<PathBuf, JailError> {
    if !path.is_absolute()
        || path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(JailError::BadPath(path.to_path_buf()));
    }
    Ok(root.join(path.strip_prefix("/").unwrap_or(path)))
}

impl Jail {
    /// Builds the steps and opens the cgroup's `cgroup.procs` files, in the
    /// parent. Fails naming a path that cannot be used.
    pub fn prepare(&self) -> Result<Prepared, JailError> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut steps = Vec::new();
        for (link, target) in &self.symlinks {
            self.add_parents(link, &mut dirs, &mut steps)?;
            steps.push(Step::Symlink {
                target: cstring(target)?,
                link: cstring(&inside(&self.root, link)?)?,
            });
        }
        for bind in &self.binds {
            let (path, writable) = (&bind.path, &bind.writable);
            let meta = std::fs::metadata(path).map_err(|e| JailError::io("bind", path, e))?;
            let at = bind.target();
            self.add_parents(at, &mut dirs, &mut steps)?;
            let target = cstring(&inside(&self.root, at)?)?;
            if meta.is_dir() {
                if !dirs.iter().any(|d| d == at) {
                    dirs.push(at.to_path_buf());
                    steps.push(Step::Mkdir(target.clone()));
                }
            } else {
                steps.push(Step::Touch(target.clone()));
            }
            steps.push(Step::Bind {
                source: cstring(path)?,
                target,
                writable: *writable,
            });
        }
        let mut cgroup_procs = Vec::new();
        for file in &self.cgroup_procs {
            let fd = std::fs::OpenOptions::new()
                .write(true)
                .open(file)
                .map_err(|e| JailError::io("open", file, e))?;
            cgroup_procs.push(OwnedFd::from(fd));
        }
        let limits = self.rlimits;
        let workdir = match &self.workdir {
            Some(dir) => {
                // Checked like a bind target: absolute, no `..`.
                inside(&self.root, dir)?;
                cstring(dir)?
            }
            None => c"/".to_owned(),
        };
        Ok(Prepared {
            root: cstring(&self.root)?,
            workdir,
            steps,
            cgroup_procs,
            rlimits: vec![
                (libc::RLIMIT_NOFILE, limits.open_files),
                (libc::RLIMIT_NPROC, limits.processes),
                (libc::RLIMIT_FSIZE, limits.file_size),
                (libc::RLIMIT_CORE, 0),
            ],
            uid: self.uid,
            gid: self.gid,
            groups: self.groups.clone(),
        })
    }
}

impl Jail {
    /// Adds a `Mkdir` for every ancestor of `path` not made yet, parents
    /// first.
    fn add_parents(
        &self,
        path: &Path,
        dirs: &mut Vec<PathBuf>,
        steps: &mut Vec<Step>,
    ) -> Result<(), JailError> {
        let mut parents: Vec<&Path> = path.ancestors().skip(1).collect();
        parents.reverse();
        for parent in parents {
            if parent == Path::new("/") || dirs.iter().any(|d| d == parent) {
                continue;
            }
            dirs.push(parent.to_path_buf());
            steps.push(Step::Mkdir(cstring(&inside(&self.root, parent)?)?));
        }
        Ok(())
    }
}

/// The error of the last failed system call, tagged for the parent (the
/// spawn error carries only an errno).
fn last_error() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn check(result: libc::c_int) -> std::io::Result<()> {
    if result < 0 {
        Err(last_error())
    } else {
        Ok(())
    }
}

impl Prepared {
    /// Confines the calling process: joins the cgroup, unshares its mount
    /// namespace, builds the root (a small read-only tmpfs with the binds),
    /// pivots into it, changes to its working directory, sets the rlimits
    /// and drops to the jail's uid and gid with no supplementary groups but
    /// the jail's, no capabilities and `no_new_privs`.
    ///
    /// Meant for `CommandExt::pre_exec`: it only makes system calls on data
    /// prepared in the parent. The caller must be root (in the initial user
    /// namespace).
    pub fn enter(&self) -> std::io::Result<()> {
        // SAFETY: every call below is a plain system call on C strings,
        // descriptors and integers owned by `self`, which outlives the
        // calls; none of them allocates or takes a lock.
        unsafe {
            for fd in &self.cgroup_procs {
                let zero = b"0";
                if libc::write(fd.as_raw_fd(), zero.as_ptr().cast(), zero.len()) < 0 {
                    return Err(last_error());
                }
            }
            check(libc::unshare(libc::CLONE_NEWNS))?;
            // Nothing mounted from here on reaches the host's namespace.
            check(libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                c"tmpfs".as_ptr(),
                self.root.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                c"mode=0755,size=1m".as_ptr().cast(),
            ))?;
            // The tree is built with the modes written here whatever the
            // agent's umask (077): the jail's uid must traverse it.
            let umask = libc::umask(0o022);
            for step in &self.steps {
                match step {
                    Step::Mkdir(path) => {
                        if libc::mkdir(path.as_ptr(), 0o755) < 0
                            && *libc::__errno_location() != libc::EEXIST
                        {
                            return Err(last_error());
                        }
                    }
                    Step::Touch(path) => {
                        let fd = libc::open(
                            path.as_ptr(),
                            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                            0o644,
                        );
                        if fd < 0 {
                            return Err(last_error());
                        }
                        libc::close(fd);
                    }
                    Step::Bind {
                        source,
                        target,
                        writable,
                    } => {
                        check(libc::mount(
                            source.as_ptr(),
                            target.as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND,
                            std::ptr::null(),
                        ))?;
                        let mut flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID;
                        if !writable {
                            flags |= libc::MS_RDONLY;
                        }
                        check(libc::mount(
                            std::ptr::null(),
                            target.as_ptr(),
                            std::ptr::null(),
                            flags,
                            std::ptr::null(),
                        ))?;
                    }
                    Step::Symlink { target, link } => {
                        check(libc::symlink(target.as_ptr(), link.as_ptr()))?;
                    }
                }
            }
            libc::umask(umask);
            // pivot_root(".", "."): the old root ends up stacked on the new
            // one and is detached, so no path leads back to the host's.
            check(libc::chdir(self.root.as_ptr()))?;
            check(
                libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int,
            )?;
            check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
            check(libc::chdir(c"/".as_ptr()))?;
            check(libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC,
                std::ptr::null(),
            ))?;
            check(libc::chdir(self.workdir.as_ptr()))?;
            for (resource, value) in &self.rlimits {
                let limit = libc::rlimit {
                    rlim_cur: *value,
                    rlim_max: *value,
                };
                check(libc::setrlimit(*resource, &raw const limit))?;
            }
            check(libc::setgroups(self.groups.len(), self.groups.as_ptr()))?;
            check(libc::setresgid(self.gid, self.gid, self.gid))?;
            // Changing all uids away from 0 clears the permitted and
            // effective capabilities.
            check(libc::setresuid(self.uid, self.uid, self.uid))?;
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        }
        Ok(())
    }
}
