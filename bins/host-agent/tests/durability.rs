//! Durability and deadlines through the REST API with real VMs: one
//! snapshot name, two concurrent requests; a stopped QEMU makes a pause
//! answer 504 and cannot hold up a DELETE.
//!
//! Run with `PETREL_KERNEL=… PETREL_ROOTFS=… cargo test -p host-agent
//! --test durability`. Each test stops its agent before asserting.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client;
mod common;

use std::path::Path;
use std::time::Duration;

use client::Client;
use serde_json::json;

/// A guard against a hang, not a timing assertion.
const GUARD: Duration = Duration::from_mins(5);

fn sandbox_request(template: &str) -> serde_json::Value {
    json!({"template": template, "timeout_s": 600})
}

/// The QEMU of sandbox `id` (its command line names the sandbox's QMP
/// socket).
fn vmm_pid(data_dir: &Path, id: &str) -> u32 {
    let socket = data_dir.join("sandboxes").join(id).join("vmm/qmp.sock");
    let pid = *common::binary::processes_naming(&socket)
        .first()
        .expect("the sandbox's QEMU runs");
    u32::try_from(pid).unwrap()
}

/// Whether `pid` runs (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, r)| !r.starts_with('Z'))
    })
}

#[tokio::test]
async fn two_concurrent_snapshot_requests_for_one_name_are_201_and_409() {
    // Arrange
    let Some(agent) = common::start_agent().await else {
        return;
    };
    let api = Client::new(agent.url());
    let source = api.post("/v1/sandboxes", &sandbox_request("base")).await;
    let id = source.json()["id"].as_str().unwrap().to_string();
    let wrote = api
        .post(
            &format!("/v1/sandboxes/{id}/exec"),
            &json!({"cmd": "echo kept > before-snapshot.txt && sync"}),
        )
        .await;
    let path = format!("/v1/sandboxes/{id}/snapshots");
    let body = json!({"name": "once"});

    // Act
    let (first, second) = tokio::time::timeout(GUARD, async {
        tokio::join!(api.post(&path, &body), api.post(&path, &body))
    })
    .await
    .unwrap();
    let clone = api.post("/v1/sandboxes", &sandbox_request("once")).await;
    let clone_id = clone.json()["id"].as_str().unwrap_or_default().to_string();
    let read = api
        .post(
            &format!("/v1/sandboxes/{clone_id}/exec"),
            &json!({"cmd": "cat before-snapshot.txt"}),
        )
        .await;
    agent.stop().await;

    // Assert
    assert_eq!(wrote.json()["exit_code"], 0);
    let mut statuses = [first.status_code(), second.status_code()];
    statuses.sort();
    assert_eq!(
        statuses,
        [(201, String::new()), (409, "conflict".to_string())],
        "{first:?} / {second:?}"
    );
    assert_eq!(clone.status.as_u16(), 201, "{clone:?}");
    assert_eq!(read.json()["stdout"], "kept\n");
}

#[tokio::test]
async fn a_pause_of_a_stopped_qemu_is_504_and_delete_meanwhile_is_204() {
    // Arrange
    let Some(agent) = common::start_agent().await else {
        return;
    };
    let api = Client::new(agent.url());
    let created = api.post("/v1/sandboxes", &sandbox_request("base")).await;
    let id = created.json()["id"].as_str().unwrap().to_string();
    let run_dir = agent.data_dir.path().join("sandboxes").join(&id);
    let pid = vmm_pid(agent.data_dir.path(), &id);
    let raw_pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
    nix::sys::signal::kill(raw_pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let pause_path = format!("/v1/sandboxes/{id}/pause");

    // Act: a pause gives up at its deadline...
    let timed_out = tokio::time::timeout(GUARD, api.post(&pause_path, &json!({})))
        .await
        .unwrap();
    // ...and another, stuck in the background, does not hold up a DELETE.
    let background = {
        let api = api.clone();
        let pause_path = pause_path.clone();
        tokio::spawn(async move { api.post(&pause_path, &json!({})).await })
    };
    tokio::time::timeout(GUARD, async {
        while api.get(&format!("/v1/sandboxes/{id}")).await.json()["state"] != "pausing" {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    let deleted = tokio::time::timeout(GUARD, api.delete(&format!("/v1/sandboxes/{id}")))
        .await
        .unwrap();
    let stuck = tokio::time::timeout(GUARD, background)
        .await
        .unwrap()
        .unwrap();
    let after = api.get(&format!("/v1/sandboxes/{id}")).await;
    let qemu_alive = alive(pid);
    let files_left = run_dir.exists();
    agent.stop().await;

    // Assert
    assert_eq!(
        timed_out.status_code(),
        (504, "vmm_timeout".to_string()),
        "{timed_out:?}"
    );
    assert_eq!(deleted.status.as_u16(), 204, "{deleted:?}");
    // Ended by the DELETE (its QEMU killed), not by its own deadline.
    assert!(stuck.status.is_server_error(), "{stuck:?}");
    assert_ne!(stuck.code(), "vmm_timeout", "{stuck:?}");
    assert_eq!(after.status.as_u16(), 404);
    assert!(!qemu_alive);
    assert!(!files_left);
}
