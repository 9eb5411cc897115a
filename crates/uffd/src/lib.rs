//! A userfaultfd page server for Firecracker snapshot restore.
//!
//! When Firecracker loads a snapshot with `mem_backend: {"backend_type": "Uffd",
//! "backend_path": <socket>}`, it maps guest memory anonymously, registers it
//! with a userfaultfd, connects to `<socket>` and sends one message: the
//! userfaultfd as `SCM_RIGHTS` plus a JSON list of guest memory regions
//! (`base_host_virt_addr`, `size`, `offset`, `page_size`; older releases name
//! the page size `page_size_kib`, in bytes despite the name). From then on
//! every first touch of a guest page stops the touching thread until a page
//! server fills the page.
//!
//! [`UffdServer`] is that page server:
//! - [`UffdServer::bind`] listens on the socket and maps the snapshot memory
//!   file read-only and private ([`MemFile`]), so a missing file fails before
//!   the VMM is asked to load.
//! - [`UffdServer::serve_one`] / [`UffdServer::run`] accept the VMM, take the
//!   handshake ([`handshake`]), check the regions against the file
//!   ([`MemoryLayout`]) and answer page faults with `UFFDIO_COPY` of an
//!   aligned chunk of the file ([`ServerOptions::chunk_size`]), tolerating
//!   pages that are already there (`EEXIST`) and retrying while the VMM's
//!   address space is changing (`EAGAIN`).
//! - Remove events (balloon inflation, `madvise(MADV_DONTNEED)`) mark their
//!   range; later faults there get zero pages (`UFFDIO_ZEROPAGE`), never stale
//!   file contents.
//! - It ends cleanly ([`ExitReason`]) when the VMM closes the socket (which
//!   Firecracker only does by exiting), when the VMM's address space is gone,
//!   or when a [`StopHandle`] asks it to; [`ServerStats`] counts faults and
//!   bytes for the logs.
//! - A server can take over a running VMM whose earlier server is gone (an
//!   agent restart): [`ServerOptions::regions_record`] writes the regions of
//!   the handshake to a file, and [`UffdServer::spawn_adopted`] takes the
//!   VMM's userfaultfd from the process (`pidfd_getfd`), wakes the threads
//!   left waiting on faults the old server had read, and serves until the
//!   process exits (watched through its pidfd).
//!
//! What it does not do: it does not start or kill Firecracker (if the server
//! stops while the VM runs, the VM's next fault hangs; the caller must kill
//! the VMM); it serves one VMM per [`UffdServer::serve_one`] call; it does not
//! support Firecracker's secret-free / `guest_memfd` mode (three descriptors
//! and fault requests on the socket) or write-protect tracking; it assumes
//! the memory file is not modified while served; hugetlbfs-backed guests are
//! handled by page size but untested here.
//!
//! # Example
//!
//! ```no_run
//! use uffd::UffdServer;
//!
//! // One server (and one thread) per restored VM.
//! let server = UffdServer::bind("/run/petrel/vm1/uffd.sock", "/var/lib/petrel/snap/mem")?;
//! let thread = server.spawn()?;
//! // ... PUT /snapshot/load with backend_type "Uffd" and the socket path ...
//! // The server returns by itself when Firecracker exits.
//! let report = thread.join()?;
//! println!("{:?}: {} faults, {} bytes copied",
//!          report.exit, report.stats.faults_served, report.stats.bytes_copied);
//! # Ok::<(), uffd::UffdError>(())
//! ```

mod error;
pub mod handshake;
mod memfile;
mod regions;
mod removed;
mod server;
mod stats;
mod stop;

pub use error::{HandshakeError, LayoutError, UffdError};
pub use handshake::{Handshake, PeerCredentials};
pub use memfile::MemFile;
pub use regions::{GuestRegion, MemoryLayout, PageLocation, host_page_size};
pub use server::{
    DEFAULT_CHUNK_SIZE, ExitReason, ServeReport, ServerOptions, ServerThread, UffdServer,
};
pub use stats::{ServerStats, StatsSnapshot};
pub use stop::StopHandle;
