//! Shared by the CLI's integration tests: a host agent running in-process
//! (with real VMs from `PETREL_KERNEL`/`PETREL_ROOTFS`, or without any
//! template for tests that need no VM) and the built `petrel` binary run
//! against it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use host_agent::config::AccelChoice;
use host_agent::{AgentConfig, RunningAgent};
use tokio::io::AsyncWriteExt as _;

/// The longest one petrel command may take (a create boots a VM under TCG).
pub const COMMAND_TIMEOUT: Duration = Duration::from_mins(3);

/// A running test agent; call [`TestAgent::stop`] at the end of the test.
pub struct TestAgent {
    pub agent: RunningAgent,
    pub data_dir: tempfile::TempDir,
}

impl TestAgent {
    /// `http://ADDR` of the API.
    pub fn url(&self) -> String {
        format!("http://{}", self.agent.api_addr)
    }

    /// Runs `petrel --url URL args...`.
    pub async fn petrel(&self, args: &[&str]) -> Run {
        petrel(&self.url(), args, None).await
    }

    /// Destroys every sandbox and stops the agent.
    pub async fn stop(self) {
        self.agent.shutdown_and_destroy_all().await.unwrap();
    }
}

/// Whether VM tests can run; prints why not (and fails under
/// `PETREL_REQUIRE_VM=1`, set by `cargo xtask test`).
pub fn images() -> Option<(PathBuf, PathBuf)> {
    let kernel = std::env::var_os("PETREL_KERNEL").map(PathBuf::from);
    let rootfs = std::env::var_os("PETREL_ROOTFS").map(PathBuf::from);
    match (kernel, rootfs) {
        (Some(kernel), Some(rootfs)) => Some((kernel, rootfs)),
        _ if std::env::var("PETREL_REQUIRE_VM").as_deref() == Ok("1") => {
            panic!("PETREL_REQUIRE_VM=1 but PETREL_KERNEL/PETREL_ROOTFS are not set")
        }
        _ => {
            eprintln!("skipped: PETREL_KERNEL/PETREL_ROOTFS not set; run `cargo xtask test`");
            None
        }
    }
}

const SLOTS_PER_AGENT: u16 = 4;

/// A network slot range no other test agent uses: above the host agent
/// tests' ranges (1000..~26700), a block of 8 ranges per test process (by
/// its pid), used round-robin by its agents.
fn next_slot_range() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 8;
    let block = (std::process::id() % 100) as u16;
    28_000 + (block * 8 + n) * SLOTS_PER_AGENT
}

/// The API key test agents accept; [`petrel`] passes it.
pub const API_KEY: &str = "e2b_0123456789abcdef0123456789abcdef";

fn config(data_dir: &tempfile::TempDir) -> AgentConfig {
    AgentConfig {
        api_keys: vec![API_KEY.to_string()],
        listen: "127.0.0.1:0".parse().unwrap(),
        sandbox_listen: None,
        data_dir: data_dir.path().to_path_buf(),
        accel: match std::env::var("PETREL_ACCEL").as_deref() {
            Ok("kvm") => AccelChoice::Kvm,
            _ => AccelChoice::Tcg,
        },
        net_slot_first: next_slot_range(),
        net_slot_count: SLOTS_PER_AGENT,
        // A warm-up boot would cost more than the few creates of a test.
        warm_templates: false,
        ..AgentConfig::default()
    }
}

/// An agent on 127.0.0.1 (random port) with the `base` template, or
/// `None` when VM tests are skipped.
pub async fn start_agent() -> Option<TestAgent> {
    let (kernel, rootfs) = images()?;
    let data_dir = tempfile::tempdir().unwrap();
    let config = AgentConfig {
        kernel: Some(kernel),
        rootfs: Some(rootfs),
        ..config(&data_dir)
    };
    let agent = host_agent::start(config).await.unwrap();
    Some(TestAgent { agent, data_dir })
}

/// An agent without any template: every sandbox is unknown to it.
pub async fn start_agent_without_vms() -> TestAgent {
    let data_dir = tempfile::tempdir().unwrap();
    let agent = host_agent::start(config(&data_dir)).await.unwrap();
    TestAgent { agent, data_dir }
}

/// What one petrel run did.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The output, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `petrel` with an environment that names no agent, key or config file,
/// so only what a test passes counts.
pub fn command() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_petrel"));
    command
        .env_remove("PETREL_URL")
        .env_remove("PETREL_API_KEY")
        .env_remove("E2B_API_KEY")
        .env("XDG_CONFIG_HOME", "/nonexistent/petrel-test-config")
        .kill_on_drop(true);
    command
}

/// Runs `petrel --url URL --api-key KEY args...` with `stdin` (or none)
/// to its end.
pub async fn petrel(url: &str, args: &[&str], stdin: Option<&str>) -> Run {
    let mut command = command();
    command
        .arg("--url")
        .arg(url)
        .args(["--api-key", API_KEY])
        .args(args);
    run(command, stdin).await
}

/// Runs `command` with `stdin` (or none) to its end.
pub async fn run(mut command: tokio::process::Command, stdin: Option<&str>) -> Run {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).await.unwrap();
        drop(pipe);
    }
    // On timeout the child is dropped, which kills it (`kill_on_drop`).
    let Ok(output) = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output()).await else {
        return Run {
            code: None,
            stdout: String::new(),
            stderr: format!("(killed: petrel did not finish within {COMMAND_TIMEOUT:?})"),
        };
    };
    let output = output.unwrap();
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

impl TestAgent {
    /// A sandbox of `base` made with `petrel sandbox create` (256 MiB,
    /// 10 minutes, `extra` arguments added): its id. On failure the agent
    /// is stopped (destroying whatever was made) before the panic.
    pub async fn create_sandbox(self, extra: &[&str]) -> (Self, String) {
        let mut args = vec![
            "sandbox",
            "create",
            "--memory-mb",
            "256",
            "--timeout",
            "600",
        ];
        args.extend_from_slice(extra);
        let run = self.petrel(&args).await;
        if run.code != Some(0) {
            self.stop().await;
            panic!("sandbox create failed: {}", run.describe());
        }
        let id = run.stdout.trim().to_owned();
        (self, id)
    }
}
