//! A hostile guest and a hostile caller against one agent at once, with
//! real VMs: one sandbox floods its console, runs `head -c 2G /dev/zero`
//! as an exec (JSON and streaming), fills its disk to the virtual size,
//! takes all its RAM (its OOM killer must take envd last), fork-bombs itself and opens connections as fast as it can; meanwhile a
//! bystander sandbox keeps answering exec, the agent keeps answering its
//! API, and the agent's memory stays bounded.
//!
//! The bound: the test process (the agent in-process, plus this test's
//! client) grows by at most [`RSS_BOUND_MIB`] above its resident size
//! before the attacks. The bystander's exec latency, idle and under
//! attack, is printed (not asserted: speed is for benchmarks).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client;
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use client::Client;
use serde_json::{Value, json};

/// The documented bound on the agent's memory growth under attack.
const RSS_BOUND_MIB: u64 = 256;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Samples this process's RSS every 100 ms until `stop`; the peak in KiB.
fn watch_rss(stop: Arc<AtomicBool>) -> (Arc<AtomicU64>, std::thread::JoinHandle<()>) {
    let peak = Arc::new(AtomicU64::new(rss_kib()));
    let handle = std::thread::spawn({
        let peak = peak.clone();
        move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });
    (peak, handle)
}

async fn exec(api: &Client, id: &str, body: Value) -> client::Reply {
    api.post(&format!("/v1/sandboxes/{id}/exec"), &body).await
}

/// The bystander's `echo ok` round trip, in ms, or `None` if it failed.
async fn probe(api: &Client, id: &str) -> Option<u128> {
    let start = Instant::now();
    let reply = exec(api, id, json!({"cmd": "echo ok", "timeout_s": 60})).await;
    (reply.json()["stdout"] == "ok\n").then(|| start.elapsed().as_millis())
}

fn median(mut v: Vec<u128>) -> u128 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_guest_neither_starves_the_host_nor_its_neighbour() {
    // Arrange
    let Some(agent) = common::start_agent().await else {
        return;
    };
    let api = Client::new(agent.url());
    let create = json!({"template": "base", "memory_mb": 256, "timeout_s": 1200});
    let attacker = api.post("/v1/sandboxes", &create).await.json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let bystander = api.post("/v1/sandboxes", &create).await.json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(
            probe(&api, &bystander)
                .await
                .expect("bystander answers when idle"),
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (peak, watcher) = watch_rss(stop.clone());
    let before_kib = rss_kib();

    // Act: the attacks, one after another in the attacker (each bounded
    // in time), while the bystander is probed between them.
    let mut under_attack = Vec::new();
    let mut bystander_failures = 0;
    let mut agent_answers = Vec::new();
    let root = |cmd: &str| json!({"cmd": cmd, "user": "root", "timeout_s": 300});
    // 1. Console flood (kernel console and the serial port) for 20 s.
    let flood = exec(
        &api,
        &attacker,
        root(
            "timeout 20 sh -c 'yes console-flood-console-flood > /dev/console' ; \
              timeout 20 sh -c 'yes serial-flood-serial-flood > /dev/ttyS0' ; true",
        ),
    )
    .await;
    // 2. 2 GiB of NULs as one exec's output, then through the stream.
    let zeros = exec(
        &api,
        &attacker,
        json!({"cmd": "head -c 2G /dev/zero", "timeout_s": 600}),
    )
    .await;
    let (streamed, streamed_bytes, streamed_tail) = api
        .post_streamed(
            &format!("/v1/sandboxes/{attacker}/exec/stream"),
            &json!({"cmd": "head -c 256M /dev/zero | tr '\\0' x", "timeout_s": 600}),
        )
        .await;
    for _ in 0..3 {
        match probe(&api, &bystander).await {
            Some(ms) => under_attack.push(ms),
            None => bystander_failures += 1,
        }
    }
    // 3. The root disk filled to its virtual size.
    let fill = exec(
        &api,
        &attacker,
        root("dd if=/dev/zero of=/fill bs=1M 2>&1 | tail -1; df -k / | tail -1"),
    )
    .await;
    agent_answers.push(api.get("/v1/sandboxes").await.status.as_u16());
    // 4. All the guest's RAM taken by one process (tail buffers a line with
    //    no end): the guest's OOM killer must take it, not envd.
    let hog = exec(
        &api,
        &attacker,
        json!({"cmd": "head -c 1G /dev/zero | tail", "timeout_s": 300}),
    )
    .await;
    let envd_score = exec(
        &api,
        &attacker,
        json!({"cmd": "cat /proc/$(pgrep -xo envd)/oom_score_adj /proc/self/oom_score_adj", "timeout_s": 60}),
    )
    .await;
    // 5. A connection flood at the sandbox's own gateway (inside the
    //    namespace the agent made), 20 s.
    let conns = exec(
        &api,
        &attacker,
        root("timeout 20 bash -c 'while :; do (exec 3<>/dev/tcp/169.254.0.22/9) 2>/dev/null & done' ; true"),
    )
    .await;
    for _ in 0..3 {
        match probe(&api, &bystander).await {
            Some(ms) => under_attack.push(ms),
            None => bystander_failures += 1,
        }
    }
    // 6. A fork bomb as the unprivileged guest user; it never ends by
    //    itself, so the exec times out.
    let bomb = exec(
        &api,
        &attacker,
        json!({"cmd": "bomb() { bomb | bomb & }; bomb", "timeout_s": 30}),
    )
    .await;
    for _ in 0..3 {
        match probe(&api, &bystander).await {
            Some(ms) => under_attack.push(ms),
            None => bystander_failures += 1,
        }
    }
    agent_answers.push(api.get("/v1/sandboxes").await.status.as_u16());
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let peak_kib = peak.load(Ordering::Relaxed);
    let destroy_attacker = api.delete(&format!("/v1/sandboxes/{attacker}")).await;
    let bystander_after = probe(&api, &bystander).await;
    agent.stop().await;

    // Assert
    let growth_mib = peak_kib.saturating_sub(before_kib) / 1024;
    eprintln!(
        "bystander exec p50: idle {} ms, under attack {} ms; RSS {} MiB before, peak {} MiB (+{growth_mib} MiB)",
        median(idle),
        median(under_attack.clone()),
        before_kib / 1024,
        peak_kib / 1024
    );
    assert!(
        growth_mib <= RSS_BOUND_MIB,
        "the agent grew by {growth_mib} MiB (bound {RSS_BOUND_MIB} MiB)"
    );
    assert_eq!(flood.status.as_u16(), 200, "{}", flood.text());
    assert_eq!(
        zeros.status.as_u16(),
        200,
        "{}",
        &zeros.text()[..zeros.text().len().min(300)]
    );
    assert!(
        zeros.body.len() < 64 << 20,
        "the exec reply was {} bytes: not capped",
        zeros.body.len()
    );
    assert_eq!(streamed.as_u16(), 200);
    assert!(
        streamed_bytes > 256 << 20,
        "the stream carried {streamed_bytes} bytes, not all 256 MiB of output"
    );
    assert!(
        String::from_utf8_lossy(&streamed_tail).contains("event: exit"),
        "the stream did not end with its exit event"
    );
    assert!(
        fill.json()["stdout"]
            .as_str()
            .unwrap_or("")
            .contains("No space left")
            || fill.json()["stdout"]
                .as_str()
                .unwrap_or("")
                .contains(" 100%"),
        "the disk did not fill: {}",
        fill.text()
    );
    assert_eq!(hog.status.as_u16(), 200, "{}", hog.text());
    assert_ne!(
        hog.json()["exit_code"],
        0,
        "the memory hog was not stopped: {}",
        hog.text()
    );
    assert_eq!(
        envd_score.json()["stdout"],
        "-999\n0\n",
        "envd is not the guest's OOM killer's last resort, or what it starts is: {}",
        envd_score.text()
    );
    assert_eq!(conns.status.as_u16(), 200, "{}", conns.text());
    assert!(
        bomb.status.as_u16() < 500 || bomb.status.as_u16() == 504,
        "{}",
        bomb.text()
    );
    assert_eq!(agent_answers, [200, 200]);
    assert_eq!(
        bystander_failures, 0,
        "the bystander failed to answer under attack"
    );
    assert!(bystander_after.is_some(), "the bystander stopped answering");
    assert_eq!(
        destroy_attacker.status.as_u16(),
        204,
        "{}",
        destroy_attacker.text()
    );
}
