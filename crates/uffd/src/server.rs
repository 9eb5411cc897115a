//! The page server: accept the VMM, take its handshake, serve its faults.

use std::collections::VecDeque;
use std::ffi::c_void;
use std::io::{self, Read};
use std::num::NonZeroUsize;
use std::ops::Range;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tracing::{debug, info, trace, warn};
use userfaultfd::{Event, EventBuffer, Uffd};

use crate::error::{HandshakeError, UffdError};
use crate::handshake::{self, PeerCredentials};
use crate::memfile::{MemFile, ZeroSource};
use crate::regions::{GuestRegion, MemoryLayout, PageLocation, host_page_size};
use crate::removed::RemovedRanges;
use crate::stats::{ServerStats, StatsSnapshot};
use crate::stop::StopHandle;

/// Default bytes populated per fault: 64 KiB, aligned, within the region.
pub const DEFAULT_CHUNK_SIZE: usize = 64 * 1024;

/// Events read from the userfaultfd per `read`.
const EVENT_BATCH: usize = 64;

/// How long to wait for the VMM's handshake message by default.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Retry rounds (while the VMM's address space is changing) before backing
/// off with short sleeps instead of yielding.
const SPIN_ROUNDS: u32 = 16;

/// Tuning of a [`UffdServer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOptions {
    /// How long [`UffdServer::serve_one`] waits for the VMM to connect;
    /// `None` waits until stopped.
    pub accept_timeout: Option<Duration>,
    /// How long to wait for the handshake message once connected.
    pub handshake_timeout: Duration,
    /// Bytes populated per fault: the aligned chunk around the faulting page
    /// (rounded up to a power of two and to at least one page), clipped to
    /// the region and to removed ranges. One page size (4096) serves exactly
    /// the faulting page.
    pub chunk_size: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            accept_timeout: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }
}

/// Why serving ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// The VMM closed the socket: Firecracker keeps it open for its whole
    /// life, so this means the VMM exited.
    PeerClosed,
    /// The VMM's address space is gone (`ESRCH` from an ioctl).
    PeerGone,
    /// Reading the userfaultfd returned end of file.
    UffdClosed,
    /// A [`StopHandle`] asked the server to stop.
    Stopped,
}

/// What one served VMM session amounted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeReport {
    /// Why serving ended.
    pub exit: ExitReason,
    /// The VMM process, when one connected and its credentials were readable.
    pub peer: Option<PeerCredentials>,
    /// The regions served, sorted by address (empty when no VMM connected).
    pub regions: Vec<GuestRegion>,
    /// The server's counters at the end (cumulative over its sessions).
    pub stats: StatsSnapshot,
    /// Time from the start of `serve_one` to its end.
    pub elapsed: Duration,
}

/// A userfaultfd page server for one snapshot memory file on one socket.
///
/// The socket file is removed when the server is dropped.
#[derive(Debug)]
pub struct UffdServer {
    listener: UnixListener,
    socket_path: PathBuf,
    mem_file: MemFile,
    options: ServerOptions,
    stop: StopHandle,
    stats: Arc<ServerStats>,
}

impl UffdServer {
    /// Listens on `socket_path` (which must not exist yet) and maps
    /// `mem_file_path`, with default [`ServerOptions`].
    pub fn bind(
        socket_path: impl AsRef<Path>,
        mem_file_path: impl AsRef<Path>,
    ) -> Result<Self, UffdError> {
        Self::bind_with_options(socket_path, mem_file_path, ServerOptions::default())
    }

    /// [`bind`](Self::bind) with explicit options.
    pub fn bind_with_options(
        socket_path: impl AsRef<Path>,
        mem_file_path: impl AsRef<Path>,
        options: ServerOptions,
    ) -> Result<Self, UffdError> {
        let socket_path = socket_path.as_ref().to_path_buf();
        let mem_file = MemFile::open(mem_file_path)?;
        let stop = StopHandle::new().map_err(|source| UffdError::Resource {
            what: "stop event",
            path: socket_path.clone(),
            source,
        })?;
        let bind_error = |source| UffdError::Bind {
            path: socket_path.clone(),
            source,
        };
        let listener = UnixListener::bind(&socket_path).map_err(bind_error)?;
        let server = Self {
            listener,
            socket_path,
            mem_file,
            options,
            stop,
            stats: Arc::new(ServerStats::default()),
        };
        server
            .listener
            .set_nonblocking(true)
            .map_err(|source| UffdError::Bind {
                path: server.socket_path.clone(),
                source,
            })?;
        info!(
            socket = %server.socket_path.display(),
            mem_file = %server.mem_file.path().display(),
            mem_bytes = server.mem_file.size(),
            chunk_size = server.options.chunk_size,
            "uffd page server listening"
        );
        Ok(server)
    }

    /// The socket the VMM must connect to (Firecracker's
    /// `mem_backend.backend_path`).
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// The mapped memory file.
    pub fn mem_file(&self) -> &MemFile {
        &self.mem_file
    }

    /// A handle that stops this server from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// The server's live counters.
    pub fn stats(&self) -> Arc<ServerStats> {
        Arc::clone(&self.stats)
    }

    /// Serves one VMM: waits for it to connect (up to
    /// [`ServerOptions::accept_timeout`]), takes its handshake, and answers
    /// its page faults until it goes away or the server is stopped.
    pub fn serve_one(&self) -> Result<ServeReport, UffdError> {
        let started = Instant::now();
        let report = |exit, peer, regions| ServeReport {
            exit,
            peer,
            regions,
            stats: self.stats.snapshot(),
            elapsed: started.elapsed(),
        };
        let Some(stream) = self.accept()? else {
            info!(socket = %self.socket_path.display(), "stopped before a VMM connected");
            return Ok(report(ExitReason::Stopped, None, Vec::new()));
        };
        let peer = PeerCredentials::of(&stream)
            .inspect_err(|error| debug!(%error, "cannot read the VMM's credentials"))
            .ok();
        info!(
            socket = %self.socket_path.display(),
            peer_pid = peer.map(|p| p.pid),
            "VMM connected"
        );
        let handshake =
            match handshake::receive(&stream, self.options.handshake_timeout, self.stop.fd()) {
                Ok(handshake) => handshake,
                Err(HandshakeError::Stopped) => {
                    return Ok(report(ExitReason::Stopped, peer, Vec::new()));
                }
                Err(source) => {
                    return Err(UffdError::Handshake {
                        path: self.socket_path.clone(),
                        source,
                    });
                }
            };
        let layout = MemoryLayout::new(&handshake.regions, self.mem_file.size(), host_page_size())
            .map_err(|source| UffdError::Layout {
                path: self.socket_path.clone(),
                mem_file: self.mem_file.path().to_path_buf(),
                source,
            })?;
        info!(
            socket = %self.socket_path.display(),
            regions = layout.regions().len(),
            guest_bytes = layout.total_size(),
            handshake_ms = started.elapsed().as_millis(),
            "handshake received; serving page faults"
        );
        let mut session = Session::new(self, &stream, handshake.uffd, &layout);
        let exit = session.run()?;
        let report = report(exit, peer, layout.regions().to_vec());
        info!(
            socket = %self.socket_path.display(),
            exit = ?report.exit,
            faults = report.stats.faults_served,
            bytes_copied = report.stats.bytes_copied,
            bytes_zeroed = report.stats.bytes_zeroed,
            remove_events = report.stats.remove_events,
            already_present = report.stats.already_present,
            retries = report.stats.retries,
            elapsed_ms = report.elapsed.as_millis(),
            "uffd page server done"
        );
        Ok(report)
    }

    /// Serves one VMM, then closes and removes the socket. The body of a
    /// per-VM server thread.
    pub fn run(self) -> Result<ServeReport, UffdError> {
        self.serve_one()
    }

    /// Runs [`run`](Self::run) on a new thread.
    pub fn spawn(self) -> Result<ServerThread, UffdError> {
        let stop = self.stop_handle();
        let stats = self.stats();
        let socket_path = self.socket_path.clone();
        let handle = std::thread::Builder::new()
            .name("uffd-server".to_owned())
            .spawn(move || self.run())
            .map_err(|source| UffdError::Spawn {
                path: socket_path.clone(),
                source,
            })?;
        Ok(ServerThread {
            handle,
            stop,
            stats,
            socket_path,
        })
    }

    /// Waits for the VMM; `None` when stopped first.
    fn accept(&self) -> Result<Option<UnixStream>, UffdError> {
        let deadline = self.options.accept_timeout.map(|t| Instant::now() + t);
        let accept_error = |source| UffdError::Accept {
            path: self.socket_path.clone(),
            source,
        };
        loop {
            if self.stop.is_stopped() {
                return Ok(None);
            }
            let wait = match (deadline, self.options.accept_timeout) {
                (Some(deadline), Some(timeout)) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if remaining.is_zero() {
                        return Err(UffdError::AcceptTimeout {
                            path: self.socket_path.clone(),
                            timeout,
                        });
                    }
                    PollTimeout::try_from(remaining).unwrap_or(PollTimeout::MAX)
                }
                _ => PollTimeout::NONE,
            };
            let mut fds = [
                PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.stop.fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, wait) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(errno) => return Err(accept_error(errno.into())),
            }
            match self.listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(true).map_err(accept_error)?;
                    return Ok(Some(stream));
                }
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(error) => return Err(accept_error(error)),
            }
        }
    }
}

impl Drop for UffdServer {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.socket_path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                warn!(%error, socket = %self.socket_path.display(), "cannot remove the page-server socket");
            }
        }
    }
}

/// A server running on its own thread (from [`UffdServer::spawn`]).
#[derive(Debug)]
pub struct ServerThread {
    handle: JoinHandle<Result<ServeReport, UffdError>>,
    stop: StopHandle,
    stats: Arc<ServerStats>,
    socket_path: PathBuf,
}

impl ServerThread {
    /// The socket the VMM must connect to.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// A handle that stops the server.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// The live counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Whether the server has returned.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits for the server to return.
    pub fn join(self) -> Result<ServeReport, UffdError> {
        self.handle.join().map_err(|_| UffdError::Panicked {
            path: self.socket_path,
        })?
    }

    /// Stops the server and waits for it.
    pub fn stop_and_join(self) -> Result<ServeReport, UffdError> {
        self.stop.stop();
        self.join()
    }
}

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

/// One connected VMM being served.
struct Session<'a> {
    server: &'a UffdServer,
    stream: &'a UnixStream,
    uffd: Uffd,
    layout: &'a MemoryLayout,
    events: EventBuffer,
    pending: VecDeque<u64>,
    removed: RemovedRanges,
    zero: Option<ZeroSource>,
    host_page_size: usize,
}

impl<'a> Session<'a> {
    fn new(
        server: &'a UffdServer,
        stream: &'a UnixStream,
        uffd: Uffd,
        layout: &'a MemoryLayout,
    ) -> Self {
        Self {
            server,
            stream,
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
    fn run(&mut self) -> Result<ExitReason, UffdError> {
        let hangup = PollFlags::POLLHUP | PollFlags::POLLERR;
        loop {
            if self.server.stop.is_stopped() {
                return Ok(ExitReason::Stopped);
            }
            let (socket_events, uffd_events, stop_fired) = {
                let mut fds = [
                    PollFd::new(self.stream.as_fd(), PollFlags::POLLIN),
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
            if socket_events.intersects(hangup) {
                return Ok(ExitReason::PeerClosed);
            }
            if socket_events.contains(PollFlags::POLLIN) && self.drain_socket() {
                return Ok(ExitReason::PeerClosed);
            }
        }
    }

    /// Reads and discards unexpected bytes on the socket; true when the VMM
    /// closed it.
    fn drain_socket(&self) -> bool {
        let mut buf = [0_u8; 4096];
        let mut stream = self.stream;
        match stream.read(&mut buf) {
            Ok(0) => true,
            Ok(n) => {
                warn!(
                    bytes = n,
                    socket = %self.server.socket_path.display(),
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
