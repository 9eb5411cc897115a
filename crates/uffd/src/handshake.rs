//! Firecracker's handshake: the one message the VMM sends after connecting.
//!
//! Firecracker (`src/vmm/src/persist.rs`, `send_uffd_handshake`) connects to
//! the socket given as `mem_backend.backend_path` and makes a single
//! `sendmsg` carrying
//! - the userfaultfd as `SCM_RIGHTS` (created non-blocking, with
//!   `UFFD_FEATURE_EVENT_REMOVE`, guest memory registered in MISSING mode),
//! - a JSON array with one object per guest memory region:
//!   `{"base_host_virt_addr": u64, "size": usize, "offset": u64,
//!   "page_size": usize, "page_size_kib": usize}`. Both page-size fields
//!   carry bytes; `page_size_kib` is the older, misnamed one (deprecated,
//!   still sent). Releases before huge-page support sent neither.
//!
//! It then keeps the connection open (it leaks the socket on purpose) until
//! the process exits, and sends nothing more. The peer's pid is available
//! through `SO_PEERCRED` ([`PeerCredentials`]).
//!
//! Page-size resolution here: `page_size` if present; else `page_size_kib`
//! read as bytes, except that a value below the host page size is read as
//! KiB (no real page is smaller than the host's base page, so `4` can only
//! mean 4 KiB); else the host page size.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, getsockopt, recvmsg, sockopt};
use serde::Deserialize;
use userfaultfd::Uffd;

use crate::error::HandshakeError;
use crate::regions::{GuestRegion, host_page_size};

/// Largest handshake body accepted, in bytes. Firecracker's is about 130
/// bytes per region.
pub const MAX_BODY_LEN: usize = 1 << 20;

/// Most descriptors accepted in one message; more are a protocol error.
const MAX_FDS: usize = 8;

/// Receive buffer per `recvmsg` call.
const RECV_CHUNK: usize = 16 * 1024;

/// How much of a rejected body an error message quotes.
const QUOTED_BODY_LEN: usize = 512;

/// What `/proc/self/fd/N` points at for a userfaultfd.
pub(crate) const UFFD_LINK_TARGET: &str = "anon_inode:[userfaultfd]";

/// The VMM's handshake: its userfaultfd and its guest memory regions.
#[derive(Debug)]
pub struct Handshake {
    /// The VMM's userfaultfd, switched to non-blocking mode.
    pub uffd: Uffd,
    /// Guest memory regions, in the order the VMM sent them.
    pub regions: Vec<GuestRegion>,
}

/// Credentials of the connected VMM process (`SO_PEERCRED`), as of its
/// `connect` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    /// Process id.
    pub pid: i32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

impl PeerCredentials {
    /// Reads the credentials of the process at the other end of `stream`.
    pub fn of(stream: &UnixStream) -> io::Result<Self> {
        let creds = getsockopt(stream, sockopt::PeerCredentials).map_err(io::Error::from)?;
        Ok(Self {
            pid: creds.pid(),
            uid: creds.uid(),
            gid: creds.gid(),
        })
    }
}

/// One region as Firecracker serializes it.
#[derive(Debug, Deserialize)]
struct WireRegion {
    base_host_virt_addr: u64,
    size: usize,
    offset: u64,
    #[serde(default)]
    page_size: Option<usize>,
    #[serde(default)]
    page_size_kib: Option<usize>,
}

impl WireRegion {
    fn into_region(self, host_page_size: usize) -> GuestRegion {
        let legacy = |value: usize| {
            if value < host_page_size {
                value.saturating_mul(1024)
            } else {
                value
            }
        };
        let page_size = self
            .page_size
            .or(self.page_size_kib.map(legacy))
            .unwrap_or(host_page_size);
        GuestRegion {
            base_host_virt_addr: self.base_host_virt_addr,
            size: self.size,
            offset: self.offset,
            page_size,
        }
    }
}

/// Parses a complete handshake body (the JSON region list).
pub fn parse_regions(body: &[u8]) -> Result<Vec<GuestRegion>, HandshakeError> {
    let wire: Vec<WireRegion> =
        serde_json::from_slice(body).map_err(|source| bad_json(source, body))?;
    let host = host_page_size();
    Ok(wire.into_iter().map(|r| r.into_region(host)).collect())
}

fn bad_json(source: serde_json::Error, body: &[u8]) -> HandshakeError {
    let text = String::from_utf8_lossy(&body[..body.len().min(QUOTED_BODY_LEN)]);
    HandshakeError::BadJson {
        source,
        body: text.escape_debug().to_string(),
    }
}

/// Receives the handshake from a freshly accepted `stream`, waiting at most
/// `timeout` and giving up early when `cancel` becomes readable.
///
/// The body may arrive in several reads; it is complete when it parses as
/// JSON. The single descriptor must be a userfaultfd; it is switched to
/// non-blocking mode (a blocking userfaultfd cannot be polled), which also
/// affects the VMM's copy of it (Firecracker creates it non-blocking anyway).
pub fn receive(
    stream: &UnixStream,
    timeout: Duration,
    cancel: BorrowedFd<'_>,
) -> Result<Handshake, HandshakeError> {
    let deadline = Instant::now() + timeout;
    let mut body = Vec::new();
    let mut fds = Vec::new();
    let mut chunk = vec![0_u8; RECV_CHUNK];
    loop {
        wait_readable(stream.as_fd(), cancel, deadline, timeout)?;
        let Some(received) = recv_chunk(stream, &mut chunk, &mut fds)? else {
            continue;
        };
        if received == 0 {
            return Err(HandshakeError::ClosedEarly {
                received: body.len(),
            });
        }
        body.extend_from_slice(&chunk[..received]);
        if body.len() > MAX_BODY_LEN {
            return Err(HandshakeError::TooLarge(MAX_BODY_LEN));
        }
        match serde_json::from_slice::<Vec<WireRegion>>(&body) {
            Ok(wire) => {
                let uffd = take_uffd(fds)?;
                let host = host_page_size();
                let regions = wire.into_iter().map(|r| r.into_region(host)).collect();
                return Ok(Handshake { uffd, regions });
            }
            Err(source) if source.is_eof() => {}
            Err(source) => return Err(bad_json(source, &body)),
        }
    }
}

/// Waits until `fd` is readable (or hung up), the deadline passes, or
/// `cancel` fires.
fn wait_readable(
    fd: BorrowedFd<'_>,
    cancel: BorrowedFd<'_>,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), HandshakeError> {
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(HandshakeError::Timeout(timeout));
        }
        let wait = PollTimeout::try_from(remaining).unwrap_or(PollTimeout::MAX);
        let mut fds = [
            PollFd::new(fd, PollFlags::POLLIN),
            PollFd::new(cancel, PollFlags::POLLIN),
        ];
        match poll(&mut fds, wait) {
            Ok(0) | Err(Errno::EINTR) => {}
            Ok(_) => {
                if fds[1].any().unwrap_or(false) {
                    return Err(HandshakeError::Stopped);
                }
                if fds[0].any().unwrap_or(false) {
                    return Ok(());
                }
            }
            Err(errno) => return Err(HandshakeError::Receive(errno.into())),
        }
    }
}

/// One non-blocking `recvmsg`: appends received descriptors to `fds` and
/// returns the byte count, or `None` when nothing was ready.
fn recv_chunk(
    stream: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<Option<usize>, HandshakeError> {
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut control = nix::cmsg_space!([RawFd; MAX_FDS]);
    let flags = MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT;
    let msg = match recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut control), flags) {
        Ok(msg) => msg,
        Err(Errno::EAGAIN | Errno::EINTR) => return Ok(None),
        Err(errno) => return Err(HandshakeError::Receive(errno.into())),
    };
    let cmsgs = msg.cmsgs().map_err(|_| HandshakeError::ControlTruncated)?;
    for cmsg in cmsgs {
        if let ControlMessageOwned::ScmRights(raw_fds) = cmsg {
            for raw in raw_fds {
                // SAFETY: SCM_RIGHTS installed `raw` as a new descriptor in
                // this process for this message only; nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
    }
    Ok(Some(msg.bytes))
}

/// Checks that exactly one descriptor came and that it is a userfaultfd, and
/// makes it non-blocking.
fn take_uffd(mut fds: Vec<OwnedFd>) -> Result<Uffd, HandshakeError> {
    if fds.len() > 1 {
        return Err(HandshakeError::TooManyFds(fds.len()));
    }
    let fd = fds.pop().ok_or(HandshakeError::NoFd)?;
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    match std::fs::read_link(&link) {
        Ok(target) if target.as_os_str() != UFFD_LINK_TARGET => {
            return Err(HandshakeError::NotUserfaultfd(
                target.to_string_lossy().into_owned(),
            ));
        }
        Ok(_) => {}
        Err(error) => {
            tracing::debug!(%error, link, "cannot check the received descriptor's type");
        }
    }
    let flags = fcntl(&fd, FcntlArg::F_GETFL).map_err(|e| HandshakeError::Configure(e.into()))?;
    let flags = OFlag::from_bits_retain(flags);
    if !flags.contains(OFlag::O_NONBLOCK) {
        tracing::debug!("switching the received userfaultfd to non-blocking mode");
        fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))
            .map_err(|e| HandshakeError::Configure(e.into()))?;
    }
    // SAFETY: `fd` is a userfaultfd (checked above where /proc allows) that
    // this process owns exclusively; `Uffd` takes over closing it.
    Ok(unsafe { Uffd::from_raw_fd(fd.into_raw_fd()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reads_firecracker_fields() {
        let body = br#"[{"base_host_virt_addr":140000000000,"size":8192,"offset":4096,"page_size":4096,"page_size_kib":4096}]"#;

        let regions = parse_regions(body).expect("valid body");

        assert_eq!(
            regions,
            vec![GuestRegion {
                base_host_virt_addr: 140_000_000_000,
                size: 8192,
                offset: 4096,
                page_size: 4096,
            }]
        );
    }

    #[test]
    fn parse_prefers_page_size_over_page_size_kib() {
        let body = br#"[{"base_host_virt_addr":0,"size":2097152,"offset":0,"page_size":2097152,"page_size_kib":4096}]"#;

        let regions = parse_regions(body).expect("valid body");

        assert_eq!(regions[0].page_size, 2_097_152);
    }

    #[test]
    fn parse_reads_legacy_page_size_kib_as_bytes() {
        let body =
            br#"[{"base_host_virt_addr":0,"size":2097152,"offset":0,"page_size_kib":2097152}]"#;

        let regions = parse_regions(body).expect("valid body");

        assert_eq!(regions[0].page_size, 2_097_152);
    }

    #[test]
    fn parse_reads_small_page_size_kib_as_kib() {
        let body = br#"[{"base_host_virt_addr":0,"size":8192,"offset":0,"page_size_kib":4}]"#;

        let regions = parse_regions(body).expect("valid body");

        assert_eq!(regions[0].page_size, 4096);
    }

    #[test]
    fn parse_defaults_missing_page_size_to_host_page() {
        let body = br#"[{"base_host_virt_addr":0,"size":8192,"offset":0}]"#;

        let regions = parse_regions(body).expect("valid body");

        assert_eq!(regions[0].page_size, host_page_size());
    }

    #[test]
    fn parse_missing_field_names_it() {
        let body = br#"[{"base_host_virt_addr":0,"offset":0,"page_size":4096}]"#;

        let error = parse_regions(body).expect_err("size is missing");

        assert!(
            error.to_string().contains("missing field `size`"),
            "{error}"
        );
    }

    #[test]
    fn parse_garbage_quotes_the_body() {
        let error = parse_regions(b"hello\n").expect_err("not JSON");

        assert!(error.to_string().contains("body: hello\\n"), "{error}");
    }
}
