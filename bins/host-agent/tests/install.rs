//! `host-agent install [--uninstall [--purge]]` into a temporary `--root`:
//! the files and their modes, the unit as systemd reads it, the config as
//! `serve` reads it (with real VMs), refusals that change nothing, and
//! uninstalls that leave the root as it was.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client;
mod common;

use std::collections::BTreeMap;
use std::hash::Hasher as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use client::Client;
use common::binary::processes_naming;
use host_agent::AgentConfig;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_host-agent");
const CONFIG: &str = "etc/petrel/host-agent.toml";
const UNIT: &str = "etc/systemd/system/petrel-host-agent.service";
const BINARY: &str = "usr/local/bin/host-agent";
const DATA: &str = "var/lib/petrel";

/// `host-agent install --root ROOT ARGS` with no images from the
/// environment.
fn install(root: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("install")
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("PETREL_KERNEL")
        .env_remove("PETREL_ROOTFS")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// Its stdout; panics with both streams when it failed.
fn succeeded(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn read_config(root: &Path) -> AgentConfig {
    toml::from_str(&std::fs::read_to_string(root.join(CONFIG)).unwrap()).unwrap()
}

/// One entry of a tree: kind, mode, a hash of the contents, and (if asked)
/// the modification time.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: char,
    mode: u32,
    hash: u64,
    mtime: Option<SystemTime>,
}

/// Every path below `root` (relative) with its entry.
fn snapshot(root: &Path, mtimes: bool) -> BTreeMap<PathBuf, Entry> {
    fn walk(root: &Path, dir: &Path, mtimes: bool, out: &mut BTreeMap<PathBuf, Entry>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            let kind = if meta.is_dir() {
                'd'
            } else if meta.is_symlink() {
                hasher.write(
                    std::fs::read_link(&path)
                        .unwrap()
                        .as_os_str()
                        .as_encoded_bytes(),
                );
                'l'
            } else {
                hasher.write(&std::fs::read(&path).unwrap());
                'f'
            };
            out.insert(
                path.strip_prefix(root).unwrap().to_path_buf(),
                Entry {
                    kind,
                    mode: meta.permissions().mode() & 0o7777,
                    hash: hasher.finish(),
                    mtime: mtimes.then(|| meta.modified().unwrap()),
                },
            );
            if kind == 'd' {
                walk(root, &path, mtimes, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, mtimes, &mut out);
    out
}

/// A root with things of its own that uninstall must leave alone.
fn lived_in_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for (path, contents) in [
        ("etc/hostname", "box\n"),
        (
            "etc/systemd/system/ssh.service",
            "[Service]\nExecStart=/bin/true\n",
        ),
        ("usr/local/bin/other-tool", "#!/bin/sh\n"),
        ("var/lib/dpkg/status", ""),
    ] {
        let path = root.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
    root
}

#[test]
fn install_writes_binary_unit_config_and_data_dir() {
    let root = tempfile::tempdir().unwrap();

    let stdout = succeeded(&install(
        root.path(),
        &[
            "--kernel",
            "/images/vmlinux",
            "--rootfs",
            "/images/rootfs.ext4",
        ],
    ));

    let r = root.path();
    assert_eq!(
        std::fs::read(r.join(BINARY)).unwrap(),
        std::fs::read(BIN).unwrap()
    );
    assert_eq!(mode(&r.join(BINARY)), 0o755);
    let packaged = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging");
    assert_eq!(
        std::fs::read_to_string(r.join(UNIT)).unwrap(),
        std::fs::read_to_string(packaged.join("petrel-host-agent.service")).unwrap()
    );
    assert_eq!(mode(&r.join(UNIT)), 0o644);
    assert_eq!(mode(&r.join(CONFIG)), 0o600);
    assert_eq!(mode(&r.join(DATA)), 0o700);
    assert_eq!(
        (mode(&r.join("var")), mode(&r.join("var/lib"))),
        (0o755, 0o755)
    );
    assert_eq!(std::fs::read_dir(r.join(DATA)).unwrap().count(), 0);
    let config = read_config(r);
    assert_eq!(config.api_keys.len(), 1);
    let key = &config.api_keys[0];
    assert!(key.starts_with("e2b_") && key.len() == 36, "{key}");
    assert!(key[4..].chars().all(|c| c.is_ascii_hexdigit()), "{key}");
    assert_eq!(config.kernel.as_deref(), Some(Path::new("/images/vmlinux")));
    assert_eq!(
        config.rootfs.as_deref(),
        Some(Path::new("/images/rootfs.ext4"))
    );
    assert_eq!(config.data_dir, Path::new("/var/lib/petrel"));
    assert!(!stdout.contains(key.as_str()), "the key is not printed");
    assert!(
        stdout.contains("journalctl -u petrel-host-agent -f"),
        "{stdout}"
    );
    assert!(
        stdout.contains("systemctl enable --now petrel-host-agent"),
        "{stdout}"
    );
}

#[test]
fn each_install_generates_its_own_api_key_unless_given() {
    let (first, second, given) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );

    succeeded(&install(first.path(), &[]));
    succeeded(&install(second.path(), &[]));
    succeeded(&install(
        given.path(),
        &["--api-key", "e2b_ab", "--api-key", "e2b_cd"],
    ));
    let bad = install(
        tempfile::tempdir().unwrap().path(),
        &["--api-key", "secret"],
    );

    assert_ne!(
        read_config(first.path()).api_keys,
        read_config(second.path()).api_keys
    );
    assert_eq!(read_config(given.path()).api_keys, ["e2b_ab", "e2b_cd"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("e2b_<hex>"));
}

#[test]
fn installed_unit_passes_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    succeeded(&install(root.path(), &[]));
    // verify wants ExecStart's binary at its real path: point it at the
    // installed copy in the root.
    let unit = std::fs::read_to_string(root.path().join(UNIT)).unwrap();
    let installed = root.path().join(BINARY);
    let rewritten = unit.replace("/usr/local/bin/host-agent", installed.to_str().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("petrel-host-agent.service");
    std::fs::write(&copy, &rewritten).unwrap();

    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();

    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{said}");
    // Unknown keys and bad values are warnings with status 0.
    let about_unit: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("petrel-host-agent.service"))
        .collect();
    assert!(about_unit.is_empty(), "{about_unit:#?}");
    assert!(rewritten.contains(&format!("ExecStart={} serve", installed.display())));
}

#[test]
fn reinstall_without_force_refuses_and_touches_nothing() {
    let root = tempfile::tempdir().unwrap();
    succeeded(&install(root.path(), &[]));
    let before = snapshot(root.path(), true);

    let again = install(root.path(), &["--api-key", "e2b_00"]);

    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success());
    assert!(stderr.contains("--force"), "{stderr}");
    assert!(
        stderr.contains(&*root.path().join(CONFIG).to_string_lossy()),
        "{stderr}"
    );
    assert_eq!(snapshot(root.path(), true), before);
}

#[test]
fn reinstall_with_force_replaces_the_config() {
    let root = tempfile::tempdir().unwrap();
    succeeded(&install(root.path(), &[]));

    let stdout = succeeded(&install(root.path(), &["--force", "--api-key", "e2b_00"]));

    assert_eq!(read_config(root.path()).api_keys, ["e2b_00"]);
    assert_eq!(mode(&root.path().join(CONFIG)), 0o600);
    assert!(stdout.contains("replaced"), "{stdout}");
}

#[test]
fn install_refuses_kernel_without_rootfs_and_writes_nothing() {
    let root = tempfile::tempdir().unwrap();

    let output = install(root.path(), &["--kernel", "/images/vmlinux"]);

    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--rootfs"));
    assert!(snapshot(root.path(), false).is_empty());
}

#[test]
fn uninstall_leaves_nothing_behind() {
    let root = lived_in_root();
    let before = snapshot(root.path(), false);
    succeeded(&install(root.path(), &[]));

    let stdout = succeeded(&install(root.path(), &["--uninstall"]));

    let mut after = snapshot(root.path(), false);
    let data = after.remove(Path::new(DATA)).expect("the data dir is kept");
    let saved = Path::new(DATA).join("config-at-uninstall.toml");
    let saved = after.remove(&saved).expect("the config is saved in it");
    after.retain(|path, _| !path.starts_with(DATA));
    assert_eq!(after, before);
    assert_eq!((data.kind, data.mode), ('d', 0o700));
    assert_eq!((saved.kind, saved.mode), ('f', 0o600));
    let kept = root.path().canonicalize().unwrap().join(DATA);
    assert!(
        stdout.contains(&format!("kept the data dir {}", kept.display())),
        "{stdout}"
    );
    assert!(stdout.contains("--purge"), "{stdout}");
}

#[test]
fn purge_leaves_nothing() {
    let root = tempfile::tempdir().unwrap();
    succeeded(&install(root.path(), &[]));

    succeeded(&install(root.path(), &["--uninstall", "--purge"]));

    assert_eq!(snapshot(root.path(), false), BTreeMap::new());
}

#[test]
fn custom_bin_dir_is_named_by_the_unit_and_removed() {
    let root = lived_in_root();
    let before = snapshot(root.path(), false);

    succeeded(&install(root.path(), &["--bin-dir", "/opt/petrel/bin"]));
    let unit = std::fs::read_to_string(root.path().join(UNIT)).unwrap();
    let binary = root.path().join("opt/petrel/bin/host-agent");
    let installed = binary.is_file() && !root.path().join(BINARY).exists();
    succeeded(&install(root.path(), &["--uninstall", "--purge"]));

    assert!(installed);
    assert!(unit.contains(
        "\nExecStart=/opt/petrel/bin/host-agent serve --config /etc/petrel/host-agent.toml\n"
    ));
    assert_eq!(snapshot(root.path(), false), before);
}

#[test]
fn uninstall_of_nothing_succeeds_and_says_so() {
    let root = lived_in_root();
    let before = snapshot(root.path(), true);

    let stdout = succeeded(&install(root.path(), &["--uninstall"]));

    assert!(stdout.contains("nothing to remove"), "{stdout}");
    assert_eq!(snapshot(root.path(), true), before);
}

// ---- with real VMs ------------------------------------------------------

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sets `key = value` in the installed config, as an admin would.
fn edit_config(root: &Path, settings: &[(&str, String)]) {
    let path = root.join(CONFIG);
    let mut text = std::fs::read_to_string(&path).unwrap();
    for (key, value) in settings {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("#{key} = ")))
            .unwrap_or_else(|| panic!("no commented {key} in the config"))
            .to_string();
        text = text.replace(&line, &format!("{key} = {value}"));
    }
    std::fs::write(&path, text).unwrap();
}

/// Installs with the real images and sets the config up for a test agent
/// on `port` with network slots `first..first + 32`.
fn install_for_vms(root: &Path, kernel: &Path, rootfs: &Path, port: u16, first: u16) {
    let args = [
        "--kernel",
        kernel.to_str().unwrap(),
        "--rootfs",
        rootfs.to_str().unwrap(),
    ];
    succeeded(&install(root, &args));
    let accel = match std::env::var("PETREL_ACCEL").as_deref() {
        Ok("kvm") => "kvm",
        _ => "tcg",
    };
    edit_config(
        root,
        &[
            ("listen", format!("\"127.0.0.1:{port}\"")),
            ("accel", format!("\"{accel}\"")),
            ("warm_templates", "false".to_string()),
            ("net_slot_first", first.to_string()),
            ("net_slot_count", "32".to_string()),
        ],
    );
}

/// `host-agent serve --config <installed config>` (the unit's command),
/// with the data dir inside the root and nothing from PETREL_* variables
/// but the host's QEMU and boot timeout.
struct Agent(Child);

impl Agent {
    fn spawn(root: &Path) -> Self {
        let mut command = Command::new(BIN);
        command
            .arg("serve")
            .arg("--config")
            .arg(root.join(CONFIG))
            .arg("--data-dir")
            .arg(root.join(DATA));
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy().into_owned();
            if name.starts_with("PETREL_")
                && name != "PETREL_QEMU"
                && name != "PETREL_BOOT_TIMEOUT_SECS"
            {
                command.env_remove(name);
            }
        }
        let child = command
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Self(child)
    }

    async fn wait_ready(&mut self, port: u16) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if let Some(status) = self.0.try_wait().unwrap() {
                panic!("the agent exited at start: {status}");
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the agent did not listen on port {port} within 60 s");
    }

    /// SIGTERM (what `systemctl stop` sends with KillMode=process) and its
    /// exit status.
    async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no exit 30 s after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Kills (by pid) VMs of the test's data dir still running when the test
/// ends. Host IPv4 forwarding is not touched: `netns` puts it back when the
/// last Petrel namespace goes (a test writing back the value it read at
/// its start would undo another test's agent, or leave `1` for good).
struct Cleanup {
    sandboxes: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for pid in processes_naming(&self.sandboxes) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The status line of `GET path` with an `X-API-KEY` header.
async fn status_with_key(port: u16, path: &str, key: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-KEY: {key}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    reply.lines().next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn installed_config_serves_the_base_template() {
    let Some((kernel, rootfs)) = common::images() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    install_for_vms(root.path(), &kernel, &rootfs, port, 31_000);
    let key = read_config(root.path()).api_keys[0].clone();

    let mut agent = Agent::spawn(root.path());
    agent.wait_ready(port).await;
    let client = Client::new(format!("http://127.0.0.1:{port}")).with_header("x-api-key", &key);
    let templates = client.get("/v1/templates").await.json();
    let with_key = status_with_key(port, "/sandboxes", &key).await;
    let wrong_key = status_with_key(port, "/sandboxes", "e2b_00").await;
    let status = agent.terminate().await;

    let names: Vec<&str> = templates
        .as_array()
        .unwrap_or_else(|| panic!("{templates}"))
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"base"), "{templates}");
    assert!(with_key.contains(" 200 "), "{with_key}");
    assert!(wrong_key.contains(" 401 "), "{wrong_key}");
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn purge_destroys_sandboxes_left_running_and_leaves_nothing() {
    purge_after_stop(31_100, false).await;
}

#[tokio::test]
async fn purge_after_a_plain_uninstall_still_destroys_them() {
    purge_after_stop(31_200, true).await;
}

/// An installed agent (slots `first..first + 32`) with one sandbox is
/// stopped as systemd stops it; its VM runs on. Then `--purge` (after a
/// plain `--uninstall` when `two_step`, which leaves it running) takes it
/// over and destroys it: no VM, no namespace, an empty root.
async fn purge_after_stop(first: u16, two_step: bool) {
    let Some((kernel, rootfs)) = common::images() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let sandboxes = root.path().join(DATA).join("sandboxes");
    let _cleanup = Cleanup {
        sandboxes: sandboxes.clone(),
    };
    let port = free_port();
    install_for_vms(root.path(), &kernel, &rootfs, port, first);
    let mut agent = Agent::spawn(root.path());
    agent.wait_ready(port).await;
    let key = read_config(root.path()).api_keys[0].clone();
    let client = Client::new(format!("http://127.0.0.1:{port}")).with_header("x-api-key", &key);
    let created = client
        .post("/v1/sandboxes", &json!({"template": "base"}))
        .await
        .json();
    let stopped = agent.terminate().await;
    let left_running = processes_naming(&sandboxes);
    let after_uninstall = if two_step {
        succeeded(&install(root.path(), &["--uninstall"]));
        processes_naming(&sandboxes)
    } else {
        left_running.clone()
    };

    let stdout = succeeded(&install(root.path(), &["--uninstall", "--purge"]));

    let start = Instant::now();
    while !processes_naming(&sandboxes).is_empty() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(created["state"], "running", "{created}");
    assert!(stopped.success(), "{stopped}");
    assert!(
        !left_running.is_empty(),
        "the VM runs on after the agent stops"
    );
    assert_eq!(after_uninstall, left_running, "a plain uninstall leaves it");
    assert_eq!(processes_naming(&sandboxes), Vec::<i32>::new());
    assert!(stdout.contains("destroyed 1 sandbox"), "{stdout}");
    let namespaces: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    for slot in first..first + 32 {
        assert!(
            !namespaces.contains(&format!("petrel-{slot}")),
            "{namespaces:?}"
        );
    }
    assert_eq!(snapshot(root.path(), false), BTreeMap::new());
}
