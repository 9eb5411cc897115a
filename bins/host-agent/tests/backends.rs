//! The agent's whole sandbox lifecycle, through its API, on every VMM
//! backend usable here, with the same requests and checks for each, so a
//! feature cannot silently exist on one backend only: QEMU always (TCG on
//! our hosts, KVM inside the KVM-host VM of `cargo xtask vmtest --kvm`),
//! and Firecracker where `serve --vmm firecracker` can run (a binary from
//! `PETREL_FIRECRACKER` or PATH, KVM usable, network namespaces); where it
//! cannot, the agent's own refusal is printed as the reason it is skipped.
//!
//! Per backend: a cold create from the `base` template, exec and files, a
//! background process that outlives pause and resume, a snapshot and a
//! sandbox started from it, a warm template and a create that restores it,
//! a fork, an agent restart that re-adopts the running sandboxes (cold-
//! booted and restored ones) and keeps the paused one resumable, and
//! destroys that leave no VMM process behind. Needs root (namespaces).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client;
mod common;

use std::path::Path;

use client::{Client, Reply};
use host_agent::config::VmmChoice;
use serde_json::{Value, json};

/// A small sandbox of `template`.
fn request(template: &str) -> Value {
    json!({"template": template, "memory_mb": 256, "timeout_s": 600})
}

fn id_of(reply: &Reply) -> String {
    reply.json()["id"].as_str().unwrap_or_default().to_string()
}

/// `cmd` run by a shell in sandbox `id`: its stdout, or the error reply.
async fn sh(api: &Client, id: &str, cmd: &str) -> String {
    let reply = api
        .post(&format!("/v1/sandboxes/{id}/exec"), &json!({ "cmd": cmd }))
        .await;
    match reply.json()["stdout"].as_str() {
        Some(stdout) => stdout.to_string(),
        None => format!("exec failed: {} {}", reply.status, reply.text()),
    }
}

/// `POST /v1/sandboxes/{id}/{action}` (pause, resume): the state it
/// answers with, or the error reply.
async fn lifecycle(api: &Client, id: &str, action: &str) -> String {
    let reply = api
        .post(&format!("/v1/sandboxes/{id}/{action}"), &json!({}))
        .await;
    reply.json()["state"].as_str().map_or_else(
        || format!("{} {}", reply.status, reply.text()),
        String::from,
    )
}

/// Sandbox `id`'s state as the API lists it.
async fn state(api: &Client, id: &str) -> String {
    let reply = api.get(&format!("/v1/sandboxes/{id}")).await;
    reply.json()["state"].as_str().map_or_else(
        || format!("{} {}", reply.status, reply.text()),
        String::from,
    )
}

/// VMM processes (QEMU or Firecracker) whose command line names `dir`.
fn vmms_naming(dir: &Path) -> Vec<i32> {
    common::binary::processes_naming(dir)
        .into_iter()
        .filter(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            comm.starts_with("qemu") || comm.starts_with("firecracker")
        })
        .collect()
}

/// What a run observed, compared whole at the end.
#[derive(Debug, Default, PartialEq, Eq)]
struct Seen {
    created: String,
    echo: String,
    file: String,
    paused: String,
    resumed: String,
    bg_alive_after_resume: String,
    snapshot: u16,
    from_snapshot: String,
    warm: bool,
    from_warm: String,
    forked: String,
    paused_before_restart: String,
    states_after_restart: Vec<String>,
    adopted_cold: String,
    adopted_restored: String,
    adopted_bg_alive: String,
    resumed_after_restart: String,
    from_snapshot_after_resume: String,
    deleted: Vec<u16>,
    vmms_left: Vec<i32>,
}

/// The run every backend must pass.
fn expected() -> Seen {
    Seen {
        created: "running".into(),
        echo: "hello\n".into(),
        file: "kept\n".into(),
        paused: "paused".into(),
        resumed: "running".into(),
        bg_alive_after_resume: "alive\n".into(),
        snapshot: 201,
        from_snapshot: "kept\n".into(),
        warm: true,
        from_warm: "hello\n".into(),
        forked: "kept\n".into(),
        paused_before_restart: "paused".into(),
        states_after_restart: ["running", "paused", "running", "running"]
            .map(String::from)
            .to_vec(),
        adopted_cold: "kept\n".into(),
        adopted_restored: "hello\n".into(),
        adopted_bg_alive: "alive\n".into(),
        resumed_after_restart: "running".into(),
        from_snapshot_after_resume: "kept\n".into(),
        deleted: vec![204; 4],
        vmms_left: Vec::new(),
    }
}

async fn run_lifecycle(vmm: VmmChoice) -> Option<Seen> {
    let (config, data_dir) = common::config_with_base(|config| config.vmm = vmm)?;
    let agent = match host_agent::start(config).await {
        Ok(agent) => agent,
        Err(err) if err.to_string().contains("cannot run here") => {
            eprintln!("{vmm:?}: skipped: {err:#}");
            return None;
        }
        Err(err) => panic!("{vmm:?}: the agent did not start: {err:#}"),
    };
    let mut agent = common::TestAgent { agent, data_dir };
    let mut seen = Seen::default();
    let api = Client::new(agent.url());

    // Cold create, exec, files, a background process through pause/resume.
    let created = api.post("/v1/sandboxes", &request("base")).await;
    let cold = id_of(&created);
    seen.created = created.json()["state"].as_str().unwrap_or_default().into();
    seen.echo = sh(&api, &cold, "echo hello").await;
    api.put(
        &format!("/v1/sandboxes/{cold}/files?path=/tmp/mark"),
        "kept\n",
    )
    .await;
    seen.file = sh(&api, &cold, "cat /tmp/mark").await;
    sh(
        &api,
        &cold,
        "nohup sleep 100000 >/dev/null 2>&1 & echo $! > /tmp/bg",
    )
    .await;
    let bg_alive = "kill -0 $(cat /tmp/bg) && echo alive";
    seen.paused = lifecycle(&api, &cold, "pause").await;
    seen.resumed = lifecycle(&api, &cold, "resume").await;
    seen.bg_alive_after_resume = sh(&api, &cold, bg_alive).await;

    // A snapshot, and a sandbox started from it.
    seen.snapshot = api
        .post(
            &format!("/v1/sandboxes/{cold}/snapshots"),
            &json!({"name": "snap"}),
        )
        .await
        .status
        .as_u16();
    let from_snapshot = id_of(&api.post("/v1/sandboxes", &request("snap")).await);
    seen.from_snapshot = sh(&api, &from_snapshot, "cat /tmp/mark").await;

    // A warm template, and a create that restores it.
    let warmed = agent.agent.state.manager.warm_template("base").await;
    seen.warm = warmed.is_ok_and(|t| t.warm_snapshot.is_some());
    let warm = id_of(&api.post("/v1/sandboxes", &request("base")).await);
    seen.from_warm = sh(&api, &warm, "echo hello").await;

    // A fork (E2B route) continues the cold sandbox.
    let forks = api
        .post(&format!("/sandboxes/{cold}/fork"), &json!({"count": 1}))
        .await;
    let fork = forks.json()[0]["sandbox"]["sandboxID"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    seen.forked = sh(&api, &fork, "cat /tmp/mark").await;

    // An agent restart adopts what runs and keeps what is paused.
    seen.paused_before_restart = lifecycle(&api, &from_snapshot, "pause").await;
    agent = common::restart(agent).await;
    let api = Client::new(agent.url());
    for id in [&cold, &from_snapshot, &warm, &fork] {
        seen.states_after_restart.push(state(&api, id).await);
    }
    seen.adopted_cold = sh(&api, &cold, "cat /tmp/mark").await;
    seen.adopted_restored = sh(&api, &warm, "echo hello").await;
    seen.adopted_bg_alive = sh(&api, &cold, bg_alive).await;
    seen.resumed_after_restart = lifecycle(&api, &from_snapshot, "resume").await;
    seen.from_snapshot_after_resume = sh(&api, &from_snapshot, "cat /tmp/mark").await;

    for id in [&fork, &warm, &from_snapshot, &cold] {
        let deleted = api.delete(&format!("/v1/sandboxes/{id}")).await;
        seen.deleted.push(deleted.status.as_u16());
    }
    let data_dir = agent.data_dir.path().to_path_buf();
    agent.stop().await;
    seen.vmms_left = vmms_naming(&data_dir);
    Some(seen)
}

#[tokio::test]
async fn every_backend_runs_the_whole_lifecycle_through_the_agent() {
    if common::images().is_none() {
        return;
    }

    let mut ran = Vec::new();
    for vmm in [VmmChoice::Qemu, VmmChoice::Firecracker] {
        if let Some(seen) = run_lifecycle(vmm).await {
            ran.push((vmm, seen));
        }
    }

    assert!(
        ran.iter().any(|(vmm, _)| *vmm == VmmChoice::Qemu),
        "QEMU must always run"
    );
    for (vmm, seen) in ran {
        assert_eq!(seen, expected(), "{vmm:?}");
    }
}
