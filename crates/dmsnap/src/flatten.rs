//! Flatten: base + CoW merged into a new standalone raw image (a new
//! template's base) by copying the snapshot device's content into a new
//! sparse file, skipping all-zero blocks.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::{info, warn};

use crate::error::{DmSnapError, Result};
use crate::snapshot::Snapshot;

/// Blocks that are all zero are not written (they stay holes).
const BLOCK: usize = 4096;
/// Bytes read per step.
const READ_SIZE: usize = 1 << 20;

/// What a flatten wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlattenReport {
    /// Apparent size of the new image (the device's size).
    pub size_bytes: u64,
    /// Bytes of non-zero blocks written; the rest are holes.
    pub data_bytes: u64,
}

/// Writes the content of `snapshot`'s device to a new sparse image at `dest`
/// (which must not exist). Stop the sandbox's VM (or pause it) first: what
/// it writes meanwhile may or may not be in the image.
pub fn flatten(snapshot: &Snapshot, dest: &Path) -> Result<FlattenReport> {
    flatten_device(snapshot.device(), dest)
}

/// Copies any block device or file at `source` into a new sparse file at
/// `dest`, skipping all-zero 4 KiB blocks. Written to `dest.partial`, synced,
/// then linked to `dest`, so `dest` either does not exist or is complete.
pub fn flatten_device(source: &Path, dest: &Path) -> Result<FlattenReport> {
    let start = Instant::now();
    if dest.symlink_metadata().is_ok() {
        return Err(DmSnapError::DestinationExists {
            path: dest.to_path_buf(),
        });
    }
    let partial = partial_path(dest);
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&partial)
        .map_err(|err| DmSnapError::io("create", &partial, err))?;
    let result = copy_sparse(source, &out, &partial).and_then(|report| {
        out.sync_all()
            .map_err(|err| DmSnapError::io("sync", &partial, err))?;
        std::fs::hard_link(&partial, dest).map_err(|err| match err.kind() {
            std::io::ErrorKind::AlreadyExists => DmSnapError::DestinationExists {
                path: dest.to_path_buf(),
            },
            _ => DmSnapError::io("link flattened image to", dest, err),
        })?;
        Ok(report)
    });
    drop(out);
    if let Err(err) = std::fs::remove_file(&partial) {
        warn!(file = %partial.display(), %err, "removing the partial flatten file");
    }
    let report = result?;
    info!(
        source = %source.display(),
        dest = %dest.display(),
        size_bytes = report.size_bytes,
        data_bytes = report.data_bytes,
        took_ms = start.elapsed().as_millis() as u64,
        "flattened"
    );
    Ok(report)
}

fn partial_path(dest: &Path) -> PathBuf {
    let mut name = OsString::from(dest.as_os_str());
    name.push(".partial");
    PathBuf::from(name)
}

fn copy_sparse(source: &Path, out: &File, out_path: &Path) -> Result<FlattenReport> {
    let mut input = File::open(source).map_err(|err| DmSnapError::io("open", source, err))?;
    let size = input
        .seek(SeekFrom::End(0))
        .map_err(|err| DmSnapError::io("size of", source, err))?;
    out.set_len(size)
        .map_err(|err| DmSnapError::io("size", out_path, err))?;
    let mut buf = vec![0u8; READ_SIZE];
    let mut offset = 0u64;
    let mut data_bytes = 0u64;
    while offset < size {
        let len = (size - offset).min(READ_SIZE as u64) as usize;
        let chunk = &mut buf[..len];
        input
            .read_exact_at(chunk, offset)
            .map_err(|err| DmSnapError::io("read", source, err))?;
        for (run_start, run) in data_runs(chunk) {
            out.write_all_at(run, offset + run_start as u64)
                .map_err(|err| DmSnapError::io("write", out_path, err))?;
            data_bytes += run.len() as u64;
        }
        offset += len as u64;
    }
    Ok(FlattenReport {
        size_bytes: size,
        data_bytes,
    })
}

/// The runs of consecutive non-zero blocks in `chunk`, as (offset, bytes).
fn data_runs(chunk: &[u8]) -> Vec<(usize, &[u8])> {
    let mut runs = Vec::new();
    let mut run_start = None;
    for (index, block) in chunk.chunks(BLOCK).enumerate() {
        let at = index * BLOCK;
        match (block.iter().all(|&b| b == 0), run_start) {
            (false, None) => run_start = Some(at),
            (true, Some(start)) => {
                runs.push((start, &chunk[start..at]));
                run_start = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run_start {
        runs.push((start, &chunk[start..]));
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_runs_skip_zero_blocks_and_join_neighbours() {
        let mut chunk = vec![0u8; 6 * BLOCK];
        chunk[BLOCK] = 1;
        chunk[2 * BLOCK + 5] = 2;
        chunk[5 * BLOCK + BLOCK - 1] = 3;

        let runs: Vec<(usize, usize)> = data_runs(&chunk)
            .iter()
            .map(|(at, run)| (*at, run.len()))
            .collect();

        assert_eq!(runs, [(BLOCK, 2 * BLOCK), (5 * BLOCK, BLOCK)]);
    }

    #[test]
    fn data_runs_keep_a_short_tail() {
        let chunk = [9u8; 100];

        let runs = data_runs(&chunk);

        assert_eq!(runs, [(0, &chunk[..])]);
    }

    #[test]
    fn flatten_device_copies_content_sparsely() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source.img");
        let dest = dir.path().join("flat.img");
        let mut content = vec![0u8; 8 << 20];
        content[3 << 20..(3 << 20) + 10_000].fill(0xab);
        content[(8 << 20) - 1] = 1;
        std::fs::write(&source, &content).unwrap();

        let report = flatten_device(&source, &dest).unwrap();

        assert_eq!(std::fs::read(&dest).unwrap(), content);
        assert_eq!(report.size_bytes, 8 << 20);
        assert_eq!(report.data_bytes, 3 * 4096 + 4096);
        assert!(crate::dir_size(&dest).unwrap() < 1 << 20);
        assert!(!partial_path(&dest).exists());
    }

    #[test]
    fn flatten_device_refuses_an_existing_destination() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source.img");
        let dest = dir.path().join("flat.img");
        std::fs::write(&source, [1u8; 4096]).unwrap();
        std::fs::write(&dest, b"keep me").unwrap();

        let err = flatten_device(&source, &dest).unwrap_err();

        assert!(
            matches!(err, DmSnapError::DestinationExists { .. }),
            "{err}"
        );
        assert_eq!(std::fs::read(&dest).unwrap(), b"keep me");
    }

    #[test]
    fn flatten_device_leaves_nothing_when_the_source_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("flat.img");

        let err = flatten_device(&dir.path().join("missing"), &dest).unwrap_err();

        assert!(err.to_string().contains("missing"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
