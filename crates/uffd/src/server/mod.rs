//! The page server: accept the VMM, take its handshake, serve its faults.

use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tracing::{debug, info, warn};
use userfaultfd::Uffd;

use crate::error::{HandshakeError, UffdError};
use crate::handshake::{self, PeerCredentials};
use crate::memfile::MemFile;
use crate::regions::{GuestRegion, MemoryLayout, host_page_size};
use crate::stats::{ServerStats, StatsSnapshot};
use crate::stop::StopHandle;

mod session;

use session::{Peer, Session};

/// Default bytes populated per fault: 64 KiB, aligned, within the region.
pub const DEFAULT_CHUNK_SIZE: usize = 64 * 1024;

/// How long to wait for the VMM's handshake message by default.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// Where the regions of the handshake are written (JSON) once
    /// received, for a server that takes over this VMM later
    /// ([`UffdServer::spawn_adopted`]); `None` writes nothing.
    pub regions_record: Option<PathBuf>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            accept_timeout: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            chunk_size: DEFAULT_CHUNK_SIZE,
            regions_record: None,
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
    /// `None` for a server that took over a VMM ([`Self::spawn_adopted`]).
    listener: Option<UnixListener>,
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
        listener
            .set_nonblocking(true)
            .map_err(|source| UffdError::Bind {
                path: socket_path.clone(),
                source,
            })?;
        let server = Self {
            listener: Some(listener),
            socket_path,
            mem_file,
            options,
            stop,
            stats: Arc::new(ServerStats::default()),
        };
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
        if let Some(record) = &self.options.regions_record {
            write_regions(record, layout.regions()).map_err(|source| UffdError::Resource {
                what: "regions record",
                path: record.clone(),
                source,
            })?;
        }
        let mut session = Session::new(self, Peer::Socket(&stream), handshake.uffd, &layout);
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
        self.on_thread(Self::run)
    }

    /// Runs `body(self)` on a new server thread.
    fn on_thread(
        self,
        body: impl FnOnce(Self) -> Result<ServeReport, UffdError> + Send + 'static,
    ) -> Result<ServerThread, UffdError> {
        let stop = self.stop_handle();
        let stats = self.stats();
        let socket_path = self.socket_path.clone();
        let handle = std::thread::Builder::new()
            .name("uffd-server".to_owned())
            .spawn(move || body(self))
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

    /// Takes over serving running VMM `vmm_pid` from an earlier server
    /// that is gone (an agent that exited or crashed): takes the VMM's
    /// userfaultfd from it (`pidfd_getfd`, which needs the right to ptrace
    /// it, e.g. root), reads the regions the earlier server recorded
    /// ([`ServerOptions::regions_record`]), wakes the VMM's threads left
    /// waiting on faults the earlier server had read, and serves on a new
    /// thread until the VMM exits or the server is stopped. `socket_path`
    /// only names the server in logs and errors (nothing listens).
    ///
    /// Not carried over: ranges the VMM removed (balloon, `MADV_DONTNEED`)
    /// while the earlier server ran; a later fault there gets the file's
    /// contents rather than zeros.
    pub fn spawn_adopted(
        vmm_pid: u32,
        socket_path: impl AsRef<Path>,
        mem_file_path: impl AsRef<Path>,
        regions_record: &Path,
        options: ServerOptions,
    ) -> Result<ServerThread, UffdError> {
        let socket_path = socket_path.as_ref().to_path_buf();
        let resource = |what, source| UffdError::Resource {
            what,
            path: socket_path.clone(),
            source,
        };
        let mem_file = MemFile::open(mem_file_path)?;
        let regions = read_regions(regions_record).map_err(|e| resource("regions record", e))?;
        let layout =
            MemoryLayout::new(&regions, mem_file.size(), host_page_size()).map_err(|source| {
                UffdError::Layout {
                    path: socket_path.clone(),
                    mem_file: mem_file.path().to_path_buf(),
                    source,
                }
            })?;
        let pidfd = pidfd_open(vmm_pid).map_err(|e| resource("pidfd of the VMM", e))?;
        let uffd = take_uffd(vmm_pid, &pidfd).map_err(|e| resource("the VMM's userfaultfd", e))?;
        let stop = StopHandle::new().map_err(|e| resource("stop event", e))?;
        let server = Self {
            listener: None,
            socket_path: socket_path.clone(),
            mem_file,
            options,
            stop,
            stats: Arc::new(ServerStats::default()),
        };
        server.on_thread(move |server| {
            let started = Instant::now();
            let mut session = Session::new(&server, Peer::Process(&pidfd), uffd, &layout);
            session.wake_all()?;
            info!(socket = %server.socket_path.display(), vmm_pid, "took over the VMM's page faults");
            let exit = session.run()?;
            Ok(ServeReport {
                exit,
                peer: None,
                regions: layout.regions().to_vec(),
                stats: server.stats.snapshot(),
                elapsed: started.elapsed(),
            })
        })
    }

    /// Waits for the VMM; `None` when stopped first.
    fn accept(&self) -> Result<Option<UnixStream>, UffdError> {
        let Some(listener) = &self.listener else {
            return Ok(None);
        };
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
                PollFd::new(listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.stop.fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, wait) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(errno) => return Err(accept_error(errno.into())),
            }
            match listener.accept() {
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
        if self.listener.is_none() {
            return;
        }
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

/// Writes `regions` to `path` as JSON (under a temporary name, then
/// renamed, so a reader never sees half of it).
fn write_regions(path: &Path, regions: &[GuestRegion]) -> io::Result<()> {
    let json = serde_json::to_vec(regions).map_err(io::Error::other)?;
    let partial = path.with_extension("partial");
    std::fs::write(&partial, json)?;
    std::fs::rename(&partial, path)
}

fn read_regions(path: &Path) -> io::Result<Vec<GuestRegion>> {
    serde_json::from_slice(&std::fs::read(path)?).map_err(io::Error::other)
}

/// A pidfd of process `pid`.
fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| io::Error::other(format!("{pid} is not a process id")))?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::empty(),
    )?)
}

/// A duplicate of the userfaultfd process `pid` holds (the one open file
/// of `/proc/<pid>/fd` that is a userfaultfd), non-blocking.
fn take_uffd(pid: u32, pidfd: &OwnedFd) -> io::Result<Uffd> {
    let mut found = None;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        if std::fs::read_link(entry.path())
            .is_ok_and(|t| t.as_os_str() == handshake::UFFD_LINK_TARGET)
        {
            found = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok());
            break;
        }
    }
    let target = found.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("process {pid} holds no userfaultfd"),
        )
    })?;
    let owned =
        rustix::process::pidfd_getfd(pidfd, target, rustix::process::PidfdGetfdFlags::empty())?;
    let flags =
        nix::fcntl::fcntl(&owned, nix::fcntl::FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&owned, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    // SAFETY: `owned` is a userfaultfd (its /proc link says so) whose
    // ownership passes to the `Uffd`.
    Ok(unsafe { Uffd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(owned)) })
}
