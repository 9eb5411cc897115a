//! Real-VM tests: each test boots a guest from the images `cargo xtask test`
//! builds (`PETREL_KERNEL`, `PETREL_ROOTFS`) under QEMU with the probed
//! accelerator (TCG on hosts without usable KVM) and talks to its envd.
//!
//! Without the images they print why they were skipped, unless
//! `PETREL_REQUIRE_VM=1` (set by `cargo xtask test`), where that is a failure.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TestDir, accel, images};
use std::path::{Path, PathBuf};

use envd_client::ExecRequest;
use sandbox_core::{QemuBackend, Sandbox, SandboxConfig, SandboxError};

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
        ..QemuBackend::new(accel())
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

#[tokio::test]
async fn pause_and_resume_keep_files_and_running_processes() {
    let dir = TestDir::new("pause");
    let mut sandbox = sandbox!("pause", &dir);
    sandbox
        .exec_shell(
            "echo kept > ~/file.txt; \
             nohup bash -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done' >/dev/null 2>&1 &",
        )
        .await
        .unwrap();
    let mut counters = Vec::new();
    let mut paused_pids_alive = Vec::new();

    for _ in 0..3 {
        counters.push(read_counter(&sandbox).await);
        let pid = sandbox.vmm_pid().unwrap();
        sandbox.pause().await.unwrap();
        paused_pids_alive.push(process_alive(pid) || sandbox.vmm_pid().is_some());
        sandbox.resume().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    counters.push(read_counter(&sandbox).await);
    let file = sandbox.exec_shell("cat ~/file.txt").await.unwrap();
    sandbox.destroy().await.unwrap();

    assert_eq!(
        paused_pids_alive,
        [false, false, false],
        "a paused sandbox kept a VMM process"
    );
    assert!(
        counters.windows(2).all(|w| w[1] > w[0]),
        "counter did not continue: {counters:?}"
    );
    assert_eq!(file.stdout, b"kept\n");
}

#[tokio::test]
async fn exec_on_a_paused_sandbox_is_refused() {
    let dir = TestDir::new("pausedexec");
    let mut sandbox = sandbox!("pausedexec", &dir);
    sandbox.pause().await.unwrap();

    let err = sandbox.exec_shell("true").await.unwrap_err();
    let again = sandbox.pause().await.unwrap_err();
    sandbox.destroy().await.unwrap();

    assert!(matches!(err, SandboxError::InvalidState { .. }), "{err}");
    assert!(
        matches!(again, SandboxError::InvalidState { .. }),
        "{again}"
    );
}

async fn read_counter(sandbox: &Sandbox) -> u64 {
    let out = sandbox.exec_shell("cat /tmp/counter").await.unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Splits a Connect streaming body into (flags, JSON) envelopes.
fn envelopes(mut body: &[u8]) -> Vec<(u8, serde_json::Value)> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        out.push((body[0], serde_json::from_slice(&body[5..5 + len]).unwrap()));
        body = &body[5 + len..];
    }
    out
}

#[tokio::test]
async fn connect_json_start_streams_pid_data_and_end_frame() {
    let dir = TestDir::new("connectjson");
    let sandbox = sandbox!("connectjson", &dir);
    let request = serde_json::json!({
        "process": { "cmd": "/bin/bash", "args": ["-l", "-c", "echo hello; echo oops >&2; exit 4"] },
        "stdin": false
    })
    .to_string();
    let mut body = vec![0u8];
    body.extend_from_slice(&(request.len() as u32).to_be_bytes());
    body.extend_from_slice(request.as_bytes());
    std::fs::write(dir.0.join("request"), &body).unwrap();

    let output = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--fail-with-body",
            "-H",
            "Content-Type: application/connect+json",
        ])
        .args([
            "-H",
            "Connect-Protocol-Version: 1",
            "-H",
            "Authorization: Basic dXNlcjo=",
        ])
        .arg("-H")
        .arg(format!("X-Access-Token: {}", sandbox.access_token()))
        .arg("--data-binary")
        .arg(format!("@{}", dir.0.join("request").display()))
        .arg(format!(
            "http://{}/process.Process/Start",
            sandbox.envd().addr()
        ))
        .output()
        .await
        .unwrap();
    sandbox.destroy().await.unwrap();
    let frames = envelopes(&output.stdout);

    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        frames[0].1["event"]["start"]["pid"].as_u64().unwrap() > 1,
        "{frames:?}"
    );
    let data: Vec<&serde_json::Value> = frames
        .iter()
        .filter_map(|(_, f)| f["event"].get("data"))
        .collect();
    assert!(data.iter().any(|d| d["stdout"] == "aGVsbG8K"), "{frames:?}");
    assert!(data.iter().any(|d| d["stderr"] == "b29wcwo="), "{frames:?}");
    let end = &frames[frames.len() - 2].1["event"]["end"];
    assert_eq!(end["exitCode"], 4);
    assert_eq!(frames.last().unwrap().0, 2);
}

#[tokio::test]
async fn sandboxes_started_from_a_snapshot_see_its_files_but_not_each_others() {
    let Some(images) = images() else { return };
    let dir = TestDir::new("snap");
    let backend = QemuBackend::new(accel());
    let mut source = Sandbox::boot(
        &backend,
        SandboxConfig::new("snap-src", images.clone(), &dir.0),
    )
    .await
    .unwrap();
    source
        .exec_shell("echo from-snapshot > ~/snap.txt")
        .await
        .unwrap();
    // A clone gets its identity from envd itself, not from guest programs:
    // without python3 the clones must still get their own names and seeds.
    let hidden = source
        .exec(ExecRequest::shell("mv /usr/bin/python3 /usr/bin/python3.hidden").user("root"))
        .await
        .unwrap();
    assert_eq!(hidden.exit_code, 0, "{hidden:?}");
    let snapshot = dir.0.join("snapshot");

    source.snapshot(&snapshot).await.unwrap();
    let still_running = source.exec_shell("cat ~/snap.txt").await.unwrap();
    let mut clones = Vec::new();
    let mut identities = Vec::new();
    for n in 0..3 {
        let config = SandboxConfig {
            snapshot: Some(snapshot.clone()),
            ..SandboxConfig::new(format!("snap-clone{n}"), images.clone(), &dir.0)
        };
        clones.push(Sandbox::boot(&backend, config).await.unwrap());
    }
    clones[0]
        .exec_shell("echo mine > ~/only-clone0.txt")
        .await
        .unwrap();
    let mut seen = Vec::new();
    for clone in &clones {
        let out = clone
            .exec_shell("cat ~/snap.txt; ls ~/only-clone0.txt 2>/dev/null | wc -l")
            .await
            .unwrap();
        seen.push(String::from_utf8_lossy(&out.stdout).into_owned());
        let identity = clone
            .exec_shell(
                "hostname; cat /proc/sys/kernel/random/uuid; cat /etc/hostname; \
                 grep -c \"^127.0.1.1 $(hostname)$\" /etc/hosts",
            )
            .await
            .unwrap();
        identities.push(String::from_utf8_lossy(&identity.stdout).into_owned());
    }
    for clone in clones {
        clone.destroy().await.unwrap();
    }
    source.destroy().await.unwrap();

    assert_eq!(still_running.stdout, b"from-snapshot\n");
    assert_eq!(
        seen,
        [
            "from-snapshot\n1\n",
            "from-snapshot\n0\n",
            "from-snapshot\n0\n"
        ]
    );
    let hostnames: Vec<&str> = identities
        .iter()
        .map(|i| i.lines().next().unwrap())
        .collect();
    let uuids: std::collections::BTreeSet<&str> = identities
        .iter()
        .map(|i| i.lines().nth(1).unwrap())
        .collect();
    assert_eq!(hostnames, ["snap-clone0", "snap-clone1", "snap-clone2"]);
    for (identity, name) in identities.iter().zip(&hostnames) {
        let files: Vec<&str> = identity.lines().skip(2).collect();
        assert_eq!(files, [*name, "1"], "/etc/hostname and /etc/hosts");
    }
    assert_eq!(
        uuids.len(),
        3,
        "clones share a random stream: {identities:?}"
    );
}

#[tokio::test]
async fn sandbox_started_from_a_snapshot_pauses_and_resumes() {
    let Some(images) = images() else { return };
    let dir = TestDir::new("snappause");
    let backend = QemuBackend::new(accel());
    let mut source = Sandbox::boot(
        &backend,
        SandboxConfig::new("snappause-src", images.clone(), &dir.0),
    )
    .await
    .unwrap();
    let snapshot = dir.0.join("snapshot");
    source.snapshot(&snapshot).await.unwrap();
    source.destroy().await.unwrap();
    let config = SandboxConfig {
        snapshot: Some(snapshot.clone()),
        ..SandboxConfig::new("snappause-clone", images, &dir.0)
    };
    let mut clone = Sandbox::boot(&backend, config).await.unwrap();
    clone
        .exec_shell("echo before-pause > /tmp/mark")
        .await
        .unwrap();

    clone.pause().await.unwrap();
    clone.resume().await.unwrap();
    let out = clone.exec_shell("cat /tmp/mark").await.unwrap();
    clone.destroy().await.unwrap();

    assert_eq!(out.stdout, b"before-pause\n");
}

#[tokio::test]
async fn a_resume_that_fails_after_the_guest_ran_saves_it_again_and_stays_paused() {
    // Arrange: a guest whose envd is gone for good (its restart loop
    // stopped), paused; the resume's wait for envd will fail after the
    // guest ran, which makes the saved state stale.
    let Some(images) = images() else { return };
    let dir = TestDir::new("resave");
    let backend = QemuBackend::new(accel());
    let config = SandboxConfig {
        boot_timeout: std::time::Duration::from_secs(20),
        ..SandboxConfig::new("resave", images, &dir.0)
    };
    let mut sandbox = Sandbox::boot(&backend, config).await.unwrap();
    sandbox
        .exec(
            ExecRequest::shell(
                "nohup sh -c 'sleep 1; kill -STOP $(ps -o ppid= -p $(pgrep -xo envd)); \
                 pkill -x envd' >/dev/null 2>&1 &",
            )
            .user("root"),
        )
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    sandbox.pause().await.unwrap();
    let marker = sandbox.run_dir().join("state/vmstate.json");
    let saved_at = std::fs::metadata(&marker).unwrap().modified().unwrap();

    // Act
    let resumed = sandbox.resume().await;

    // Assert
    let err = resumed.unwrap_err();
    let state = sandbox.state();
    let vmm = sandbox.vmm_pid();
    let saved_again_at = std::fs::metadata(&marker).unwrap().modified().unwrap();
    let run_dir = sandbox.run_dir().to_path_buf();
    sandbox.destroy().await.unwrap();
    assert!(
        matches!(&err, SandboxError::ResumeFailed { outcome, .. } if outcome.contains("saved again")),
        "{err}"
    );
    assert_eq!(state, sandbox_core::SandboxState::Paused);
    assert_eq!(vmm, None, "a paused sandbox kept a VMM process");
    assert!(saved_again_at > saved_at, "the guest was not saved again");
    assert!(!run_dir.exists());
}
