//! Errors of this crate, each naming the resource involved (slot, namespace,
//! link, address, route, sysctl, nft table or rule).

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::network::Step;

/// Label used in errors for resources in the host's (initial) namespace.
pub const HOST_NETNS: &str = "host";

/// What went wrong while setting up, changing or tearing down sandbox
/// networking.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("slot {slot} is outside {range}")]
    SlotOutOfRange { slot: u32, range: String },
    #[error("slot {slot} is already in use")]
    SlotInUse { slot: u16 },
    #[error("slot {slot} is not allocated")]
    SlotNotAllocated { slot: u16 },
    #[error("no free slot left in {range}")]
    SlotsExhausted { range: String },
    #[error("network namespace {name}: {op}: {source}")]
    Namespace {
        name: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("netlink connection in namespace {netns}: {source}")]
    Netlink {
        netns: String,
        #[source]
        source: io::Error,
    },
    #[error("link {link} in namespace {netns}: {op}: {source}")]
    Link {
        link: String,
        netns: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("address {addr}/{prefix} on link {link} in namespace {netns}: {source}")]
    Address {
        addr: Ipv4Addr,
        prefix: u8,
        link: String,
        netns: String,
        #[source]
        source: io::Error,
    },
    #[error("route {dest}/{prefix} in namespace {netns}: {op}: {source}")]
    Route {
        dest: Ipv4Addr,
        prefix: u8,
        netns: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("sysctl {path} in namespace {netns}: {source}")]
    Sysctl {
        path: PathBuf,
        netns: String,
        #[source]
        source: io::Error,
    },
    #[error("nft {what} in namespace {netns}: {detail}")]
    Nft {
        what: String,
        netns: String,
        detail: String,
    },
    #[error("worker thread for namespace {netns} died: {detail}")]
    Thread { netns: String, detail: String },
    #[error("injected failure after step {step:?} of slot {slot}")]
    Injected { step: Step, slot: u16 },
}

/// Every error met while removing a network (or leftovers of one): removal
/// never stops at the first failure.
#[derive(Debug, thiserror::Error)]
pub struct RemoveError {
    /// What was being removed, e.g. `network of slot 3`.
    pub what: String,
    pub errors: Vec<NetError>,
}

impl fmt::Display for RemoveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "removing {}: {} error(s)", self.what, self.errors.len())?;
        for (i, e) in self.errors.iter().enumerate() {
            write!(f, "{} {e}", if i == 0 { ":" } else { ";" })?;
        }
        Ok(())
    }
}

/// Turns an rtnetlink error into an `io::Error` carrying the kernel's errno
/// when there is one, so callers can match on `ErrorKind`.
pub(crate) fn netlink_io(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

/// Whether an error says the resource does not exist (already gone).
pub(crate) fn is_not_found(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT | libc::ENODEV | libc::ESRCH)
    ) || e.kind() == io::ErrorKind::NotFound
}
