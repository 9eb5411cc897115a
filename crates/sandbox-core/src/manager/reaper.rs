//! The reaper: what happens to sandboxes when their time is up, or when
//! their VMM is gone.

use super::{Duration, Manager, ManagerError, State, SystemTime, lock};
use crate::vmm::process_alive;

/// Console lines kept in the reason of a sandbox whose VMM exited.
const CONSOLE_LINES: usize = 3;

impl Manager {
    /// Starts the reaper: every `interval`, running sandboxes whose VMM
    /// exited are marked stopped, and those past their end are killed, or
    /// paused when they asked for auto-pause.
    pub fn spawn_reaper(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let manager = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            loop {
                ticker.tick().await;
                manager.reap().await;
            }
        })
    }

    /// One pass of the reaper: running sandboxes past their end are
    /// destroyed (paused with `auto_pause`; destroyed all the same when the
    /// paused quota is full), paused ones past `paused_ttl` destroyed.
    pub async fn reap(&self) {
        self.reap_dead_vmms().await;
        let now = SystemTime::now();
        let expired: Vec<(String, bool, bool)> = lock(&self.inner.infos)
            .values()
            .filter(|i| i.state == State::Running && i.end_at <= now)
            .map(|i| (i.id.clone(), i.auto_pause, i.auto_pause_filesystem))
            .collect();
        for (id, auto_pause, filesystem_only) in expired {
            let result = if auto_pause {
                match self.pause_as(&id, filesystem_only).await {
                    Err(err @ ManagerError::Quota { .. }) => {
                        tracing::warn!(sandbox = %id, %err, "cannot auto-pause a timed-out sandbox: destroying it");
                        self.destroy(&id).await
                    }
                    other => other.map(drop),
                }
            } else {
                self.destroy(&id).await
            };
            match result {
                Ok(()) => tracing::info!(sandbox = %id, paused = auto_pause, "sandbox timed out"),
                Err(err) => tracing::warn!(sandbox = %id, %err, "timeout handling failed"),
            }
        }
        for id in self.expired_paused(now) {
            match self.destroy(&id).await {
                Ok(()) => tracing::info!(sandbox = %id, "paused sandbox expired: destroyed"),
                Err(err) => {
                    tracing::warn!(sandbox = %id, %err, "destroying an expired paused sandbox failed");
                }
            }
        }
    }

    /// Running sandboxes whose VMM exited by itself (a guest that panicked
    /// or powered off, a VMM that crashed or was killed) are given up as a
    /// restart would: their network, disk and files are removed, and they
    /// stay listed as stopped, with the reason, until deleted. One that is
    /// busy is left to the operation under way, which meets the dead VMM
    /// itself (and the next pass, when it is done). A crash in between is
    /// completed at the next start (a running record whose VMM is gone).
    pub(super) async fn reap_dead_vmms(&self) {
        let running: Vec<String> = lock(&self.inner.infos)
            .values()
            .filter(|i| i.state == State::Running)
            .map(|i| i.id.clone())
            .collect();
        for id in running {
            let Ok(handle) = self.handle(&id) else {
                continue;
            };
            let Ok(mut guard) = handle.try_lock() else {
                continue;
            };
            let exited = guard
                .as_ref()
                .and_then(super::Sandbox::vmm_pid)
                .filter(|pid| !process_alive(*pid));
            let still_running = self.get(&id).is_ok_and(|i| i.state == State::Running);
            let (Some(pid), true) = (exited, still_running) else {
                continue;
            };
            let Some(sandbox) = guard.take() else {
                continue;
            };
            let mut reason =
                format!("its VMM (pid {pid}) exited by itself while running; nothing was saved");
            let console = qemu_vmm::log_tail(&sandbox.console_log(), CONSOLE_LINES);
            if !console.trim().is_empty() {
                reason = format!("{reason}; its console ends with: {}", console.trim());
            }
            tracing::warn!(sandbox = %id, pid, %reason, "VMM gone: marking the sandbox stopped");
            if let Err(err) = sandbox.destroy().await {
                tracing::warn!(sandbox = %id, %err, "cleaning up after a VMM that exited");
            }
            let stopped = self.update_info(&id, |info| {
                info.state = State::Stopped;
                info.envd_addr = None;
                info.error = Some(reason);
            });
            if let Err(err) = stopped.and_then(|_| self.record_intent(&id, None)) {
                tracing::error!(sandbox = %id, %err, "cannot record a sandbox whose VMM exited as stopped");
            }
            // It may have been the last to stand on an old base.
            self.prune_unreferenced();
        }
    }
}
