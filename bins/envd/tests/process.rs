//! `process.Process` over the wire, as the E2B SDK uses it.

mod common;

use common::{Envd, b64, basic, envelope, finish};
use envd_proto::process::{
    ProcessConfig, StartRequest, StartResponse, process_event, process_event::data_event,
};
use prost::Message as _;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn start_echo_streams_pid_stdout_and_exit_zero() {
    let envd = Envd::start().await;

    let reader = envd.run("echo hello", json!({}), &[]).await;
    let status = reader.status;
    let content_type = reader.content_type.clone();
    let run = finish(reader).await;

    assert_eq!(status, 200);
    assert_eq!(content_type, "application/connect+json");
    assert!(run.pid() > 0);
    assert_eq!(run.stdout, "hello\n");
    assert_eq!(run.exit_code(), 0);
    assert_eq!(run.end.as_ref().unwrap()["exited"], true);
    assert_eq!(run.end.as_ref().unwrap()["status"], "exit status 0");
    assert!(run.events.last().unwrap()["event"].get("end").is_some());
    assert_eq!(run.trailer, json!({}));
}

#[tokio::test]
async fn start_reports_stderr_separately() {
    let envd = Envd::start().await;

    let run = finish(envd.run("echo oops >&2", json!({}), &[]).await).await;

    assert_eq!(run.stderr, "oops\n");
    assert_eq!(run.stdout, "");
}

#[tokio::test]
async fn start_reports_non_zero_exit_code() {
    let envd = Envd::start().await;

    let run = finish(envd.run("exit 3", json!({}), &[]).await).await;

    assert_eq!(run.exit_code(), 3);
    assert_eq!(run.end.unwrap()["error"], "exit status 3");
}

#[tokio::test]
async fn start_sends_output_before_the_process_ends() {
    let envd = Envd::start().await;
    let mut reader = envd
        .run("echo first; sleep 2; echo second", json!({}), &[])
        .await;
    let started = reader.next_event().await;

    let begin = std::time::Instant::now();
    let first = reader.next_event().await;

    assert!(started["event"]["start"]["pid"].as_u64().is_some());
    assert_eq!(first["event"]["data"]["stdout"], b64(b"first\n"));
    assert!(begin.elapsed() < Duration::from_millis(1500));
}

#[tokio::test]
async fn start_passes_env_vars() {
    let envd = Envd::start().await;

    let run = finish(
        envd.run(
            "echo $GREETING",
            json!({"process": {"envs": {"GREETING": "hi there"}}}),
            &[],
        )
        .await,
    )
    .await;

    assert_eq!(run.stdout, "hi there\n");
}

#[tokio::test]
async fn start_honours_cwd() {
    let envd = Envd::start().await;
    std::fs::create_dir(envd.path("sub")).unwrap();
    let cwd = envd.path("sub").display().to_string();

    let run = finish(envd.run("pwd", json!({"process": {"cwd": cwd}}), &[]).await).await;

    assert_eq!(run.stdout.trim(), cwd);
}

#[tokio::test]
async fn start_defaults_cwd_to_the_configured_workdir() {
    let envd = Envd::start().await;

    let run = finish(envd.run("pwd", json!({}), &[]).await).await;

    assert_eq!(run.stdout.trim(), envd.dir_str());
}

#[tokio::test]
async fn start_with_missing_cwd_is_invalid_argument() {
    let envd = Envd::start().await;

    let run = finish(
        envd.run("pwd", json!({"process": {"cwd": "/no/such/dir"}}), &[])
            .await,
    )
    .await;

    assert_eq!(run.trailer["error"]["code"], "invalid_argument");
}

#[tokio::test]
async fn start_as_nobody_runs_with_nobody_ids_and_home() {
    let envd = Envd::start().await;
    let auth = basic("nobody");

    let run = finish(
        envd.run_login(
            "id -u; id -g; echo $USER $HOME $LOGNAME",
            json!({"process": {"cwd": "/tmp"}}),
            &[("authorization", &auth)],
        )
        .await,
    )
    .await;

    assert_eq!(run.stdout, "65534\n65534\nnobody /nonexistent nobody\n");
}

#[tokio::test]
async fn start_as_root_runs_with_uid_zero() {
    let envd = Envd::start().await;
    let auth = basic("root");

    let run = finish(
        envd.run("id -u; echo $HOME", json!({}), &[("authorization", &auth)])
            .await,
    )
    .await;

    assert_eq!(run.stdout, "0\n/root\n");
}

#[tokio::test]
async fn start_as_unknown_user_is_unauthenticated() {
    let envd = Envd::start().await;
    let auth = basic("no-such-user-petrel");

    let run = finish(
        envd.run("true", json!({}), &[("authorization", &auth)])
            .await,
    )
    .await;

    assert_eq!(run.trailer["error"]["code"], "unauthenticated");
}

#[tokio::test]
async fn send_signal_kills_a_running_process() {
    let envd = Envd::start().await;
    let mut reader = envd.run("sleep 30", json!({}), &[]).await;
    let pid = reader.next_event().await["event"]["start"]["pid"].clone();

    let (status, body) = envd
        .unary(
            "process.Process/SendSignal",
            json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}),
            &[],
        )
        .await;
    let run = finish(reader).await;

    assert_eq!((status, body), (200, json!({})));
    assert_eq!(run.exit_code(), -1);
    assert_eq!(run.end.unwrap()["status"], "signal: killed");
}

#[tokio::test]
async fn send_signal_to_unknown_pid_is_not_found() {
    let envd = Envd::start().await;

    let (status, body) = envd
        .unary(
            "process.Process/SendSignal",
            json!({"process": {"pid": 999_999}, "signal": "SIGNAL_SIGTERM"}),
            &[],
        )
        .await;

    assert_eq!(status, 404);
    assert_eq!(body["code"], "not_found");
}

#[tokio::test]
async fn connect_reattaches_to_a_background_process_by_tag() {
    let envd = Envd::start().await;
    let mut first = envd
        .run("sleep 1; echo later", json!({"tag": "bg"}), &[])
        .await;
    let pid = first.next_event().await["event"]["start"]["pid"]
        .as_u64()
        .unwrap();
    drop(first);

    let reader = envd
        .stream(
            "process.Process/Connect",
            json!({"process": {"tag": "bg"}}),
            &[],
        )
        .await;
    let run = finish(reader).await;

    assert_eq!(run.pid(), pid);
    assert_eq!(run.stdout, "later\n");
    assert_eq!(run.exit_code(), 0);
}

#[tokio::test]
async fn connect_to_unknown_pid_is_not_found() {
    let envd = Envd::start().await;

    let run = finish(
        envd.stream(
            "process.Process/Connect",
            json!({"process": {"pid": 999_999}}),
            &[],
        )
        .await,
    )
    .await;

    assert_eq!(run.trailer["error"]["code"], "not_found");
}

#[tokio::test]
async fn list_shows_a_running_process_with_its_tag() {
    let envd = Envd::start().await;
    let mut reader = envd.run("sleep 30", json!({"tag": "sleeper"}), &[]).await;
    let pid = reader.next_event().await["event"]["start"]["pid"].clone();

    let (status, body) = envd.unary("process.Process/List", json!({}), &[]).await;
    envd.unary(
        "process.Process/SendSignal",
        json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}),
        &[],
    )
    .await;

    assert_eq!(status, 200);
    let listed = &body["processes"][0];
    assert_eq!(listed["pid"], pid);
    assert_eq!(listed["tag"], "sleeper");
    assert_eq!(listed["config"]["cmd"], "/bin/bash");
}

#[tokio::test]
async fn send_input_reaches_stdin() {
    let envd = Envd::start().await;
    let mut reader = envd
        .run("read line; echo got:$line", json!({"stdin": true}), &[])
        .await;
    let pid = reader.next_event().await["event"]["start"]["pid"].clone();

    let (status, _) = envd
        .unary(
            "process.Process/SendInput",
            json!({"process": {"pid": pid}, "input": {"stdin": b64(b"hello\n")}}),
            &[],
        )
        .await;
    let run = finish(reader).await;

    assert_eq!(status, 200);
    assert_eq!(run.stdout, "got:hello\n");
}

#[tokio::test]
async fn close_stdin_gives_the_process_eof() {
    let envd = Envd::start().await;
    let mut reader = envd
        .run("cat; echo done", json!({"stdin": true}), &[])
        .await;
    let pid = reader.next_event().await["event"]["start"]["pid"].clone();
    envd.unary(
        "process.Process/SendInput",
        json!({"process": {"pid": pid}, "input": {"stdin": b64(b"abc")}}),
        &[],
    )
    .await;

    let (status, _) = envd
        .unary(
            "process.Process/CloseStdin",
            json!({"process": {"pid": pid}}),
            &[],
        )
        .await;
    let run = finish(reader).await;

    assert_eq!(status, 200);
    assert_eq!(run.stdout, "abcdone\n");
}

#[tokio::test]
async fn stdin_false_reads_eof_immediately() {
    let envd = Envd::start().await;

    let run = finish(envd.run("cat; echo after", json!({}), &[]).await).await;

    assert_eq!(run.stdout, "after\n");
}

#[tokio::test]
async fn stream_input_client_stream_feeds_stdin() {
    let envd = Envd::start().await;
    let mut reader = envd.run("head -c 6", json!({"stdin": true}), &[]).await;
    let pid = reader.next_event().await["event"]["start"]["pid"].clone();
    let mut body = Vec::new();
    for message in [
        json!({"start": {"process": {"pid": pid}}}),
        json!({"data": {"input": {"stdin": b64(b"abc")}}}),
        json!({"keepalive": {}}),
        json!({"data": {"input": {"stdin": b64(b"def")}}}),
    ] {
        body.extend(envelope(0, message.to_string().as_bytes()));
    }

    let response = envd
        .http
        .post(envd.url("/process.Process/StreamInput"))
        .header("content-type", "application/connect+json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap();
    let run = finish(reader).await;

    assert_eq!(status, 200);
    assert_eq!(&bytes[5..7], b"{}");
    assert_eq!(run.stdout, "abcdef");
}

#[tokio::test]
async fn connect_timeout_kills_a_long_command_with_deadline_exceeded() {
    let envd = Envd::start().await;
    let begin = std::time::Instant::now();

    let run = finish(
        envd.stream(
            "process.Process/Start",
            json!({"process": {"cmd": "/bin/sleep", "args": ["30"]}, "stdin": false}),
            &[("connect-timeout-ms", "500")],
        )
        .await,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, listed) = envd.unary("process.Process/List", json!({}), &[]).await;

    assert_eq!(run.trailer["error"]["code"], "deadline_exceeded");
    assert!(begin.elapsed() < Duration::from_secs(10));
    assert_eq!(listed, json!({}));
}

#[tokio::test]
async fn keepalive_events_arrive_at_the_requested_interval() {
    let envd = Envd::start().await;

    let run = finish(
        envd.run("sleep 2.5", json!({}), &[("keepalive-ping-interval", "1")])
            .await,
    )
    .await;

    let keepalives = run
        .events
        .iter()
        .filter(|e| e["event"].get("keepalive").is_some())
        .count();
    assert!(keepalives >= 2, "{:?}", run.events);
    assert_eq!(run.exit_code(), 0);
}

#[tokio::test]
async fn start_with_binary_proto_codec() {
    let envd = Envd::start().await;
    let request = StartRequest {
        process: Some(ProcessConfig {
            cmd: "/bin/echo".to_owned(),
            args: vec!["proto".to_owned()],
            ..ProcessConfig::default()
        }),
        stdin: Some(false),
        ..StartRequest::default()
    };

    let reader = envd.stream_proto("process.Process/Start", &request).await;
    let content_type = reader.content_type.clone();
    let frames = reader.collect().await;
    let events: Vec<process_event::Event> = frames
        .iter()
        .filter(|f| !f.is_end())
        .map(|f| {
            StartResponse::decode(f.payload.as_slice())
                .unwrap()
                .event
                .unwrap()
                .event
                .unwrap()
        })
        .collect();

    assert_eq!(content_type, "application/connect+proto");
    assert!(matches!(events[0], process_event::Event::Start(_)));
    assert_eq!(
        events[1],
        process_event::Event::Data(process_event::DataEvent {
            output: Some(data_event::Output::Stdout(b"proto\n".to_vec()))
        })
    );
    assert!(matches!(&events[2], process_event::Event::End(end) if end.exit_code == 0));
    assert!(frames.last().unwrap().is_end());
}

#[tokio::test]
async fn pty_session_echoes_input_and_resizes() {
    let envd = Envd::start().await;
    let auth = basic("nobody");
    let mut reader = envd
        .stream(
            "process.Process/Start",
            json!({
                "process": {"cmd": "/bin/bash", "args": ["-i", "-l"], "cwd": "/tmp",
                            "envs": {"TERM": "xterm-256color", "LANG": "C.UTF-8"}},
                "pty": {"size": {"cols": 80, "rows": 24}},
            }),
            &[("authorization", &auth)],
        )
        .await;
    let pid = reader.next_event().await["event"]["start"]["pid"].clone();

    let (resize_status, _) = envd
        .unary(
            "process.Process/Update",
            json!({"process": {"pid": pid}, "pty": {"size": {"cols": 100, "rows": 30}}}),
            &[],
        )
        .await;
    let (input_status, _) = envd
        .unary(
            "process.Process/SendInput",
            json!({"process": {"pid": pid}, "input": {"pty": b64(b"stty size; exit 7\n")}}),
            &[],
        )
        .await;
    let run = finish(reader).await;

    assert_eq!((resize_status, input_status), (200, 200));
    assert!(run.stdout.contains("30 100"), "{}", run.stdout);
    assert_eq!(run.exit_code(), 7);
}

#[tokio::test]
async fn init_env_vars_reach_every_process() {
    let envd = Envd::start().await;
    let response = envd
        .http
        .post(envd.url("/init"))
        .json(&json!({"envVars": {"FROM_INIT": "yes"}}))
        .send()
        .await
        .unwrap();

    let run = finish(envd.run("echo $FROM_INIT", json!({}), &[]).await).await;

    assert_eq!(response.status().as_u16(), 204);
    assert_eq!(run.stdout, "yes\n");
}

#[tokio::test]
async fn start_as_nobody_in_a_root_only_directory_fails() {
    let envd = Envd::start().await;
    let auth = basic("nobody");
    std::fs::create_dir(envd.path("private")).unwrap();
    std::fs::set_permissions(
        envd.path("private"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let cwd = envd.path("private").display().to_string();

    let run = finish(
        envd.run(
            "pwd",
            json!({"process": {"cwd": cwd}}),
            &[("authorization", &auth)],
        )
        .await,
    )
    .await;

    assert_eq!(run.trailer["error"]["code"], "permission_denied");
}

#[tokio::test]
async fn started_processes_run_with_the_default_oom_score_not_envds() {
    // Arrange: this test process plays envd with a score of its own (in a
    // guest envd is the last resort, -999; raising it, as here, needs no
    // privilege).
    std::fs::write("/proc/self/oom_score_adj", "500").expect("raising the test's score");
    let envd = Envd::start().await;

    // Act
    let as_user = finish(
        envd.run("cat /proc/self/oom_score_adj", json!({}), &[])
            .await,
    )
    .await;
    let as_root = finish(
        envd.run(
            "cat /proc/self/oom_score_adj",
            json!({}),
            &[("authorization", &basic("root"))],
        )
        .await,
    )
    .await;

    // Assert
    assert_eq!(envd::oom::current().unwrap(), 500);
    assert_eq!(as_user.stdout, "0\n");
    assert_eq!(as_root.stdout, "0\n");
}

#[tokio::test]
async fn a_reader_that_falls_behind_holds_the_process_back_and_loses_nothing() {
    // 64 MiB is far more than the queues between the process and the
    // reader hold (pipe, envd's per-stream queue, both sockets).
    const SIZE: usize = 64 << 20;
    let envd = Envd::start().await;
    let marker = envd.path("all-written");
    let script = format!("head -c {SIZE} /dev/zero; touch {}", marker.display());
    let mut reader = envd.run(&script, json!({}), &[]).await;
    let started = reader.next_event().await;

    // The reader stops reading for a while: the process must wait for it
    // (before, envd queued all of its output in memory).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let written_while_stalled = common::exists(&marker);
    let run = finish(reader).await;

    assert!(started["event"]["start"]["pid"].as_u64().is_some());
    assert!(
        !written_while_stalled,
        "the process wrote all its output while nobody read it"
    );
    assert_eq!(run.stdout.len(), SIZE);
    assert!(run.stdout.bytes().all(|b| b == 0));
    assert_eq!(run.exit_code(), 0);
    assert!(common::exists(&marker));
}
