//! The reaper: what happens to sandboxes when their time is up.

use super::{Duration, Manager, ManagerError, State, SystemTime, lock};

impl Manager {
    /// Starts the reaper: every `interval`, running sandboxes past their
    /// end are killed, or paused when they asked for auto-pause.
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
        let now = SystemTime::now();
        let expired: Vec<(String, bool)> = lock(&self.inner.infos)
            .values()
            .filter(|i| i.state == State::Running && i.end_at <= now)
            .map(|i| (i.id.clone(), i.auto_pause))
            .collect();
        for (id, auto_pause) in expired {
            let result = if auto_pause {
                match self.pause(&id).await {
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
}
