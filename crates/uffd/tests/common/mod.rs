//! A fake VMM for the page-server tests: it does what Firecracker does on
//! snapshot load with the Uffd backend (anonymous guest memory registered
//! with a userfaultfd, the fd and a JSON region list sent over the socket),
//! then touches guest memory so that the server must fill it.

#![allow(dead_code, reason = "each test binary uses part of the helpers")]
#![allow(
    clippy::expect_used,
    reason = "test helpers: a failed setup step fails the test"
)]

use std::ffi::c_void;
use std::io::IoSlice;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::mman::{MapFlags, MmapAdvise, ProtFlags, madvise, mmap_anonymous, munmap};
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use tempfile::TempDir;
use uffd::{ServeReport, ServerOptions, ServerThread, UffdError, UffdServer};
use userfaultfd::{FeatureFlags, Uffd, UffdBuilder};

pub const PAGE: usize = 4096;

/// Longest a test waits for faults to be served or the server to return.
const PATIENCE: Duration = Duration::from_secs(30);

/// The bytes of memory-file page `index`: its index up front, then a
/// pattern that differs per page and per position.
pub fn file_page(index: usize) -> Vec<u8> {
    let mut page: Vec<u8> = (0..PAGE)
        .map(|j| ((index * 131 + j * 7 + (j >> 8) * 13) % 251) as u8)
        .collect();
    page[..8].copy_from_slice(&(index as u64).to_le_bytes());
    page
}

/// The bytes of memory-file pages `pages`.
pub fn file_bytes(pages: Range<usize>) -> Vec<u8> {
    pages.flat_map(file_page).collect()
}

/// A temp dir with a memory file of `pages` patterned pages and a socket
/// path next to it.
#[derive(Debug)]
pub struct Fixture {
    pub dir: TempDir,
    pub socket: PathBuf,
    pub mem_file: PathBuf,
}

impl Fixture {
    pub fn new(pages: usize) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mem_file = dir.path().join("mem");
        std::fs::write(&mem_file, file_bytes(0..pages)).expect("write memory file");
        let socket = dir.path().join("uffd.sock");
        Self {
            dir,
            socket,
            mem_file,
        }
    }

    pub fn spawn(&self, options: ServerOptions) -> ServerThread {
        UffdServer::bind_with_options(&self.socket, &self.mem_file, options)
            .expect("bind")
            .spawn()
            .expect("spawn")
    }
}

/// Waits for the server thread, failing the test instead of hanging.
pub fn join(server: ServerThread) -> Result<ServeReport, UffdError> {
    within(move || server.join())
}

/// Runs `work` on a thread and waits for it at most [`PATIENCE`]: a fault
/// the server never serves would block forever.
pub fn within<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(work()));
    rx.recv_timeout(PATIENCE)
        .expect("timed out: a page fault was not served or the server did not return")
}

/// One anonymous guest memory region.
#[derive(Debug)]
pub struct GuestMem {
    ptr: NonNull<c_void>,
    len: usize,
    /// First memory-file page of the region's contents.
    pub file_page: usize,
}

// SAFETY: the mapping is plain anonymous memory owned by this value; the
// tests only read it (or madvise it) through addresses, from any thread.
unsafe impl Send for GuestMem {}
// SAFETY: see `Send`.
unsafe impl Sync for GuestMem {}

impl GuestMem {
    fn new(pages: usize, file_page: usize) -> Self {
        let len = pages * PAGE;
        // SAFETY: a fresh anonymous mapping at an address of the kernel's
        // choosing; it aliases nothing.
        let ptr = unsafe {
            mmap_anonymous(
                None,
                NonZeroUsize::new(len).expect("non-empty region"),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE,
            )
        }
        .expect("mmap guest memory");
        Self {
            ptr,
            len,
            file_page,
        }
    }

    pub fn addr(&self) -> usize {
        self.ptr.as_ptr().expose_provenance()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn pages(&self) -> usize {
        self.len / PAGE
    }
}

impl Drop for GuestMem {
    fn drop(&mut self) {
        // SAFETY: the mapping was created by `new` and nothing refers to it
        // once its owner is dropped.
        unsafe { munmap(self.ptr, self.len) }.expect("munmap guest memory");
    }
}

/// Reads `len` bytes of guest memory at `addr`, faulting them in.
pub fn read_guest(addr: usize, len: usize) -> Vec<u8> {
    within(move || {
        // SAFETY: `addr..addr + len` lies in a live anonymous mapping of the
        // calling test; missing pages are filled by the page server before
        // the read completes.
        unsafe { std::slice::from_raw_parts(std::ptr::with_exposed_provenance::<u8>(addr), len) }
            .to_vec()
    })
}

/// Reads the guest pages `pages` of the region at `base` in the given order,
/// on the calling thread, faulting each in. Callers bound the wait with
/// [`within`].
pub fn read_pages(base: usize, pages: impl Iterator<Item = usize>) -> Vec<(usize, Vec<u8>)> {
    pages
        .map(|page| {
            let addr = base + page * PAGE;
            // SAFETY: the page lies in a live anonymous mapping of the
            // calling test; the page server fills it before the read
            // completes.
            let bytes = unsafe {
                std::slice::from_raw_parts(std::ptr::with_exposed_provenance::<u8>(addr), PAGE)
            };
            (page, bytes.to_vec())
        })
        .collect()
}

/// Which page-size field the regions JSON carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageField {
    /// `page_size` and `page_size_kib`, as current Firecracker sends.
    Both,
    /// Only `page_size_kib` (in bytes), as older releases sent.
    LegacyKib,
}

/// A fake Firecracker: guest memory registered with a userfaultfd, and the
/// connection to the page server.
#[derive(Debug)]
pub struct FakeVmm {
    pub regions: Vec<GuestMem>,
    pub uffd: Option<Uffd>,
    pub stream: Option<UnixStream>,
}

impl FakeVmm {
    /// Maps and registers regions of `(pages, first file page)`, without
    /// connecting.
    pub fn mapped(layout: &[(usize, usize)]) -> Self {
        Self::mapped_with(layout, FeatureFlags::EVENT_REMOVE)
    }

    /// [`mapped`](Self::mapped) with the given userfaultfd features.
    pub fn mapped_with(layout: &[(usize, usize)], features: FeatureFlags) -> Self {
        let uffd = UffdBuilder::new()
            .close_on_exec(true)
            .non_blocking(true)
            .user_mode_only(false)
            .require_features(features)
            .create()
            .expect("create userfaultfd");
        let regions: Vec<GuestMem> = layout
            .iter()
            .map(|&(pages, file_page)| GuestMem::new(pages, file_page))
            .collect();
        for region in &regions {
            uffd.register(region.ptr.as_ptr(), region.len)
                .expect("register guest memory");
        }
        Self {
            regions,
            uffd: Some(uffd),
            stream: None,
        }
    }

    /// Maps, registers, connects and sends the handshake, like Firecracker.
    pub fn start(socket: &Path, layout: &[(usize, usize)], field: PageField) -> Self {
        Self::start_with(socket, layout, field, FeatureFlags::EVENT_REMOVE)
    }

    /// [`start`](Self::start) with the given userfaultfd features.
    pub fn start_with(
        socket: &Path,
        layout: &[(usize, usize)],
        field: PageField,
        features: FeatureFlags,
    ) -> Self {
        let mut vmm = Self::mapped_with(layout, features);
        let stream = UnixStream::connect(socket).expect("connect to the page server");
        let body = vmm.regions_json(field);
        send(&stream, body.as_bytes(), Some(vmm.uffd_fd()));
        vmm.stream = Some(stream);
        vmm
    }

    pub fn uffd_fd(&self) -> RawFd {
        self.uffd.as_ref().expect("uffd open").as_raw_fd()
    }

    /// The regions in Firecracker's handshake format.
    pub fn regions_json(&self, field: PageField) -> String {
        let regions: Vec<serde_json::Value> = self
            .regions
            .iter()
            .map(|region| {
                let mut value = serde_json::json!({
                    "base_host_virt_addr": region.addr() as u64,
                    "size": region.len(),
                    "offset": (region.file_page * PAGE) as u64,
                    "page_size_kib": PAGE,
                });
                if field == PageField::Both {
                    value["page_size"] = serde_json::json!(PAGE);
                }
                value
            })
            .collect();
        serde_json::to_string(&regions).expect("serialize regions")
    }

    /// Reads all of region `index`, faulting every page in.
    pub fn read_region(&self, index: usize) -> Vec<u8> {
        let region = &self.regions[index];
        read_guest(region.addr(), region.len())
    }

    /// Releases `pages` of region `index` as a balloon would
    /// (`MADV_DONTNEED`), which sends the server a remove event when the
    /// userfaultfd has `EVENT_REMOVE`.
    pub fn remove(&self, index: usize, pages: Range<usize>) {
        let region = &self.regions[index];
        let start = region.addr() + pages.start * PAGE;
        let len = (pages.end - pages.start) * PAGE;
        within(move || {
            let ptr = NonNull::new(std::ptr::with_exposed_provenance_mut::<c_void>(start))
                .expect("non-null");
            // SAFETY: the range lies inside a live anonymous mapping of this
            // test; discarding its contents is what the test wants.
            unsafe { madvise(ptr, len, MmapAdvise::MADV_DONTNEED) }.expect("madvise");
        });
    }
}

/// Sends `body`, with `fd` as SCM_RIGHTS when given, in one `sendmsg`.
pub fn send(stream: &UnixStream, body: &[u8], fd: Option<RawFd>) {
    let iov = [IoSlice::new(body)];
    let fds: Vec<RawFd> = fd.into_iter().collect();
    let rights = [ControlMessage::ScmRights(&fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    let sent =
        sendmsg::<()>(stream.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None).expect("sendmsg");
    assert_eq!(sent, body.len(), "short sendmsg");
}
