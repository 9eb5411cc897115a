//! Ending what holds a sandbox up, so destroy never waits behind a stuck
//! operation: the sandbox's VMM (and any tool working on its files) is
//! killed by pid, which makes the operation holding the sandbox's lock
//! (a QMP call, a copy) fail at once.

use super::{Manager, Persisted, Table, lock, orphans};

impl Manager {
    /// Kills (SIGKILL) every process of sandbox `id`: the VMM pid its
    /// record names, and any process whose command line names a path in its
    /// run directory (a VMM started by an operation not recorded yet, a
    /// `cp` or `qemu-img` on its disk). Returns the pids signalled.
    pub(super) fn kill_processes_of(&self, id: &str) -> Vec<u32> {
        let recorded = lock(&self.inner.store)
            .get::<Persisted>(Table::Sandboxes, id)
            .ok()
            .flatten()
            .and_then(|p| p.record)
            .and_then(|r| r.vmm_pid);
        let sandboxes = self.inner.config.data_dir.join("sandboxes");
        let mut pids = orphans::vmm_processes(&sandboxes)
            .remove(id)
            .unwrap_or_default();
        // The recorded pid only when it is still the sandbox's (not reused).
        if let Some(pid) = recorded
            && !pids.contains(&pid)
            && orphans::sandboxes_named(pid, &sandboxes).contains(id)
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
