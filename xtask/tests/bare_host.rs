//! `cargo xtask` on a bare host: `xtask` itself must compile with no system
//! library, bindgen or protoc (setup is what installs them), and `setup
//! --dry-run` must say what each task would install, from the host's own
//! mirror.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};

/// Crates whose build needs a tool or library a bare host lacks.
const NEEDS_HOST_TOOLS: [&str; 9] = [
    "bindgen",
    "pkg-config",
    "cmake",
    "prost-build",
    "tonic-build",
    "connectrpc-axum-build",
    "protobuf-src",
    "protoc-bin-vendored",
    "vcpkg",
];

/// Every package `xtask` needs to build (normal and build dependencies,
/// through the whole tree; dev-dependencies are not built by `cargo
/// xtask`) on this platform, from `cargo metadata`.
fn xtask_build_closure() -> Vec<serde_json::Value> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let output = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--filter-platform",
        ])
        .arg(format!("{}-unknown-linux-gnu", std::env::consts::ARCH))
        .arg("--manifest-path")
        .arg(&manifest)
        .output()
        .expect("running cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let packages: BTreeMap<String, serde_json::Value> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap().to_string(), p.clone()))
        .collect();
    let nodes: BTreeMap<String, serde_json::Value> = metadata["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap().to_string(), n.clone()))
        .collect();
    let root = packages
        .values()
        .find(|p| p["name"] == "xtask")
        .expect("the xtask package")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut seen = BTreeSet::new();
    let mut todo = vec![root];
    while let Some(id) = todo.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        for dep in nodes[&id]["deps"].as_array().unwrap() {
            let built = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null() || k["kind"] == "build");
            if built {
                todo.push(dep["pkg"].as_str().unwrap().to_string());
            }
        }
    }
    seen.into_iter().map(|id| packages[&id].clone()).collect()
}

#[test]
fn xtask_builds_without_system_libraries_bindgen_or_protoc() {
    // Arrange
    let closure = xtask_build_closure();
    // Act
    let offenders: Vec<String> = closure
        .iter()
        .filter(|p| {
            !p["links"].is_null()
                || NEEDS_HOST_TOOLS.contains(&p["name"].as_str().unwrap())
                || p["name"].as_str().unwrap().ends_with("-sys")
        })
        .map(|p| format!("{} {}", p["name"], p["version"]))
        .collect();
    // Assert
    assert!(
        closure.iter().any(|p| p["name"] == "clap"),
        "the closure walk found too little: {}",
        closure.len()
    );
    assert!(
        offenders.is_empty(),
        "xtask must compile on a bare host, before setup has installed anything; these need \
         system libraries or tools: {offenders:?} (drive such crates from xtask-vm instead)"
    );
}

fn xtask(args: &[&str], envs: &[(&str, &Path)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, *v)))
        .output()
        .expect("running xtask")
}

/// The package list `setup --dry-run` printed for `task`.
fn packages_of<'a>(stdout: &'a str, task: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{task}: ")))
        .unwrap_or_else(|| panic!("no `{task}:` line in:\n{stdout}"))
        .split_whitespace()
        .collect()
}

/// A fake `/etc` with an os-release and apt sources, for the host setup
/// reads.
fn fake_host(os_release: &str, sources: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("os-release"), os_release).unwrap();
    let apt = dir.path().join("apt");
    std::fs::create_dir_all(apt.join("sources.list.d")).unwrap();
    for (name, text) in sources {
        std::fs::write(apt.join(name), text).unwrap();
    }
    dir
}

const BOOKWORM: &str =
    "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_CODENAME=bookworm\n";

fn dry_run_on(host: &tempfile::TempDir) -> Output {
    let os_release = host.path().join("os-release");
    let apt = host.path().join("apt");
    xtask(
        &["setup", "--dry-run", "--bare"],
        &[("PETREL_OS_RELEASE", &os_release), ("PETREL_APT_DIR", &apt)],
    )
}

#[test]
fn dry_run_on_a_bare_host_lists_what_each_task_installs() {
    // Arrange
    let host = fake_host(
        BOOKWORM,
        &[(
            "sources.list",
            "deb http://deb.debian.org/debian bookworm main\n",
        )],
    );
    // Act
    let output = dry_run_on(&host);
    // Assert
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    let demo = packages_of(&stdout, "demo");
    for needed in [
        "qemu-system-x86",
        "linux-source-6.12",
        "debootstrap",
        "libclang-dev",
        "libdevmapper-dev",
        "protobuf-compiler",
        "libprotobuf-dev",
        "libsqlite3-dev",
    ] {
        assert!(demo.contains(&needed), "demo lacks {needed}: {demo:?}");
    }
    for test_only in ["chromium", "chromium-driver", "python3-venv"] {
        assert!(!demo.contains(&test_only), "demo installs {test_only}");
        assert!(packages_of(&stdout, "test").contains(&test_only));
    }
    assert!(packages_of(&stdout, "serve").contains(&"nftables"));
    assert!(stdout.contains("Suites: bookworm-backports"), "{stdout}");
}

#[test]
fn backports_come_from_the_hosts_own_mirror() {
    // Arrange: a host on a local mirror, in deb822 form, with its key.
    let host = fake_host(
        BOOKWORM,
        &[(
            "sources.list.d/local.sources",
            "Types: deb\nURIs: http://mirror.corp.example/debian\nSuites: bookworm bookworm-updates\n\
             Components: main\nSigned-By: /usr/share/keyrings/corp.gpg\n",
        )],
    );
    // Act
    let output = dry_run_on(&host);
    // Assert
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout.contains("URIs: http://mirror.corp.example/debian"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Signed-By: /usr/share/keyrings/corp.gpg"),
        "{stdout}"
    );
    assert!(!stdout.contains("deb.debian.org"), "{stdout}");
}

#[test]
fn an_existing_backports_source_is_used_as_is() {
    // Arrange
    let host = fake_host(
        BOOKWORM,
        &[(
            "sources.list",
            "deb http://m.example/debian bookworm main\ndeb http://m.example/debian bookworm-backports main\n",
        )],
    );
    // Act
    let output = dry_run_on(&host);
    // Assert
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("backports: already served by"), "{stdout}");
    assert!(!stdout.contains("would write"), "{stdout}");
}

#[test]
fn a_host_without_a_debian_source_is_refused_in_one_line() {
    // Arrange
    let host = fake_host(BOOKWORM, &[]);
    // Act
    let output = dry_run_on(&host);
    // Assert
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("serves bookworm main"), "{stderr}");
}

#[test]
fn a_host_that_is_not_debian_is_refused_in_one_line() {
    // Arrange
    let host = fake_host(
        "PRETTY_NAME=\"Ubuntu 24.04 LTS\"\nID=ubuntu\nID_LIKE=debian\nVERSION_CODENAME=noble\n",
        &[(
            "sources.list",
            "deb http://archive.ubuntu.com/ubuntu noble main\n",
        )],
    );
    // Act
    let output = dry_run_on(&host);
    // Assert
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: this host runs Ubuntu 24.04 LTS"),
        "{stderr}"
    );
}
