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
