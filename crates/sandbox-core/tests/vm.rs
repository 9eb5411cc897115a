//! Real-VM tests: each test boots a guest from the images `cargo xtask test`
//! builds (`PETREL_KERNEL`, `PETREL_ROOTFS`) under QEMU with the probed
//! accelerator (TCG on hosts without usable KVM) and talks to its envd.
//!
//! Without the images they print why they were skipped, unless
//! `PETREL_REQUIRE_VM=1` (set by `cargo xtask test`), where that is a failure.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use envd_client::ExecRequest;
use qemu_vmm::Accel;
use sandbox_core::{GuestImages, QemuBackend, Sandbox, SandboxConfig, SandboxError};

/// The images, or `None` (after saying why) when VM tests are not required.
fn images() -> Option<GuestImages> {
    match GuestImages::from_env() {
        Ok(images) => Some(images),
        Err(err) if std::env::var("PETREL_REQUIRE_VM").as_deref() != Ok("1") => {
            eprintln!(
                "skipped: {err}; run `cargo xtask test` to build the images and run VM tests"
            );
            None
        }
        Err(err) => panic!("VM tests required but images are missing: {err}"),
    }
}

fn accel() -> Accel {
    match std::env::var("PETREL_ACCEL").as_deref() {
        Ok("kvm") => Accel::Kvm,
        _ => Accel::Tcg,
    }
}

struct TestDir(PathBuf);

impl TestDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("petrel-vmtest-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn boot(name: &str, dir: &TestDir) -> Option<Sandbox> {
    let images = images()?;
    let backend = QemuBackend::new(accel());
    Some(
        Sandbox::boot(&backend, SandboxConfig::new(name, images, &dir.0))
            .await
            .unwrap(),
    )
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Boots a sandbox or returns from the test when VM tests are skipped.
macro_rules! sandbox {
    ($name:expr, $dir:expr) => {
        match boot($name, $dir).await {
            Some(sandbox) => sandbox,
            None => return,
        }
    };
}

#[tokio::test]
async fn exec_echo_prints_hello_from_the_guest() {
    let dir = TestDir::new("echo");
    let sandbox = sandbox!("echo", &dir);

    let out = sandbox.exec_shell("echo hello; uname -n").await.unwrap();

    sandbox.destroy().await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\necho\n");
    assert_eq!(out.exit_code, 0);
}

#[tokio::test]
async fn exec_separates_stderr_and_reports_exit_code() {
    let dir = TestDir::new("stderr");
    let sandbox = sandbox!("stderr", &dir);

    let out = sandbox
        .exec_shell("echo out; echo err >&2; exit 3")
        .await
        .unwrap();

    sandbox.destroy().await.unwrap();
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.exit_code, 3);
}

#[tokio::test]
async fn exec_honours_env_and_cwd() {
    let dir = TestDir::new("envcwd");
    let sandbox = sandbox!("envcwd", &dir);
    let request = ExecRequest::shell("echo \"$GREETING\"; pwd")
        .env("GREETING", "hi there")
        .cwd("/tmp");

    let out = sandbox.exec(request).await.unwrap();

    sandbox.destroy().await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi there\n/tmp\n");
}

#[tokio::test]
async fn exec_runs_as_user_by_default_and_as_root_on_request() {
    let dir = TestDir::new("users");
    let sandbox = sandbox!("users", &dir);

    let default = sandbox
        .exec_shell("id -un; echo $HOME; pwd; sudo -n id -u")
        .await
        .unwrap();
    let root = sandbox
        .exec(ExecRequest::shell("id -u; echo $HOME").user("root"))
        .await
        .unwrap();

    sandbox.destroy().await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&default.stdout),
        "user\n/home/user\n/home/user\n0\n"
    );
    assert_eq!(String::from_utf8_lossy(&root.stdout), "0\n/root\n");
}

#[tokio::test]
async fn file_written_through_files_is_read_back_and_seen_by_commands() {
    let dir = TestDir::new("files");
    let sandbox = sandbox!("files", &dir);
    let envd = sandbox.envd();

    envd.write_file(
        "/home/user/notes/hello.txt",
        Some("user"),
        &b"written from the host\n"[..],
    )
    .await
    .unwrap();
    let read = envd
        .read_file("/home/user/notes/hello.txt", Some("user"))
        .await
        .unwrap();
    let seen = sandbox
        .exec_shell("cat ~/notes/hello.txt; stat -c %U ~/notes/hello.txt")
        .await
        .unwrap();

    sandbox.destroy().await.unwrap();
    assert_eq!(read, b"written from the host\n");
    assert_eq!(
        String::from_utf8_lossy(&seen.stdout),
        "written from the host\nuser\n"
    );
}

#[tokio::test]
async fn stat_of_missing_path_is_not_found() {
    let dir = TestDir::new("stat");
    let sandbox = sandbox!("stat", &dir);

    let err = sandbox
        .envd()
        .stat("/no/such/file", None)
        .await
        .unwrap_err();

    sandbox.destroy().await.unwrap();
    assert_eq!(err.code(), Some("not_found"));
}

#[tokio::test]
async fn guest_has_the_base_template_tools() {
    let dir = TestDir::new("tools");
    let sandbox = sandbox!("tools", &dir);

    let out = sandbox
        .exec_shell("python3 -c 'print(6*7)' && git --version >/dev/null && curl --version >/dev/null && echo ok")
        .await
        .unwrap();

    sandbox.destroy().await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42\nok\n");
}

#[tokio::test]
async fn destroy_stops_qemu_and_removes_the_sandbox_directory() {
    let dir = TestDir::new("destroy");
    let sandbox = sandbox!("destroy", &dir);
    let pid = sandbox.vmm_pid().unwrap();
    let run_dir = sandbox.run_dir().to_path_buf();

    sandbox.destroy().await.unwrap();

    assert!(!process_alive(pid), "qemu pid {pid} still running");
    assert!(!run_dir.exists(), "{} left behind", run_dir.display());
}

#[tokio::test]
async fn failed_boot_rolls_back_the_sandbox_directory() {
    let Some(images) = images() else { return };
    let dir = TestDir::new("rollback");
    let backend = QemuBackend {
        binary: PathBuf::from("/nonexistent/qemu-system-x86_64"),
        accel: accel(),
    };

    let err = Sandbox::boot(&backend, SandboxConfig::new("rollback", images, &dir.0))
        .await
        .unwrap_err();

    assert!(matches!(err, SandboxError::Qemu { .. }), "{err}");
    assert!(
        err.to_string().contains("/nonexistent/qemu-system-x86_64"),
        "{err}"
    );
    assert!(!dir.0.join("sandboxes/rollback").exists());
}
