use std::path::PathBuf;

use crate::error::SandboxError;

/// The guest kernel and root filesystem a template boots from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestImages {
    /// Uncompressed ELF `vmlinux` (PVH), bootable by QEMU and Firecracker.
    pub kernel: PathBuf,
    /// Read-only base root filesystem (raw ext4); never written.
    pub rootfs: PathBuf,
}

impl GuestImages {
    /// From `PETREL_KERNEL` and `PETREL_ROOTFS`, as `cargo xtask` sets them
    /// after building the images.
    pub fn from_env() -> Result<Self, SandboxError> {
        let var = |name: &str| {
            std::env::var_os(name).map(PathBuf::from).ok_or_else(|| {
                SandboxError::Images(format!(
                    "{name} is not set (cargo xtask images builds the images and prints it)"
                ))
            })
        };
        let images = Self {
            kernel: var("PETREL_KERNEL")?,
            rootfs: var("PETREL_ROOTFS")?,
        };
        images.check()?;
        Ok(images)
    }

    /// Both files exist.
    pub fn check(&self) -> Result<(), SandboxError> {
        for path in [&self.kernel, &self.rootfs] {
            if !path.is_file() {
                return Err(SandboxError::Images(format!(
                    "{} does not exist",
                    path.display()
                )));
            }
        }
        Ok(())
    }
}
