//! Per-sandbox copy-on-write root disks.
//!
//! Today: a qcow2 overlay whose backing file is the template's read-only raw
//! base image, created in constant time by `qemu-img`. The base is never
//! written.

use std::path::{Path, PathBuf};

use crate::error::SandboxError;

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
    let output = tokio::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F"])
        .arg(if base_is_qcow2 { "qcow2" } else { "raw" })
        .arg("-b")
        .arg(&base)
        .arg(overlay)
        .output()
        .await
        .map_err(|source| SandboxError::Io {
            what: "run qemu-img for",
            path: overlay.to_path_buf(),
            source,
        })?;
    if !output.status.success() {
        return Err(SandboxError::Disk {
            sandbox: sandbox.to_string(),
            message: format!(
                "qemu-img create {} failed: {}",
                overlay.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(overlay.to_path_buf())
}
