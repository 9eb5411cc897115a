//! Errors of the page server, each naming the resource it concerns.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while binding, accepting, handshaking or
/// serving page faults.
#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    /// The listening socket could not be created.
    #[error("cannot bind the page-server socket {path}: {source}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },

    /// The snapshot memory file could not be opened or inspected.
    #[error("cannot open the memory file {path}: {source}")]
    OpenMemFile {
        /// Memory file path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },

    /// The snapshot memory file is empty, so there is nothing to serve.
    #[error("the memory file {path} is empty")]
    EmptyMemFile {
        /// Memory file path.
        path: PathBuf,
    },

    /// The snapshot memory file could not be mapped.
    #[error("cannot map the memory file {path} ({len} bytes): {source}")]
    MapMemFile {
        /// Memory file path.
        path: PathBuf,
        /// File length in bytes.
        len: u64,
        /// Underlying error.
        #[source]
        source: io::Error,
    },

    /// An internal resource (stop event, zero-page buffer) could not be made.
    #[error("cannot create the {what} for the page server on {path}: {source}")]
    Resource {
        /// What was being created.
        what: &'static str,
        /// Socket path of the server.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },

    /// Waiting for or accepting the VMM's connection failed.
    #[error("cannot accept the VMM's connection on {path}: {source}")]
    Accept {
        /// Socket path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },

    /// No VMM connected within the configured accept timeout.
    #[error("no VMM connected to {path} within {timeout:?}")]
    AcceptTimeout {
        /// Socket path.
        path: PathBuf,
        /// The timeout that expired.
        timeout: Duration,
    },

    /// The VMM connected but its handshake was unusable.
    #[error("handshake on {path} failed: {source}")]
    Handshake {
        /// Socket path.
        path: PathBuf,
        /// What was wrong with it.
        #[source]
        source: HandshakeError,
    },

    /// The regions the VMM described do not fit the memory file.
    #[error(
        "the guest memory layout received on {path} does not fit the memory file {mem_file}: {source}"
    )]
    Layout {
        /// Socket path.
        path: PathBuf,
        /// Memory file path.
        mem_file: PathBuf,
        /// What does not fit.
        #[source]
        source: LayoutError,
    },

    /// Polling the socket, the userfaultfd or the stop event failed.
    #[error("cannot poll the page server's descriptors on {path}: {source}")]
    Poll {
        /// Socket path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },

    /// Reading events from the userfaultfd failed.
    #[error("cannot read events from the userfaultfd received on {path}: {source}")]
    ReadEvents {
        /// Socket path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: userfaultfd::Error,
    },

    /// Polling the userfaultfd reports an error condition.
    #[error(
        "the userfaultfd received on {path} reports an error when polled (UFFDIO_API not done, or the descriptor is blocking)"
    )]
    BrokenUffd {
        /// Socket path.
        path: PathBuf,
    },

    /// A page fault arrived for an address no region describes.
    #[error("page fault at {addr:#x} lies outside every guest memory region received on {path}")]
    FaultOutsideRegions {
        /// Socket path.
        path: PathBuf,
        /// Faulting address.
        addr: u64,
    },

    /// `UFFDIO_COPY` failed in a way that cannot be retried.
    #[error(
        "UFFDIO_COPY of {len} bytes to {dst:#x} from memory file offset {file_offset:#x} failed: {source}"
    )]
    Copy {
        /// Destination address in the VMM.
        dst: u64,
        /// Bytes requested.
        len: usize,
        /// Source offset in the memory file.
        file_offset: u64,
        /// Underlying error.
        #[source]
        source: io::Error,
    },

    /// `UFFDIO_ZEROPAGE` failed in a way that cannot be retried.
    #[error("UFFDIO_ZEROPAGE of {len} bytes at {addr:#x} failed: {source}")]
    ZeroPage {
        /// Address in the VMM.
        addr: u64,
        /// Bytes requested.
        len: usize,
        /// Underlying error.
        #[source]
        source: io::Error,
    },

    /// `UFFDIO_WAKE` failed.
    #[error("UFFDIO_WAKE of {len} bytes at {addr:#x} failed: {source}")]
    Wake {
        /// Address in the VMM.
        addr: u64,
        /// Bytes requested.
        len: usize,
        /// Underlying error.
        #[source]
        source: io::Error,
    },

    /// The server thread could not be started.
    #[error("cannot spawn the page-server thread for {path}: {source}")]
    Spawn {
        /// Socket path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },

    /// The server thread panicked.
    #[error("the page-server thread for {path} panicked")]
    Panicked {
        /// Socket path.
        path: PathBuf,
    },
}

/// Why the single handshake message from the VMM was rejected.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The VMM connected but sent nothing in time.
    #[error("timed out after {0:?} waiting for the handshake message")]
    Timeout(Duration),

    /// The server was stopped while waiting for the message.
    #[error("stopped while waiting for the handshake message")]
    Stopped,

    /// The VMM closed the connection before the message was complete.
    #[error(
        "the VMM closed the connection after {received} bytes, before a complete handshake message"
    )]
    ClosedEarly {
        /// Bytes received before the close.
        received: usize,
    },

    /// `recvmsg` or `poll` on the connection failed.
    #[error("cannot receive the handshake message: {0}")]
    Receive(#[source] io::Error),

    /// The message carried no descriptor.
    #[error(
        "the handshake message carried no file descriptor (expected the userfaultfd as SCM_RIGHTS)"
    )]
    NoFd,

    /// The message carried more than one descriptor.
    #[error(
        "the handshake message carried {0} file descriptors; only the single-userfaultfd protocol is supported"
    )]
    TooManyFds(usize),

    /// The ancillary data did not fit the receive buffer.
    #[error("the handshake message's ancillary data was truncated")]
    ControlTruncated,

    /// The descriptor is something other than a userfaultfd.
    #[error("the received file descriptor is not a userfaultfd (it is {0:?})")]
    NotUserfaultfd(String),

    /// The received userfaultfd could not be switched to non-blocking mode.
    #[error("cannot make the received userfaultfd non-blocking: {0}")]
    Configure(#[source] io::Error),

    /// The body grew past the size limit without becoming valid JSON.
    #[error("the handshake body exceeds {0} bytes")]
    TooLarge(usize),

    /// The body is not the JSON Firecracker sends.
    #[error(
        "the handshake body is not a JSON list of guest memory regions ({source}); body: {body}"
    )]
    BadJson {
        /// Parse error.
        #[source]
        source: serde_json::Error,
        /// The body, escaped and cut to a readable length.
        body: String,
    },
}

/// Why a list of guest memory regions cannot be served from a memory file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The list is empty.
    #[error("no guest memory regions")]
    NoRegions,

    /// The page size is not a power of two at least as large as the host's.
    #[error(
        "region {index} at {base:#x}: page size {page_size} is not a power of two of at least {host_page_size}"
    )]
    BadPageSize {
        /// Region index in the handshake.
        index: usize,
        /// Region base address.
        base: u64,
        /// Its page size.
        page_size: usize,
        /// The host's base page size.
        host_page_size: usize,
    },

    /// Base, size or file offset is not a multiple of the region's page size.
    #[error(
        "region {index} at {base:#x}: base, size {size:#x} and file offset {offset:#x} must be multiples of the page size {page_size}, and the size non-zero"
    )]
    Misaligned {
        /// Region index in the handshake.
        index: usize,
        /// Region base address.
        base: u64,
        /// Region size.
        size: usize,
        /// Region file offset.
        offset: u64,
        /// Its page size.
        page_size: usize,
    },

    /// The region's address or file range wraps around.
    #[error("region {index} at {base:#x} with size {size:#x}: address or file range overflows")]
    Overflow {
        /// Region index in the handshake.
        index: usize,
        /// Region base address.
        base: u64,
        /// Region size.
        size: usize,
    },

    /// Two regions cover the same addresses.
    #[error("regions {first} and {second} overlap at {addr:#x}")]
    Overlap {
        /// Index of the lower region.
        first: usize,
        /// Index of the higher region.
        second: usize,
        /// Start of the higher region.
        addr: u64,
    },

    /// A region reads past the end of the memory file.
    #[error(
        "region {index} at {base:#x} needs memory file bytes {start:#x}..{end:#x}, but the file has {file_len:#x} bytes"
    )]
    OutsideFile {
        /// Region index in the handshake.
        index: usize,
        /// Region base address.
        base: u64,
        /// First file byte it needs.
        start: u64,
        /// One past the last file byte it needs.
        end: u64,
        /// File length.
        file_len: u64,
    },
}
