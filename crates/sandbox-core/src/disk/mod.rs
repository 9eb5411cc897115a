//! Per-sandbox copy-on-write root disks, behind one trait.
//!
//! A [`RootfsProvider`] makes a sandbox's root disk from a read-only base
//! (a template's raw image, or a snapshot's `disk.qcow2`) in the sandbox's
//! run directory; the base is never written. Three providers:
//!
//! - [`Qcow2Provider`] ([`qcow2`]): a qcow2 overlay backed by the base,
//!   constant time; QEMU only.
//! - [`CopyProvider`] ([`copy`]): a sparse copy of the base
//!   (`cp --sparse=always --reflink=auto`, constant time on reflink
//!   filesystems); raw, any VMM; the last resort.
//! - [`DmProvider`] ([`dm`]): a device-mapper snapshot (`dmsnap`) over the
//!   base, constant time; a raw block device for either VMM, where the host
//!   kernel has device-mapper and we are root.
//!
//! [`choose_provider`] picks one from the backend and host capabilities (or
//! a requested name) and says why. Each provider leaves its disk under a
//! fixed name in the run directory ([`QCOW2_FILE`], [`RAW_FILE`],
//! [`DM_LINK`]), so [`locate`] finds a sandbox's disk from its run directory
//! alone (after an agent restart too) and [`remove_root_disk`] lets go of it.

pub mod copy;
pub mod dm;
pub mod qcow2;

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

pub use copy::CopyProvider;
pub use dm::DmProvider;
pub use qcow2::{Qcow2Provider, create_qcow2_overlay};

use crate::error::SandboxError;
use crate::vmm::BackendKind;

/// The qcow2 overlay's name in the run directory.
pub const QCOW2_FILE: &str = "root.qcow2";
/// The sparse copy's name in the run directory.
pub const RAW_FILE: &str = "root.raw";
/// A symlink in the run directory to the dm-snapshot's `/dev/dm-N`.
pub const DM_LINK: &str = "root.dm";
/// The dm-snapshot's CoW file in the run directory.
pub const DM_COW_FILE: &str = "root.cow";

/// How a disk image is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// A raw image or block device.
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// A sandbox's root disk, as the VM is given it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootDisk {
    /// A file or block device (or a symlink to one) in the run directory.
    pub path: PathBuf,
    pub format: DiskFormat,
}

impl RootDisk {
    pub fn is_qcow2(&self) -> bool {
        self.format == DiskFormat::Qcow2
    }
}

/// Makes and removes sandboxes' copy-on-write root disks.
#[async_trait]
pub trait RootfsProvider: Send + Sync + Debug {
    /// `qcow2`, `copy` or `dm` (the names [`choose_provider`] accepts).
    fn name(&self) -> &'static str;

    /// Whether `backend` can boot from this provider's disks.
    fn supports(&self, backend: BackendKind) -> bool;

    /// Makes the root disk of `sandbox` in `run_dir` over `base` (laid out
    /// as `base_format`), which is never written.
    async fn create(
        &self,
        sandbox: &str,
        base: &Path,
        base_format: DiskFormat,
        run_dir: &Path,
    ) -> Result<RootDisk, SandboxError>;

    /// Makes an existing disk usable again after [`release`](Self::release)
    /// or an agent restart, with every write kept. Files need nothing; a dm
    /// device is rebuilt from its CoW file.
    async fn restore(
        &self,
        _sandbox: &str,
        _base: &Path,
        run_dir: &Path,
    ) -> Result<RootDisk, SandboxError> {
        Ok(locate(run_dir))
    }

    /// Lets go of host resources the disk holds beyond its files (a dm
    /// device, loop devices), keeping every write for
    /// [`restore`](Self::restore). Files need nothing.
    async fn release(&self, _sandbox: &str, _run_dir: &Path) -> Result<(), SandboxError> {
        Ok(())
    }

    /// Removes the disk and everything it holds; its writes are gone.
    async fn remove(&self, sandbox: &str, run_dir: &Path) -> Result<(), SandboxError>;
}

/// The root disk in `run_dir`, by the fixed name its provider gave it: the
/// sparse copy, else the dm link, else the qcow2 overlay (also when none
/// exists yet: the default).
pub fn locate(run_dir: &Path) -> RootDisk {
    let raw = run_dir.join(RAW_FILE);
    if raw.exists() {
        return RootDisk {
            path: raw,
            format: DiskFormat::Raw,
        };
    }
    let link = run_dir.join(DM_LINK);
    if link.symlink_metadata().is_ok() {
        return RootDisk {
            path: link,
            format: DiskFormat::Raw,
        };
    }
    RootDisk {
        path: run_dir.join(QCOW2_FILE),
        format: DiskFormat::Qcow2,
    }
}

/// The provider of the root disk in `run_dir`, known by its fixed name
/// (after an agent restart too): this process's [`DmProvider`] for a
/// dm-snapshot, else the file provider that made it (whose `restore` and
/// `release` do nothing).
pub fn provider_of(run_dir: &Path) -> Result<Arc<dyn RootfsProvider>, SandboxError> {
    let disk = locate(run_dir);
    if disk.path.ends_with(DM_LINK) {
        let dm = DmProvider::shared().map_err(|message| SandboxError::Rootfs {
            provider: "dm".to_string(),
            message: format!("{} needs it: {message}", disk.path.display()),
        })?;
        return Ok(dm);
    }
    Ok(match disk.format {
        DiskFormat::Qcow2 => Arc::new(Qcow2Provider),
        DiskFormat::Raw => Arc::new(CopyProvider),
    })
}

/// Lets go of the root disk in `run_dir` whatever made it (teardown, with
/// the VM already gone): a dm device is removed through this process's
/// [`DmProvider`]; files go with the run directory.
pub async fn remove_root_disk(sandbox: &str, run_dir: &Path) -> Result<(), SandboxError> {
    if run_dir.join(DM_LINK).symlink_metadata().is_ok()
        && let Some(dm) = DmProvider::existing()
    {
        return dm.remove(sandbox, run_dir).await;
    }
    Ok(())
}

/// Picks the rootfs provider for `backend`, or the one `requested`
/// (`qcow2`, `copy` or `dm`), which wins but must be usable here. Returns
/// the provider and why it was chosen.
///
/// Without a request: QEMU gets the qcow2 overlay; Firecracker (raw disks
/// only) a dm-snapshot where device-mapper is usable, else a sparse copy.
pub fn choose_provider(
    backend: BackendKind,
    requested: Option<&str>,
) -> Result<(Arc<dyn RootfsProvider>, String), SandboxError> {
    let unusable = |provider: &str, message: String| SandboxError::Rootfs {
        provider: provider.to_string(),
        message,
    };
    if let Some(name) = requested {
        let provider: Arc<dyn RootfsProvider> = match name {
            "qcow2" => Arc::new(Qcow2Provider),
            "copy" => Arc::new(CopyProvider),
            "dm" => DmProvider::shared().map_err(|why| unusable("dm", why))?,
            other => {
                return Err(unusable(
                    other,
                    "unknown provider (expected qcow2, copy or dm)".to_string(),
                ));
            }
        };
        if !provider.supports(backend) {
            return Err(unusable(
                provider.name(),
                format!("backend {} cannot boot from its disks", backend.as_str()),
            ));
        }
        return Ok((provider, format!("{name} requested in the configuration")));
    }
    match backend {
        BackendKind::Qemu => Ok((
            Arc::new(Qcow2Provider),
            "QEMU reads qcow2: a constant-time overlay backed by the template's base".to_string(),
        )),
        BackendKind::Firecracker => match DmProvider::shared() {
            Ok(dm) => Ok((
                dm,
                "Firecracker needs a raw disk; device-mapper is usable: constant-time dm-snapshot"
                    .to_string(),
            )),
            Err(why) => Ok((
                Arc::new(CopyProvider),
                format!(
                    "Firecracker needs a raw disk and dm-snapshot is unusable ({why}): sparse copy"
                ),
            )),
        },
    }
}

/// The error of a provider that cannot start from a snapshot's qcow2 disk.
pub(crate) fn qcow2_base_unsupported(provider: &str, base: &Path) -> SandboxError {
    SandboxError::Rootfs {
        provider: provider.to_string(),
        message: format!(
            "cannot use the qcow2 image {} as a base (sandboxes started from a snapshot need the qcow2 provider)",
            base.display()
        ),
    }
}

/// Removes the file `path` if it exists.
pub(crate) fn remove_file_if_exists(path: &Path) -> Result<(), SandboxError> {
    gone_is_fine(path, std::fs::remove_file(path))
}

/// Removes the directory `path` and what is in it, if it exists.
pub(crate) fn remove_dir_if_exists(path: &Path) -> Result<(), SandboxError> {
    gone_is_fine(path, std::fs::remove_dir_all(path))
}

fn gone_is_fine(path: &Path, removed: std::io::Result<()>) -> Result<(), SandboxError> {
    match removed {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SandboxError::Io {
            what: "remove",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Runs a disk tool (`qemu-img`, `cp`) that writes `target`; a failure
/// names the tool, its arguments and what it printed.
pub(crate) async fn run_tool(
    sandbox: &str,
    program: &str,
    args: &[&std::ffi::OsStr],
    target: &Path,
) -> Result<(), SandboxError> {
    let output = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|source| SandboxError::Io {
            what: "run a disk tool for",
            path: target.to_path_buf(),
            source,
        })?;
    if output.status.success() {
        return Ok(());
    }
    let shown: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    Err(SandboxError::Disk {
        sandbox: sandbox.to_string(),
        message: format!(
            "{program} {} failed: {}",
            shown.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn qemu_gets_qcow2_by_default() {
        let (provider, why) = choose_provider(BackendKind::Qemu, None).unwrap();
        assert_eq!(provider.name(), "qcow2");
        assert!(why.contains("qcow2"), "{why}");
    }

    #[test]
    fn firecracker_gets_dm_where_usable_else_copy() {
        let (provider, why) = choose_provider(BackendKind::Firecracker, None).unwrap();
        if DmProvider::shared().is_ok() {
            assert_eq!(provider.name(), "dm");
        } else {
            assert_eq!(provider.name(), "copy");
            assert!(why.contains("dm-snapshot is unusable"), "{why}");
        }
    }

    #[test]
    fn a_request_wins() {
        let (provider, why) = choose_provider(BackendKind::Qemu, Some("copy")).unwrap();
        assert_eq!(provider.name(), "copy");
        assert!(why.contains("requested"), "{why}");
        let (provider, _) = choose_provider(BackendKind::Firecracker, Some("copy")).unwrap();
        assert_eq!(provider.name(), "copy");
    }

    #[test]
    fn unusable_requests_are_errors() {
        let err = choose_provider(BackendKind::Firecracker, Some("qcow2")).unwrap_err();
        assert!(err.to_string().contains("firecracker"), "{err}");
        let err = choose_provider(BackendKind::Qemu, Some("zfs")).unwrap_err();
        assert!(err.to_string().contains("unknown provider"), "{err}");
    }

    #[test]
    fn dm_is_refused_without_device_mapper() {
        if dmsnap::device_mapper_available() {
            return;
        }
        let err = choose_provider(BackendKind::Qemu, Some("dm")).unwrap_err();
        assert!(err.to_string().contains("device-mapper"), "{err}");
        assert!(DmProvider::shared().is_err());
        assert!(DmProvider::existing().is_none());
    }

    #[test]
    fn locate_finds_each_providers_disk() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(locate(dir.path()).path, dir.path().join(QCOW2_FILE));
        assert!(locate(dir.path()).is_qcow2());
        std::os::unix::fs::symlink("/dev/dm-7", dir.path().join(DM_LINK)).unwrap();
        let dm = locate(dir.path());
        assert_eq!(
            (dm.path, dm.format),
            (dir.path().join(DM_LINK), DiskFormat::Raw)
        );
        std::fs::write(dir.path().join(RAW_FILE), b"").unwrap();
        let raw = locate(dir.path());
        assert_eq!(
            (raw.path, raw.format),
            (dir.path().join(RAW_FILE), DiskFormat::Raw)
        );
    }

    #[tokio::test]
    async fn file_providers_refuse_nothing_and_remove_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.img");
        std::fs::File::create(&base)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        let disk = CopyProvider
            .create("t1", &base, DiskFormat::Raw, &run)
            .await
            .unwrap();
        assert_eq!(disk, locate(&run));
        assert_eq!(std::fs::metadata(&disk.path).unwrap().len(), 64 << 20);
        // Sparse: the copy of an empty base uses (next to) no blocks.
        assert!(dmsnap::dir_size(&run).unwrap() < 1 << 20);
        CopyProvider.remove("t1", &run).await.unwrap();
        assert!(!disk.path.exists());
        let err = CopyProvider
            .create("t1", &base, DiskFormat::Qcow2, &run)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("qcow2 provider"), "{err}");
    }
}
