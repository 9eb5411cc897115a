//! The qcow2 overlay provider: `qemu-img create -b <base>` in constant
//! time; only QEMU reads qcow2.

use std::path::{Path, PathBuf};

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
    Ok(overlay.to_path_buf())
}
