//! Shared by the host agent's integration tests: an agent running in-process
//! with real VMs (the images of `cargo xtask test`: `PETREL_KERNEL`,
//! `PETREL_ROOTFS`), its data in a temporary directory.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod binary;

use std::path::PathBuf;

use host_agent::config::AccelChoice;
use host_agent::{AgentConfig, RunningAgent};

/// The API key test agents accept.
pub const API_KEY: &str = "e2b_0123456789abcdef0123456789abcdef";

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

    /// `http://ADDR` of the envd proxy.
    pub fn sandbox_url(&self) -> String {
        format!(
            "http://{}",
            self.agent
                .sandbox_addr
                .expect("started with a sandbox listener")
        )
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

const SLOTS_PER_AGENT: u16 = 32;

/// A slot range no other test agent uses: each test process gets a block
/// of 8 ranges (by its pid, so test processes running at once do not
/// collide), used round-robin by its agents (at most a few run at once).
fn next_slot_range() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 8;
    let block = (std::process::id() % 100) as u16;
    1000 + (block * 8 + n) * SLOTS_PER_AGENT
}

/// An agent on 127.0.0.1 (random ports, envd proxy included) with no
/// template, so no request can boot a VM: for tests of the HTTP surface.
pub async fn start_agent_without_vms() -> TestAgent {
    let data_dir = tempfile::tempdir().unwrap();
    let config = AgentConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        sandbox_listen: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: data_dir.path().to_path_buf(),
        accel: AccelChoice::Tcg,
        api_keys: vec![API_KEY.to_string()],
        net_slot_first: next_slot_range(),
        net_slot_count: SLOTS_PER_AGENT,
        warm_templates: false,
        ..AgentConfig::default()
    };
    let agent = host_agent::start(config).await.unwrap();
    TestAgent { agent, data_dir }
}

/// Starts an agent on 127.0.0.1 (random ports, envd proxy included) with
/// the `base` template, or `None` when VM tests are skipped.
pub async fn start_agent() -> Option<TestAgent> {
    start_agent_with(|_| {}).await
}

/// [`start_agent`] with `adjust` applied to the configuration first (limits,
/// quotas).
pub async fn start_agent_with(adjust: impl FnOnce(&mut AgentConfig)) -> Option<TestAgent> {
    let (kernel, rootfs) = images()?;
    let data_dir = tempfile::tempdir().unwrap();
    let config = AgentConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        sandbox_listen: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: data_dir.path().to_path_buf(),
        accel: match std::env::var("PETREL_ACCEL").as_deref() {
            Ok("kvm") => AccelChoice::Kvm,
            _ => AccelChoice::Tcg,
        },
        api_keys: vec![API_KEY.to_string()],
        // Agents of parallel tests need disjoint network slots.
        net_slot_first: next_slot_range(),
        net_slot_count: SLOTS_PER_AGENT,
        // Tests create few sandboxes per agent: a warm-up boot would cost more.
        warm_templates: false,
        kernel: Some(kernel),
        rootfs: Some(rootfs),
        ..AgentConfig::default()
    };
    let mut config = config;
    adjust(&mut config);
    let agent = host_agent::start(config).await.unwrap();
    Some(TestAgent { agent, data_dir })
}
