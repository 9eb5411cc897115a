//! One VMM being served: its userfaultfd's events, the faults they carry,
//! and how it ends.

use std::collections::VecDeque;
use std::ffi::c_void;
use std::io::{self, Read};
use std::num::NonZeroUsize;
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tracing::{debug, trace, warn};
use userfaultfd::{Event, EventBuffer, Uffd};

use super::{ExitReason, UffdServer};
use crate::error::UffdError;
use crate::memfile::ZeroSource;
use crate::regions::{MemoryLayout, PageLocation, host_page_size};
use crate::removed::RemovedRanges;
use crate::stats::ServerStats;

/// Events read from the userfaultfd per `read`.
const EVENT_BATCH: usize = 64;

/// Retry rounds (while the VMM's address space is changing) before backing
/// off with short sleeps instead of yielding.
const SPIN_ROUNDS: u32 = 16;

/// How one fault (or one ioctl) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The faulting page is present now (and its waiters woken).
    Served,
    /// The range is no longer registered (the VMM unmapped it): nobody waits.
    Skipped,
    /// The VMM's address space is changing (a remove event is unread): read
    /// events, then try again.
    Retry,
    /// The VMM's address space is gone.
    PeerGone,
}

/// Result of one `UFFDIO_COPY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Copied {
    /// All bytes copied.
    All(usize),
    /// The first `n` bytes were copied, then a page was already present.
    Partly(usize),
    /// The first page was already present.
    Exists,
    /// Nothing copied: the address space is changing.
    Again,
    /// The destination is not (or no longer) registered.
    Unmapped,
    /// The address space is gone.
    Gone,
}

/// Reads of the userfaultfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Batch {
    Events,
    Empty,
    Eof,
}

/// How a session learns that its VMM is gone.
pub(super) enum Peer<'a> {
    /// The handshake's socket: Firecracker keeps it open for its whole
    /// life, so a hang-up means it exited.
    Socket(&'a UnixStream),
    /// A pidfd of the VMM (a server that took over from an earlier one,
    /// whose socket died with it): readable once the process exits.
    Process(&'a OwnedFd),
}

impl Peer<'_> {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Peer::Socket(stream) => stream.as_fd(),
            Peer::Process(pidfd) => pidfd.as_fd(),
        }
    }
}

/// One connected VMM being served.
pub(super) struct Session<'a> {
    server: &'a UffdServer,
    peer: Peer<'a>,
    uffd: Uffd,
    layout: &'a MemoryLayout,
    events: EventBuffer,
    pending: VecDeque<u64>,
    removed: RemovedRanges,
    zero: Option<ZeroSource>,
    host_page_size: usize,
}

impl<'a> Session<'a> {
    pub(super) fn new(
        server: &'a UffdServer,
        peer: Peer<'a>,
        uffd: Uffd,
        layout: &'a MemoryLayout,
    ) -> Self {
        Self {
            server,
            peer,
            uffd,
            layout,
            events: EventBuffer::new(EVENT_BATCH),
            pending: VecDeque::new(),
            removed: RemovedRanges::default(),
            zero: None,
            host_page_size: host_page_size(),
        }
    }

    fn path(&self) -> PathBuf {
        self.server.socket_path.clone()
    }

    fn stats(&self) -> &ServerStats {
        &self.server.stats
    }

    /// Polls the socket, the userfaultfd and the stop event until the VMM
    /// goes away or a stop is requested.
    pub(super) fn run(&mut self) -> Result<ExitReason, UffdError> {
        let hangup = PollFlags::POLLHUP | PollFlags::POLLERR;
        loop {
            if self.server.stop.is_stopped() {
                return Ok(ExitReason::Stopped);
            }
            let (socket_events, uffd_events, stop_fired) = {
                let mut fds = [
                    PollFd::new(self.peer.fd(), PollFlags::POLLIN),
                    PollFd::new(self.uffd.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.server.stop.fd(), PollFlags::POLLIN),
                ];
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {}
                    Err(Errno::EINTR) => continue,
                    Err(errno) => {
                        return Err(UffdError::Poll {
                            path: self.path(),
                            source: errno.into(),
                        });
                    }
                }
                // Only known flags can come back for the flags asked; should an
                // unknown one appear, look at the descriptor anyway.
                let revents = |fd: &PollFd<'_>| fd.revents().unwrap_or(PollFlags::POLLIN);
                (
                    revents(&fds[0]),
                    revents(&fds[1]),
                    fds[2].any().unwrap_or(true),
                )
            };
            if stop_fired {
                return Ok(ExitReason::Stopped);
            }
            if uffd_events.intersects(PollFlags::POLLERR | PollFlags::POLLNVAL) {
                return Err(UffdError::BrokenUffd { path: self.path() });
            }
            if uffd_events.contains(PollFlags::POLLIN)
                && let Some(exit) = self.service()?
            {
                return Ok(exit);
            }
            match self.peer {
                Peer::Process(_) if socket_events.intersects(hangup | PollFlags::POLLIN) => {
                    return Ok(ExitReason::PeerClosed);
                }
                Peer::Process(_) => {}
                Peer::Socket(stream) => {
                    if socket_events.intersects(hangup) {
                        return Ok(ExitReason::PeerClosed);
                    }
                    if socket_events.contains(PollFlags::POLLIN)
                        && drain_socket(self.server, stream)
                    {
                        return Ok(ExitReason::PeerClosed);
                    }
                }
            }
        }
    }

    /// Wakes every thread of the VMM waiting on a fault in its guest
    /// memory: an earlier server may have read their faults and died
    /// before serving them. Woken, they touch the page again, and a page
    /// still missing raises a new fault for this server.
    pub(super) fn wake_all(&self) -> Result<(), UffdError> {
        for region in self.layout.regions() {
            let start = region.base_host_virt_addr as *mut c_void;
            if let Err(error) = self.uffd.wake(start, region.size) {
                return Err(UffdError::Resource {
                    what: "wake the VMM's faulting threads",
                    path: self.path(),
                    source: io::Error::other(error.to_string()),
                });
            }
        }
        Ok(())
    }
}

/// Reads and discards unexpected bytes on the socket; true when the VMM
/// closed it.
fn drain_socket(server: &UffdServer, stream: &UnixStream) -> bool {
    let mut buf = [0_u8; 4096];
    let mut stream = stream;
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => {
            warn!(
                bytes = n,
                socket = %server.socket_path.display(),
                "ignoring unexpected data from the VMM after the handshake"
            );
            false
        }
        Err(error)
            if matches!(
                error.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            false
        }
        Err(error) => {
            warn!(%error, "reading the VMM's socket failed; treating it as closed");
            true
        }
    }
}

impl Session<'_> {
    /// Reads every available event, then serves the faults. Faults that
    /// hit `EAGAIN` (an unread remove event is pending) are retried after
    /// reading events again, so removes are always applied before the faults
    /// that follow them are served.
    fn service(&mut self) -> Result<Option<ExitReason>, UffdError> {
        let mut round = 0_u32;
        loop {
            loop {
                match self.read_events()? {
                    Batch::Events => {}
                    Batch::Empty => break,
                    Batch::Eof => return Ok(Some(ExitReason::UffdClosed)),
                }
            }
            let mut deferred = VecDeque::new();
            while let Some(addr) = self.pending.pop_front() {
                match self.serve_fault(addr)? {
                    Outcome::Served | Outcome::Skipped => {}
                    Outcome::Retry => deferred.push_back(addr),
                    Outcome::PeerGone => return Ok(Some(ExitReason::PeerGone)),
                }
            }
            if deferred.is_empty() {
                return Ok(None);
            }
            if self.server.stop.is_stopped() {
                return Ok(Some(ExitReason::Stopped));
            }
            self.pending = deferred;
            ServerStats::add(&self.stats().retries, 1);
            round = round.saturating_add(1);
            if round < SPIN_ROUNDS {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    }

    /// One batch of events: faults are queued, removes recorded at once.
    fn read_events(&mut self) -> Result<Batch, UffdError> {
        let events = match self.uffd.read_events(&mut self.events) {
            Ok(events) => events,
            Err(userfaultfd::Error::ReadEof) => return Ok(Batch::Eof),
            Err(source) => {
                return Err(UffdError::ReadEvents {
                    path: self.server.socket_path.clone(),
                    source,
                });
            }
        };
        let mut count = 0_usize;
        for event in events {
            count += 1;
            let event = event.map_err(|source| UffdError::ReadEvents {
                path: self.server.socket_path.clone(),
                source,
            })?;
            match event {
                Event::Pagefault { addr, .. } => {
                    trace!(addr = format_args!("{:#x}", addr.addr()), "page fault");
                    self.pending.push_back(addr.addr() as u64);
                }
                Event::Remove { start, end } => {
                    let range = start.addr() as u64..end.addr() as u64;
                    debug!(
                        start = format_args!("{:#x}", range.start),
                        end = format_args!("{:#x}", range.end),
                        "remove event: later faults there get zero pages"
                    );
                    self.removed.insert(range);
                    ServerStats::add(&self.server.stats.remove_events, 1);
                }
                Event::Unmap { start, end } => {
                    debug!(
                        start = format_args!("{:#x}", start.addr()),
                        end = format_args!("{:#x}", end.addr()),
                        "unmap event"
                    );
                }
                other => warn!(event = ?other, "ignoring unexpected userfaultfd event"),
            }
        }
        Ok(if count == 0 {
            Batch::Empty
        } else {
            Batch::Events
        })
    }

    fn serve_fault(&mut self, addr: u64) -> Result<Outcome, UffdError> {
        let Some(page) = self.layout.locate(addr) else {
            return Err(UffdError::FaultOutsideRegions {
                path: self.path(),
                addr,
            });
        };
        let outcome = if self.removed.contains(page.page_addr) {
            self.zero_page(&page)?
        } else {
            let window = self.layout.window(&page, self.server.options.chunk_size);
            let window = self.removed.clip(window, page.page_addr);
            self.copy_window(&page, window)?
        };
        if outcome == Outcome::Served {
            ServerStats::add(&self.stats().faults_served, 1);
        }
        if outcome == Outcome::Skipped {
            debug!(
                addr = format_args!("{addr:#x}"),
                "fault on a range the VMM no longer has registered"
            );
        }
        Ok(outcome)
    }

    /// Copies `window` (which contains `page`); if that did not reach the
    /// faulting page because an earlier page was present, copies the page
    /// alone.
    fn copy_window(&self, page: &PageLocation, window: Range<u64>) -> Result<Outcome, UffdError> {
        if window == page.range() {
            return self.copy_page(page);
        }
        let len = (window.end - window.start) as usize;
        match self.copy_from_file(page.region, window.start, len)? {
            Copied::All(n) => {
                ServerStats::add(&self.stats().bytes_copied, n as u64);
                Ok(Outcome::Served)
            }
            Copied::Partly(n) => {
                ServerStats::add(&self.stats().bytes_copied, n as u64);
                if page.page_addr < window.start + n as u64 {
                    Ok(Outcome::Served)
                } else {
                    self.copy_page(page)
                }
            }
            Copied::Exists => self.copy_page(page),
            Copied::Again => Ok(Outcome::Retry),
            Copied::Unmapped => Ok(Outcome::Skipped),
            Copied::Gone => Ok(Outcome::PeerGone),
        }
    }

    /// Copies exactly the faulting page.
    fn copy_page(&self, page: &PageLocation) -> Result<Outcome, UffdError> {
        match self.copy_from_file(page.region, page.page_addr, page.page_size)? {
            Copied::All(n) | Copied::Partly(n) => {
                ServerStats::add(&self.stats().bytes_copied, n as u64);
                Ok(Outcome::Served)
            }
            Copied::Exists => self.already_present(page),
            Copied::Again => Ok(Outcome::Retry),
            Copied::Unmapped => Ok(Outcome::Skipped),
            Copied::Gone => Ok(Outcome::PeerGone),
        }
    }

    fn copy_from_file(&self, region: usize, dst: u64, len: usize) -> Result<Copied, UffdError> {
        let file_offset = self.layout.file_offset(region, dst);
        let copy_error = |source| UffdError::Copy {
            dst,
            len,
            file_offset,
            source,
        };
        let src = self
            .server
            .mem_file
            .source(file_offset, len)
            .ok_or_else(|| copy_error(io::Error::from_raw_os_error(libc::EFAULT)))?;
        trace!(
            dst = format_args!("{dst:#x}"),
            len,
            file_offset = format_args!("{file_offset:#x}"),
            "UFFDIO_COPY"
        );
        uffd_copy(&self.uffd, src, dst, len).map_err(copy_error)
    }

    /// Fills a removed page with zeroes: `UFFDIO_ZEROPAGE` for base pages,
    /// `UFFDIO_COPY` from a zero mapping for huge pages (which have no
    /// zero-page ioctl).
    fn zero_page(&mut self, page: &PageLocation) -> Result<Outcome, UffdError> {
        let addr = page.page_addr;
        let len = page.page_size;
        let zero_error = |source| UffdError::ZeroPage { addr, len, source };
        let result = if len == self.host_page_size {
            let dst = std::ptr::without_provenance_mut::<c_void>(addr as usize);
            // SAFETY: `dst..dst + len` is one page of a region the VMM
            // registered with this userfaultfd (the layout located it); the
            // kernel validates the range and fills it in the VMM's address
            // space; this process holds no reference to that memory.
            match unsafe { self.uffd.zeropage(dst, len, true) } {
                Ok(_) => Ok(Copied::All(len)),
                Err(userfaultfd::Error::ZeropageFailed(errno)) => {
                    classify_errno(errno as i32).map_err(zero_error)
                }
                Err(other) => Err(zero_error(io::Error::other(other))),
            }
        } else {
            let src = self.zero_source(len).map_err(zero_error)?;
            uffd_copy(&self.uffd, src, addr, len).map_err(zero_error)
        }?;
        match result {
            Copied::All(n) | Copied::Partly(n) => {
                ServerStats::add(&self.stats().bytes_zeroed, n as u64);
                Ok(Outcome::Served)
            }
            Copied::Exists => self.already_present(page),
            Copied::Again => Ok(Outcome::Retry),
            Copied::Unmapped => Ok(Outcome::Skipped),
            Copied::Gone => Ok(Outcome::PeerGone),
        }
    }

    /// A zero mapping of at least `len` bytes, made on first use.
    fn zero_source(&mut self, len: usize) -> io::Result<*const c_void> {
        if self.zero.as_ref().is_none_or(|zero| zero.len() < len) {
            let size = NonZeroUsize::new(len).ok_or(io::ErrorKind::InvalidInput)?;
            self.zero = Some(ZeroSource::new(size)?);
        }
        self.zero
            .as_ref()
            .and_then(|zero| zero.source(len))
            .ok_or_else(|| io::ErrorKind::InvalidInput.into())
    }

    /// The page is already there (another fault or chunk filled it): wake
    /// whoever waits on it, since a failed ioctl wakes nobody.
    fn already_present(&self, page: &PageLocation) -> Result<Outcome, UffdError> {
        let addr = page.page_addr;
        let len = page.page_size;
        let start = std::ptr::without_provenance_mut::<c_void>(addr as usize);
        self.uffd
            .wake(start, len)
            .map_err(|error| UffdError::Wake {
                addr,
                len,
                source: io::Error::other(error),
            })?;
        ServerStats::add(&self.stats().already_present, 1);
        Ok(Outcome::Served)
    }
}

/// `UFFDIO_COPY` of `len` bytes from `src` (in this process) to `dst` (in
/// the VMM), waking the faulting threads.
fn uffd_copy(uffd: &Uffd, src: *const c_void, dst: u64, len: usize) -> io::Result<Copied> {
    let dst_ptr = std::ptr::without_provenance_mut::<c_void>(dst as usize);
    // SAFETY: `src` points at `len` readable bytes of a read-only mapping
    // owned by the caller for the duration of the call (bounds checked by
    // `MemFile::source` / `ZeroSource::source`). `dst` is only an address in
    // the VMM's address space, inside a region registered with `uffd` (the
    // layout located it); the kernel validates it and writes there, never
    // into this process's Rust-visible memory.
    match unsafe { uffd.copy(src, dst_ptr, len, true) } {
        Ok(n) => Ok(Copied::All(n)),
        // The crate reports EAGAIN as `PartiallyCopied` with the kernel's
        // `copy` field: bytes copied (> 0), or -EAGAIN / 0 when nothing was.
        Err(userfaultfd::Error::PartiallyCopied(n)) if (n as i64) > 0 => Ok(Copied::Partly(n)),
        Err(userfaultfd::Error::PartiallyCopied(_)) => Ok(Copied::Again),
        Err(userfaultfd::Error::CopyFailed(errno)) => classify_errno(errno as i32),
        Err(other) => Err(io::Error::other(other)),
    }
}

/// Maps an ioctl errno to what the server does about it.
fn classify_errno(errno: i32) -> io::Result<Copied> {
    match errno {
        libc::EEXIST => Ok(Copied::Exists),
        libc::EAGAIN => Ok(Copied::Again),
        libc::ENOENT => Ok(Copied::Unmapped),
        libc::ESRCH => Ok(Copied::Gone),
        _ => Err(io::Error::from_raw_os_error(errno)),
    }
}
