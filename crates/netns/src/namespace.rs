//! Named network namespaces, created and removed the way `ip netns add/del`
//! does (a bind mount of the namespace under `/run/netns/NAME`), and running
//! code or processes inside one.
//!
//! A network namespace is a per-thread property, so work inside one runs on a
//! dedicated short-lived thread that `setns`es into it and then exits: no
//! thread of the caller's runtime ever changes namespace.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, PoisonError};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

use crate::addressing::NETNS_DIR;
use crate::error::NetError;

/// Serialises the one-time preparation of `/run/netns` (two racing bind
/// mounts of it onto itself would stack).
static NETNS_DIR_LOCK: Mutex<()> = Mutex::new(());

fn ns_err(name: &str, op: &'static str, source: io::Error) -> NetError {
    NetError::Namespace {
        name: name.to_string(),
        op,
        source,
    }
}

fn label_of(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Makes `/run/netns` exist and be a shared mount point, as iproute2 does, so
/// namespace mounts propagate to mount namespaces made later.
fn prepare_netns_dir(dir: &Path) -> io::Result<()> {
    let _guard = NETNS_DIR_LOCK
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    fs::create_dir_all(dir)?;
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    match mount(None::<&str>, dir, None::<&str>, shared, None::<&str>) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) => {
            // Not a mount point yet: bind it onto itself, then share it.
            mount(
                Some(dir),
                dir,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )?;
            mount(None::<&str>, dir, None::<&str>, shared, None::<&str>)?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Creates the named namespace `name` (`/run/netns/NAME`) and returns its
/// path. Fails if the name is taken.
pub(crate) async fn create_named(name: &str) -> Result<PathBuf, NetError> {
    let dir = PathBuf::from(NETNS_DIR);
    let path = dir.join(name);
    let owned_name = name.to_string();
    let thread_path = path.clone();
    on_thread(name, move || {
        prepare_netns_dir(&dir).map_err(|e| ns_err(&owned_name, "prepare /run/netns", e))?;
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&thread_path)
            .map_err(|e| ns_err(&owned_name, "create mount point", e))?;
        let bind = unshare(CloneFlags::CLONE_NEWNET)
            .map_err(io::Error::from)
            .map_err(|e| ns_err(&owned_name, "unshare", e))
            .and_then(|()| {
                mount(
                    Some("/proc/thread-self/ns/net"),
                    &thread_path,
                    Some("none"),
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| ns_err(&owned_name, "bind mount", e.into()))
            });
        if bind.is_err() {
            // Best effort: the empty mount point is all there is to undo.
            let _ = fs::remove_file(&thread_path);
        }
        bind
    })
    .await??;
    Ok(path)
}

/// Removes a named namespace: lazy unmount, then unlink. The kernel frees the
/// namespace (and the links still in it) once no process or fd holds it.
/// A namespace that is already gone is not an error.
pub(crate) fn delete_named(path: &Path) -> Result<(), NetError> {
    let name = label_of(path);
    match umount2(path, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (a half-made namespace): just unlink.
        Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
        Err(nix::errno::Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(ns_err(&name, "unmount", e.into())),
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ns_err(&name, "remove mount point", e)),
    }
}

/// Names of the namespaces under `/run/netns`.
pub(crate) fn list_named() -> Result<Vec<String>, NetError> {
    match fs::read_dir(NETNS_DIR) {
        Ok(entries) => Ok(entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(ns_err(NETNS_DIR, "list", e)),
    }
}

/// Opens a namespace file (`/run/netns/NAME` or `/proc/PID/ns/net`).
pub(crate) fn open_netns(path: &Path) -> Result<File, NetError> {
    File::open(path).map_err(|e| ns_err(&label_of(path), "open", e))
}

/// Runs `f` on a fresh thread and returns its result; the thread may change
/// its own namespaces freely since it ends right after.
async fn on_thread<F, R>(label: &str, f: F) -> Result<R, NetError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("petrel-netns".into())
        .spawn(move || {
            // The receiver is only gone if the caller was cancelled.
            let _ = tx.send(f());
        })
        .map_err(|e| NetError::Thread {
            netns: label.to_string(),
            detail: e.to_string(),
        })?;
    rx.await.map_err(|_| NetError::Thread {
        netns: label.to_string(),
        detail: "thread ended without a result (panicked?)".into(),
    })
}

/// Runs `f` on a dedicated thread inside the network namespace at `path`
/// (e.g. [`crate::Network::netns_path`]) and returns what it returns. Sockets
/// or devices that `f` opens belong to that namespace for their whole life,
/// even when used from other threads afterwards.
pub async fn run_in_netns<F, R>(path: &Path, f: F) -> Result<R, NetError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let label = label_of(path);
    let ns = open_netns(path)?;
    let thread_label = label.clone();
    on_thread(&label, move || {
        setns(&ns, CloneFlags::CLONE_NEWNET)
            .map_err(|e| ns_err(&thread_label, "setns", e.into()))?;
        drop(ns);
        Ok(f())
    })
    .await?
}

/// Makes `cmd` start inside the network namespace at `netns_path`: the
/// namespace file is opened now and the child `setns`es into it between fork
/// and exec. Use it for the VMM (QEMU, Firecracker) so its TAP is the
/// sandbox's `tap0`. For `tokio::process::Command`, pass `cmd.as_std_mut()`.
pub fn command_in_netns(cmd: &mut Command, netns_path: &Path) -> Result<(), NetError> {
    let fd: OwnedFd = open_netns(netns_path)?.into();
    let hook = move || -> io::Result<()> {
        // SAFETY: `fd` is an open namespace fd owned by this closure (kept
        // alive as long as `cmd`); setns is a plain syscall with no memory
        // arguments.
        let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    // SAFETY: the hook runs in the forked child before exec; it only calls
    // setns(2) (async-signal-safe) and builds an io::Error from errno, which
    // does not allocate, so it is sound after fork in a multithreaded parent.
    unsafe {
        cmd.pre_exec(hook);
    }
    Ok(())
}
