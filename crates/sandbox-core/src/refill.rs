//! The loop that keeps something made ahead of demand (warm pools, spare
//! networks): fill, then wait for a take, a timer or the stop.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::sync::Notify;

/// How a refill loop waits between fills.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cadence {
    /// After a fill that succeeded (a take wakes the loop sooner).
    pub idle: Duration,
    /// After a fill that failed.
    pub backoff: Duration,
}

/// Runs `fill` until `stop` completes, again whenever `wake` is notified
/// or the cadence's time has passed. `stop` is checked between fills, so a
/// fill under way finishes (nothing is left half made). A failed fill is
/// logged, naming `what`.
pub(crate) async fn keep_filled<F, Fut, E>(
    what: &str,
    cadence: Cadence,
    wake: &Notify,
    stop: impl Future<Output = ()>,
    mut fill: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    tokio::pin!(stop);
    loop {
        let pause = match fill().await {
            Ok(()) => cadence.idle,
            Err(err) => {
                tracing::warn!(%err, "{what} failed; trying again later");
                cadence.backoff
            }
        };
        tokio::select! {
            () = &mut stop => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
}
