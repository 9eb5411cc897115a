//! What the host is: its release (from os-release), whether we are root,
//! whether apt is there, which packages dpkg has installed.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The releases setup knows how to provision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// e.g. `Debian GNU/Linux 12 (bookworm)`.
    pub pretty: String,
    /// e.g. `bookworm`.
    pub codename: String,
}

impl Release {
    /// Debian 12 takes QEMU 10 and the 6.12 kernel source from backports.
    pub fn needs_backports(&self) -> bool {
        self.codename == "bookworm"
    }

    /// The backports suite of this release.
    pub fn backports_suite(&self) -> String {
        format!("{}-backports", self.codename)
    }
}

/// Where the host's os-release is (`PETREL_OS_RELEASE` overrides it, for
/// tests).
pub fn os_release_path() -> PathBuf {
    std::env::var_os("PETREL_OS_RELEASE").map_or_else(|| "/etc/os-release".into(), PathBuf::from)
}

/// Where apt's configuration is (`PETREL_APT_DIR` overrides it, for tests).
pub fn apt_dir() -> PathBuf {
    std::env::var_os("PETREL_APT_DIR").map_or_else(|| "/etc/apt".into(), PathBuf::from)
}

/// The host's release, or why setup cannot provision it.
pub fn release(os_release: &Path) -> Result<Release> {
    let text = std::fs::read_to_string(os_release).with_context(|| {
        format!(
            "cannot read {}: setup supports Debian 12 and 13 only",
            os_release.display()
        )
    })?;
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(|v| v.trim().trim_matches('"').to_string())
    };
    let pretty = field("PRETTY_NAME").unwrap_or_else(|| "an unknown system".to_string());
    let id = field("ID").unwrap_or_default();
    let codename = field("VERSION_CODENAME").unwrap_or_default();
    if id != "debian" {
        bail!(
            "this host runs {pretty}: setup installs packages on Debian 12 (bookworm) or 13 (trixie) only \
             (the guest images are built from Debian's linux-source-6.12 and debootstrap); install the \
             packages `cargo xtask setup --dry-run --bare` lists yourself and set PETREL_SKIP_SETUP=1"
        );
    }
    if !matches!(codename.as_str(), "bookworm" | "trixie") {
        bail!(
            "this host runs {pretty}: setup supports Debian 12 (bookworm) and 13 (trixie); install the \
             packages `cargo xtask setup --dry-run --bare` lists yourself and set PETREL_SKIP_SETUP=1"
        );
    }
    Ok(Release { pretty, codename })
}

/// Whether this process runs as root (the owner of `/proc/self` is the
/// effective uid).
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Whether `program` is on PATH.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// The packages of `names` that dpkg has not installed (all of them when
/// dpkg-query is missing).
pub fn missing<'a>(names: &[&'a str]) -> Vec<&'a str> {
    if names.is_empty() {
        return Vec::new();
    }
    let Ok(output) = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Status}\n"])
        .args(names)
        .output()
    else {
        return names.to_vec();
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let installed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, status)| *status == "installed")
        .map(|(name, _)| name.split(':').next().unwrap_or(name))
        .collect();
    names
        .iter()
        .copied()
        .filter(|n| !installed.contains(n))
        .collect()
}
