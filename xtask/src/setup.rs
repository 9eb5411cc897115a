//! Installs the host packages Petrel needs, when they are missing.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::env;

/// Debian's backports suite: QEMU 10 and the 6.12 kernel source.
const BACKPORTS_LIST: &str = "/etc/apt/sources.list.d/petrel-backports.list";
const BACKPORTS_LINE: &str = "deb http://deb.debian.org/debian bookworm-backports main\n";

/// Packages taken from bookworm-backports.
const BACKPORTS: &[&str] = &["qemu-system-x86", "qemu-utils", "linux-source-6.12"];

/// Packages from the main suite.
const MAIN: &[&str] = &[
    // guest images
    "debootstrap",
    "e2fsprogs",
    "xz-utils",
    // kernel build
    "build-essential",
    "bc",
    "flex",
    "bison",
    "libelf-dev",
    "libssl-dev",
    "cpio",
    // crates that run bindgen (userfaultfd-sys, devicemapper-sys) and our
    // .proto files; SQLite for the sandbox store
    "libclang-dev",
    "pkg-config",
    "libdevmapper-dev",
    "libsqlite3-dev",
    "protobuf-compiler",
    // networking
    "iproute2",
    "nftables",
    // SDK compatibility tests; the test UI's browser test
    "python3-venv",
    "chromium",
    "chromium-driver",
];

/// Installs what is missing (needs root) and checks QEMU's major version.
pub fn run() -> Result<()> {
    if std::env::var_os(crate::vmtest::IN_GUEST_ENV).is_some() {
        // Inside a vmtest guest: what the task needs is on its test disk.
        return Ok(());
    }
    let missing: Vec<&str> = BACKPORTS
        .iter()
        .chain(MAIN)
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        eprintln!(
            "[setup] all {} host packages present",
            BACKPORTS.len() + MAIN.len()
        );
    } else {
        env::step(&format!("installing host packages: {}", missing.join(" ")));
        if !is_root() {
            bail!("missing packages {missing:?}; run `cargo xtask setup` as root to install them");
        }
        if std::fs::read_to_string(BACKPORTS_LIST).ok().as_deref() != Some(BACKPORTS_LINE) {
            std::fs::write(BACKPORTS_LIST, BACKPORTS_LINE)
                .with_context(|| format!("writing {BACKPORTS_LIST}"))?;
        }
        apt(&["update", "-q"])?;
        let backports: Vec<&str> = missing
            .iter()
            .copied()
            .filter(|p| BACKPORTS.contains(p))
            .collect();
        if !backports.is_empty() {
            let mut args = vec!["install", "-y", "-q", "-t", "bookworm-backports"];
            args.extend(&backports);
            apt(&args)?;
        }
        let main: Vec<&str> = missing
            .iter()
            .copied()
            .filter(|p| MAIN.contains(p))
            .collect();
        if !main.is_empty() {
            let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
            args.extend(&main);
            apt(&args)?;
        }
    }
    check_qemu_version()
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn apt(args: &[&str]) -> Result<()> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn check_qemu_version() -> Result<()> {
    let output = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .context("qemu-system-x86_64 is not runnable")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let major = text
        .split_whitespace()
        .nth(3)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or(0);
    if major < 8 {
        bail!(
            "QEMU 8 or newer is needed (microvm with PVH boot); found {:?}",
            text.lines().next()
        );
    }
    Ok(())
}
