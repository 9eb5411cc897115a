//! The guest images `xtask` built (and named in `PETREL_KERNEL` and
//! `PETREL_ROOTFS`) before it ran this binary.

use std::path::PathBuf;

use anyhow::{Context, Result};
use sandbox_core::GuestImages;

/// The images from `PETREL_KERNEL` and `PETREL_ROOTFS`.
pub fn from_env() -> Result<GuestImages> {
    let var = |name: &str| {
        std::env::var_os(name).map(PathBuf::from).with_context(|| {
            format!(
                "{name} is not set: run this task through `cargo xtask`, which builds the images"
            )
        })
    };
    let images = GuestImages {
        kernel: var("PETREL_KERNEL")?,
        rootfs: var("PETREL_ROOTFS")?,
    };
    images
        .check()
        .context("PETREL_KERNEL or PETREL_ROOTFS names a file that does not exist")?;
    Ok(images)
}

/// The KVM-host kernel for the outer VM of `vmtest --kvm`
/// (`PETREL_KVM_KERNEL`, which `cargo xtask` builds for such runs).
pub fn kvm_kernel_from_env() -> Result<PathBuf> {
    let path = std::env::var_os("PETREL_KVM_KERNEL")
        .map(PathBuf::from)
        .context(
            "PETREL_KVM_KERNEL is not set: run this task through `cargo xtask`, which builds the KVM-host kernel",
        )?;
    if !path.is_file() {
        anyhow::bail!(
            "PETREL_KVM_KERNEL names {}, which does not exist",
            path.display()
        );
    }
    Ok(path)
}
