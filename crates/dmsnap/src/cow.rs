//! A sandbox's CoW file: the persistent exception store of its dm-snapshot
//! (`snapshot <origin> <cow> P 8`), a sparse file that grows as the sandbox
//! writes.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::Path;

use crate::error::{DmSnapError, Result};

/// Chunk size of our snapshots in 512-byte sectors (4 KiB).
pub const CHUNK_SECTORS: u64 = 8;
const CHUNK_BYTES: u64 = CHUNK_SECTORS * 512;
/// `SNAP_MAGIC` of `drivers/md/dm-snap-persistent.c` ("SnAp").
const SNAP_MAGIC: u32 = 0x7041_6e53;
/// An on-disk exception is two little-endian u64 (old chunk, new chunk).
const EXCEPTION_BYTES: u64 = 16;

/// The apparent size of a new CoW file for a base of `base_bytes`: the
/// header chunk, room to copy every chunk of the base, and the metadata
/// chunks indexing them (plus one spare), so the snapshot can never
/// overflow. The file is sparse, so this costs nothing until written.
pub fn cow_size(base_bytes: u64) -> u64 {
    let chunks = base_bytes.div_ceil(CHUNK_BYTES);
    let exceptions_per_area = CHUNK_BYTES / EXCEPTION_BYTES;
    let metadata_chunks = chunks.div_ceil(exceptions_per_area) + 1;
    (1 + chunks + metadata_chunks) * CHUNK_BYTES
}

/// Makes a new sparse CoW file of `size` bytes; fails if `path` exists (a
/// CoW holding a sandbox's writes is never overwritten).
pub(crate) fn create(path: &Path, size: u64) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => DmSnapError::CowExists {
                path: path.to_path_buf(),
            },
            _ => DmSnapError::io("create CoW file", path, source),
        })?;
    if let Err(source) = file.set_len(size) {
        drop(file);
        if let Err(err) = std::fs::remove_file(path) {
            tracing::warn!(cow = %path.display(), %err, "removing a CoW file that could not be sized");
        }
        return Err(DmSnapError::io("size CoW file", path, source));
    }
    Ok(())
}

/// Checks that `path` holds a valid exception store of our chunk size, so
/// `restore` never hands dm a file it would silently reinitialise.
pub(crate) fn check(path: &Path) -> Result<()> {
    let mut header = [0u8; 16];
    File::open(path)
        .and_then(|mut file| file.read_exact(&mut header))
        .map_err(|source| DmSnapError::io("read CoW header", path, source))?;
    check_header(&header).map_err(|reason| DmSnapError::BadCow {
        path: path.to_path_buf(),
        reason,
    })
}

/// `struct disk_header { le32 magic, valid, version, chunk_size }`.
fn check_header(header: &[u8; 16]) -> Result<(), String> {
    let word =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let (magic, valid, chunk_size) = (word(0), word(4), word(12));
    if magic == 0 {
        return Err("no snapshot header (never used by a snapshot)".to_string());
    }
    if magic != SNAP_MAGIC {
        return Err(format!(
            "not a dm-snapshot exception store (magic {magic:#010x})"
        ));
    }
    if valid == 0 {
        return Err(
            "the snapshot was invalidated (its CoW overflowed or an I/O failed)".to_string(),
        );
    }
    if u64::from(chunk_size) != CHUNK_SECTORS {
        return Err(format!(
            "chunk size {chunk_size} sectors, expected {CHUNK_SECTORS}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(magic: u32, valid: u32, chunk_size: u32) -> [u8; 16] {
        let mut bytes = [0u8; 16];
        bytes[0..4].copy_from_slice(&magic.to_le_bytes());
        bytes[4..8].copy_from_slice(&valid.to_le_bytes());
        bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
        bytes[12..16].copy_from_slice(&chunk_size.to_le_bytes());
        bytes
    }

    #[test]
    fn a_valid_header_of_our_chunk_size_passes() {
        let result = check_header(&header(SNAP_MAGIC, 1, 8));

        assert_eq!(result, Ok(()));
    }

    #[test]
    fn a_zeroed_header_is_not_restorable() {
        let result = check_header(&[0; 16]);

        assert!(result.unwrap_err().contains("never used"));
    }

    #[test]
    fn a_foreign_magic_is_rejected() {
        let result = check_header(&header(0xdead_beef, 1, 8));

        assert!(result.unwrap_err().contains("0xdeadbeef"));
    }

    #[test]
    fn an_invalidated_snapshot_is_rejected() {
        let result = check_header(&header(SNAP_MAGIC, 0, 8));

        assert!(result.unwrap_err().contains("invalidated"));
    }

    #[test]
    fn another_chunk_size_is_rejected() {
        let result = check_header(&header(SNAP_MAGIC, 1, 16));

        assert!(result.unwrap_err().contains("chunk size 16"));
    }

    #[test]
    fn cow_size_covers_every_chunk_and_its_metadata() {
        let base = 64 << 20;

        let size = cow_size(base);

        // 16384 data chunks, 64 metadata chunks + 1 spare, 1 header chunk.
        assert_eq!(size, (16384 + 65 + 1) * 4096);
    }

    #[test]
    fn cow_size_rounds_a_partial_chunk_up() {
        let size = cow_size(4097);

        assert_eq!(size, (1 + 2 + 2) * 4096);
    }

    #[test]
    fn create_makes_a_sparse_file_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cow");

        create(&path, 1 << 30).unwrap();
        let again = create(&path, 1 << 30).unwrap_err();

        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 1 << 30);
        assert!(crate::dir_size(&path).unwrap() < 1 << 20);
        assert!(matches!(again, DmSnapError::CowExists { .. }), "{again}");
    }

    #[test]
    fn check_names_a_fresh_file_as_not_restorable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cow");
        create(&path, 1 << 20).unwrap();

        let err = check(&path).unwrap_err();

        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
}
