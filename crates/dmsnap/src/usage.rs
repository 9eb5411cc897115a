//! Disk usage as the filesystem allocates it (`st_blocks * 512`), so a
//! sparse CoW file counts what it really uses rather than its apparent
//! size.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::{DmSnapError, Result};

/// Bytes allocated to `path`: a file's `st_blocks * 512`, or for a
/// directory the sum over everything below it, itself included, like
/// `du -s -B1`. Symlinks are not followed (their own blocks count) and a
/// file with several hard links below `path` counts once.
pub fn dir_size(path: &Path) -> Result<u64> {
    let mut seen = HashSet::new();
    usage(path, &mut seen)
}

fn usage(path: &Path, seen: &mut HashSet<(u64, u64)>) -> Result<u64> {
    let meta =
        std::fs::symlink_metadata(path).map_err(|source| DmSnapError::io("stat", path, source))?;
    if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
        return Ok(0);
    }
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        let entries = std::fs::read_dir(path)
            .map_err(|source| DmSnapError::io("list directory", path, source))?;
        for entry in entries {
            let entry = entry.map_err(|source| DmSnapError::io("list directory", path, source))?;
            total += usage(&entry.path(), seen)?;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, SeekFrom, Write};

    use super::*;

    #[test]
    fn dir_size_of_a_file_is_its_allocated_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::write(&path, vec![7u8; 10_000]).unwrap();

        let size = dir_size(&path).unwrap();

        assert_eq!(size, std::fs::metadata(&path).unwrap().blocks() * 512);
    }

    #[test]
    fn dir_size_counts_what_a_sparse_file_uses_not_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let mut file = std::fs::File::create(&path).unwrap();
        file.set_len(1 << 30).unwrap();
        file.seek(SeekFrom::Start(512 << 20)).unwrap();
        file.write_all(&[1u8; 4096]).unwrap();
        file.sync_all().unwrap();

        let size = dir_size(dir.path()).unwrap();

        assert!(size >= 4096, "{size}");
        assert!(size < 1 << 20, "{size}");
    }

    #[test]
    fn dir_size_sums_nested_files_and_counts_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("sub/b");
        std::fs::write(&a, vec![1u8; 8192]).unwrap();
        std::fs::write(&b, vec![2u8; 8192]).unwrap();
        std::fs::hard_link(&a, dir.path().join("sub/a-again")).unwrap();
        let blocks = |p: &Path| std::fs::symlink_metadata(p).unwrap().blocks() * 512;
        let expected =
            blocks(dir.path()) + blocks(&dir.path().join("sub")) + blocks(&a) + blocks(&b);

        let size = dir_size(dir.path()).unwrap();

        assert_eq!(size, expected);
    }

    #[test]
    fn dir_size_of_a_missing_path_names_it() {
        let dir = tempfile::tempdir().unwrap();

        let err = dir_size(&dir.path().join("gone")).unwrap_err();

        assert!(err.to_string().contains("gone"), "{err}");
    }
}
