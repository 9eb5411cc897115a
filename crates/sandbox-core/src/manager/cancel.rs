//! Ending what holds a sandbox up, so destroy never waits behind a stuck
//! operation: the sandbox's VMM (and any tool working on its files) is
//! killed by pid, which makes the operation holding the sandbox's lock
//! (a QMP call, a copy) fail at once.

use std::path::Path;

use super::{Manager, Persisted, Table, lock};

impl Manager {
    /// Kills (SIGKILL) every process of sandbox `id`: the VMM pid its
    /// record names, and any process whose command line names a path in its
    /// run directory (a VMM started by an operation not recorded yet, a
    /// `cp` or `qemu-img` on its disk). Returns the pids signalled.
    pub(super) fn kill_processes_of(&self, id: &str) -> Vec<u32> {
        let run_dir = self.inner.config.data_dir.join("sandboxes").join(id);
        let recorded = lock(&self.inner.store)
            .get::<Persisted>(Table::Sandboxes, id)
            .ok()
            .flatten()
            .and_then(|p| p.record)
            .and_then(|r| r.vmm_pid);
        let mut pids = processes_naming(&run_dir);
        // The recorded pid only when it is still the sandbox's (not reused).
        if let Some(pid) = recorded
            && !pids.contains(&pid)
            && names_dir(pid, &run_dir)
        {
            pids.push(pid);
        }
        for &pid in &pids {
            let Ok(raw) = i32::try_from(pid) else {
                continue;
            };
            match nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(raw),
                nix::sys::signal::Signal::SIGKILL,
            ) {
                Ok(()) => {
                    tracing::warn!(sandbox = %id, pid, "killed a process of a sandbox being destroyed while busy");
                }
                Err(err) => {
                    tracing::debug!(sandbox = %id, pid, %err, "cannot kill a process of a busy sandbox");
                }
            }
        }
        pids
    }
}

/// Processes (other than this one) whose command line names a path under
/// `dir`.
fn processes_naming(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && names_dir(pid, dir))
        .collect()
}

/// Whether process `pid`'s command line names `dir` or a path under it.
fn names_dir(pid: u32, dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let dir = dir.as_os_str().as_encoded_bytes();
    cmdline
        // Options name paths as `file=PATH,...` or `unix:PATH,...`.
        .split(|&b| b == 0 || b == b',' || b == b'=' || b == b':')
        .any(|arg| {
            arg.strip_prefix(dir)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(b"/"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_found_by_a_path_under_the_dir_on_its_command_line() {
        // Arrange: a child whose command line names a file under `dir`, in
        // a QEMU-style option (`path=...,`).
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let file = format!("file={}/root.qcow2,format=qcow2", dir.path().display());
        let socket = format!("unix:{}/vmm/qmp.sock,server=on", dir.path().display());
        // `; true`: the shell waits for sleep instead of becoming it, so
        // its command line stays.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30; true", "sh", &file, &socket])
            .spawn()
            .unwrap();

        // Act (the child names the dir once it has exec'd the shell)
        let mut found = processes_naming(dir.path());
        for _ in 0..500 {
            if found.contains(&child.id()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            found = processes_naming(dir.path());
        }
        let not_found = processes_naming(other.path());

        // Assert
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&child.id()), "{found:?}");
        assert!(!not_found.contains(&child.id()));
    }
}
