//! The REST API against a running agent with real VMs (TCG unless
//! `PETREL_ACCEL=kvm`): every route's success and error paths.
//!
//! Run with `PETREL_KERNEL=… PETREL_ROOTFS=… cargo test -p host-agent --test
//! api` (`cargo xtask test` sets them); without them the tests return early
//! (and fail under `PETREL_REQUIRE_VM=1`). Each test stops its agent before
//! asserting, so a failed assertion leaves no QEMU behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client;
mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use client::{Client, Reply};
use http::Method;
use serde_json::{Value, json};

/// The traversal attempts, as a JSON string and as a raw path segment
/// (the router percent-decodes the latter: `..%2Fx` is `../x`).
const BAD_NAMES: [&str; 4] = ["../x", "a/b", "..", "%2e%2e"];
const BAD_SEGMENTS: [&str; 4] = ["..%2Fx", "a%2Fb", "..", "%2e%2e"];
const UNKNOWN_ID: &str = "0123456789abcdef";

/// A small sandbox of `base` with `extra` merged into the request.
fn sandbox_request(extra: &Value) -> Value {
    let mut body = json!({"template": "base", "memory_mb": 256, "timeout_s": 600});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

/// Every path under `dir`.
fn tree(dir: &Path) -> BTreeSet<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|entry| {
            let path = entry.path();
            let mut below = tree(&path);
            below.insert(path);
            below
        })
        .collect()
}

fn id_of(reply: &Reply) -> String {
    reply.json()["id"].as_str().unwrap_or_default().to_string()
}

fn names(reply: &Reply) -> Vec<String> {
    reply
        .json()
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str().or(v["id"].as_str()).map(String::from))
        .collect()
}

#[tokio::test]
async fn sandbox_lifecycle_create_get_list_pause_resume_timeout_delete() {
    let Some(agent) = common::start_agent().await else {
        return;
    };
    let api = Client::new(agent.url());

    let created = api
        .post(
            "/v1/sandboxes",
            &sandbox_request(&json!({"metadata": {"team": "blue", "env": "dev"}})),
        )
        .await;
    let id = id_of(&created);
    let sandbox = format!("/v1/sandboxes/{id}");
    let got = api.get(&sandbox).await;
    let running = api.get("/v1/sandboxes?state=running").await;
    let by_both_states = api.get("/v1/sandboxes?state=running,paused").await;
    let by_metadata = api
        .get("/v1/sandboxes?metadata=team%3Dblue&metadata=env=dev")
        .await;
    let by_form_metadata = api
        .get("/v1/sandboxes?metadata=team%3Dblue%26env%3Dprod")
        .await;
    let by_template = api.get("/v1/sandboxes?template=base").await;
    let paused_before = api.get("/v1/sandboxes?state=paused").await;
    let paused = api.post(&format!("{sandbox}/pause"), &json!({})).await;
    let paused_again = api.post(&format!("{sandbox}/pause"), &json!({})).await;
    let exec_paused = api
        .post(&format!("{sandbox}/exec"), &json!({"cmd": "true"}))
        .await;
    let file_paused = api
        .get(&format!("{sandbox}/files?path=/etc/hostname"))
        .await;
    let snapshot_paused = api
        .post(
            &format!("{sandbox}/snapshots"),
            &json!({"name": "from-paused"}),
        )
        .await;
    let listed_paused = api.get("/v1/sandboxes?state=paused").await;
    let resumed = api
        .post(&format!("{sandbox}/resume"), &json!({"timeout_s": 300}))
        .await;
    let resumed_again = api.post(&format!("{sandbox}/resume"), &json!({})).await;
    let exec_resumed = api
        .post(&format!("{sandbox}/exec"), &json!({"cmd": "echo back"}))
        .await;
    let timeout = api
        .post(&format!("{sandbox}/timeout"), &json!({"timeout_s": 3600}))
        .await;
    let timeout_zero = api
        .post(&format!("{sandbox}/timeout"), &json!({"timeout_s": 0}))
        .await;
    let timeout_missing = api.post(&format!("{sandbox}/timeout"), &json!({})).await;
    let deleted = api.delete(&sandbox).await;
    let after = api.get(&sandbox).await;
    let deleted_again = api.delete(&sandbox).await;
    let listed_after = api.get("/v1/sandboxes").await;

    agent.stop().await;

    let body = created.json();
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(
        (
            &body["state"],
            &body["template"],
            &body["vcpus"],
            &body["memory_mb"]
        ),
        (&json!("running"), &json!("base"), &json!(1), &json!(256))
    );
    assert_eq!(body["metadata"], json!({"team": "blue", "env": "dev"}));
    assert!(
        chrono::DateTime::parse_from_rfc3339(body["created_at"].as_str().unwrap()).is_ok(),
        "{body}"
    );
    assert!(body["timings_ms"]["create"].as_u64().is_some(), "{body}");
    assert!(body.get("envd_access_token").is_none());
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["id"], json!(id));
    assert_eq!(names(&running), [id.as_str()]);
    assert_eq!(names(&by_both_states), [id.as_str()]);
    assert_eq!(names(&by_metadata), [id.as_str()]);
    assert!(names(&by_form_metadata).is_empty());
    assert_eq!(names(&by_template), [id.as_str()]);
    assert!(names(&paused_before).is_empty());
    assert_eq!(
        (paused.status.as_u16(), &paused.json()["state"]),
        (200, &json!("paused"))
    );
    assert_eq!(paused_again.status_code(), (409, "invalid_state".into()));
    assert_eq!(exec_paused.status_code(), (409, "invalid_state".into()));
    assert_eq!(file_paused.status_code(), (409, "invalid_state".into()));
    assert_eq!(snapshot_paused.status_code(), (409, "invalid_state".into()));
    assert_eq!(names(&listed_paused), [id.as_str()]);
    assert_eq!(
        (resumed.status.as_u16(), &resumed.json()["state"]),
        (200, &json!("running"))
    );
    let steps = &resumed.json()["timings_ms"];
    for step in [
        "resume_disk",
        "resume_network",
        "resume_vm_restore",
        "resume_envd_ready",
        "resume_init",
        "resume",
    ] {
        assert!(steps[step].as_u64().is_some(), "{step}: {steps}");
    }
    assert_eq!(resumed_again.status_code(), (409, "invalid_state".into()));
    assert_eq!(exec_resumed.json()["stdout"], json!("back\n"));
    assert_eq!(timeout.status, 200);
    assert!(
        timeout.json()["end_at"].as_str() > resumed.json()["end_at"].as_str(),
        "{} vs {}",
        timeout.text(),
        resumed.text()
    );
    assert_eq!(timeout_zero.status_code(), (400, "invalid_request".into()));
    assert_eq!(
        timeout_missing.status_code(),
        (400, "invalid_request".into())
    );
    assert_eq!(deleted.status, 204);
    assert_eq!(after.status_code(), (404, "sandbox_not_found".into()));
    assert_eq!(
        deleted_again.status_code(),
        (404, "sandbox_not_found".into())
    );
    assert!(names(&listed_after).is_empty());
}

#[tokio::test]
async fn exec_stream_and_files_work_in_a_running_sandbox() {
    let Some(agent) = common::start_agent().await else {
        return;
    };
    let api = Client::new(agent.url());
    let created = api
        .post(
            "/v1/sandboxes",
            &sandbox_request(&json!({"env": {"FROM_CREATE": "yes"}})),
        )
        .await;
    let sandbox = format!("/v1/sandboxes/{}", id_of(&created));
    let exec = |body: Value| {
        let api = api.clone();
        let path = format!("{sandbox}/exec");
        async move { api.post(&path, &body).await }
    };

    let shell = exec(json!({"cmd": "echo out; echo err >&2; exit 3"})).await;
    let env = exec(json!({"cmd": "printenv", "args": ["GREETING", "FROM_CREATE"], "env": {"GREETING": "hello"}})).await;
    let cwd = exec(json!({"cmd": "pwd", "args": [], "cwd": "/tmp"})).await;
    let default_user = exec(json!({"cmd": "whoami", "args": []})).await;
    let root = exec(json!({"cmd": "whoami", "args": [], "user": "root"})).await;
    let stdin = exec(json!({"cmd": "cat", "args": [], "stdin": "piped in"})).await;
    let lossy = exec(json!({"cmd": "printf 'a\\377b'"})).await;
    let no_cmd = exec(json!({"args": []})).await;
    let unknown_field = exec(json!({"cmd": "true", "shell": true})).await;
    let streamed = api
        .post(
            &format!("{sandbox}/exec/stream"),
            &json!({"cmd": "echo streamed; echo oops >&2; exit 7"}),
        )
        .await;
    let written = api
        .put(
            &format!("{sandbox}/files?path=/tmp/dir/hello.txt"),
            "hi there",
        )
        .await;
    let read = api
        .get(&format!("{sandbox}/files?path=/tmp/dir/hello.txt"))
        .await;
    let binary = (0..=255u8).collect::<Vec<u8>>();
    let written_root = api
        .put(
            &format!("{sandbox}/files?path=/root/bin.dat&user=root"),
            binary.clone(),
        )
        .await;
    let read_root = api
        .get(&format!("{sandbox}/files?path=/root/bin.dat&user=root"))
        .await;
    let directory = api.get(&format!("{sandbox}/files?path=/tmp/dir")).await;
    let listed = api
        .get(&format!("{sandbox}/files/list?path=/tmp/dir"))
        .await;
    let missing = api.get(&format!("{sandbox}/files?path=/tmp/nope")).await;
    let missing_dir = api
        .get(&format!("{sandbox}/files/list?path=/tmp/nope"))
        .await;
    let no_path = api.get(&format!("{sandbox}/files")).await;
    let bad_depth = api
        .get(&format!("{sandbox}/files/list?path=/tmp&depth=99"))
        .await;

    agent.stop().await;

    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(
        shell.json(),
        json!({"stdout": "out\n", "stderr": "err\n", "stdout_truncated": false, "stderr_truncated": false, "exit_code": 3, "pid": shell.json()["pid"]})
    );
    assert_eq!(env.json()["stdout"], json!("hello\nyes\n"));
    assert_eq!(cwd.json()["stdout"], json!("/tmp\n"));
    assert_eq!(default_user.json()["stdout"], json!("user\n"));
    assert_eq!(root.json()["stdout"], json!("root\n"));
    assert_eq!(stdin.json()["stdout"], json!("piped in"));
    assert_eq!(lossy.json()["stdout"], json!("a\u{fffd}b"));
    assert_eq!(no_cmd.status_code(), (400, "invalid_request".into()));
    assert_eq!(unknown_field.status_code(), (400, "invalid_request".into()));
    assert_eq!(streamed.status, 200);
    assert_eq!(
        streamed.headers["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let events = streamed.events();
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"start"), "{events:?}");
    assert_eq!(kinds.last(), Some(&"exit"), "{events:?}");
    assert!(events[0].1["pid"].as_u64().is_some(), "{events:?}");
    assert!(
        events.contains(&("stdout".into(), json!({"data": "streamed\n"}))),
        "{events:?}"
    );
    assert!(
        events.contains(&("stderr".into(), json!({"data": "oops\n"}))),
        "{events:?}"
    );
    assert_eq!(events.last().unwrap().1["exit_code"], json!(7));
    assert_eq!(written.status, 204, "{}", written.text());
    assert_eq!(
        (read.status.as_u16(), read.text()),
        (200, "hi there".into())
    );
    assert_eq!(written_root.status, 204, "{}", written_root.text());
    assert_eq!(read_root.body.to_vec(), binary);
    assert_eq!(directory.status_code(), (400, "invalid_argument".into()));
    assert_eq!(listed.status, 200);
    let entry = &listed.json()[0];
    assert_eq!(
        (
            &entry["name"],
            &entry["path"],
            &entry["type"],
            &entry["size"]
        ),
        (
            &json!("hello.txt"),
            &json!("/tmp/dir/hello.txt"),
            &json!("file"),
            &json!(8)
        )
    );
    assert_eq!(missing.status_code(), (404, "file_not_found".into()));
    assert_eq!(missing_dir.status_code(), (404, "file_not_found".into()));
    assert_eq!(no_path.status_code(), (400, "invalid_query".into()));
    assert_eq!(bad_depth.status_code(), (400, "invalid_request".into()));
}

#[tokio::test]
async fn a_sandbox_sees_the_vcpus_and_memory_it_asked_for() {
    // A warm template (the default): its snapshot's shape restores, any
    // other shape boots cold; either way the guest has what was asked.
    let Some(agent) = common::start_agent_with(|config| config.warm_templates = true).await else {
        return;
    };
    let api = Client::new(agent.url());
    let start = std::time::Instant::now();
    while api.get("/v1/templates/base").await.json()["warm"] != json!(true) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(300),
            "base never became warm"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let mut seen = Vec::new();
    for (vcpus, memory_mb) in [(1_u32, 512_u64), (2, 384), (1, 256)] {
        let created = api
            .post(
                "/v1/sandboxes",
                &sandbox_request(&json!({"vcpus": vcpus, "memory_mb": memory_mb})),
            )
            .await;
        let sandbox = format!("/v1/sandboxes/{}", id_of(&created));
        let probe = api
            .post(
                &format!("{sandbox}/exec"),
                &json!({"cmd": "nproc; awk '/MemTotal/{print $2}' /proc/meminfo"}),
            )
            .await;
        let deleted = api.delete(&sandbox).await;
        seen.push((vcpus, memory_mb, created, probe, deleted));
    }
    agent.stop().await;

    for (vcpus, memory_mb, created, probe, deleted) in seen {
        assert_eq!(created.status.as_u16(), 201, "{}", created.text());
        assert_eq!(created.json()["vcpus"], vcpus, "{}", created.text());
        let out = probe.json()["stdout"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut lines = out.lines();
        let nproc: u32 = lines.next().and_then(|l| l.parse().ok()).unwrap_or(0);
        let mem_kib: u64 = lines.next().and_then(|l| l.parse().ok()).unwrap_or(0);
        assert_eq!(nproc, vcpus, "{out}");
        // The guest kernel keeps a few MiB for itself.
        let asked = memory_mb << 10;
        assert!(
            mem_kib <= asked && mem_kib > asked * 8 / 10,
            "asked for {memory_mb} MiB, the guest has {mem_kib} KiB"
        );
        assert_eq!(deleted.status.as_u16(), 204);
    }
}

#[tokio::test]
async fn egress_rules_are_set_at_create_replaced_and_malformed_ones_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: egress rules need the agent's network namespaces (root)");
        return;
    }
    let Some(agent) = common::start_agent().await else {
        return;
    };
    let api = Client::new(agent.url());
    let put = |path: String, body: Value| {
        let api = api.clone();
        async move { api.send(Method::PUT, &path, body.to_string()).await }
    };

    let created = api
        .post(
            "/v1/sandboxes",
            &sandbox_request(&json!({"allow_out": ["1.1.1.1"], "deny_out": ["0.0.0.0/0"]})),
        )
        .await;
    let sandbox = format!("/v1/sandboxes/{}", id_of(&created));
    let network = format!("{sandbox}/network");
    let replaced = put(
        network.clone(),
        json!({"allow_out": ["*.Example.test"], "deny_out": ["203.1.9.9/16"]}),
    )
    .await;
    let fetched = api.get(&sandbox).await;
    let domain = api
        .post(
            "/v1/sandboxes",
            &sandbox_request(&json!({"allow_out": ["example.com"]})),
        )
        .await;
    let ipv6 = put(network.clone(), json!({"deny_out": ["::/0"]})).await;
    let denied_name = put(network.clone(), json!({"deny_out": ["example.com"]})).await;
    let camel_case = put(network.clone(), json!({"denyOut": []})).await;
    let unknown = put(
        "/v1/sandboxes/0123456789abcdef/network".to_string(),
        json!({}),
    )
    .await;
    let deleted = api.delete(&sandbox).await;
    agent.stop().await;

    assert_eq!(created.status.as_u16(), 201, "{}", created.text());
    assert_eq!(created.json()["allow_out"], json!(["1.1.1.1/32"]));
    assert_eq!(created.json()["deny_out"], json!(["0.0.0.0/0"]));
    assert_eq!(replaced.status.as_u16(), 200, "{}", replaced.text());
    assert_eq!(fetched.json()["allow_out"], json!(["*.example.test"]));
    assert_eq!(fetched.json()["deny_out"], json!(["203.1.0.0/16"]));
    for (refused, says) in [
        (&domain, "domain"),
        (&ipv6, "IPv6"),
        (&denied_name, "deny lists take"),
        (&camel_case, "denyOut"),
    ] {
        assert_eq!(refused.status.as_u16(), 400, "{}", refused.text());
        assert!(refused.text().contains(says), "{}", refused.text());
    }
    assert_eq!(unknown.status.as_u16(), 404, "{}", unknown.text());
    assert_eq!(deleted.status.as_u16(), 204);
}

#[tokio::test]
async fn a_delete_during_an_exec_ends_it_at_once() {
    let Some(agent) = common::start_agent().await else {
        return;
    };
    let api = Client::new(agent.url());
    let created = api
        .post("/v1/sandboxes", &sandbox_request(&json!({})))
        .await;
    let sandbox = format!("/v1/sandboxes/{}", id_of(&created));
    let long = |path: &str, marker: &str| {
        let (api, path) = (api.clone(), format!("{sandbox}/{path}"));
        let cmd = format!("touch /tmp/{marker}; sleep 600");
        tokio::spawn(async move {
            let reply = api
                .post(&path, &json!({"cmd": cmd, "timeout_s": 3600}))
                .await;
            (reply, std::time::Instant::now())
        })
    };
    let exec = long("exec", "exec-started");
    let stream = long("exec/stream", "stream-started");
    let mut started = false;
    for _ in 0..100 {
        let probe = api
            .post(
                &format!("{sandbox}/exec"),
                &json!({"cmd": "test -e /tmp/exec-started && test -e /tmp/stream-started"}),
            )
            .await;
        if probe.json()["exit_code"] == 0 {
            started = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    let deleted_at = std::time::Instant::now();
    let deleted = api.delete(&sandbox).await;
    let (exec, exec_ended) = exec.await.unwrap();
    let (stream, stream_ended) = stream.await.unwrap();
    agent.stop().await;

    assert!(started, "the commands never started");
    assert_eq!(deleted.status.as_u16(), 204, "{}", deleted.text());
    assert_eq!(
        exec.status_code(),
        (409, "invalid_state".into()),
        "{}",
        exec.text()
    );
    assert!(
        exec.text().contains("cannot finish the command"),
        "{}",
        exec.text()
    );
    let events = stream.events();
    let (last, data) = events.last().expect("no events");
    assert_eq!(last, "error", "{events:?}");
    assert_eq!(data["code"], "invalid_state", "{data}");
    // Not left to TCP keepalive (~25 s for a guest that vanished).
    for ended in [exec_ended, stream_ended] {
        let after = ended.saturating_duration_since(deleted_at);
        assert!(after.as_secs() < 10, "ended {after:?} after the delete");
    }
}

#[tokio::test]
async fn snapshots_and_templates_follow_their_users() {
    let Some(agent) = common::start_agent().await else {
        return;
    };
    let api = Client::new(agent.url());
    let source = api
        .post("/v1/sandboxes", &sandbox_request(&json!({})))
        .await;
    let source_id = id_of(&source);
    api.post(
        &format!("/v1/sandboxes/{source_id}/exec"),
        &json!({"cmd": "echo remembered > /tmp/mark"}),
    )
    .await;

    let snapshot = api
        .post(
            &format!("/v1/sandboxes/{source_id}/snapshots"),
            &json!({"name": "snap-1"}),
        )
        .await;
    let duplicate = api
        .post(
            &format!("/v1/sandboxes/{source_id}/snapshots"),
            &json!({"name": "snap-1"}),
        )
        .await;
    let named_like_template = api
        .post(
            &format!("/v1/sandboxes/{source_id}/snapshots"),
            &json!({"name": "base"}),
        )
        .await;
    let of_unknown = api
        .post(
            &format!("/v1/sandboxes/{UNKNOWN_ID}/snapshots"),
            &json!({"name": "snap-2"}),
        )
        .await;
    let snapshots = api.get("/v1/snapshots").await;
    let got_snapshot = api.get("/v1/snapshots/snap-1").await;
    let from_snapshot = api
        .post(
            "/v1/sandboxes",
            &sandbox_request(&json!({"template": "snap-1"})),
        )
        .await;
    let child_id = id_of(&from_snapshot);
    let remembered = api
        .post(
            &format!("/v1/sandboxes/{child_id}/exec"),
            &json!({"cmd": "cat /tmp/mark"}),
        )
        .await;
    let delete_used_snapshot = api.delete("/v1/snapshots/snap-1").await;
    let templates = api.get("/v1/templates").await;
    let base = api.get("/v1/templates/base").await;
    let delete_used_base = api.delete("/v1/templates/base").await;
    api.delete(&format!("/v1/sandboxes/{child_id}")).await;
    let delete_snapshot = api.delete("/v1/snapshots/snap-1").await;
    let delete_snapshot_again = api.delete("/v1/snapshots/snap-1").await;
    let get_deleted_snapshot = api.get("/v1/snapshots/snap-1").await;
    let snapshots_after = api.get("/v1/snapshots").await;
    let delete_base_while_running = api.delete("/v1/templates/base").await;
    api.delete(&format!("/v1/sandboxes/{source_id}")).await;
    let delete_base = api.delete("/v1/templates/base").await;
    let templates_after = api.get("/v1/templates").await;
    let base_after = api.get("/v1/templates/base").await;
    let create_without_base = api
        .post("/v1/sandboxes", &sandbox_request(&json!({})))
        .await;

    agent.stop().await;

    assert_eq!(source.status, 201, "{}", source.text());
    assert_eq!(snapshot.status, 201, "{}", snapshot.text());
    assert_eq!(
        (
            &snapshot.json()["name"],
            &snapshot.json()["sandbox_id"],
            &snapshot.json()["template"]
        ),
        (&json!("snap-1"), &json!(source_id), &json!("base"))
    );
    assert_eq!(duplicate.status_code(), (409, "conflict".into()));
    assert_eq!(named_like_template.status_code(), (409, "conflict".into()));
    assert_eq!(of_unknown.status_code(), (404, "sandbox_not_found".into()));
    assert_eq!(names(&snapshots), ["snap-1"]);
    assert_eq!(got_snapshot.json()["name"], json!("snap-1"));
    assert_eq!(from_snapshot.status, 201, "{}", from_snapshot.text());
    assert_eq!(from_snapshot.json()["template"], json!("snap-1"));
    assert_eq!(remembered.json()["stdout"], json!("remembered\n"));
    assert_eq!(delete_used_snapshot.status_code(), (409, "conflict".into()));
    assert_eq!(names(&templates), ["base"]);
    // Warm-up is off in these tests: creates cold-boot, and the API says so.
    assert_eq!(
        (
            &base.json()["name"],
            &base.json()["source"],
            &base.json()["warm"]
        ),
        (&json!("base"), &json!("images/build.sh"), &json!(false))
    );
    assert_eq!(delete_used_base.status_code(), (409, "conflict".into()));
    assert_eq!(delete_snapshot.status, 204, "{}", delete_snapshot.text());
    assert_eq!(
        delete_snapshot_again.status_code(),
        (404, "snapshot_not_found".into())
    );
    assert_eq!(
        get_deleted_snapshot.status_code(),
        (404, "snapshot_not_found".into())
    );
    assert!(names(&snapshots_after).is_empty());
    assert_eq!(
        delete_base_while_running.status_code(),
        (409, "conflict".into())
    );
    assert_eq!(delete_base.status, 204, "{}", delete_base.text());
    assert!(names(&templates_after).is_empty());
    assert_eq!(base_after.status_code(), (404, "template_not_found".into()));
    assert_eq!(
        create_without_base.status_code(),
        (404, "template_not_found".into())
    );
}

#[tokio::test]
async fn bad_names_are_400_and_touch_nothing_on_disk() {
    let Some(agent) = common::start_agent().await else {
        return;
    };
    let api = Client::new(agent.url());
    let before = tree(agent.data_dir.path());
    let mut replies = Vec::new();

    for name in BAD_NAMES {
        replies.push(api.post("/v1/sandboxes", &json!({"template": name})).await);
        replies.push(
            api.post(
                &format!("/v1/sandboxes/{UNKNOWN_ID}/snapshots"),
                &json!({"name": name}),
            )
            .await,
        );
    }
    for segment in BAD_SEGMENTS {
        replies.push(api.get(&format!("/v1/snapshots/{segment}")).await);
        replies.push(api.delete(&format!("/v1/snapshots/{segment}")).await);
        replies.push(api.get(&format!("/v1/templates/{segment}")).await);
        replies.push(api.delete(&format!("/v1/templates/{segment}")).await);
    }
    let after = tree(agent.data_dir.path());
    let templates = api.get("/v1/templates").await;

    agent.stop().await;

    let statuses: Vec<(u16, String)> = replies.iter().map(Reply::status_code).collect();
    assert_eq!(statuses, vec![(400, "invalid_name".to_string()); 24]);
    assert_eq!(before, after);
    assert_eq!(names(&templates), ["base"]);
}

#[tokio::test]
async fn unknown_ids_and_names_are_404() {
    let Some(agent) = common::start_agent().await else {
        return;
    };
    let api = Client::new(agent.url());
    let sandbox = format!("/v1/sandboxes/{UNKNOWN_ID}");

    let sandbox_replies = [
        api.get(&sandbox).await,
        api.delete(&sandbox).await,
        api.post(&format!("{sandbox}/pause"), &json!({})).await,
        api.post(&format!("{sandbox}/resume"), &json!({})).await,
        api.post(&format!("{sandbox}/timeout"), &json!({"timeout_s": 60}))
            .await,
        api.post(&format!("{sandbox}/exec"), &json!({"cmd": "true"}))
            .await,
        api.post(&format!("{sandbox}/exec/stream"), &json!({"cmd": "true"}))
            .await,
        api.put(&format!("{sandbox}/files?path=/tmp/x"), "x").await,
        api.get(&format!("{sandbox}/files?path=/tmp/x")).await,
        api.get(&format!("{sandbox}/files/list?path=/tmp")).await,
        api.post(&format!("{sandbox}/snapshots"), &json!({"name": "s"}))
            .await,
    ];
    let template = api
        .post("/v1/sandboxes", &json!({"template": "no-such"}))
        .await;
    let get_template = api.get("/v1/templates/no-such").await;
    let delete_template = api.delete("/v1/templates/no-such").await;
    let get_snapshot = api.get("/v1/snapshots/no-such").await;
    let delete_snapshot = api.delete("/v1/snapshots/no-such").await;

    agent.stop().await;

    let statuses: Vec<(u16, String)> = sandbox_replies.iter().map(Reply::status_code).collect();
    assert_eq!(statuses, vec![(404, "sandbox_not_found".to_string()); 11]);
    assert_eq!(template.status_code(), (404, "template_not_found".into()));
    assert_eq!(
        get_template.status_code(),
        (404, "template_not_found".into())
    );
    assert_eq!(
        delete_template.status_code(),
        (404, "template_not_found".into())
    );
    assert_eq!(
        get_snapshot.status_code(),
        (404, "snapshot_not_found".into())
    );
    assert_eq!(
        delete_snapshot.status_code(),
        (404, "snapshot_not_found".into())
    );
}

#[tokio::test]
async fn pty_refuses_plain_http_bad_queries_unknown_and_paused_sandboxes() {
    let Some(agent) = common::start_agent().await else {
        return;
    };
    let api = Client::new(agent.url());
    let id = id_of(
        &api.post("/v1/sandboxes", &sandbox_request(&json!({})))
            .await,
    );
    let pty = format!("/v1/sandboxes/{id}/pty");

    let plain_http = api.get(&format!("{pty}?cols=80&rows=24")).await;
    let zero_cols = api.get(&format!("{pty}?cols=0&rows=24")).await;
    let huge_rows = api.get(&format!("{pty}?cols=80&rows=5000")).await;
    let no_cols = api.get(&format!("{pty}?rows=24")).await;
    let unknown_param = api.get(&format!("{pty}?cols=80&rows=24&shell=zsh")).await;
    let unknown_sandbox = api
        .get(&format!("/v1/sandboxes/{UNKNOWN_ID}/pty?cols=80&rows=24"))
        .await;
    api.post(&format!("/v1/sandboxes/{id}/pause"), &json!({}))
        .await;
    let paused = api.get(&format!("{pty}?cols=80&rows=24")).await;

    agent.stop().await;

    assert_eq!(plain_http.status_code(), (400, "websocket_required".into()));
    assert_eq!(zero_cols.status_code(), (400, "invalid_request".into()));
    assert_eq!(huge_rows.status_code(), (400, "invalid_request".into()));
    assert_eq!(no_cols.status_code(), (400, "invalid_query".into()));
    assert_eq!(unknown_param.status_code(), (400, "invalid_query".into()));
    assert_eq!(
        unknown_sandbox.status_code(),
        (404, "sandbox_not_found".into())
    );
    assert_eq!(paused.status_code(), (409, "invalid_state".into()));
}

#[tokio::test]
async fn malformed_requests_are_400_and_oversize_bodies_413() {
    let Some(agent) = common::start_agent().await else {
        return;
    };
    let api = Client::new(agent.url());

    let not_json = api
        .send(Method::POST, "/v1/sandboxes", "{\"template\":")
        .await;
    let unknown_field = api
        .post("/v1/sandboxes", &json!({"template": "base", "cpus": 2}))
        .await;
    let no_template = api.post("/v1/sandboxes", &json!({})).await;
    let zero_vcpus = api
        .post("/v1/sandboxes", &json!({"template": "base", "vcpus": 0}))
        .await;
    let tiny_memory = api
        .post(
            "/v1/sandboxes",
            &json!({"template": "base", "memory_mb": 16}),
        )
        .await;
    let zero_timeout = api
        .post(
            "/v1/sandboxes",
            &json!({"template": "base", "timeout_s": 0}),
        )
        .await;
    let bad_state = api.get("/v1/sandboxes?state=sleeping").await;
    let bad_metadata = api.get("/v1/sandboxes?metadata=novalue").await;
    let bad_param = api.get("/v1/sandboxes?color=red").await;
    let huge = json!({"template": "base", "metadata": {"pad": "x".repeat(2 << 20)}});
    let oversize = api.post("/v1/sandboxes", &huge).await;
    let oversize_exec = api
        .post(
            &format!("/v1/sandboxes/{UNKNOWN_ID}/exec"),
            &json!({"cmd": "x".repeat(2 << 20)}),
        )
        .await;
    let listed = api.get("/v1/sandboxes").await;

    agent.stop().await;

    assert_eq!(not_json.status_code(), (400, "invalid_json".into()));
    assert_eq!(unknown_field.status_code(), (400, "invalid_request".into()));
    assert_eq!(no_template.status_code(), (400, "invalid_request".into()));
    assert_eq!(zero_vcpus.status_code(), (400, "invalid_request".into()));
    assert_eq!(tiny_memory.status_code(), (400, "invalid_request".into()));
    assert_eq!(zero_timeout.status_code(), (400, "invalid_request".into()));
    assert_eq!(bad_state.status_code(), (400, "invalid_request".into()));
    assert_eq!(bad_metadata.status_code(), (400, "invalid_request".into()));
    assert_eq!(bad_param.status_code(), (400, "invalid_request".into()));
    assert_eq!(oversize.status_code(), (413, "payload_too_large".into()));
    assert_eq!(
        oversize_exec.status_code(),
        (413, "payload_too_large".into())
    );
    assert!(names(&listed).is_empty());
}

#[tokio::test]
async fn create_beyond_capacity_is_503() {
    let Some((kernel, rootfs)) = common::images() else {
        return;
    };
    let data_dir = tempfile::tempdir().unwrap();
    let config = host_agent::AgentConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.path().to_path_buf(),
        accel: host_agent::config::AccelChoice::Tcg,
        max_sandboxes: 0,
        api_keys: vec![common::API_KEY.to_string()],
        kernel: Some(kernel),
        rootfs: Some(rootfs),
        ..host_agent::AgentConfig::default()
    };
    let agent = host_agent::start(config).await.unwrap();
    let api = Client::new(format!("http://{}", agent.api_addr));

    let refused = api
        .post("/v1/sandboxes", &sandbox_request(&json!({})))
        .await;

    agent.shutdown_and_destroy_all().await.unwrap();

    assert_eq!(refused.status_code(), (503, "capacity".into()));
}

#[tokio::test]
async fn metrics_show_sandboxes_by_state_latencies_and_errors() {
    let Some(agent) = common::start_agent().await else {
        return;
    };
    let api = Client::new(agent.url());
    api.get(&format!("/v1/sandboxes/{UNKNOWN_ID}")).await;
    api.get("/v1/templates").await;

    let metrics = api.get("/metrics").await;

    agent.stop().await;

    let text = metrics.text();
    let expected = [
        "petrel_sandboxes{state=\"running\"} 0",
        "petrel_sandboxes{state=\"paused\"} 0",
        "petrel_templates 1",
        "petrel_api_request_duration_seconds_count{operation=\"getSandbox\"} 1",
        "petrel_api_requests_total{operation=\"listTemplates\",status=\"200\"} 1",
        "petrel_api_errors_total{operation=\"getSandbox\",code=\"sandbox_not_found\"} 1",
    ];
    let missing: Vec<&str> = expected
        .into_iter()
        .filter(|line| !text.lines().any(|l| l == *line))
        .collect();
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
    );
    assert!(missing.is_empty(), "missing {missing:?} in\n{text}");
}

#[tokio::test]
async fn metrics_show_the_disk_space_each_sandbox_really_uses() {
    let Some(agent) = common::start_agent().await else {
        return;
    };
    let api = Client::new(agent.url());
    let created = api
        .post("/v1/sandboxes", &sandbox_request(&json!({})))
        .await;
    let id = id_of(&created);
    let before = api.get("/metrics").await.text();
    api.post(
        &format!("/v1/sandboxes/{id}/exec"),
        &json!({"cmd": "head -c 32M /dev/urandom > ~/big && sync"}),
    )
    .await;
    let after = api.get("/metrics").await.text();

    agent.stop().await;

    let disk_bytes = |text: &str| -> u64 {
        let prefix = format!("petrel_sandbox_disk_bytes{{sandbox=\"{id}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no disk line for {id} in\n{text}"))
            .parse()
            .unwrap()
    };
    let (before, after) = (disk_bytes(&before), disk_bytes(&after));
    // Allocated blocks, not the sparse files' apparent sizes (a 2 GiB base
    // behind the overlay, a 256 MiB RAM file).
    assert!(before < 200 << 20, "{before}");
    assert!(after >= before + (32 << 20), "{before} -> {after}");
}

/// `name{template="base"} value` of a /metrics text, as a number.
fn pool_metric(metrics: &str, name: &str) -> Option<u64> {
    let prefix = format!("{name}{{template=\"base\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// The value of the unlabelled metric `name`.
fn metric(metrics: &str, name: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// The agent's network slot range.
fn agent_slots(agent: &common::TestAgent) -> std::ops::Range<u16> {
    let config = &agent.agent.state.config;
    config.net_slot_first..config.net_slot_first + config.net_slot_count
}

#[tokio::test]
async fn spare_networks_serve_creates_and_go_when_the_agent_stops() {
    // Arrange: an agent (as root: namespaces) keeping one network made ahead.
    let Some(agent) = common::start_agent_with(|config| config.net_spares = 1).await else {
        return;
    };
    if !agent.agent.state.config.network.namespaces() {
        eprintln!("skipped: sandboxes get no namespaces here (not root)");
        return;
    }
    let api = Client::new(agent.url());
    let wait_for_a_spare = || async {
        let start = std::time::Instant::now();
        loop {
            let metrics = api.get("/metrics").await.text();
            if metric(&metrics, "petrel_network_spares") == Some(1) {
                return metrics;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(60),
                "no spare network was made: {metrics}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    let before = wait_for_a_spare().await;
    let made_ahead = common::binary::namespaces(agent_slots(&agent));

    // Act: a create without internet takes the spare (made with internet
    // on); the agent makes another; then it stops.
    let created = api
        .post(
            "/v1/sandboxes",
            &json!({"template": "base", "internet": false}),
        )
        .await;
    let id = id_of(&created);
    let out = api
        .post(
            &format!("/v1/sandboxes/{id}/exec"),
            &json!({"cmd": "echo hi"}),
        )
        .await;
    let refilled = wait_for_a_spare().await;
    let while_running = common::binary::namespaces(agent_slots(&agent));
    let slots = agent_slots(&agent);
    agent.stop().await;
    let after_stop = common::binary::namespaces(slots);

    // Assert: the sandbox ran on the spare's namespace, a new spare came,
    // and stopping the agent removed every namespace.
    assert_eq!(made_ahead.len(), 1, "{made_ahead:?}");
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(out.json()["stdout"], json!("hi\n"));
    assert_eq!(created.json()["internet"], json!(false));
    assert_eq!(
        metric(&before, "petrel_network_spares_taken_total"),
        Some(0)
    );
    assert_eq!(
        metric(&refilled, "petrel_network_spares_taken_total"),
        Some(1)
    );
    assert!(while_running.contains(&made_ahead[0]), "{while_running:?}");
    assert_eq!(while_running.len(), 2, "{while_running:?}");
    assert!(after_stop.is_empty(), "{after_stop:?}");
}

#[tokio::test]
async fn a_warm_pool_serves_creates_and_metrics_count_it() {
    // Arrange: an agent warming base and pooling one sandbox of it.
    let Some(agent) = common::start_agent_with(|config| {
        config.warm_templates = true;
        config.pool_size = 1;
    })
    .await
    else {
        return;
    };
    let api = Client::new(agent.url());
    let start = std::time::Instant::now();
    let metrics = loop {
        let metrics = api.get("/metrics").await.text();
        if pool_metric(&metrics, "petrel_pool_ready") == Some(1) {
            break metrics;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(300),
            "the pool never filled: {metrics}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let template = api.get("/v1/templates/base").await;

    // Act: a create of the default shape, with an env var.
    let created = api
        .post(
            "/v1/sandboxes",
            &json!({"template": "base", "env": {"FROM_POOL": "yes"}}),
        )
        .await;
    let id = id_of(&created);
    let out = api
        .post(
            &format!("/v1/sandboxes/{id}/exec"),
            &json!({"cmd": "echo $FROM_POOL; hostname"}),
        )
        .await;
    let after = api.get("/metrics").await.text();
    agent.stop().await;

    // Assert: the template is warm, the create took the pooled sandbox
    // (its own name, the caller's env) and the metrics say so.
    assert_eq!(template.json()["warm"], json!(true));
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(out.json()["stdout"], json!(format!("yes\n{id}\n")));
    assert_eq!(pool_metric(&metrics, "petrel_pool_size"), Some(1));
    assert_eq!(pool_metric(&after, "petrel_pool_hits_total"), Some(1));
    assert_eq!(pool_metric(&after, "petrel_pool_misses_total"), Some(0));
}
