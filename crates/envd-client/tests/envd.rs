//! The client against the real envd server, started in-process on
//! `127.0.0.1:0`. Runs as root (processes as `root` and `nobody`).

// Test helpers outside #[test] fns: a failed setup should panic.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use envd_client::{ExecEvent, ExecRequest, FileKind, InitRequest, Signal};
use futures::StreamExt as _;

mod common;
use common::{as_root, start_envd};

#[tokio::test]
async fn exec_collects_stdout_and_exit_code() {
    let envd = start_envd().await;

    let output = envd.client.exec(as_root("echo hello")).await.unwrap();

    assert_eq!(output.stdout, b"hello\n");
    assert_eq!(output.stderr, b"");
    assert_eq!(output.exit_code, 0);
    assert!(output.success());
    assert!(output.pid > 0);
}

#[tokio::test]
async fn exec_shell_runs_the_command_through_a_login_bash() {
    let envd = start_envd().await;

    let output = envd
        .client
        .exec(ExecRequest::shell("echo hello; shopt -q login_shell && echo login").user("root"))
        .await
        .unwrap();

    assert_eq!(output.stdout, b"hello\nlogin\n");
    assert_eq!(output.exit_code, 0);
}

#[tokio::test]
async fn exec_collects_stderr() {
    let envd = start_envd().await;

    let output = envd.client.exec(as_root("echo oops >&2")).await.unwrap();

    assert_eq!(output.stderr, b"oops\n");
    assert_eq!(output.stdout, b"");
    assert_eq!(output.exit_code, 0);
}

#[tokio::test]
async fn exec_reports_a_non_zero_exit_code() {
    let envd = start_envd().await;

    let output = envd
        .client
        .exec(as_root("echo before; exit 3"))
        .await
        .unwrap();

    assert_eq!(output.exit_code, 3);
    assert!(!output.success());
    assert_eq!(output.stdout, b"before\n");
}

#[tokio::test]
async fn exec_passes_environment_variables() {
    let envd = start_envd().await;

    let output = envd
        .client
        .exec(as_root(r#"printf '%s' "$GREETING""#).env("GREETING", "hi there"))
        .await
        .unwrap();

    assert_eq!(output.stdout, b"hi there");
}

#[tokio::test]
async fn exec_runs_in_the_given_working_directory() {
    let envd = start_envd().await;
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().to_str().unwrap().to_owned();

    let output = envd.client.exec(as_root("pwd").cwd(&cwd)).await.unwrap();

    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        format!("{cwd}\n")
    );
}

#[tokio::test]
async fn exec_without_a_shell_passes_arguments_verbatim() {
    let envd = start_envd().await;

    let output = envd
        .client
        .exec(
            ExecRequest::new("/bin/echo")
                .args(["a b", "$HOME"])
                .user("root"),
        )
        .await
        .unwrap();

    assert_eq!(output.stdout, b"a b $HOME\n");
}

#[tokio::test]
async fn exec_as_root_runs_with_uid_0() {
    let envd = start_envd().await;

    let output = envd.client.exec(as_root("id -u")).await.unwrap();

    assert_eq!(output.stdout, b"0\n");
}

#[tokio::test]
async fn exec_as_nobody_runs_with_the_uid_of_nobody() {
    let envd = start_envd().await;

    let output = envd
        .client
        .exec(
            ExecRequest::new("/bin/bash")
                .args(["-c", "id -un; id -u"])
                .user("nobody")
                .cwd("/tmp"),
        )
        .await
        .unwrap();

    assert_eq!(output.stdout, b"nobody\n65534\n");
}

#[tokio::test]
async fn exec_feeds_stdin_and_closes_it() {
    let envd = start_envd().await;
    let input = "line one\nline two\n".repeat(10_000);

    let output = envd
        .client
        .exec(
            ExecRequest::new("cat")
                .user("root")
                .stdin(input.clone().into_bytes()),
        )
        .await
        .unwrap();

    assert_eq!(output.stdout.len(), input.len());
    assert_eq!(output.stdout, input.as_bytes());
    assert_eq!(output.exit_code, 0);
}

#[tokio::test]
async fn exec_succeeds_when_the_process_exits_without_reading_stdin() {
    let envd = start_envd().await;

    let output = envd
        .client
        .exec(as_root("exit 0").stdin(vec![b'x'; 1_000_000]))
        .await
        .unwrap();

    assert_eq!(output.exit_code, 0);
}

#[tokio::test]
async fn exec_stream_yields_start_output_and_exit_in_order() {
    let envd = start_envd().await;

    let events: Vec<ExecEvent> = envd
        .client
        .exec_stream(as_root("echo one; sleep 0.1; echo two >&2; exit 4"))
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;

    assert!(
        matches!(events.first(), Some(ExecEvent::Started { pid }) if *pid > 0),
        "{events:?}"
    );
    assert!(
        matches!(events.last(), Some(ExecEvent::Exited { exit_code: 4, .. })),
        "{events:?}"
    );
    assert!(
        events.contains(&ExecEvent::Stdout("one\n".into())),
        "{events:?}"
    );
    assert!(
        events.contains(&ExecEvent::Stderr("two\n".into())),
        "{events:?}"
    );
}

#[tokio::test]
async fn attach_after_a_dropped_stream_gets_later_output_and_the_exit() {
    let envd = start_envd().await;
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let script = format!(
        "until [ -e {go} ]; do sleep 0.05; done; echo late; exit 5",
        go = go.display()
    );
    let mut first = envd.client.exec_stream(as_root(&script)).await.unwrap();
    let Some(Ok(ExecEvent::Started { pid })) = first.next().await else {
        panic!("no start event");
    };
    drop(first);

    let attached = envd.client.attach(pid, None).await.unwrap();
    std::fs::write(&go, b"").unwrap();
    let events: Vec<ExecEvent> = attached.map(Result::unwrap).collect().await;

    assert_eq!(
        events.first(),
        Some(&ExecEvent::Started { pid }),
        "{events:?}"
    );
    assert!(
        events.contains(&ExecEvent::Stdout("late\n".into())),
        "{events:?}"
    );
    assert!(
        matches!(events.last(), Some(ExecEvent::Exited { exit_code: 5, .. })),
        "{events:?}"
    );
}

#[tokio::test]
async fn attach_to_an_unknown_pid_is_not_found() {
    let envd = start_envd().await;

    let Err(error) = envd.client.attach(999_999, None).await else {
        panic!("attached to a pid that does not run");
    };

    assert!(error.is_not_found(), "{error}");
}

#[tokio::test]
async fn exec_past_its_timeout_fails_with_deadline_exceeded() {
    let envd = start_envd().await;

    let error = envd
        .client
        .exec(as_root("sleep 30").timeout(Duration::from_millis(300)))
        .await
        .unwrap_err();

    assert_eq!(error.code(), Some("deadline_exceeded"), "{error}");
}

#[tokio::test]
async fn send_signal_kills_a_running_process() {
    let envd = start_envd().await;
    let mut events = envd.client.exec_stream(as_root("sleep 30")).await.unwrap();
    let Some(Ok(ExecEvent::Started { pid })) = events.next().await else {
        panic!("no start event");
    };

    envd.client.send_signal(pid, Signal::Kill).await.unwrap();
    let rest: Vec<ExecEvent> = events.map(Result::unwrap).collect().await;

    let Some(ExecEvent::Exited { exit_code, .. }) = rest.last() else {
        panic!("no end event in {rest:?}");
    };
    assert_ne!(*exit_code, 0);
}

#[tokio::test]
async fn send_signal_to_an_unknown_pid_is_not_found() {
    let envd = start_envd().await;

    let error = envd
        .client
        .send_signal(999_999, Signal::Term)
        .await
        .unwrap_err();

    assert!(error.is_not_found(), "{error}");
}

#[tokio::test]
async fn list_processes_includes_a_running_process() {
    let envd = start_envd().await;
    let mut events = envd.client.exec_stream(as_root("sleep 30")).await.unwrap();
    let Some(Ok(ExecEvent::Started { pid })) = events.next().await else {
        panic!("no start event");
    };

    let processes = envd.client.list_processes().await.unwrap();
    envd.client.send_signal(pid, Signal::Kill).await.unwrap();

    let listed = processes.iter().find(|p| p.pid == pid).unwrap();
    assert_eq!(listed.cmd, "/bin/bash");
    assert_eq!(listed.args, ["-c", "sleep 30"]);
}

#[tokio::test]
async fn write_file_then_read_file_returns_the_same_bytes() {
    let envd = start_envd().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/data.bin");
    let path = path.to_str().unwrap();
    let data: Vec<u8> = (0..=255).cycle().take(100_000).collect();

    envd.client
        .write_file(path, Some("root"), data.clone())
        .await
        .unwrap();
    let back = envd.client.read_file(path, Some("root")).await.unwrap();

    assert_eq!(back, data);
}

#[tokio::test]
async fn files_stream_both_ways_and_a_whole_read_over_its_cap_is_refused() {
    let envd = start_envd().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.bin");
    let path = path.to_str().unwrap();
    let chunk = bytes::Bytes::from(vec![7u8; 1 << 20]);
    let chunks = (0..=envd_client::MAX_FILE_READ / (1 << 20))
        .map(move |_| Ok::<_, envd_client::BoxError>(chunk.clone()));

    envd.client
        .write_file_stream(path, Some("root"), futures::stream::iter(chunks))
        .await
        .unwrap();
    let whole = envd.client.read_file(path, Some("root")).await.unwrap_err();
    let download = envd
        .client
        .read_file_stream(path, Some("root"))
        .await
        .unwrap();
    let len = download.len;
    let streamed: usize = download
        .body
        .map(|chunk| chunk.unwrap().len())
        .fold(0, |sum, n| async move { sum + n })
        .await;

    let expected = envd_client::MAX_FILE_READ + (1 << 20);
    assert!(
        matches!(whole, envd_client::EnvdError::TooLarge { limit, .. } if limit == envd_client::MAX_FILE_READ),
        "{whole}"
    );
    assert!(whole.to_string().contains("exceeds the cap"), "{whole}");
    assert_eq!((len, streamed), (Some(expected as u64), expected));
}

#[tokio::test]
async fn exec_output_over_the_limit_is_cut_and_flagged() {
    let envd = start_envd().await;

    let output = envd
        .client
        .exec(as_root("head -c 100000 /dev/zero; echo fine >&2").output_limit(1000))
        .await
        .unwrap();

    assert_eq!(
        (
            output.stdout.len(),
            output.stdout_truncated,
            output.stderr.as_slice(),
            output.stderr_truncated,
            output.exit_code
        ),
        (1000, true, &b"fine\n"[..], false, 0)
    );
}

#[tokio::test]
async fn read_file_of_a_missing_path_is_not_found() {
    let envd = start_envd().await;

    let error = envd
        .client
        .read_file("/definitely/not/here", Some("root"))
        .await
        .unwrap_err();

    assert!(error.is_not_found(), "{error}");
}

#[tokio::test]
async fn stat_of_a_missing_path_is_not_found() {
    let envd = start_envd().await;

    let error = envd
        .client
        .stat("/definitely/not/here", Some("root"))
        .await
        .unwrap_err();

    assert!(error.is_not_found(), "{error}");
    assert_eq!(error.code(), Some("not_found"));
}

#[tokio::test]
async fn stat_describes_a_written_file() {
    let envd = start_envd().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hello.txt");
    let path = path.to_str().unwrap();
    envd.client
        .write_file(path, Some("root"), &b"hello"[..])
        .await
        .unwrap();

    let entry = envd.client.stat(path, Some("root")).await.unwrap();

    assert_eq!(entry.name, "hello.txt");
    assert_eq!(entry.path, path);
    assert_eq!(entry.kind, FileKind::File);
    assert_eq!(entry.size, 5);
    assert_eq!(entry.owner, "root");
    assert!(entry.modified.is_some());
}

#[tokio::test]
async fn make_dir_list_dir_and_remove_manage_a_directory() {
    let envd = start_envd().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap().to_owned();
    let made = envd
        .client
        .make_dir(&format!("{root}/b-dir"), Some("root"))
        .await
        .unwrap();
    envd.client
        .write_file(&format!("{root}/a-file"), Some("root"), &b"x"[..])
        .await
        .unwrap();

    let listed = envd.client.list_dir(&root, 1, Some("root")).await.unwrap();
    envd.client
        .remove(&format!("{root}/b-dir"), Some("root"))
        .await
        .unwrap();
    let after_remove = envd
        .client
        .stat(&format!("{root}/b-dir"), Some("root"))
        .await
        .unwrap_err();

    assert_eq!(made.kind, FileKind::Directory);
    let names: Vec<&str> = listed.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["a-file", "b-dir"]);
    assert!(after_remove.is_not_found(), "{after_remove}");
}

#[tokio::test]
async fn make_dir_of_an_existing_directory_is_already_exists() {
    let envd = start_envd().await;
    let dir = tempfile::tempdir().unwrap();

    let error = envd
        .client
        .make_dir(dir.path().to_str().unwrap(), Some("root"))
        .await
        .unwrap_err();

    assert_eq!(error.code(), Some("already_exists"), "{error}");
}

#[tokio::test]
async fn init_token_is_required_afterwards() {
    let envd = start_envd().await;
    let with_token = envd.client.clone().with_access_token("s3cret");

    envd.client
        .init(&InitRequest {
            access_token: Some("s3cret".into()),
            ..InitRequest::default()
        })
        .await
        .unwrap();
    let refused = envd.client.list_processes().await.unwrap_err();
    let allowed = with_token.list_processes().await;

    assert_eq!(refused.code(), Some("unauthenticated"), "{refused}");
    assert!(allowed.is_ok(), "{allowed:?}");
}

#[tokio::test]
async fn init_reports_whether_envd_applied_the_identity() {
    // envd on a host does not own the system, so it refuses to rename it.
    let envd = start_envd().await;

    let plain = envd.client.init(&InitRequest::default()).await.unwrap();
    let identity = envd
        .client
        .init(&InitRequest {
            hostname: Some("clone-1".into()),
            entropy_seed: Some(vec![1; 32]),
            ..InitRequest::default()
        })
        .await
        .unwrap_err();

    assert!(!plain.identity_applied);
    assert!(
        identity.to_string().contains("does not manage"),
        "{identity}"
    );
}

#[tokio::test]
async fn init_with_a_new_token_needs_a_client_holding_the_current_one() {
    let envd = start_envd().await;
    let set = |token: &str| InitRequest {
        access_token: Some(token.into()),
        ..InitRequest::default()
    };
    envd.client.init(&set("first")).await.unwrap();

    let anonymous = envd.client.init(&set("second")).await.unwrap_err();
    let holder = envd.client.clone().with_access_token("first");
    let rotated = holder.init(&set("second")).await;
    let old_refused = holder.list_processes().await.unwrap_err();
    let new_allowed = envd
        .client
        .clone()
        .with_access_token("second")
        .list_processes()
        .await;

    assert_eq!(anonymous.code(), Some("unauthenticated"), "{anonymous}");
    assert!(rotated.is_ok(), "{rotated:?}");
    assert_eq!(old_refused.code(), Some("unauthenticated"), "{old_refused}");
    assert!(new_allowed.is_ok(), "{new_allowed:?}");
}
