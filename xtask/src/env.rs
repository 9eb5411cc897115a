//! Paths and process helpers shared by the tasks.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The workspace root.
pub fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map_or(manifest.clone(), PathBuf::from)
}

/// Cargo's target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

/// Where built images and probe results are cached (outside the work tree).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("PETREL_CACHE_DIR")
        .map_or_else(|| PathBuf::from("/var/cache/petrel/images"), PathBuf::from)
}

/// Prints a step header on stderr.
pub fn step(what: &str) {
    eprintln!("==> {what}");
}

/// Runs cargo in the workspace root with extra environment.
pub fn cargo(args: &[&str], envs: &[(&str, &str)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let status = Command::new(&cargo)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(root())
        .status()
        .with_context(|| format!("running {cargo} {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Builds binary `bin` of package `package` (debug, or release) and returns
/// its path in the target directory.
pub fn build_binary(package: &str, bin: &str, release: bool) -> Result<PathBuf> {
    let mut args = vec!["build", "--quiet", "--package", package, "--bin", bin];
    if release {
        args.push("--release");
    }
    cargo(&args, &[])?;
    Ok(target_dir()
        .join(if release { "release" } else { "debug" })
        .join(bin))
}
