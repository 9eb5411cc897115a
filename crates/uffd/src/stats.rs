//! Counters of a page server, for logs and metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of a server, readable from any thread.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub(crate) faults_served: AtomicU64,
    pub(crate) bytes_copied: AtomicU64,
    pub(crate) bytes_zeroed: AtomicU64,
    pub(crate) remove_events: AtomicU64,
    pub(crate) already_present: AtomicU64,
    pub(crate) retries: AtomicU64,
}

impl ServerStats {
    /// A consistent-enough copy of the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            faults_served: self.faults_served.load(Ordering::Relaxed),
            bytes_copied: self.bytes_copied.load(Ordering::Relaxed),
            bytes_zeroed: self.bytes_zeroed.load(Ordering::Relaxed),
            remove_events: self.remove_events.load(Ordering::Relaxed),
            already_present: self.already_present.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, value: u64) {
        counter.fetch_add(value, Ordering::Relaxed);
    }
}

/// The counters of a [`ServerStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Page-fault events resolved (by copy, zero page, or because the page
    /// was already there).
    pub faults_served: u64,
    /// Bytes placed with `UFFDIO_COPY` from the memory file.
    pub bytes_copied: u64,
    /// Bytes placed as zero pages in removed ranges.
    pub bytes_zeroed: u64,
    /// Remove events received.
    pub remove_events: u64,
    /// Faults whose page was already present (`EEXIST`), answered by a wake.
    pub already_present: u64,
    /// Rounds of faults deferred because the VMM's address space was
    /// changing (`EAGAIN`).
    pub retries: u64,
}
