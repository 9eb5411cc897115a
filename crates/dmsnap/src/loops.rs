//! Loop devices: [`LoopRegistry`] shares one read-only loop device per base
//! image among all the sandboxes built on it, and attaches the per-sandbox
//! CoW files.
//!
//! The kernel side sits behind [`LoopBackend`] ([`KernelLoops`] in
//! production) so the refcounting can be tested without loop devices.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use loopdev::LoopControl;
use nix::errno::Errno;
use tracing::{debug, info, warn};

use crate::error::{DmSnapError, Result};

/// How often `attach` asks for another free loop device when another
/// process claimed the one the kernel offered first.
const ATTACH_ATTEMPTS: u32 = 8;

/// A loop device bound to a file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LoopDev {
    /// The device node, e.g. `/dev/loop3`.
    pub path: PathBuf,
    pub major: u32,
    pub minor: u32,
    /// The file it is bound to, as given to `attach`.
    pub file: PathBuf,
}

impl LoopDev {
    /// `major:minor`, how dm tables name the device.
    pub fn devno(&self) -> String {
        format!("{}:{}", self.major, self.minor)
    }
}

/// Attaches files to loop devices and detaches them.
pub trait LoopBackend: Send + Sync + fmt::Debug {
    /// Binds `file` to a free loop device, read-only when `read_only`.
    fn attach(&self, file: &Path, read_only: bool) -> Result<LoopDev>;
    /// Unbinds the device (the kernel finishes when its last opener, e.g. a
    /// dm table, lets go). Detaching an unbound device succeeds.
    fn detach(&self, device: &LoopDev) -> Result<()>;
}

impl<T: LoopBackend + ?Sized> LoopBackend for Arc<T> {
    fn attach(&self, file: &Path, read_only: bool) -> Result<LoopDev> {
        (**self).attach(file, read_only)
    }

    fn detach(&self, device: &LoopDev) -> Result<()> {
        (**self).detach(device)
    }
}

/// The kernel's loop devices (`/dev/loop-control`, `/dev/loopN`).
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelLoops;

impl LoopBackend for KernelLoops {
    fn attach(&self, file: &Path, read_only: bool) -> Result<LoopDev> {
        let control = LoopControl::open().map_err(|source| DmSnapError::LoopControl { source })?;
        for attempt in 1..=ATTACH_ATTEMPTS {
            let device = control
                .next_free()
                .map_err(|source| DmSnapError::LoopControl { source })?;
            let path = device.path().unwrap_or_else(|| PathBuf::from("/dev/loop?"));
            match device.with().read_only(read_only).attach(file) {
                Ok(()) => {
                    let numbers = device
                        .major()
                        .and_then(|major| Ok((major, device.minor()?)));
                    let (major, minor) = match numbers {
                        Ok(numbers) => numbers,
                        Err(source) => {
                            if let Err(err) = detach_loop(&path) {
                                warn!(loop_device = %path.display(), %err, "detaching after a failed stat");
                            }
                            return Err(DmSnapError::io("stat loop device", path, source));
                        }
                    };
                    debug!(loop_device = %path.display(), file = %file.display(), read_only, "loop attached");
                    return Ok(LoopDev {
                        path,
                        major,
                        minor,
                        file: file.to_path_buf(),
                    });
                }
                Err(source) if source.raw_os_error() == Some(Errno::EBUSY as i32) => {
                    debug!(loop_device = %path.display(), attempt, "loop device taken by someone else, trying another");
                }
                Err(source) => {
                    return Err(DmSnapError::LoopAttach {
                        device: path,
                        file: file.to_path_buf(),
                        source,
                    });
                }
            }
        }
        Err(DmSnapError::NoFreeLoop {
            file: file.to_path_buf(),
            attempts: ATTACH_ATTEMPTS,
        })
    }

    fn detach(&self, device: &LoopDev) -> Result<()> {
        detach_loop(&device.path).map_err(|source| DmSnapError::LoopDetach {
            device: device.path.clone(),
            file: device.file.clone(),
            source,
        })?;
        debug!(loop_device = %device.path.display(), file = %device.file.display(), "loop detached");
        Ok(())
    }
}

nix::ioctl_none_bad!(loop_clr_fd, 0x4C01);

/// `LOOP_CLR_FD` through a read-only descriptor (a read-only loop device
/// refuses to be opened for writing). An unbound device (`ENXIO`) counts as
/// detached.
pub(crate) fn detach_loop(path: &Path) -> std::io::Result<()> {
    let device = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_CLOEXEC)
        .open(path)?;
    // SAFETY: `device` is an open descriptor that outlives the call, and
    // LOOP_CLR_FD takes no argument, so the kernel reads no user memory.
    let cleared = unsafe { loop_clr_fd(device.as_raw_fd()) };
    match cleared {
        Ok(_) | Err(Errno::ENXIO) => Ok(()),
        Err(errno) => Err(std::io::Error::from(errno)),
    }
}

/// Identity of a base image: device and inode, so two paths to one file
/// (symlinks, hard links) share a loop device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(base: &Path) -> Result<Self> {
        let meta = std::fs::metadata(base)
            .map_err(|source| DmSnapError::io("stat base image", base, source))?;
        if !meta.is_file() {
            return Err(DmSnapError::BadBase {
                path: base.to_path_buf(),
                reason: "not a regular file".to_string(),
            });
        }
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

#[derive(Debug)]
struct Shared {
    device: LoopDev,
    users: usize,
}

/// One user's hold on a base image's shared read-only loop device. Give it
/// back with [`LoopRegistry::release`]; dropping it keeps the device
/// attached (cleaned up by `cleanup_stale` at the next start).
#[derive(Debug)]
#[must_use = "a lease not given back keeps its loop device attached"]
pub struct BaseLease {
    id: FileId,
    device: LoopDev,
}

impl BaseLease {
    /// The shared read-only loop device of the base image.
    pub fn device(&self) -> &LoopDev {
        &self.device
    }
}

/// One read-only loop device per base image, shared by refcount: the first
/// [`acquire`](Self::acquire) attaches it, the last
/// [`release`](Self::release) detaches it. Safe to share between threads:
/// attach and detach happen under the registry's lock, so two sandboxes
/// starting at once on one base get one device.
#[derive(Debug)]
pub struct LoopRegistry {
    backend: Box<dyn LoopBackend>,
    bases: Mutex<HashMap<FileId, Shared>>,
    private: Mutex<HashSet<PathBuf>>,
}

impl LoopRegistry {
    /// A registry over the kernel's loop devices.
    pub fn new() -> Self {
        Self::with_backend(KernelLoops)
    }

    /// A registry over another backend (tests).
    pub fn with_backend(backend: impl LoopBackend + 'static) -> Self {
        Self {
            backend: Box::new(backend),
            bases: Mutex::new(HashMap::new()),
            private: Mutex::new(HashSet::new()),
        }
    }

    /// The shared read-only loop device of `base`, attached if this is its
    /// first user.
    pub fn acquire(&self, base: &Path) -> Result<BaseLease> {
        let id = FileId::of(base)?;
        let mut bases = lock(&self.bases);
        if let Some(shared) = bases.get_mut(&id) {
            shared.users += 1;
            debug!(base = %base.display(), loop_device = %shared.device.path.display(), users = shared.users, "base loop shared");
            return Ok(BaseLease {
                id,
                device: shared.device.clone(),
            });
        }
        let device = self.backend.attach(base, true)?;
        info!(base = %base.display(), loop_device = %device.path.display(), "base loop attached");
        bases.insert(
            id,
            Shared {
                device: device.clone(),
                users: 1,
            },
        );
        Ok(BaseLease { id, device })
    }

    /// Gives a lease back; the last user's release detaches the device.
    pub fn release(&self, lease: BaseLease) -> Result<()> {
        let BaseLease { id, device } = lease;
        let mut bases = lock(&self.bases);
        let Some(shared) = bases.get_mut(&id) else {
            warn!(loop_device = %device.path.display(), "release of a lease this registry does not hold; ignored");
            return Ok(());
        };
        shared.users -= 1;
        if shared.users > 0 {
            debug!(loop_device = %device.path.display(), users = shared.users, "base loop still shared");
            return Ok(());
        }
        bases.remove(&id);
        self.backend.detach(&device)?;
        info!(base = %device.file.display(), loop_device = %device.path.display(), "base loop detached (last user gone)");
        Ok(())
    }

    /// Registers `device`, a loop device an earlier process bound to `base`
    /// read-only, as the base's shared loop (see
    /// [`SnapshotManager::adopt`](crate::SnapshotManager::adopt)): one more
    /// user when the registry already shares it, the first otherwise. Fails
    /// when the registry shares `base` through another loop device (adopt
    /// before making new snapshots).
    pub fn adopt_base(&self, base: &Path, device: LoopDev) -> Result<BaseLease> {
        let id = FileId::of(base)?;
        let mut bases = lock(&self.bases);
        match bases.get_mut(&id) {
            Some(shared) if shared.device.path == device.path => shared.users += 1,
            Some(shared) => {
                return Err(DmSnapError::BadBase {
                    path: base.to_path_buf(),
                    reason: format!(
                        "shared through {} already; cannot adopt {} for it too",
                        shared.device.path.display(),
                        device.path.display()
                    ),
                });
            }
            None => {
                bases.insert(
                    id,
                    Shared {
                        device: device.clone(),
                        users: 1,
                    },
                );
            }
        }
        info!(base = %base.display(), loop_device = %device.path.display(), "base loop adopted");
        Ok(BaseLease { id, device })
    }

    /// Registers a CoW loop device an earlier process attached, so that
    /// [`detach_private`](Self::detach_private) and `cleanup_stale` treat it
    /// as this registry's own.
    pub fn adopt_private(&self, device: &LoopDev) {
        lock(&self.private).insert(device.path.clone());
    }

    /// How many leases on `base` are out (0 when it has no loop device).
    pub fn users(&self, base: &Path) -> Result<usize> {
        let id = FileId::of(base)?;
        Ok(lock(&self.bases).get(&id).map_or(0, |shared| shared.users))
    }

    /// Attaches a file (a sandbox's CoW) to a loop device of its own,
    /// read-write.
    pub fn attach_private(&self, file: &Path) -> Result<LoopDev> {
        let device = self.backend.attach(file, false)?;
        lock(&self.private).insert(device.path.clone());
        Ok(device)
    }

    /// Detaches a device from [`attach_private`](Self::attach_private).
    pub fn detach_private(&self, device: &LoopDev) -> Result<()> {
        let result = self.backend.detach(device);
        lock(&self.private).remove(&device.path);
        result
    }

    /// The loop devices this registry has attached and not yet detached.
    pub fn in_use(&self) -> Vec<PathBuf> {
        let mut devices: Vec<PathBuf> = lock(&self.bases)
            .values()
            .map(|s| s.device.path.clone())
            .collect();
        devices.extend(lock(&self.private).iter().cloned());
        devices
    }
}

impl Default for LoopRegistry {
    fn default() -> Self {
        Self::new()
    }
}

/// The registry's maps stay consistent even if a holder panicked (each
/// update is one insert or remove), so a poisoned lock is used as is.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use super::*;

    #[derive(Debug, Default)]
    struct FakeLoops {
        attached: AtomicU32,
        detached: AtomicU32,
        fail_next_attach: AtomicBool,
    }

    impl LoopBackend for FakeLoops {
        fn attach(&self, file: &Path, _read_only: bool) -> Result<LoopDev> {
            let path = PathBuf::from(format!(
                "/dev/fakeloop{}",
                self.attached.load(Ordering::SeqCst)
            ));
            if self.fail_next_attach.swap(false, Ordering::SeqCst) {
                return Err(DmSnapError::LoopAttach {
                    device: path,
                    file: file.to_path_buf(),
                    source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
                });
            }
            let minor = self.attached.fetch_add(1, Ordering::SeqCst);
            Ok(LoopDev {
                path,
                major: 7,
                minor,
                file: file.to_path_buf(),
            })
        }

        fn detach(&self, _device: &LoopDev) -> Result<()> {
            self.detached.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn registry() -> (Arc<FakeLoops>, LoopRegistry) {
        let fake = Arc::new(FakeLoops::default());
        (fake.clone(), LoopRegistry::with_backend(fake))
    }

    fn base_file(dir: &tempfile::TempDir, name: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, b"base").unwrap();
        path
    }

    fn earlier_runs_loop(base: &Path) -> LoopDev {
        LoopDev {
            path: PathBuf::from("/dev/loop9"),
            major: 7,
            minor: 9,
            file: base.to_path_buf(),
        }
    }

    #[test]
    fn an_adopted_base_loop_is_shared_with_later_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let base = base_file(&dir, "base.img");
        let (fake, loops) = registry();

        let adopted = loops.adopt_base(&base, earlier_runs_loop(&base)).unwrap();
        let new = loops.acquire(&base).unwrap();

        assert_eq!(new.device(), adopted.device());
        assert_eq!(fake.attached.load(Ordering::SeqCst), 0);
        assert_eq!(loops.users(&base).unwrap(), 2);
    }

    #[test]
    fn an_adopted_base_loop_is_detached_by_its_last_release() {
        let dir = tempfile::tempdir().unwrap();
        let base = base_file(&dir, "base.img");
        let (fake, loops) = registry();
        let first = loops.adopt_base(&base, earlier_runs_loop(&base)).unwrap();
        let second = loops.adopt_base(&base, earlier_runs_loop(&base)).unwrap();

        loops.release(first).unwrap();
        let after_first = fake.detached.load(Ordering::SeqCst);
        loops.release(second).unwrap();

        assert_eq!(after_first, 0);
        assert_eq!(fake.detached.load(Ordering::SeqCst), 1);
        assert_eq!(loops.users(&base).unwrap(), 0);
    }

    #[test]
    fn adopt_base_refuses_a_second_loop_for_a_shared_base() {
        let dir = tempfile::tempdir().unwrap();
        let base = base_file(&dir, "base.img");
        let (_fake, loops) = registry();
        let _new = loops.acquire(&base).unwrap();

        let err = loops
            .adopt_base(&base, earlier_runs_loop(&base))
            .unwrap_err();

        assert!(err.to_string().contains("/dev/loop9"), "{err}");
        assert_eq!(loops.users(&base).unwrap(), 1);
    }

    #[test]
    fn an_adopted_cow_loop_counts_as_in_use() {
        let (_fake, loops) = registry();
        let cow = earlier_runs_loop(Path::new("/var/lib/petrel/sandboxes/a/root.cow"));

        loops.adopt_private(&cow);

        assert_eq!(loops.in_use(), [PathBuf::from("/dev/loop9")]);
    }

    #[test]
    fn two_users_of_one_base_share_one_device() {
        let dir = tempfile::tempdir().unwrap();
        let base = base_file(&dir, "base.img");
        let (fake, loops) = registry();

        let first = loops.acquire(&base).unwrap();
        let second = loops.acquire(&base).unwrap();

        assert_eq!(first.device(), second.device());
        assert_eq!(fake.attached.load(Ordering::SeqCst), 1);
        assert_eq!(loops.users(&base).unwrap(), 2);
    }

    #[test]
    fn only_the_last_release_detaches() {
        let dir = tempfile::tempdir().unwrap();
        let base = base_file(&dir, "base.img");
        let (fake, loops) = registry();
        let first = loops.acquire(&base).unwrap();
        let second = loops.acquire(&base).unwrap();

        loops.release(first).unwrap();
        let after_first = (
            fake.detached.load(Ordering::SeqCst),
            loops.users(&base).unwrap(),
        );
        loops.release(second).unwrap();
        let after_second = (
            fake.detached.load(Ordering::SeqCst),
            loops.users(&base).unwrap(),
        );

        assert_eq!(after_first, (0, 1));
        assert_eq!(after_second, (1, 0));
        assert!(loops.in_use().is_empty());
    }

    #[test]
    fn a_base_used_again_after_release_is_attached_again() {
        let dir = tempfile::tempdir().unwrap();
        let base = base_file(&dir, "base.img");
        let (fake, loops) = registry();
        let lease = loops.acquire(&base).unwrap();
        loops.release(lease).unwrap();

        let _again = loops.acquire(&base).unwrap();

        assert_eq!(fake.attached.load(Ordering::SeqCst), 2);
        assert_eq!(loops.users(&base).unwrap(), 1);
    }

    #[test]
    fn distinct_bases_get_distinct_devices() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (base_file(&dir, "a.img"), base_file(&dir, "b.img"));
        let (_fake, loops) = registry();

        let lease_a = loops.acquire(&a).unwrap();
        let lease_b = loops.acquire(&b).unwrap();

        assert_ne!(lease_a.device().path, lease_b.device().path);
        assert_eq!(loops.in_use().len(), 2);
    }

    #[test]
    fn a_hard_link_to_a_base_shares_its_device() {
        let dir = tempfile::tempdir().unwrap();
        let base = base_file(&dir, "base.img");
        let link = dir.path().join("link.img");
        std::fs::hard_link(&base, &link).unwrap();
        let (_fake, loops) = registry();

        let by_name = loops.acquire(&base).unwrap();
        let by_link = loops.acquire(&link).unwrap();

        assert_eq!(by_name.device(), by_link.device());
        assert_eq!(loops.users(&base).unwrap(), 2);
    }

    #[test]
    fn concurrent_users_of_one_base_share_one_device() {
        let dir = tempfile::tempdir().unwrap();
        let base = base_file(&dir, "base.img");
        let (fake, loops) = registry();
        let threads = 8;
        let barrier = Barrier::new(threads);

        let devices: Vec<PathBuf> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        let lease = loops.acquire(&base).unwrap();
                        let path = lease.device().path.clone();
                        barrier.wait();
                        loops.release(lease).unwrap();
                        path
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });

        assert!(devices.iter().all(|d| *d == devices[0]));
        assert_eq!(fake.attached.load(Ordering::SeqCst), 1);
        assert_eq!(fake.detached.load(Ordering::SeqCst), 1);
        assert_eq!(loops.users(&base).unwrap(), 0);
    }

    #[test]
    fn a_failed_attach_leaves_no_user() {
        let dir = tempfile::tempdir().unwrap();
        let base = base_file(&dir, "base.img");
        let (fake, loops) = registry();
        fake.fail_next_attach.store(true, Ordering::SeqCst);

        let err = loops.acquire(&base).unwrap_err();

        assert!(err.to_string().contains("base.img"), "{err}");
        assert_eq!(loops.users(&base).unwrap(), 0);
    }

    #[test]
    fn a_missing_base_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let (_fake, loops) = registry();

        let err = loops.acquire(&dir.path().join("missing.img")).unwrap_err();

        assert!(err.to_string().contains("missing.img"), "{err}");
    }

    #[test]
    fn private_devices_are_in_use_until_detached() {
        let dir = tempfile::tempdir().unwrap();
        let cow = base_file(&dir, "cow");
        let (_fake, loops) = registry();

        let device = loops.attach_private(&cow).unwrap();
        let while_attached = loops.in_use();
        loops.detach_private(&device).unwrap();

        assert_eq!(while_attached, vec![device.path]);
        assert!(loops.in_use().is_empty());
    }
}
