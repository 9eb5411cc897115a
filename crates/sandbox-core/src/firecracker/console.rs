//! Firecracker's serial console, bounded as QEMU's is.
//!
//! Firecracker writes the guest's console to its stdout. That is a FIFO in
//! the run directory (`console.fifo`), which a task of the agent drains
//! into `console.log` with the same rotation as QEMU's console
//! ([`qemu_vmm::drain_to_log`], [`qemu_vmm::CONSOLE_CAP_BYTES`]).
//! Firecracker also inherits a read end of its own FIFO (the "keeper"),
//! so its writes never fail with `EPIPE` (which would kill it with
//! SIGPIPE) while no agent reads: between an agent's exit and its
//! successor's adoption the FIFO buffers 64 KiB, then the guest's console
//! writes wait, and the adopting agent opens the FIFO again and drains
//! it. A full FIFO likewise holds the guest back while an agent catches
//! up.

use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use tokio::task::JoinHandle;

use crate::error::SandboxError;

/// The FIFO in the run directory.
const FIFO: &str = "console.fifo";

/// The FIFO Firecracker's stdout and stderr go to.
pub(super) fn fifo(run_dir: &Path) -> PathBuf {
    run_dir.join(FIFO)
}

/// A console being drained; the task ends when every writer has closed
/// the FIFO (Firecracker exited).
#[derive(Debug)]
pub(super) struct Drain {
    task: JoinHandle<()>,
}

impl Drain {
    /// Makes the FIFO if needed and starts draining it into `log`.
    /// Returns the drain, a writer the caller holds until Firecracker has
    /// its own (so the drain does not see end of file before that), and
    /// the keeper for Firecracker to inherit (see the module doc).
    pub(super) fn start(
        id: &str,
        run_dir: &Path,
        log: &Path,
    ) -> Result<(Self, OwnedFd, OwnedFd), SandboxError> {
        let path = fifo(run_dir);
        let io = |what, source| SandboxError::Io {
            what,
            path: path.clone(),
            source,
        };
        match nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(errno) => return Err(io("make the console FIFO", errno.into())),
        }
        let mut reader = tokio::net::unix::pipe::OpenOptions::new()
            .open_receiver(&path)
            .map_err(|e| io("open the console FIFO", e))?;
        // Opening for writing does not block: a reader is open.
        let writer = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc_nonblock())
            .open(&path)
            .map_err(|e| io("open the console FIFO for writing", e))?;
        let keeper = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc_nonblock())
            .open(&path)
            .map_err(|e| io("open the console FIFO's keeper", e))?;
        let (log, old) = (log.to_path_buf(), rotated(log));
        let vm = id.to_string();
        let task = tokio::spawn(async move {
            if let Err(err) =
                qemu_vmm::drain_to_log(&mut reader, &log, &old, qemu_vmm::CONSOLE_CAP_BYTES).await
            {
                tracing::warn!(%vm, log = %log.display(), %err, "console drain stopped");
            }
        });
        Ok((Self { task }, OwnedFd::from(writer), OwnedFd::from(keeper)))
    }

    /// Stops draining now (the agent lets the VM go).
    pub(super) fn abort(self) {
        self.task.abort();
    }
}

/// `console.log` → `console.log.1`.
fn rotated(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// `O_NONBLOCK`, for `OpenOptionsExt::custom_flags`.
fn libc_nonblock() -> i32 {
    nix::fcntl::OFlag::O_NONBLOCK.bits()
}
