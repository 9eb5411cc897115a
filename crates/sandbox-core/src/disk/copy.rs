//! The sparse copy provider: the base copied into the run directory with
//! `cp --sparse=always --reflink=auto` (constant time on reflink
//! filesystems, holes kept elsewhere); a raw image any VMM boots. The last
//! resort: its time and space grow with the data in the base.

use std::path::Path;

use async_trait::async_trait;

use super::{
    DiskFormat, RAW_FILE, RootDisk, RootfsProvider, qcow2_base_unsupported, remove_file_if_exists,
};
use crate::error::SandboxError;
use crate::qemu::sparse_copy;
use crate::vmm::BackendKind;

/// Root disks as sparse raw copies (`root.raw`) of the base.
#[derive(Debug, Clone, Copy, Default)]
pub struct CopyProvider;

#[async_trait]
impl RootfsProvider for CopyProvider {
    fn name(&self) -> &'static str {
        "copy"
    }

    fn supports(&self, _backend: BackendKind) -> bool {
        true
    }

    async fn create(
        &self,
        sandbox: &str,
        base: &Path,
        base_format: DiskFormat,
        run_dir: &Path,
    ) -> Result<RootDisk, SandboxError> {
        if base_format == DiskFormat::Qcow2 {
            return Err(qcow2_base_unsupported(self.name(), base));
        }
        let path = run_dir.join(RAW_FILE);
        if let Err(err) = sparse_copy(sandbox, base, &path).await {
            // A partial copy must not pass for a disk.
            let _ = remove_file_if_exists(&path);
            return Err(err);
        }
        Ok(RootDisk {
            path,
            format: DiskFormat::Raw,
        })
    }

    async fn remove(&self, _sandbox: &str, run_dir: &Path) -> Result<(), SandboxError> {
        remove_file_if_exists(&run_dir.join(RAW_FILE))
    }
}
