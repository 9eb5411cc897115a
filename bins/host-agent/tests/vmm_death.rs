//! A sandbox whose VMM dies under an open, quiet stream (a VMM crash, a
//! guest kernel panic: QEMU exits with the guest): the stream ends instead
//! of waiting for hours on a guest that will never answer, the agent marks
//! the sandbox stopped by itself (its files removed, no restart needed),
//! and it can still be deleted. An upload under way when the VMM dies fails
//! instead of retransmitting to the dead guest for ~15 minutes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client;
mod common;

use std::time::Duration;

use bytes::Bytes;
use client::Client;
use common::binary::processes_naming;
use futures::StreamExt as _;
use http_body_util::BodyExt as _;
use hyper::Method;
use serde_json::json;

/// A guard against a hang (TCP keepalive gives up on a dead guest in
/// ~25 s, TCP_USER_TIMEOUT on unacknowledged data in 30 s), not a timing
/// assertion.
const GUARD: Duration = Duration::from_secs(180);

#[tokio::test]
async fn a_quiet_stream_to_a_sandbox_whose_vmm_died_ends_and_it_is_marked_stopped() {
    // Arrange: a stream that prints once, then stays quiet.
    let Some(agent) = common::start_agent().await else {
        return;
    };
    let api = Client::new(agent.url());
    let id = create(&api).await;
    let response = api
        .open(
            Method::POST,
            &format!("/v1/sandboxes/{id}/exec/stream"),
            json!({"cmd": "echo started; sleep 600", "timeout_s": 900}).to_string(),
        )
        .await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("started") {
        let frame = body.frame().await.unwrap().unwrap();
        seen.extend_from_slice(&frame.into_data().unwrap_or_default());
    }

    // Act: the VMM dies (SIGKILL, as a crash would end it).
    let run_dir = agent.data_dir.path().join("sandboxes").join(&id);
    kill_vmms(&run_dir);
    let ended = tokio::time::timeout(GUARD, async {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => seen.extend_from_slice(&frame.into_data().unwrap_or_default()),
                Err(_) => break,
            }
        }
    })
    .await;
    // The agent notices the VMM is gone by itself (no restart needed).
    let listed = listed_once_stopped(&api, &id).await;
    let deleted = api.delete(&format!("/v1/sandboxes/{id}")).await;
    agent.stop().await;

    // Assert
    assert!(
        ended.is_ok(),
        "the stream to a dead VM was still open after {GUARD:?}: {}",
        String::from_utf8_lossy(&seen)
    );
    assert_eq!(listed.json()["state"], "stopped", "{}", listed.text());
    assert!(!run_dir.exists(), "{} left behind", run_dir.display());
    assert_eq!(deleted.status, 204, "{}", deleted.text());
}

/// Creates a sandbox of the base template; its id.
async fn create(api: &Client) -> String {
    let created = api
        .post("/v1/sandboxes", &json!({"template": "base"}))
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    created.json()["id"].as_str().unwrap().to_string()
}

/// The sandbox as `/v1` lists it once stopped (or after 30 s).
async fn listed_once_stopped(api: &Client, id: &str) -> client::Reply {
    let mut listed = api.get(&format!("/v1/sandboxes/{id}")).await;
    for _ in 0..60 {
        if listed.json()["state"] == "stopped" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        listed = api.get(&format!("/v1/sandboxes/{id}")).await;
    }
    listed
}

/// SIGKILLs the VMMs running from `run_dir`.
fn kill_vmms(run_dir: &std::path::Path) {
    let vmms = processes_naming(run_dir);
    assert!(!vmms.is_empty(), "no VMM names {}", run_dir.display());
    for pid in &vmms {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
}

#[tokio::test]
async fn an_upload_to_a_sandbox_whose_vmm_died_fails_instead_of_hanging() {
    // Arrange: an upload that keeps sending (1 MiB every 20 ms, up to
    // 900 MiB), so there is always unacknowledged data to the guest.
    let Some(agent) = common::start_agent().await else {
        return;
    };
    let api = Client::new(agent.url());
    let id = create(&api).await;
    let chunks = futures::stream::iter(0..900)
        .then(|_| async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, std::io::Error>(hyper::body::Frame::data(Bytes::from(vec![b'u'; 1 << 20])))
        })
        .boxed();
    let upload = tokio::spawn({
        let api = api.clone();
        let path = format!("/v1/sandboxes/{id}/files?path=/home/user/up");
        async move {
            api.try_send_streamed(Method::PUT, &path, http_body_util::StreamBody::new(chunks))
                .await
        }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Act: the VMM dies mid-upload.
    let run_dir = agent.data_dir.path().join("sandboxes").join(&id);
    kill_vmms(&run_dir);
    let ended = tokio::time::timeout(GUARD, upload).await;
    let listed = listed_once_stopped(&api, &id).await;
    let deleted = api.delete(&format!("/v1/sandboxes/{id}")).await;
    agent.stop().await;

    // Assert: the upload ended (refused, not acknowledged as written).
    let outcome = ended
        .unwrap_or_else(|_| panic!("the upload to a dead VM was still open after {GUARD:?}"))
        .unwrap();
    if let Ok(reply) = &outcome {
        assert!(
            reply.status.is_server_error(),
            "an upload to a dead guest answered {}: {}",
            reply.status,
            reply.text()
        );
    }
    assert_eq!(listed.json()["state"], "stopped", "{}", listed.text());
    assert_eq!(deleted.status, 204, "{}", deleted.text());
}
