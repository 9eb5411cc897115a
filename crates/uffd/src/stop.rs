//! Stopping a page server from another thread.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::eventfd::{EfdFlags, EventFd};
use tracing::warn;

/// Asks a server to stop, from any thread. Cloneable.
///
/// A stopped server returns [`ExitReason::Stopped`](crate::ExitReason::Stopped),
/// and a stop is permanent (later `serve_one` calls return at once). The
/// VMM's next fault on a missing page then hangs, so stop only a server
/// whose VMM is gone or about to be killed.
#[derive(Debug, Clone)]
pub struct StopHandle {
    inner: Arc<StopInner>,
}

#[derive(Debug)]
struct StopInner {
    requested: AtomicBool,
    event: EventFd,
}

impl StopHandle {
    pub(crate) fn new() -> io::Result<Self> {
        let event = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(io::Error::from)?;
        Ok(Self {
            inner: Arc::new(StopInner {
                requested: AtomicBool::new(false),
                event,
            }),
        })
    }

    /// Requests the stop; the server returns promptly from whatever it is
    /// waiting on.
    pub fn stop(&self) {
        self.inner.requested.store(true, Ordering::SeqCst);
        if let Err(errno) = self.inner.event.write(1) {
            warn!(%errno, "cannot signal the page server's stop event");
        }
    }

    /// Whether a stop was requested.
    pub fn is_stopped(&self) -> bool {
        self.inner.requested.load(Ordering::SeqCst)
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.inner.event.as_fd()
    }
}
