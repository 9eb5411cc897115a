//! Hostile guests and callers against the agent's bounds, with real VMs
//! (TCG unless `PETREL_ACCEL=kvm`): output floods, huge files, a full disk,
//! resumes beyond capacity, paused and snapshot quotas.
//!
//! The memory bound: while a test floods the agent, the test process's
//! peak RSS (`VmHWM`, reset at the start through `/proc/self/clear_refs`;
//! the agent runs in-process) grows by less than [`RSS_BOUND`]. The tests
//! run one at a time so that one's memory does not count against another.
//!
//! Run with `PETREL_KERNEL=… PETREL_ROOTFS=… cargo test -p host-agent --test
//! bounds`; without them the tests return early (and fail under
//! `PETREL_REQUIRE_VM=1`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client;
mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use client::{Client, Reply};
use futures::StreamExt as _;
use http::Method;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};

/// How much the agent's memory may grow while a guest floods it: 256 MiB.
const RSS_BOUND: u64 = 256 << 20;

/// Peak RSS envd in the guest may reach while floods pass through it: its
/// per-stream queues are ~0.5 MiB; what a reader does not take waits in
/// the process's pipe.
const ENVD_PEAK_BOUND_KIB: u64 = 64 << 10;
/// Prints envd's peak RSS (KiB) in the guest.
const ENVD_PEAK_KIB: &str = "for p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = envd ] && awk '/VmHWM/{print $2}' $p/status; done";

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A field of `/proc/self/status` in bytes (`VmRSS`, `VmHWM`).
fn status_bytes(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim_start_matches(':').trim().strip_suffix("kB"))
        .map_or_else(
            || panic!("no {field} in /proc/self/status"),
            |kib| kib.trim().parse::<u64>().unwrap() * 1024,
        )
}

/// Peak RSS growth of this process since [`Peak::start`].
struct Peak {
    start: u64,
}

impl Peak {
    fn start() -> Self {
        // "5" resets VmHWM to the current RSS.
        std::fs::write("/proc/self/clear_refs", "5").unwrap();
        Self {
            start: status_bytes("VmRSS"),
        }
    }

    fn growth(&self) -> u64 {
        status_bytes("VmHWM").saturating_sub(self.start)
    }
}

fn small_sandbox() -> Value {
    json!({"template": "base", "memory_mb": 256, "timeout_s": 1800})
}

fn id_of(reply: &Reply) -> String {
    reply.json()["id"].as_str().unwrap_or_default().to_string()
}

async fn create(api: &Client) -> String {
    let created = api.post("/v1/sandboxes", &small_sandbox()).await;
    assert_eq!(created.status, 201, "{}", created.text());
    id_of(&created)
}

async fn exec(api: &Client, id: &str, body: Value) -> Reply {
    api.post(&format!("/v1/sandboxes/{id}/exec"), &body).await
}

/// Reads the body of `response`, counting its bytes and keeping none;
/// pauses `pause` after every `every` bytes (a slow reader), stops after
/// `stop_after` bytes.
async fn drain(
    response: http::Response<hyper::body::Incoming>,
    every: u64,
    pause: Duration,
    stop_after: u64,
) -> u64 {
    let mut body = response.into_body();
    let (mut total, mut since_pause) = (0u64, 0u64);
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.unwrap().into_data() else {
            continue;
        };
        total += data.len() as u64;
        since_pause += data.len() as u64;
        if since_pause >= every {
            since_pause = 0;
            tokio::time::sleep(pause).await;
        }
        if total >= stop_after {
            break;
        }
    }
    total
}

#[tokio::test]
async fn output_floods_and_huge_files_keep_the_agent_memory_bounded() {
    let _serial = SERIAL.lock().await;
    let Some(agent) = common::start_agent_with(|c| c.max_concurrent_uploads = 1).await else {
        return;
    };
    let api = Client::new(agent.url());
    let id = create(&api).await;
    let sandbox = format!("/v1/sandboxes/{id}");
    let peak = Peak::start();

    // 2 GiB of NULs through the JSON route: capped, and said so.
    let flood = exec(
        &api,
        &id,
        json!({"cmd": "head -c 2G /dev/zero; echo done >&2", "timeout_s": 3600}),
    )
    .await;
    let after_exec = peak.growth();
    // The same through exec/stream, read slowly, then dropped.
    let streamed = api
        .open(
            Method::POST,
            &format!("{sandbox}/exec/stream"),
            json!({"cmd": "head -c 2G /dev/zero"}).to_string(),
        )
        .await;
    let stream_status = streamed.status();
    let read = drain(streamed, 4 << 20, Duration::from_secs(1), 48 << 20).await;
    let after_stream = peak.growth();
    // Right after the drop, the sandbox answers (envd once queued the
    // unread flood in guest memory until the guest ran out of it).
    // A 768 MiB guest file, read as a stream.
    let made = exec(&api, &id, json!({"cmd": "truncate -s 768M /home/user/big"})).await;
    // envd's own peak memory in the guest, floods included.
    let envd_peak = exec(&api, &id, json!({"cmd": ENVD_PEAK_KIB, "user": "root"})).await;
    let download = api
        .open(
            Method::GET,
            &format!("{sandbox}/files?path=/home/user/big"),
            Bytes::new(),
        )
        .await;
    let download_len = download.headers().get("content-length").cloned();
    let downloaded = drain(download, 64 << 20, Duration::from_millis(100), u64::MAX).await;
    let after_download = peak.growth();
    // A 256 MiB upload, produced as it is sent.
    let chunks = futures::stream::iter(0..256)
        .map(|_| {
            Ok::<_, std::io::Error>(hyper::body::Frame::data(Bytes::from(vec![b'x'; 1 << 20])))
        })
        .boxed();
    let uploaded = api
        .send_streamed(
            Method::PUT,
            &format!("{sandbox}/files?path=/home/user/up"),
            http_body_util::StreamBody::new(chunks),
        )
        .await;
    let up_size = exec(
        &api,
        &id,
        json!({"cmd": "stat -c %s /home/user/up; rm -f /home/user/up /home/user/big"}),
    )
    .await;
    let after_upload = peak.growth();
    // One upload at a time (max_concurrent_uploads = 1): a second one
    // while the first is in progress is refused.
    let (feed, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    feed.send(Bytes::from_static(b"first part")).await.unwrap();
    let slow_body = tokio_stream_of(rx);
    let slow = tokio::spawn({
        let api = api.clone();
        let path = format!("{sandbox}/files?path=/home/user/slow");
        async move {
            api.send_streamed(
                Method::PUT,
                &path,
                http_body_util::StreamBody::new(slow_body),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = api
        .put(&format!("{sandbox}/files?path=/home/user/second"), "x")
        .await;
    drop(feed);
    let first = slow.await.unwrap();
    let third = api
        .put(&format!("{sandbox}/files?path=/home/user/third"), "x")
        .await;
    let after = exec(&api, &id, json!({"cmd": "echo still here"})).await;

    agent.stop().await;

    let output = flood.json();
    assert_eq!(flood.status, 200, "{}", flood.text());
    assert_eq!(output["stdout_truncated"], true);
    assert_eq!(output["stdout"].as_str().unwrap().len(), 4 << 20);
    assert_eq!(output["stderr"], "done\n");
    assert_eq!(output["stderr_truncated"], false);
    assert_eq!(output["exit_code"], 0);
    assert_eq!(stream_status, 200);
    assert!(read >= 48 << 20, "{read}");
    assert_eq!(made.json()["exit_code"], 0, "{}", made.text());
    let envd_peak_kib: u64 = envd_peak.json()["stdout"]
        .as_str()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("envd peak: {}", envd_peak.text()));
    eprintln!("envd in the guest: peak RSS {} MiB", envd_peak_kib >> 10);
    assert!(
        envd_peak_kib < ENVD_PEAK_BOUND_KIB,
        "envd in the guest peaked at {} MiB: it queued the unread flood",
        envd_peak_kib >> 10
    );
    assert_eq!(
        download_len.as_ref().and_then(|v| v.to_str().ok()),
        Some("805306368")
    );
    assert_eq!(downloaded, 768 << 20);
    assert_eq!(uploaded.status, 204, "{}", uploaded.text());
    assert_eq!(up_size.json()["stdout"], "268435456\n");
    assert_eq!(second.status_code(), (429, "too_many_uploads".into()));
    assert_eq!(first.status, 204, "{}", first.text());
    assert_eq!(third.status, 204, "{}", third.text());
    assert_eq!(after.json()["stdout"], "still here\n");
    for (what, growth) in [
        ("exec", after_exec),
        ("exec/stream", after_stream),
        ("file read", after_download),
        ("upload", after_upload),
    ] {
        eprintln!("{what}: peak RSS growth {} MiB", growth >> 20);
        assert!(
            growth < RSS_BOUND,
            "{what}: RSS grew by {} MiB (bound {} MiB)",
            growth >> 20,
            RSS_BOUND >> 20
        );
    }
}

/// The chunks of `rx` as a request body, ending when the sender is dropped.
fn tokio_stream_of(rx: tokio::sync::mpsc::Receiver<Bytes>) -> client::StreamedChunks {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok(hyper::body::Frame::data(chunk)), rx))
    })
    .boxed()
}

#[tokio::test]
async fn list_of_a_file_with_a_far_future_mtime_answers() {
    let _serial = SERIAL.lock().await;
    let Some(agent) = common::start_agent().await else {
        return;
    };
    let api = Client::new(agent.url());
    let id = create(&api).await;
    let touched = exec(
        &api,
        &id,
        json!({"cmd": "mkdir -p /mnt/t && mount -t tmpfs tmpfs /mnt/t && touch -d @10000000000000 /mnt/t/far && stat -c %Y /mnt/t/far", "user": "root"}),
    )
    .await;

    let listed = api
        .get(&format!("/v1/sandboxes/{id}/files/list?path=/mnt/t"))
        .await;

    agent.stop().await;
    assert_eq!(
        touched.json()["stdout"],
        "10000000000000\n",
        "{}",
        touched.text()
    );
    assert_eq!(listed.status, 200, "{}", listed.text());
    assert_eq!(listed.json()[0]["name"], "far");
    assert_eq!(listed.json()[0]["modified_at"], Value::Null);
}

#[tokio::test]
async fn guest_filling_its_disk_leaves_the_agent_and_other_sandboxes_working() {
    let _serial = SERIAL.lock().await;
    let Some(agent) = common::start_agent().await else {
        return;
    };
    let api = Client::new(agent.url());
    let filler = create(&api).await;
    let other = create(&api).await;

    let fill = tokio::spawn({
        let api = api.clone();
        let filler = filler.clone();
        async move {
            exec(
                &api,
                &filler,
                json!({"cmd": "dd if=/dev/zero of=/fill bs=1M; sync; df -k / | tail -1", "user": "root", "timeout_s": 3600}),
            )
            .await
        }
    });
    let mut checks = Vec::new();
    while !fill.is_finished() {
        let listed = api.get("/v1/sandboxes").await;
        let echoed = exec(&api, &other, json!({"cmd": "echo ok"})).await;
        checks.push((listed.status.as_u16(), echoed.json()["stdout"].clone()));
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let filled = fill.await.unwrap();
    let after = exec(&api, &other, json!({"cmd": "echo ok"})).await;
    let cleaned = exec(
        &api,
        &filler,
        json!({"cmd": "rm /fill && echo removed", "user": "root"}),
    )
    .await;

    agent.stop().await;

    assert_eq!(filled.status, 200, "{}", filled.text());
    assert!(
        filled.json()["stderr"]
            .as_str()
            .unwrap()
            .contains("No space left on device"),
        "{}",
        filled.text()
    );
    assert!(!checks.is_empty());
    assert!(
        checks
            .iter()
            .all(|(status, out)| *status == 200 && out == "ok\n"),
        "{checks:?}"
    );
    assert_eq!(after.json()["stdout"], "ok\n");
    assert_eq!(cleaned.json()["stdout"], "removed\n", "{}", cleaned.text());
}

#[tokio::test]
async fn resume_beyond_capacity_is_503_and_paused_sandboxes_are_capped_and_expire() {
    let _serial = SERIAL.lock().await;
    let Some(agent) = common::start_agent_with(|c| {
        c.max_sandboxes = 1;
        c.max_paused = 1;
        c.paused_ttl_s = 10;
    })
    .await
    else {
        return;
    };
    let api = Client::new(agent.url());
    let e2b = Client::new(agent.url()).with_header("X-API-KEY", common::API_KEY);
    let first = create(&api).await;
    let paused = api
        .post(&format!("/v1/sandboxes/{first}/pause"), &json!({}))
        .await;
    let paused_at = Instant::now();
    let second = create(&api).await;

    let resumed = api
        .post(&format!("/v1/sandboxes/{first}/resume"), &json!({}))
        .await;
    let connected = e2b
        .post(
            &format!("/sandboxes/{first}/connect"),
            &json!({"timeout": 60}),
        )
        .await;
    let created = e2b
        .post("/sandboxes", &json!({"templateID": "base", "timeout": 60}))
        .await;
    let second_pause = api
        .post(&format!("/v1/sandboxes/{second}/pause"), &json!({}))
        .await;
    let mut first_state = api.get(&format!("/v1/sandboxes/{first}")).await;
    while first_state.status == 200 && paused_at.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        first_state = api.get(&format!("/v1/sandboxes/{first}")).await;
    }
    let expired_after = paused_at.elapsed();
    let second_pause_later = api
        .post(&format!("/v1/sandboxes/{second}/pause"), &json!({}))
        .await;

    agent.stop().await;

    assert_eq!(paused.json()["state"], "paused", "{}", paused.text());
    assert_eq!(
        resumed.status_code(),
        (503, "capacity".into()),
        "{}",
        resumed.text()
    );
    assert_eq!(connected.status, 503, "{}", connected.text());
    assert_eq!(created.status, 503, "{}", created.text());
    assert_eq!(
        second_pause.status_code(),
        (429, "quota_exceeded".into()),
        "{}",
        second_pause.text()
    );
    assert_eq!(
        first_state.status, 404,
        "still there after {expired_after:?}"
    );
    assert!(expired_after >= Duration::from_secs(9), "{expired_after:?}");
    assert_eq!(
        second_pause_later.json()["state"],
        "paused",
        "{}",
        second_pause_later.text()
    );
}

#[tokio::test]
async fn snapshots_beyond_the_count_or_bytes_quota_are_refused() {
    let _serial = SERIAL.lock().await;
    let Some(counted) = common::start_agent_with(|c| c.max_snapshots = 1).await else {
        return;
    };
    let api = Client::new(counted.url());
    let id = create(&api).await;
    let snapshots = format!("/v1/sandboxes/{id}/snapshots");
    let first = api.post(&snapshots, &json!({"name": "s1"})).await;
    let second = api.post(&snapshots, &json!({"name": "s2"})).await;
    let listed = api.get("/v1/snapshots").await;
    counted.stop().await;

    let Some(sized) = common::start_agent_with(|c| c.max_snapshot_bytes = 1 << 20).await else {
        return;
    };
    let api = Client::new(sized.url());
    let id = create(&api).await;
    let too_big = api
        .post(
            &format!("/v1/sandboxes/{id}/snapshots"),
            &json!({"name": "big"}),
        )
        .await;
    let sized_list = api.get("/v1/snapshots").await;
    let left = sized.data_dir.path().join("snapshots/big").exists();
    sized.stop().await;

    assert_eq!(first.status, 201, "{}", first.text());
    assert_eq!(
        second.status_code(),
        (429, "quota_exceeded".into()),
        "{}",
        second.text()
    );
    assert_eq!(listed.json().as_array().map(Vec::len), Some(1));
    assert_eq!(
        too_big.status_code(),
        (429, "quota_exceeded".into()),
        "{}",
        too_big.text()
    );
    assert_eq!(sized_list.json(), json!([]));
    assert!(!left, "the refused snapshot's files were left behind");
}
