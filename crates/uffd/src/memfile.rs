//! The snapshot memory file, mapped read-only and private, as the source of
//! `UFFDIO_COPY`; and a read-only zero mapping for zero-filling huge pages.
//!
//! The mapping is shared page cache: many servers mapping the same snapshot
//! read the same cached pages. The file must not be modified or truncated
//! while served; a copy from a truncated part fails with `EFAULT` (an error,
//! not a crash, because the kernel performs the read).

use std::ffi::c_void;
use std::fs::File;
use std::io;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use nix::sys::mman::{MapFlags, ProtFlags, mmap, mmap_anonymous, munmap};

use crate::error::UffdError;

/// A read-only memory mapping, unmapped on drop.
#[derive(Debug)]
struct Mapping {
    ptr: NonNull<c_void>,
    len: NonZeroUsize,
}

// SAFETY: the mapping is PROT_READ and private: no thread can write through
// it, and it is unmapped only by `Drop`, which needs exclusive ownership. The
// pointer is only handed to the kernel (UFFDIO_COPY) as a source address.
unsafe impl Send for Mapping {}
// SAFETY: see `Send`; shared access is read-only.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// `len` bytes at `offset`, if they lie inside the mapping.
    fn range(&self, offset: u64, len: usize) -> Option<*const c_void> {
        let offset = usize::try_from(offset).ok()?;
        let end = offset.checked_add(len)?;
        if len == 0 || end > self.len.get() {
            return None;
        }
        // SAFETY: `offset + len <= self.len`, so the result stays inside (or
        // one past the end of) this single mapping.
        Some(unsafe { self.ptr.as_ptr().cast::<u8>().add(offset) }.cast::<c_void>())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe a mapping this value created and owns;
        // no reference into it outlives `self` (only raw source pointers that
        // the kernel reads during ioctls made through `&self`).
        if let Err(errno) = unsafe { munmap(self.ptr, self.len.get()) } {
            tracing::warn!(%errno, len = self.len.get(), "munmap of page-server source failed");
        }
    }
}

/// The snapshot memory file, mapped read-only (`PROT_READ`, `MAP_PRIVATE`).
#[derive(Debug)]
pub struct MemFile {
    path: PathBuf,
    len: u64,
    map: Mapping,
}

impl MemFile {
    /// Opens and maps `path`. Fails, naming the file, when it is missing,
    /// unreadable, empty or cannot be mapped.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, UffdError> {
        let path = path.as_ref().to_path_buf();
        let open_error = |source| UffdError::OpenMemFile {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(open_error)?;
        let len = file.metadata().map_err(open_error)?.len();
        let Some(map_len) = usize::try_from(len).ok().and_then(NonZeroUsize::new) else {
            return Err(UffdError::EmptyMemFile { path });
        };
        // SAFETY: a fresh mapping at an address of the kernel's choosing
        // (no MAP_FIXED), so it aliases nothing; `file` is open for reading
        // and PROT_READ | MAP_PRIVATE never writes to it. The mapping stays
        // valid after `file` is closed.
        let ptr = unsafe {
            mmap(
                None,
                map_len,
                ProtFlags::PROT_READ,
                MapFlags::MAP_PRIVATE,
                &file,
                0,
            )
        }
        .map_err(|errno| UffdError::MapMemFile {
            path: path.clone(),
            len,
            source: io::Error::from(errno),
        })?;
        tracing::debug!(path = %path.display(), len, "mapped memory file");
        Ok(Self {
            path,
            len,
            map: Mapping { ptr, len: map_len },
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's length in bytes (never zero).
    pub fn size(&self) -> u64 {
        self.len
    }

    /// Source address of `len` bytes at `offset`, if they lie in the file.
    pub(crate) fn source(&self, offset: u64, len: usize) -> Option<*const c_void> {
        self.map.range(offset, len)
    }
}

/// A read-only anonymous mapping that reads as zeroes, used as the
/// `UFFDIO_COPY` source where `UFFDIO_ZEROPAGE` does not apply (huge pages).
#[derive(Debug)]
pub(crate) struct ZeroSource {
    map: Mapping,
}

impl ZeroSource {
    /// Maps `len` bytes of zeroes.
    pub(crate) fn new(len: NonZeroUsize) -> io::Result<Self> {
        // SAFETY: a fresh anonymous mapping at an address of the kernel's
        // choosing; it aliases nothing and is never written (PROT_READ).
        let ptr = unsafe {
            mmap_anonymous(
                None,
                len,
                ProtFlags::PROT_READ,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
            )
        }
        .map_err(io::Error::from)?;
        Ok(Self {
            map: Mapping { ptr, len },
        })
    }

    /// Length of the zero mapping.
    pub(crate) fn len(&self) -> usize {
        self.map.len.get()
    }

    /// Source address of `len` zero bytes.
    pub(crate) fn source(&self, len: usize) -> Option<*const c_void> {
        self.map.range(0, len)
    }
}
