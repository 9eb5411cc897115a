//! The crash-point matrix: for every point `host-agent crash-points` lists,
//! the real agent binary runs with `PETREL_TEST_CRASH_AT=<point>`, is made
//! to reach it (it aborts there, as `kill -9` would stop it), and a new
//! agent starts on the same data. Then nothing acknowledged is lost (a
//! paused sandbox resumes with its files and processes, a snapshot starts
//! clones), the sandbox is usable or cleanly gone, and once everything is
//! deleted nothing is left: no VMM process, run dir, partial file or
//! network namespace (pooled sandboxes of the crashed agent included).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client;
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use client::Client;
use common::binary::{Agent, Spawn, free_port, namespaces, processes_naming, wait_ready};
use hyper::Method;
use serde_json::{Value, json};

/// A file and a process the guest had before the crash.
const MARK: &str = "echo kept > /tmp/mark && (setsid sleep 4242 </dev/null >/dev/null 2>&1 &)";
const CHECK: &str = "cat /tmp/mark && pgrep -x sleep >/dev/null && echo process-kept";

async fn exec(api: &Client, id: &str, cmd: &str) -> Value {
    api.post(
        &format!("/v1/sandboxes/{id}/exec"),
        &json!({"cmd": cmd, "timeout_s": 60}),
    )
    .await
    .json()
}

async fn create(api: &Client) -> String {
    let reply = api
        .post("/v1/sandboxes", &json!({"template": "base"}))
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    reply.json()["id"].as_str().unwrap().to_string()
}

async fn state(api: &Client, id: &str) -> String {
    api.get(&format!("/v1/sandboxes/{id}")).await.json()["state"]
        .as_str()
        .unwrap_or("gone")
        .to_string()
}

/// Files under `dir` (recursively) that an interrupted operation may
/// leave: everything in `sandboxes/` and `snapshots/`, partial warm
/// snapshots and imports.
fn leftovers(data: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for sub in ["sandboxes", "snapshots"] {
        if let Ok(entries) = std::fs::read_dir(data.join(sub)) {
            found.extend(entries.flatten().map(|e| e.path()));
        }
    }
    if let Ok(templates) = std::fs::read_dir(data.join("templates")) {
        for template in templates.flatten() {
            if let Ok(entries) = std::fs::read_dir(template.path()) {
                found.extend(entries.flatten().map(|e| e.path()).filter(|p| {
                    let name = p.file_name().unwrap().to_string_lossy();
                    name.ends_with(".partial") || name.starts_with(".import-")
                }));
            }
        }
    }
    found
}

/// Kills, when the test ends (a failed one included), every process left
/// naming the test's data dir: the VMMs the test made.
struct KillLeftovers<'a>(&'a Path);

impl Drop for KillLeftovers<'_> {
    fn drop(&mut self) {
        for pid in processes_naming(self.0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Waits (at most 5 minutes) until the agent's base pool has a sandbox.
async fn wait_pooled(api: &Client) {
    let start = std::time::Instant::now();
    loop {
        let metrics = api.get("/metrics").await.text();
        let ready = metrics
            .lines()
            .find_map(|l| l.strip_prefix("petrel_pool_ready{template=\"base\"} "))
            .and_then(|v| v.trim().parse::<u64>().ok());
        if ready.is_some_and(|n| n > 0) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the base pool never filled: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs one crash point end to end (see the module doc).
async fn crash_at(point: &str, index: u16) {
    let Some((kernel, rootfs)) = common::images() else {
        return;
    };
    // Arrange
    let data = tempfile::tempdir().unwrap();
    let _leftovers = KillLeftovers(data.path());
    let port = free_port();
    let slot_first = 30_200 + index * 32;
    let api = Client::new(format!("http://127.0.0.1:{port}"));
    let op = point.split('.').next().unwrap();
    let spawn = |env: Vec<(&'static str, String)>, warm: bool| {
        Agent::spawn(&Spawn {
            data_dir: data.path(),
            port,
            kernel: &kernel,
            rootfs: &rootfs,
            slot_first,
            warm_templates: warm,
            env,
        })
    };
    let mut first = spawn(
        vec![(sandbox_core::crash::ENV, point.to_string())],
        op == "template" || op == "pool",
    );
    let mut sandbox = None;
    if op != "template" {
        wait_ready(port).await;
        if op == "pool" {
            // A create reaches the point only through a pooled sandbox.
            wait_pooled(&api).await;
        }
        if op != "create" && op != "pool" {
            let id = create(&api).await;
            exec(&api, &id, MARK).await;
            if op == "resume" {
                let paused = api
                    .post(&format!("/v1/sandboxes/{id}/pause"), &json!({}))
                    .await;
                assert_eq!(paused.status, 200, "{}", paused.text());
            }
            sandbox = Some(id);
        }
        // Act: the operation that reaches the point.
        let id = sandbox.clone().unwrap_or_default();
        let (method, path, body) = match op {
            "create" | "pool" => (
                Method::POST,
                "/v1/sandboxes".into(),
                json!({"template": "base"}),
            ),
            "pause" | "resume" => (Method::POST, format!("/v1/sandboxes/{id}/{op}"), json!({})),
            "snapshot" => (
                Method::POST,
                format!("/v1/sandboxes/{id}/snapshots"),
                json!({"name": "snap1"}),
            ),
            "fork" => (
                Method::POST,
                format!("/sandboxes/{id}/fork"),
                json!({"count": 1}),
            ),
            "destroy" => (Method::DELETE, format!("/v1/sandboxes/{id}"), json!({})),
            other => panic!("no operation for {other}"),
        };
        let body = if method == Method::DELETE {
            String::new()
        } else {
            body.to_string()
        };
        let answered = api.try_send(method, &path, body).await;
        assert!(
            answered.is_err(),
            "{point}: the agent answered instead of crashing: {:?}",
            answered.map(|r| r.text())
        );
    }
    let ended = first.wait_exit(Duration::from_secs(300));
    assert!(ended.is_some(), "{point}: the agent did not abort");

    // Act: a new agent on the same data.
    let mut second = spawn(Vec::new(), false);
    wait_ready(port).await;
    let mut seen = Vec::new();
    if let Some(id) = &sandbox {
        let after = state(&api, id).await;
        seen.push(format!("state after restart: {after}"));
        if op == "destroy" {
            assert_eq!(after, "gone", "{point}: {seen:?}");
        } else {
            assert!(
                after == "running" || after == "paused",
                "{point}: {after}: {:?}",
                api.get(&format!("/v1/sandboxes/{id}")).await.text()
            );
            if after == "paused" {
                let resumed = api
                    .post(&format!("/v1/sandboxes/{id}/resume"), &json!({}))
                    .await;
                assert_eq!(resumed.status, 200, "{point}: {}", resumed.text());
            }
            let check = exec(&api, id, CHECK).await;
            assert_eq!(
                check["stdout"], "kept\nprocess-kept\n",
                "{point}: the guest lost its file or process: {check}"
            );
            // Still fully usable: a pause and resume.
            let paused = api
                .post(&format!("/v1/sandboxes/{id}/pause"), &json!({}))
                .await;
            assert_eq!(paused.status, 200, "{point}: {}", paused.text());
            let resumed = api
                .post(&format!("/v1/sandboxes/{id}/resume"), &json!({}))
                .await;
            assert_eq!(resumed.status, 200, "{point}: {}", resumed.text());
        }
        if op == "snapshot" {
            // The cut-short snapshot is gone; its name can be taken again.
            let listed = api.get("/v1/snapshots").await.json();
            assert!(
                !listed.to_string().contains("snap1"),
                "{point}: a partial snapshot is listed: {listed}"
            );
            let taken = api
                .post(
                    &format!("/v1/sandboxes/{id}/snapshots"),
                    &json!({"name": "snap1"}),
                )
                .await;
            assert_eq!(taken.status, 201, "{point}: {}", taken.text());
            let clone = api
                .post("/v1/sandboxes", &json!({"template": "snap1"}))
                .await;
            assert_eq!(clone.status, 201, "{point}: {}", clone.text());
            let clone = clone.json()["id"].as_str().unwrap().to_string();
            assert_eq!(
                exec(&api, &clone, "cat /tmp/mark").await["stdout"],
                "kept\n"
            );
        }
    } else {
        // An unacknowledged create left nothing; a template crash left a
        // working template.
        let listed = api.get("/v1/sandboxes").await.json();
        assert_eq!(listed, json!([]), "{point}");
        let id = create(&api).await;
        assert_eq!(
            exec(&api, &id, "echo ok").await["stdout"],
            "ok\n",
            "{point}"
        );
    }

    // Assert: once everything is deleted, nothing is left.
    for sandbox in api.get("/v1/sandboxes").await.json().as_array().unwrap() {
        let id = sandbox["id"].as_str().unwrap();
        let deleted = api.delete(&format!("/v1/sandboxes/{id}")).await;
        assert_eq!(deleted.status, 204, "{point}: {}", deleted.text());
    }
    for snapshot in api.get("/v1/snapshots").await.json().as_array().unwrap() {
        let name = snapshot["name"].as_str().unwrap();
        let deleted = api.delete(&format!("/v1/snapshots/{name}")).await;
        assert_eq!(deleted.status, 204, "{point}: {}", deleted.text());
    }
    let vmms: Vec<_> = processes_naming(data.path())
        .into_iter()
        .filter(|pid| u32::try_from(*pid).ok() != Some(second.pid()))
        .collect();
    let files = leftovers(data.path());
    let nets = namespaces(slot_first..slot_first + 32);
    second.kill_9();
    assert!(vmms.is_empty(), "{point}: processes left: {vmms:?}");
    assert!(files.is_empty(), "{point}: files left: {files:?}");
    assert!(nets.is_empty(), "{point}: namespaces left: {nets:?}");
}

/// One test per crash point (by its index in this list: its slot range).
macro_rules! crash_tests {
    ($($name:ident => $point:literal,)*) => {
        const COVERED: &[&str] = &[$($point),*];
        $(
            #[tokio::test]
            async fn $name() {
                let index = COVERED.iter().position(|p| *p == $point).unwrap();
                crash_at($point, u16::try_from(index).unwrap()).await;
            }
        )*
    };
}

crash_tests! {
    crash_after_create_recorded => "create.recorded",
    crash_after_create_disk_made => "create.disk_made",
    crash_after_create_vm_started => "create.vm_started",
    crash_after_create_booted => "create.booted",
    crash_after_pool_taken => "pool.taken",
    crash_after_pause_recorded => "pause.recorded",
    crash_after_pause_state_saved => "pause.state_saved",
    crash_after_pause_vm_stopped => "pause.vm_stopped",
    crash_after_pause_released => "pause.released",
    crash_after_resume_recorded => "resume.recorded",
    crash_after_resume_vm_restored => "resume.vm_restored",
    crash_after_resume_ready => "resume.ready",
    crash_after_snapshot_recorded => "snapshot.recorded",
    crash_after_snapshot_state_saved => "snapshot.state_saved",
    crash_after_snapshot_copied => "snapshot.copied",
    crash_after_snapshot_continued => "snapshot.continued",
    crash_after_fork_snapshotted => "fork.snapshotted",
    crash_after_destroy_recorded => "destroy.recorded",
    crash_after_destroy_vm_stopped => "destroy.vm_stopped",
    crash_after_destroy_removed => "destroy.removed",
    crash_after_template_imported => "template.imported",
    crash_after_template_warm_booted => "template.warm_booted",
    crash_after_template_warm_saved => "template.warm_saved",
}

#[test]
fn every_crash_point_has_a_test() {
    let points: Vec<&str> = sandbox_core::crash::POINTS
        .iter()
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(points, COVERED);
}
