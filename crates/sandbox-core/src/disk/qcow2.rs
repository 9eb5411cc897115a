//! The qcow2 overlay provider: `qemu-img create -b <base>` in constant
//! time; only QEMU reads qcow2. `qemu-img` runs once per base: its empty
//! overlay (a few hundred KiB, nothing in it names the overlay itself) is
//! kept in memory and written out for every later create of that base,
//! which takes a fraction of a millisecond instead of a process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;

use super::{DiskFormat, QCOW2_FILE, RootDisk, RootfsProvider, remove_file_if_exists};
use crate::error::SandboxError;
use crate::vmm::BackendKind;

/// Root disks as qcow2 overlays (`root.qcow2`) backed by the base.
#[derive(Debug, Clone, Copy, Default)]
pub struct Qcow2Provider;

#[async_trait]
impl RootfsProvider for Qcow2Provider {
    fn name(&self) -> &'static str {
        "qcow2"
    }

    fn supports(&self, backend: BackendKind) -> bool {
        backend == BackendKind::Qemu
    }

    async fn create(
        &self,
        sandbox: &str,
        base: &Path,
        base_format: DiskFormat,
        run_dir: &Path,
    ) -> Result<RootDisk, SandboxError> {
        let overlay = run_dir.join(QCOW2_FILE);
        create_qcow2_overlay(sandbox, base, &overlay, base_format == DiskFormat::Qcow2).await?;
        Ok(RootDisk {
            path: overlay,
            format: DiskFormat::Qcow2,
        })
    }

    async fn remove(&self, _sandbox: &str, run_dir: &Path) -> Result<(), SandboxError> {
        remove_file_if_exists(&run_dir.join(QCOW2_FILE))
    }
}

/// Creates `overlay` (qcow2) backed by `base`: a raw image (a template) or,
/// when `base_is_qcow2`, a qcow2 image (a snapshot's disk).
pub async fn create_qcow2_overlay(
    sandbox: &str,
    base: &Path,
    overlay: &Path,
    base_is_qcow2: bool,
) -> Result<PathBuf, SandboxError> {
    let base = base.canonicalize().map_err(|source| SandboxError::Io {
        what: "resolve base image",
        path: base.to_path_buf(),
        source,
    })?;
    write_empty_overlay(sandbox, &base, overlay, base_is_qcow2).await?;
    let mut chain = vec![base.clone()];
    if base_is_qcow2 {
        match recorded_chain(&base)? {
            Some(recorded) => chain.extend(recorded),
            // A snapshot from before chains were recorded.
            None => chain.extend(backing_chain(&base)?),
        }
    }
    record_chain(overlay, &chain)?;
    Ok(overlay.to_path_buf())
}

/// What an empty overlay depends on: the base (by path and by what is at
/// that path now: a base rewritten in place or replaced gets a new entry)
/// and its format.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct OverlayKey {
    base: PathBuf,
    base_is_qcow2: bool,
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl OverlayKey {
    fn of(base: &Path, base_is_qcow2: bool) -> Result<Self, SandboxError> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(base).map_err(|source| SandboxError::Io {
            what: "stat base image",
            path: base.to_path_buf(),
            source,
        })?;
        Ok(Self {
            base: base.to_path_buf(),
            base_is_qcow2,
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        })
    }
}

/// Bases whose empty overlay is kept; past it the cache starts over (a
/// host has a few templates and snapshots in use at a time).
const OVERLAY_CACHE_ENTRIES: usize = 64;

/// Empty overlays `qemu-img` made, by what they depend on.
fn overlay_cache() -> &'static std::sync::Mutex<HashMap<OverlayKey, Arc<[u8]>>> {
    static CACHE: OnceLock<std::sync::Mutex<HashMap<OverlayKey, Arc<[u8]>>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Writes a new, empty qcow2 `overlay` over `base` (canonical): the bytes
/// `qemu-img create` made for this base before, or `qemu-img`'s own output
/// the first time (then kept). The file must not exist yet.
async fn write_empty_overlay(
    sandbox: &str,
    base: &Path,
    overlay: &Path,
    base_is_qcow2: bool,
) -> Result<(), SandboxError> {
    let key = OverlayKey::of(base, base_is_qcow2)?;
    let cached = overlay_cache()
        .lock()
        .ok()
        .and_then(|cache| cache.get(&key).cloned());
    let io = |what: &'static str| {
        move |source: std::io::Error| SandboxError::Io {
            what,
            path: overlay.to_path_buf(),
            source,
        }
    };
    if let Some(bytes) = cached {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(overlay)
            .map_err(io("create overlay"))?;
        return file.write_all(&bytes).map_err(io("write overlay"));
    }
    let format = if base_is_qcow2 { "qcow2" } else { "raw" };
    let args: [&std::ffi::OsStr; 9] = [
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-F".as_ref(),
        format.as_ref(),
        "-b".as_ref(),
        base.as_os_str(),
        overlay.as_os_str(),
    ];
    super::run_tool(sandbox, "qemu-img", &args, overlay).await?;
    let bytes: Arc<[u8]> = std::fs::read(overlay)
        .map_err(io("read back the overlay"))?
        .into();
    if let Ok(mut cache) = overlay_cache().lock() {
        if cache.len() >= OVERLAY_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, bytes);
    }
    Ok(())
}

/// The file beside a qcow2 image the agent made (`IMAGE.chain`) that
/// records its backing chain. The chain in the image's header is not to be
/// trusted once a VMM has written the image; this record is the agent's.
pub fn chain_record(image: &Path) -> PathBuf {
    let mut name = image.as_os_str().to_os_string();
    name.push(".chain");
    PathBuf::from(name)
}

/// Records `chain` as the backing chain of `image` (see [`chain_record`]).
pub fn record_chain(image: &Path, chain: &[PathBuf]) -> Result<(), SandboxError> {
    crate::qemu::write_json(&chain_record(image), &chain)
}

/// The recorded backing chain of `image`, `None` when there is no record.
pub fn recorded_chain(image: &Path) -> Result<Option<Vec<PathBuf>>, SandboxError> {
    let record = chain_record(image);
    if !record.exists() {
        return Ok(None);
    }
    crate::qemu::read_json(&record).map(Some)
}

/// The backing file named in the header of the qcow2 image at `path`
/// (`None` for an image without one), read without running `qemu-img`.
pub fn backing_file(path: &Path) -> Result<Option<PathBuf>, SandboxError> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::ffi::OsStringExt;
    let io = |source: std::io::Error| SandboxError::Io {
        what: "read the qcow2 header of",
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut header = [0_u8; 20];
    file.read_exact(&mut header).map_err(io)?;
    if header[..4] != *b"QFI\xfb" {
        return Err(io(std::io::Error::other("not a qcow2 image")));
    }
    let mut offset = [0_u8; 8];
    offset.copy_from_slice(&header[8..16]);
    let mut size = [0_u8; 4];
    size.copy_from_slice(&header[16..20]);
    let (offset, size) = (u64::from_be_bytes(offset), u32::from_be_bytes(size));
    if offset == 0 || size == 0 {
        return Ok(None);
    }
    if size > 1023 {
        return Err(io(std::io::Error::other(format!(
            "backing file name of {size} bytes"
        ))));
    }
    let mut name = vec![0_u8; size as usize];
    file.seek(SeekFrom::Start(offset)).map_err(io)?;
    file.read_exact(&mut name).map_err(io)?;
    Ok(Some(PathBuf::from(std::ffi::OsString::from_vec(name))))
}

/// Every file behind the qcow2 image at `path`: its backing file, that
/// one's if it is qcow2 too, and so on (at most 16 deep).
pub fn backing_chain(path: &Path) -> Result<Vec<PathBuf>, SandboxError> {
    let mut chain = Vec::new();
    let mut current = path.to_path_buf();
    while chain.len() < 16 {
        let Some(backing) = backing_file(&current)? else {
            break;
        };
        chain.push(backing.clone());
        if !is_qcow2(&backing) {
            break;
        }
        current = backing;
    }
    Ok(chain)
}

/// Whether the file at `path` starts with the qcow2 magic.
fn is_qcow2(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0_u8; 4];
    std::fs::File::open(path)
        .and_then(|mut file| file.read_exact(&mut magic))
        .is_ok_and(|()| magic == *b"QFI\xfb")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn backing_file_names_the_base_of_an_overlay() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.img");
        std::fs::write(&base, vec![0_u8; 1 << 20]).unwrap();
        let overlay = dir.path().join("overlay.qcow2");
        create_qcow2_overlay("t", &base, &overlay, false)
            .await
            .unwrap();

        let backing = backing_file(&overlay).unwrap();

        assert_eq!(backing, Some(base.canonicalize().unwrap()));
    }

    #[tokio::test]
    async fn backing_chain_follows_qcow2_backing_files_to_the_raw_base() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.img");
        std::fs::write(&base, vec![0_u8; 1 << 20]).unwrap();
        let middle = dir.path().join("middle.qcow2");
        create_qcow2_overlay("t", &base, &middle, false)
            .await
            .unwrap();
        let top = dir.path().join("top.qcow2");
        create_qcow2_overlay("t", &middle, &top, true)
            .await
            .unwrap();

        let chain = backing_chain(&top).unwrap();

        assert_eq!(
            chain,
            [middle.canonicalize().unwrap(), base.canonicalize().unwrap()]
        );
    }

    /// The virtual size in a qcow2 header.
    fn virtual_size(image: &Path) -> u64 {
        let header = std::fs::read(image).unwrap();
        u64::from_be_bytes(header[24..32].try_into().unwrap())
    }

    #[tokio::test]
    async fn a_second_overlay_of_a_base_is_the_one_qemu_img_made_without_running_it() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.img");
        std::fs::write(&base, vec![0_u8; 1 << 20]).unwrap();
        let (first, second) = (dir.path().join("a.qcow2"), dir.path().join("b.qcow2"));
        create_qcow2_overlay("t", &base, &first, false)
            .await
            .unwrap();
        let key = OverlayKey::of(&base.canonicalize().unwrap(), false).unwrap();

        create_qcow2_overlay("t", &base, &second, false)
            .await
            .unwrap();

        assert!(overlay_cache().lock().unwrap().contains_key(&key));
        assert_eq!(
            std::fs::read(&first).unwrap(),
            std::fs::read(&second).unwrap()
        );
        assert_eq!(
            backing_file(&second).unwrap(),
            Some(base.canonicalize().unwrap())
        );
        let check = std::process::Command::new("qemu-img")
            .args(["check", "-q"])
            .arg(&second)
            .status()
            .unwrap();
        assert!(check.success());
    }

    #[tokio::test]
    async fn a_base_rewritten_in_place_gets_an_overlay_of_its_new_size() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.img");
        std::fs::write(&base, vec![0_u8; 1 << 20]).unwrap();
        let old = dir.path().join("old.qcow2");
        create_qcow2_overlay("t", &base, &old, false).await.unwrap();
        std::fs::write(&base, vec![0_u8; 2 << 20]).unwrap();
        let new = dir.path().join("new.qcow2");

        create_qcow2_overlay("t", &base, &new, false).await.unwrap();

        assert_eq!(virtual_size(&old), 1 << 20);
        assert_eq!(virtual_size(&new), 2 << 20);
    }

    #[tokio::test]
    async fn an_overlay_is_never_written_over_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.img");
        std::fs::write(&base, vec![0_u8; 1 << 20]).unwrap();
        let overlay = dir.path().join("o.qcow2");
        create_qcow2_overlay("t", &base, &overlay, false)
            .await
            .unwrap();
        let taken = dir.path().join("taken.qcow2");
        std::fs::write(&taken, b"keep").unwrap();

        let err = create_qcow2_overlay("t", &base, &taken, false)
            .await
            .unwrap_err();

        assert!(err.to_string().contains("create overlay"), "{err}");
        assert_eq!(std::fs::read(&taken).unwrap(), b"keep");
    }

    #[test]
    fn backing_file_refuses_a_file_that_is_not_qcow2() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw.img");
        std::fs::write(&raw, vec![0_u8; 4096]).unwrap();

        let err = backing_file(&raw).unwrap_err();

        assert!(err.to_string().contains("not a qcow2 image"), "{err}");
    }
}
