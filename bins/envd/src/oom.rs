//! Keeps the guest's OOM killer off envd and on the processes it starts.
//!
//! A guest that runs out of memory (a fork storm, a runaway allocation) has
//! its kernel kill the process with the highest `oom_score`. envd is usually
//! the biggest process in a small guest, and without it the sandbox is
//! unreachable, so envd makes itself the last resort (`-999`) at start and
//! each process it starts goes back to the default score (`0`) before it
//! runs. Not exempt (`-1000`): when nothing else is left to kill, a kernel
//! with no killable process panics ("System is deadlocked on memory") and
//! takes the whole sandbox down, while a killed envd is restarted by init.

use std::io;

/// `/proc/self/oom_score_adj` of a process the OOM killer picks only when
/// no other process is left.
pub const LAST_RESORT: i32 = -999;
/// The score processes started through envd run with.
pub const DEFAULT: i32 = 0;

/// Makes the calling process (envd) the OOM killer's last resort. Needs
/// `CAP_SYS_RESOURCE` (envd runs as root in a guest); the error says why
/// it could not be done, and envd keeps running without it.
pub fn last_resort_self() -> io::Result<()> {
    std::fs::write("/proc/self/oom_score_adj", LAST_RESORT.to_string())
}

/// The calling process's current `oom_score_adj`.
pub fn current() -> io::Result<i32> {
    let text = std::fs::read_to_string("/proc/self/oom_score_adj")?;
    text.trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("oom_score_adj: {e}")))
}

/// Sets the default score in a freshly forked child, before it drops
/// privileges (raising the score needs no privilege). Async-signal-safe: `open`, `write`, `close` on a
/// static path, no allocation. Failure is ignored: a kernel without
/// `/proc` must not stop the process from starting.
pub(crate) fn reset_in_child() {
    const PATH: &std::ffi::CStr = c"/proc/self/oom_score_adj";
    const VALUE: &[u8] = b"0";
    // SAFETY: PATH is a valid NUL-terminated string; open has no other
    // preconditions.
    let fd = unsafe { libc::open(PATH.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return;
    }
    // SAFETY: `fd` is the descriptor opened above; VALUE is a live static
    // buffer of VALUE.len() bytes.
    unsafe {
        libc::write(fd, VALUE.as_ptr().cast(), VALUE.len());
        libc::close(fd);
    }
}
