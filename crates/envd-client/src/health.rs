//! Readiness: `GET /health` once, or polled until a deadline.

use std::time::Duration;

use http::Method;
use tokio::time::Instant;
use tracing::{debug, trace};

use crate::{EnvdClient, EnvdError, error::chain};

/// Pause between two `/health` probes.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Longest a single probe may take (a guest that drops SYNs would otherwise
/// hold one probe for the whole connect timeout).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const HEALTH_PATH: &str = "/health";

impl EnvdClient {
    /// Asks `GET /health` once; `Ok` when envd answers 2xx (it sends 204).
    pub async fn health(&self) -> Result<(), EnvdError> {
        self.probe(self.transport.request_timeout()).await
    }

    /// Polls `GET /health` every ~20 ms until envd answers 2xx or `timeout`
    /// has passed. Returns how long it took; after the deadline the
    /// [`EnvdError::Timeout`] names the address and the last failure
    /// (e.g. "connection refused").
    pub async fn wait_healthy(&self, timeout: Duration) -> Result<Duration, EnvdError> {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut attempts = 0_u32;
        let mut last_failure = String::from("no probe finished");
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                debug!(addr = %self.addr(), attempts, %last_failure, "envd did not become healthy");
                return Err(EnvdError::Timeout {
                    addr: self.addr(),
                    operation: format!("health check (GET {HEALTH_PATH}, {attempts} attempts)"),
                    timeout,
                    last_failure: Some(last_failure),
                });
            }
            attempts += 1;
            match self.probe(remaining.min(PROBE_TIMEOUT)).await {
                Ok(()) => {
                    let took = start.elapsed();
                    debug!(addr = %self.addr(), attempts, ?took, "envd is healthy");
                    return Ok(took);
                }
                Err(err) => {
                    last_failure = chain(&err);
                    trace!(addr = %self.addr(), attempts, %last_failure, "envd not healthy yet");
                }
            }
            let pause = deadline
                .saturating_duration_since(Instant::now())
                .min(POLL_INTERVAL);
            tokio::time::sleep(pause).await;
        }
    }

    async fn probe(&self, timeout: Duration) -> Result<(), EnvdError> {
        self.transport
            .plain(
                Method::GET,
                HEALTH_PATH,
                None,
                timeout,
                crate::transport::MAX_UNARY_REPLY,
            )
            .await
            .map(drop)
    }
}
