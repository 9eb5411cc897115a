//! Kill -9 the real `host-agent` binary with one running and one paused
//! sandbox; a new agent on the same data dir takes both over: the running
//! one keeps working, the paused one resumes with its files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client;
mod common;

use std::process::{Command, Stdio};

use client::Client;
use common::binary::{Agent, Spawn, free_port, namespaces, wait_ready};
use serde_json::{Value, json};

/// The agent binary serving `data_dir` (no warm-up, no crash point).
fn spawn_agent(
    data_dir: &std::path::Path,
    port: u16,
    kernel: &std::path::Path,
    rootfs: &std::path::Path,
    slot_first: u16,
) -> Agent {
    Agent::spawn(&Spawn {
        data_dir,
        port,
        kernel,
        rootfs,
        slot_first,
        warm_templates: false,
        env: Vec::new(),
    })
}

async fn exec(client: &Client, id: &str, cmd: &str) -> Value {
    client
        .post(&format!("/v1/sandboxes/{id}/exec"), &json!({ "cmd": cmd }))
        .await
        .json()
}

#[tokio::test]
async fn kill_9_then_restart_keeps_running_and_paused_sandboxes() {
    let Some((kernel, rootfs)) = common::images() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let client = Client::new(format!("http://127.0.0.1:{port}"));
    let mut first = spawn_agent(data.path(), port, &kernel, &rootfs, 30_000);
    wait_ready(port).await;
    let running = client
        .post("/v1/sandboxes", &json!({"template": "base"}))
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let paused = client
        .post("/v1/sandboxes", &json!({"template": "base"}))
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    exec(&client, &running, "echo alive > /tmp/mark").await;
    exec(&client, &paused, "echo kept > /tmp/mark").await;
    client
        .post(&format!("/v1/sandboxes/{paused}/pause"), &json!({}))
        .await;

    first.kill_9();
    let mut second = spawn_agent(data.path(), port, &kernel, &rootfs, 30_000);
    wait_ready(port).await;
    let running_state =
        client.get(&format!("/v1/sandboxes/{running}")).await.json()["state"].clone();
    let alive = exec(&client, &running, "cat /tmp/mark").await;
    let resumed = client
        .post(&format!("/v1/sandboxes/{paused}/resume"), &json!({}))
        .await
        .json();
    let kept = exec(&client, &paused, "cat /tmp/mark").await;
    for id in [&running, &paused] {
        client.delete(&format!("/v1/sandboxes/{id}")).await;
    }
    second.kill_9();

    assert_eq!(running_state, "running");
    assert_eq!(alive["stdout"], "alive\n");
    assert_eq!(resumed["state"], "running");
    assert_eq!(kept["stdout"], "kept\n");
}

/// The group confined VMMs read their read-only inputs (template base
/// images) through: no user is in it.
const VMM_GID: u32 = sandbox_core::confine::DEFAULT_UID_FIRST - 1;

/// Every directory and file under `dir` whose mode lets anyone but the
/// owner in (`(path, mode)`), `dir` included; read access for the VMMs'
/// group alone does not count.
fn open_to_others(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u32)> {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.file_type().is_symlink() || meta.file_type().is_socket() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o777;
        // Group read at most (no group write or execute, nothing for others).
        let vmm_read_only = meta.gid() == VMM_GID && (mode & 0o077) | 0o040 == 0o040;
        if mode & 0o077 != 0 && !vmm_read_only {
            found.push((path.clone(), mode));
        }
        if meta.is_dir() {
            stack.extend(
                std::fs::read_dir(&path)
                    .unwrap()
                    .flatten()
                    .map(|e| e.path()),
            );
        }
    }
    found
}

/// Whether the user `nobody` can read `path` (tried for real, with
/// util-linux's setpriv).
fn nobody_can_read(path: &std::path::Path) -> bool {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[tokio::test]
async fn another_local_user_reads_no_token_ram_or_snapshot() {
    use std::os::unix::fs::PermissionsExt as _;
    let Some((kernel, rootfs)) = common::images() else {
        return;
    };
    // Arrange: a sandbox with a secret, paused, resumed and snapshotted, so
    // the database, saved state, RAM and snapshot files all exist.
    let parent = tempfile::tempdir().unwrap();
    std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = parent.path().join("data");
    let port = free_port();
    let client = Client::new(format!("http://127.0.0.1:{port}"));
    let mut agent = spawn_agent(&data, port, &kernel, &rootfs, 30_032);
    wait_ready(port).await;
    let id = client
        .post("/v1/sandboxes", &json!({"template": "base"}))
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    exec(&client, &id, "echo secret-7f3a > /tmp/secret").await;
    client
        .post(&format!("/v1/sandboxes/{id}/pause"), &json!({}))
        .await;
    let paused_files = open_to_others(&data);
    client
        .post(&format!("/v1/sandboxes/{id}/resume"), &json!({}))
        .await;
    let snapshot = client
        .post(
            &format!("/v1/sandboxes/{id}/snapshots"),
            &json!({"name": "private-snap"}),
        )
        .await;

    // Act
    let exposed = open_to_others(&data);
    let data_mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    let db_readable = nobody_can_read(&data.join("petrel.db"));
    let snapshot_files: Vec<_> = std::fs::read_dir(data.join("snapshots").join("private-snap"))
        .map(|dir| dir.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    let snapshot_readable: Vec<_> = snapshot_files
        .iter()
        .filter(|path| nobody_can_read(path))
        .collect();

    client.delete(&format!("/v1/sandboxes/{id}")).await;
    client.delete("/v1/snapshots/private-snap").await;
    agent.kill_9();

    // Assert
    assert_eq!(snapshot.status.as_u16(), 201, "{}", snapshot.text());
    assert_eq!(data_mode, 0o700);
    assert!(
        paused_files.is_empty(),
        "open to others while paused: {paused_files:?}"
    );
    assert!(exposed.is_empty(), "open to others: {exposed:?}");
    assert!(!db_readable, "nobody read petrel.db (envd tokens)");
    assert!(!snapshot_files.is_empty());
    assert!(
        snapshot_readable.is_empty(),
        "nobody read {snapshot_readable:?}"
    );
}

/// The template's base image files in `data`.
fn base_files(data: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(data.join("templates/base"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("rootfs-"))
        })
        .collect()
}

#[tokio::test]
async fn snapshots_outlive_an_image_rebuild_and_a_parent_with_children_is_not_deleted() {
    let Some((kernel, rootfs)) = common::images() else {
        return;
    };
    // Arrange: s1 of a sandbox, s2 of a sandbox started from s1 (its disk
    // backs onto s1's); the sandboxes are gone.
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("data");
    let port = free_port();
    let client = Client::new(format!("http://127.0.0.1:{port}"));
    let mut first = spawn_agent(&data, port, &kernel, &rootfs, 30_064);
    wait_ready(port).await;
    let create = |template: &'static str| {
        let client = &client;
        async move {
            client
                .post("/v1/sandboxes", &json!({ "template": template }))
                .await
                .json()["id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let one = create("base").await;
    exec(&client, &one, "echo one > ~/f.txt && sync").await;
    let s1 = client
        .post(
            &format!("/v1/sandboxes/{one}/snapshots"),
            &json!({"name": "s1"}),
        )
        .await;
    let two = create("s1").await;
    exec(&client, &two, "echo two >> ~/f.txt && sync").await;
    let s2 = client
        .post(
            &format!("/v1/sandboxes/{two}/snapshots"),
            &json!({"name": "s2"}),
        )
        .await;
    for id in [&one, &two] {
        client.delete(&format!("/v1/sandboxes/{id}")).await;
    }
    let old_bases = base_files(&data);

    // Act: delete s1 (REST and E2B), then restart the agent with the image
    // at another path (a rebuild), start s2, delete s2 and s1 in order.
    let refused = client.delete("/v1/snapshots/s1").await;
    let refused_e2b = client.delete("/templates/s1").await;
    first.kill_9();
    let rebuilt = parent.path().join("rebuilt.ext4");
    let copied = Command::new("cp")
        .arg("--sparse=always")
        .arg(&rootfs)
        .arg(&rebuilt)
        .status()
        .unwrap();
    assert!(copied.success());
    let mut second = spawn_agent(&data, port, &kernel, &rebuilt, 30_064);
    wait_ready(port).await;
    let bases_after_restart = base_files(&data);
    let three = create("s2").await;
    let read = exec(&client, &three, "cat ~/f.txt").await;
    client.delete(&format!("/v1/sandboxes/{three}")).await;
    let deleted_s2 = client.delete("/v1/snapshots/s2").await;
    let deleted_s1 = client.delete("/v1/snapshots/s1").await;
    let bases_at_end = base_files(&data);
    second.kill_9();

    // Assert
    assert_eq!(s1.status.as_u16(), 201, "{}", s1.text());
    assert_eq!(s2.status.as_u16(), 201, "{}", s2.text());
    assert_eq!(refused.status_code(), (409, "conflict".into()));
    assert!(refused.text().contains("snapshot s2"), "{}", refused.text());
    assert_eq!(refused_e2b.status.as_u16(), 409, "{}", refused_e2b.text());
    assert!(
        refused_e2b.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("snapshot s2")),
        "{}",
        refused_e2b.text()
    );
    assert_eq!(old_bases.len(), 1);
    assert_eq!(bases_after_restart.len(), 2, "{bases_after_restart:?}");
    assert!(bases_after_restart.contains(&old_bases[0]));
    assert_eq!(read["stdout"], "one\ntwo\n", "{read}");
    assert_eq!(deleted_s2.status.as_u16(), 204, "{}", deleted_s2.text());
    assert_eq!(deleted_s1.status.as_u16(), 204, "{}", deleted_s1.text());
    assert_eq!(bases_at_end.len(), 1, "{bases_at_end:?}");
    assert!(!bases_at_end.contains(&old_bases[0]));
}

#[tokio::test]
async fn spare_networks_of_a_killed_agent_are_removed_by_the_next_start() {
    // Arrange: an agent (as root: namespaces) that made two networks ahead.
    let Some((kernel, rootfs)) = common::images() else {
        return;
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let slot_first = 30_096;
    let mut first = Agent::spawn(&Spawn {
        data_dir: data.path(),
        port,
        kernel: &kernel,
        rootfs: &rootfs,
        slot_first,
        warm_templates: false,
        env: vec![("PETREL_NET_SPARES", "2".to_string())],
    });
    wait_ready(port).await;
    let start = std::time::Instant::now();
    while namespaces(slot_first..slot_first + 32).len() < 2 && start.elapsed().as_secs() < 60 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let made = namespaces(slot_first..slot_first + 32);

    // Act: the agent dies with its spares; another starts on its data.
    first.kill_9();
    let left_by_the_crash = namespaces(slot_first..slot_first + 32);
    let mut second = spawn_agent(data.path(), port, &kernel, &rootfs, slot_first);
    wait_ready(port).await;
    let after_restart = namespaces(slot_first..slot_first + 32);
    second.kill_9();

    // Assert
    assert_eq!(made.len(), 2, "{made:?}");
    assert_eq!(left_by_the_crash, made);
    assert!(after_restart.is_empty(), "{after_restart:?}");
}
