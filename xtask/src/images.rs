//! Builds envd and runs `images/build.sh` for the kernel and rootfs.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use xtask::env;

/// The guest images: kernel and root filesystem, and (for nested KVM) the
/// outer VM's KVM-host kernel.
#[derive(Debug, Clone)]
pub struct Images {
    pub kernel: PathBuf,
    pub rootfs: PathBuf,
    /// Built by [`Images::with_kvm_kernel`] only (a kernel build of its own).
    pub kvm_kernel: Option<PathBuf>,
}

impl Images {
    /// `PETREL_KERNEL` and `PETREL_ROOTFS` (and `PETREL_KVM_KERNEL`), as
    /// the tests and `xtask-vm` take them.
    pub fn envs(&self) -> Vec<(&'static str, String)> {
        let mut envs = vec![
            ("PETREL_KERNEL", self.kernel.display().to_string()),
            ("PETREL_ROOTFS", self.rootfs.display().to_string()),
        ];
        if let Some(kvm_kernel) = &self.kvm_kernel {
            envs.push(("PETREL_KVM_KERNEL", kvm_kernel.display().to_string()));
        }
        envs
    }

    /// Also builds (or finds cached) the KVM-host kernel that `vmtest
    /// --kvm` boots (`images/kernel/kvm-host.config`).
    pub fn with_kvm_kernel(mut self) -> Result<Self> {
        env::step("KVM-host kernel (the outer VM of nested KVM tests)");
        let kernel = PathBuf::from(build_sh(&["kernel-kvm"])?);
        if !kernel.is_file() {
            bail!(
                "images/build.sh printed {}, which does not exist",
                kernel.display()
            );
        }
        self.kvm_kernel = Some(kernel);
        Ok(self)
    }
}

/// Builds (or finds cached) guest images with the current envd in them.
/// Setup must have run (envd needs protoc; the kernel its source).
pub fn build() -> Result<Images> {
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
    let images = Images {
        kernel: kernel.into(),
        rootfs: rootfs.into(),
        kvm_kernel: None,
    };
    for path in [&images.kernel, &images.rootfs] {
        if !path.is_file() {
            bail!(
                "images/build.sh printed {}, which does not exist",
                path.display()
            );
        }
    }
    Ok(images)
}

/// Runs images/build.sh; progress goes to our stderr, the last stdout line
/// is the output path. debootstrap uses the host's Debian mirror.
fn build_sh(args: &[&str]) -> Result<String> {
    let script = env::root().join("images/build.sh");
    let mut command = Command::new("bash");
    command
        .arg(&script)
        .args(args)
        .env("PETREL_CACHE_DIR", env::cache_dir());
    if let Some(mirror) = crate::setup::debian_mirror() {
        command.env("PETREL_DEBIAN_MIRROR", mirror);
    }
    let output = command
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

/// Runs the `xtask-vm` binary (the tasks that link Petrel's crates) through
/// `cargo run`, with the guest images and the cache dir in its environment.
/// Setup must have run: those crates need system packages to compile.
pub fn xtask_vm(args: &[&str], images: Option<&Images>) -> Result<()> {
    let mut envs: Vec<(&str, String)> = images.map(Images::envs).unwrap_or_default();
    envs.push(("PETREL_CACHE_DIR", env::cache_dir().display().to_string()));
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut cargo_args = vec!["run", "--quiet", "--package", "xtask-vm", "--"];
    cargo_args.extend(args);
    env::cargo(&cargo_args, &envs)
}
