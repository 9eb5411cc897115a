//! PTY processes against the real envd server, started in-process on
//! `127.0.0.1:0`. Runs as root (processes as `root`).

// Test helpers outside #[test] fns: a failed setup should panic.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use envd_client::{ExecEvent, ExecRequest, PtyEvent, PtyStream};
use futures::StreamExt as _;

mod common;
use common::{as_root, start_envd};

/// How long a test waits for output it expects.
const WAIT: Duration = Duration::from_secs(20);

/// The pid of the start event, which `start_pty` guarantees comes first.
async fn started(events: &mut PtyStream) -> u32 {
    match events.next().await {
        Some(Ok(PtyEvent::Started { pid })) => pid,
        other => panic!("expected the start event, got {other:?}"),
    }
}

/// Terminal output read until it contains `needle` (or the stream ends,
/// or [`WAIT`] passes), with the exit code if the process ended meanwhile.
async fn read_until(events: &mut PtyStream, needle: &str) -> (String, Option<i32>) {
    let mut output = Vec::new();
    let read = async {
        while let Some(event) = events.next().await {
            match event.unwrap() {
                PtyEvent::Output(data) => {
                    output.extend_from_slice(&data);
                    if String::from_utf8_lossy(&output).contains(needle) {
                        return None;
                    }
                }
                PtyEvent::Exited { exit_code, .. } => return Some(exit_code),
                PtyEvent::Started { pid } => panic!("second start event (pid {pid})"),
            }
        }
        None
    };
    let exit = tokio::time::timeout(WAIT, read).await.unwrap_or(None);
    (String::from_utf8_lossy(&output).into_owned(), exit)
}

/// The exit code at the end of the stream, output before it ignored.
async fn exit_code(events: &mut PtyStream) -> i32 {
    let end = async {
        while let Some(event) = events.next().await {
            if let PtyEvent::Exited { exit_code, .. } = event.unwrap() {
                return exit_code;
            }
        }
        panic!("stream ended without an exit event");
    };
    tokio::time::timeout(WAIT, end).await.unwrap()
}

#[tokio::test]
async fn start_pty_runs_the_process_on_a_terminal_of_the_given_size() {
    let envd = start_envd().await;

    let mut events = envd
        .client
        .start_pty(as_root("tty -s && echo on-a-tty; stty size"), 100, 30)
        .await
        .unwrap();
    started(&mut events).await;
    let (output, _) = read_until(&mut events, "30 100").await;

    assert!(output.contains("on-a-tty\r\n"), "{output:?}");
    assert!(output.contains("30 100"), "{output:?}");
    assert_eq!(exit_code(&mut events).await, 0);
}

#[tokio::test]
async fn send_pty_input_is_read_by_the_process_and_echoed() {
    let envd = start_envd().await;
    let mut events = envd
        .client
        .start_pty(
            as_root(r#"echo ready; read line; echo "got <$line>""#),
            80,
            24,
        )
        .await
        .unwrap();
    let pid = started(&mut events).await;
    read_until(&mut events, "ready").await;

    envd.client.send_pty_input(pid, b"hello\n").await.unwrap();
    let (output, _) = read_until(&mut events, "got <hello>").await;

    assert!(output.contains("hello\r\n"), "no echo in {output:?}");
    assert!(output.contains("got <hello>"), "{output:?}");
    assert_eq!(exit_code(&mut events).await, 0);
}

#[tokio::test]
async fn resize_pty_changes_the_size_and_signals_the_process() {
    let envd = start_envd().await;
    let mut events = envd
        .client
        .start_pty(
            as_root(r#"trap 'echo "winch $(stty size)"; exit 0' WINCH; echo ready; while :; do sleep 0.05; done"#),
            80,
            24,
        )
        .await
        .unwrap();
    let pid = started(&mut events).await;
    read_until(&mut events, "ready").await;

    envd.client.resize_pty(pid, 132, 50).await.unwrap();
    let (output, _) = read_until(&mut events, "winch 50 132").await;

    assert!(output.contains("winch 50 132"), "{output:?}");
    assert_eq!(exit_code(&mut events).await, 0);
}

#[tokio::test]
async fn pty_process_exit_code_is_reported() {
    let envd = start_envd().await;

    let mut events = envd
        .client
        .start_pty(as_root("exit 7"), 80, 24)
        .await
        .unwrap();
    started(&mut events).await;

    assert_eq!(exit_code(&mut events).await, 7);
}

#[tokio::test]
async fn ctrl_d_ends_an_interactive_shell() {
    let envd = start_envd().await;
    let mut events = envd
        .client
        .start_pty(
            ExecRequest::new("/bin/bash")
                .args(["--norc", "--noprofile", "-i"])
                .user("root"),
            80,
            24,
        )
        .await
        .unwrap();
    let pid = started(&mut events).await;

    envd.client
        .send_pty_input(pid, b"echo $((6 * 7))\n")
        .await
        .unwrap();
    let (output, _) = read_until(&mut events, "42").await;
    envd.client.send_pty_input(pid, b"\x04").await.unwrap();

    assert!(output.contains("42"), "{output:?}");
    assert_eq!(exit_code(&mut events).await, 0);
}

#[tokio::test]
async fn pty_input_to_a_process_without_a_pty_is_refused() {
    let envd = start_envd().await;
    let mut events = envd.client.exec_stream(as_root("sleep 30")).await.unwrap();
    let Some(Ok(ExecEvent::Started { pid })) = events.next().await else {
        panic!("no start event");
    };

    let input = envd.client.send_pty_input(pid, b"x").await;
    let resize = envd.client.resize_pty(pid, 100, 30).await;
    envd.client
        .send_signal(pid, envd_client::Signal::Kill)
        .await
        .unwrap();

    assert_eq!(
        input.unwrap_err().code(),
        Some("failed_precondition"),
        "input"
    );
    assert_eq!(
        resize.unwrap_err().code(),
        Some("failed_precondition"),
        "resize"
    );
}

#[tokio::test]
async fn start_pty_with_stdin_is_refused_before_anything_runs() {
    let envd = start_envd().await;

    let error = envd
        .client
        .start_pty(as_root("cat").stdin(b"x".to_vec()), 80, 24)
        .await
        .err()
        .unwrap();

    assert!(error.to_string().contains("no stdin"), "{error}");
}
