//! The built `petrel` binary against a host agent running in-process:
//! with real VMs (TCG unless `PETREL_ACCEL=kvm`) for the sandbox
//! lifecycle and exec, without any for the error paths, and against a
//! stand-in server for what is sent on the wire.
//!
//! Run with `PETREL_KERNEL=… PETREL_ROOTFS=… cargo test -p petrel --test
//! cli` (`cargo xtask test` sets them); without them the VM tests return
//! early (and fail under `PETREL_REQUIRE_VM=1`). Each test stops its agent
//! (destroying its sandboxes) before asserting, so a failed assertion
//! leaves no QEMU behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};

use common::{Run, TestAgent};

const UNKNOWN_ID: &str = "0123456789abcdef";

fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|err| panic!("{err}: {}", run.describe()))
}

fn ids(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["id"].as_str().or(v["name"].as_str()).map(String::from))
        .collect()
}

/// One line on stderr, `error: ` first, with no Rust `Debug` text.
fn assert_one_line_error(run: &Run) {
    assert_eq!(run.code, Some(1), "{}", run.describe());
    assert!(run.stdout.is_empty(), "{}", run.describe());
    assert!(run.stderr.starts_with("error: "), "{}", run.describe());
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.describe());
    for debug in ["Error {", "Api {", "Some(", "kind:", "Custom {", "\\\""] {
        assert!(!run.stderr.contains(debug), "{debug}: {}", run.describe());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_lifecycle_create_list_info_pause_resume_snapshot_kill() {
    let Some(agent) = common::start_agent().await else {
        return;
    };

    let (agent, id) = agent
        .create_sandbox(&["--metadata", "owner=cli", "-m", "team=blue"])
        .await;
    let list = agent.petrel(&["sandbox", "list"]).await;
    let list_json = agent.petrel(&["sandbox", "list", "--json"]).await;
    let filtered = agent
        .petrel(&["sandbox", "list", "--json", "--metadata", "owner=nobody"])
        .await;
    let info = agent.petrel(&["sandbox", "info", &id]).await;
    let info_json = agent.petrel(&["sandbox", "info", &id, "--json"]).await;
    let pause = agent.petrel(&["sandbox", "pause", &id]).await;
    let paused = agent.petrel(&["sandbox", "info", &id, "--json"]).await;
    let pause_again = agent.petrel(&["sandbox", "pause", &id]).await;
    let resume = agent
        .petrel(&["sandbox", "resume", &id, "--timeout", "900"])
        .await;
    let snapshot = agent
        .petrel(&["sandbox", "snapshot", &id, "cli-snap"])
        .await;
    let snapshots = agent.petrel(&["snapshot", "list"]).await;
    let snapshots_json = agent.petrel(&["snapshot", "list", "--json"]).await;
    let templates = agent.petrel(&["template", "list"]).await;
    let templates_json = agent.petrel(&["template", "list", "--json"]).await;
    let kill = agent.petrel(&["sandbox", "kill", &id]).await;
    let after_kill = agent.petrel(&["sandbox", "list", "--json"]).await;
    let snapshot_delete = agent.petrel(&["snapshot", "delete", "cli-snap"]).await;

    agent.stop().await;

    assert_eq!(id.len(), 16, "sandbox id {id:?}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id:?}");
    let header = list.stdout.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("ID") && header.contains("STATE") && header.contains("METADATA"),
        "{}",
        list.describe()
    );
    let row = list.stdout.lines().find(|l| l.starts_with(&id));
    assert!(
        row.is_some_and(|r| r.contains("running") && r.contains("owner=cli,team=blue")),
        "{}",
        list.describe()
    );
    assert_eq!(ids(&json(&list_json)), [id.as_str()]);
    assert_eq!(ids(&json(&filtered)), Vec::<String>::new());
    assert!(
        info.stdout.contains("id:") && info.stdout.contains(&id),
        "{}",
        info.describe()
    );
    assert!(
        info.stdout
            .lines()
            .any(|l| l.starts_with("state:") && l.ends_with("running")),
        "{}",
        info.describe()
    );
    let info_json = json(&info_json);
    assert_eq!(info_json["id"], id.as_str());
    assert_eq!(info_json["metadata"]["owner"], "cli");
    assert_eq!(info_json["template"], "base");
    assert!(
        pause.stdout.starts_with(&format!("{id} paused")),
        "{}",
        pause.describe()
    );
    assert_eq!(json(&paused)["state"], "paused");
    assert_one_line_error(&pause_again);
    assert!(
        pause_again.stderr.ends_with("(invalid_state, HTTP 409)\n"),
        "{}",
        pause_again.describe()
    );
    assert!(
        resume.stdout.starts_with(&format!("{id} running")),
        "{}",
        resume.describe()
    );
    assert!(
        snapshot.stdout.starts_with(&format!("cli-snap (of {id}, ")),
        "{}",
        snapshot.describe()
    );
    assert!(
        snapshots.stdout.starts_with("NAME")
            && snapshots
                .stdout
                .lines()
                .any(|l| l.starts_with("cli-snap") && l.contains(&id)),
        "{}",
        snapshots.describe()
    );
    assert_eq!(ids(&json(&snapshots_json)), ["cli-snap"]);
    assert!(
        templates.stdout.starts_with("NAME")
            && templates.stdout.lines().any(|l| l.starts_with("base ")),
        "{}",
        templates.describe()
    );
    assert_eq!(ids(&json(&templates_json)), ["base"]);
    assert_eq!(kill.stdout, format!("{id} killed\n"), "{}", kill.describe());
    assert_eq!(ids(&json(&after_kill)), Vec::<String>::new());
    assert_eq!(
        snapshot_delete.stdout,
        "cli-snap deleted\n",
        "{}",
        snapshot_delete.describe()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_passes_stdout_stderr_and_the_exit_code_through() {
    let Some(agent) = common::start_agent().await else {
        return;
    };
    let (agent, id) = agent.create_sandbox(&[]).await;

    let shell_line = agent
        .petrel(&[
            "sandbox",
            "exec",
            &id,
            "--",
            "echo out; echo err >&2; exit 3",
        ])
        .await;
    let argv = agent
        .petrel(&[
            "sandbox",
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            r#"echo "<$1>""#,
            "_",
            "a  b'c",
        ])
        .await;
    let as_root = agent
        .petrel(&[
            "sandbox",
            "exec",
            &id,
            "--user",
            "root",
            "--cwd",
            "/tmp",
            "--env",
            "X=y",
            "--",
            "echo $(id -u) $PWD $X",
        ])
        .await;
    let piped = common::petrel(
        &agent.url(),
        &["sandbox", "exec", "-i", &id, "--", "tr a-z A-Z"],
        Some("piped\n"),
    )
    .await;
    let json_run = agent
        .petrel(&["sandbox", "exec", "--json", &id, "--", "echo hi; exit 4"])
        .await;

    agent.stop().await;

    assert_eq!(shell_line.code, Some(3), "{}", shell_line.describe());
    assert_eq!(shell_line.stdout, "out\n");
    assert_eq!(shell_line.stderr, "err\n");
    assert_eq!(argv.code, Some(0), "{}", argv.describe());
    assert_eq!(argv.stdout, "<a  b'c>\n");
    assert_eq!(as_root.stdout, "0 /tmp y\n", "{}", as_root.describe());
    assert_eq!(piped.stdout, "PIPED\n", "{}", piped.describe());
    assert_eq!(json_run.code, Some(4), "{}", json_run.describe());
    let result = json(&json_run);
    assert_eq!(result["stdout"], "hi\n");
    assert_eq!(result["exit_code"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_streams_output_while_the_command_runs() {
    let Some(agent) = common::start_agent().await else {
        return;
    };
    let (agent, id) = agent.create_sandbox(&[]).await;
    let mut command = common::command();
    command
        .args(["--url", &agent.url(), "--api-key", common::API_KEY])
        .args(["sandbox", "exec", &id, "--"])
        .arg("echo first; sleep 8; echo second")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = command.spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let started = Instant::now();

    let mut first = String::new();
    let read = tokio::time::timeout(Duration::from_secs(60), stdout.read_line(&mut first)).await;
    let first_after = started.elapsed();
    let still_running = child.try_wait().unwrap().is_none();
    let mut rest = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), stdout.read_to_string(&mut rest)).await;
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;

    agent.stop().await;

    assert!(read.is_ok(), "no first line");
    assert_eq!(first, "first\n");
    assert!(
        still_running,
        "petrel had ended when the first line came ({first_after:?})"
    );
    assert_eq!(rest, "second\n");
    assert_eq!(status.unwrap().unwrap().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sandbox_errors_show_the_agents_code_and_message() {
    let agent: TestAgent = common::start_agent_without_vms().await;

    let runs = [
        agent.petrel(&["sandbox", "info", UNKNOWN_ID]).await,
        agent.petrel(&["sandbox", "pause", UNKNOWN_ID]).await,
        agent.petrel(&["sandbox", "kill", UNKNOWN_ID]).await,
        agent
            .petrel(&["sandbox", "exec", UNKNOWN_ID, "--", "true"])
            .await,
        agent.petrel(&["sandbox", "shell", UNKNOWN_ID]).await,
    ];
    let bad_template = agent
        .petrel(&["sandbox", "create", "--template", "../etc"])
        .await;

    agent.stop().await;

    for run in &runs {
        assert_one_line_error(run);
        assert_eq!(
            run.stderr,
            format!("error: sandbox {UNKNOWN_ID} not found (sandbox_not_found, HTTP 404)\n"),
            "{}",
            run.describe()
        );
    }
    assert_one_line_error(&bad_template);
    assert!(
        bad_template.stderr.ends_with("(invalid_name, HTTP 400)\n"),
        "{}",
        bad_template.describe()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_not_running_is_one_line_naming_the_url() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");

    let runs = [
        common::petrel(&url, &["sandbox", "list"], None).await,
        common::petrel(&url, &["sandbox", "shell", UNKNOWN_ID], None).await,
    ];

    for run in &runs {
        assert_one_line_error(run);
        assert_eq!(
            run.stderr,
            format!(
                "error: cannot connect to the host agent at {url}: connection refused; \
                 is it running? (start one with `cargo xtask serve`)\n"
            ),
            "{}",
            run.describe()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_output_pipe_ends_quietly() {
    // Arrange: `petrel ... | head` whose reader is gone before it writes.
    let agent = common::start_agent_without_vms().await;
    let mut child = common::command()
        .args(["--url", &agent.url(), "--api-key", common::API_KEY])
        .args(["template", "list", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());

    // Act
    let output = child.wait_with_output().await.unwrap();
    agent.stop().await;

    // Assert: no "error: Broken pipe" for the user to puzzle over.
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
}

/// A stand-in agent: answers each request on `127.0.0.1:0` with `status`
/// and `body`, and hands the request heads (lowercased) over.
async fn recording_server(
    status: &'static str,
    body: &'static str,
) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut byte = [0_u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            let _ = tx.send(String::from_utf8_lossy(&head).to_ascii_lowercase());
            let reply = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(reply.as_bytes()).await;
        }
    });
    (url, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_sent_as_x_api_key_from_flag_environment_or_config_file() {
    let (url, mut heads) = recording_server("200 OK", "[]").await;
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("petrel.toml");
    std::fs::write(
        &config,
        format!("url = \"{url}\"\napi_key = \"file-key\"\n"),
    )
    .unwrap();
    let config = config.to_str().unwrap();

    let mut flag = common::command();
    flag.env("PETREL_API_KEY", "env-key").args([
        "--url",
        &url,
        "--api-key",
        "flag-key",
        "template",
        "list",
    ]);
    let mut petrel_env = common::command();
    petrel_env
        .env("PETREL_API_KEY", "env-key")
        .env("E2B_API_KEY", "e2b-key")
        .args(["--config", config, "template", "list"]);
    let mut e2b_env = common::command();
    e2b_env
        .env("E2B_API_KEY", "e2b-key")
        .args(["--config", config, "template", "list"]);
    let mut file = common::command();
    file.args(["--config", config, "snapshot", "list"]);
    let mut none = common::command();
    none.env("PETREL_URL", &url).args(["sandbox", "list"]);
    let runs = [
        common::run(flag, None).await,
        common::run(petrel_env, None).await,
        common::run(e2b_env, None).await,
        common::run(file, None).await,
        common::run(none, None).await,
    ];
    let mut seen = Vec::new();
    for _ in &runs {
        seen.push(heads.recv().await.unwrap());
    }

    for run in &runs {
        assert_eq!(run.code, Some(0), "{}", run.describe());
    }
    let keys: Vec<Option<&str>> = seen
        .iter()
        .map(|head| {
            head.lines()
                .find_map(|line| line.strip_prefix("x-api-key: "))
                .map(str::trim)
        })
        .collect();
    assert_eq!(
        keys,
        [
            Some("flag-key"),
            Some("env-key"),
            Some("e2b-key"),
            Some("file-key"),
            None
        ]
    );
    assert!(
        seen[3].starts_with("get /v1/snapshots http/1.1"),
        "{}",
        seen[3]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_handshake_carries_the_api_key_and_reports_the_agents_refusal() {
    let (url, mut heads) = recording_server(
        "409 Conflict",
        r#"{"error":{"code":"invalid_state","message":"sandbox abc is paused: cannot use envd"}}"#,
    )
    .await;
    let mut shell = common::command();
    shell.args([
        "--url",
        &url,
        "--api-key",
        "k1",
        "sandbox",
        "shell",
        "abc",
        "--cmd",
        "top",
    ]);

    let run = common::run(shell, None).await;
    let head = heads.recv().await.unwrap();

    assert_one_line_error(&run);
    assert_eq!(
        run.stderr,
        "error: sandbox abc is paused: cannot use envd (invalid_state, HTTP 409)\n"
    );
    assert!(
        head.starts_with("get /v1/sandboxes/abc/pty?cols=80&rows=24&cmd=top http/1.1"),
        "{head}"
    );
    assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(head.contains("\r\nx-api-key: k1\r\n"), "{head}");
}
