//! Builds envd and runs `images/build.sh` for the kernel and rootfs.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use sandbox_core::GuestImages;

use crate::env;

/// Builds (or finds cached) guest images with the current envd in them.
pub fn build() -> Result<GuestImages> {
    env::step("building envd");
    env::cargo(
        &["build", "--quiet", "--package", "envd", "--bin", "envd"],
        &[],
    )?;
    let envd = env::target_dir().join("debug/envd");
    env::step("guest kernel");
    let kernel = build_sh(&["kernel"])?;
    env::step("guest rootfs");
    let rootfs = build_sh(&["rootfs", &envd.display().to_string()])?;
    let images = GuestImages {
        kernel: kernel.into(),
        rootfs: rootfs.into(),
    };
    images
        .check()
        .context("images/build.sh printed a path that does not exist")?;
    Ok(images)
}

/// Runs images/build.sh; progress goes to our stderr, the last stdout line
/// is the output path.
fn build_sh(args: &[&str]) -> Result<String> {
    let script = env::root().join("images/build.sh");
    let output = Command::new("bash")
        .arg(&script)
        .args(args)
        .env("PETREL_CACHE_DIR", env::cache_dir())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} {} failed ({})",
            script.display(),
            args.join(" "),
            output.status
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .last()
        .map(str::to_string)
        .with_context(|| format!("{} {} printed no path", script.display(), args.join(" ")))
}
