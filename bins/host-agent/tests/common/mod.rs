//! Shared by the host agent's integration tests: an agent running in-process
//! with real VMs (the images of `cargo xtask test`: `PETREL_KERNEL`,
//! `PETREL_ROOTFS`), its data in a temporary directory.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod binary;

use std::path::PathBuf;

use host_agent::config::{AccelChoice, VmmChoice};
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

/// The accelerator test agents use: `PETREL_ACCEL=kvm|tcg|auto`; unset,
/// the one `PETREL_EXPECT_ACCEL` names (the KVM-host VM of `cargo xtask
/// vmtest --kvm`, where the probe is proven to pick KVM), else TCG (our
/// hosts' KVM runs no guest).
pub fn accel() -> AccelChoice {
    let named = std::env::var("PETREL_ACCEL").or_else(|_| std::env::var("PETREL_EXPECT_ACCEL"));
    match named.as_deref() {
        Ok("kvm") => AccelChoice::Kvm,
        Ok("auto") => AccelChoice::Auto,
        _ => AccelChoice::Tcg,
    }
}

/// The VMM backend of test agents: `PETREL_VMM=qemu|firecracker|auto`
/// (default QEMU), so a suite can be run on Firecracker by hand.
pub fn vmm() -> VmmChoice {
    match std::env::var("PETREL_VMM").as_deref() {
        Ok("firecracker") => VmmChoice::Firecracker,
        Ok("auto") => VmmChoice::Auto,
        _ => VmmChoice::Qemu,
    }
}

/// Stops `agent` leaving its sandboxes running (as an agent upgrade
/// does) and starts another on the same data and configuration.
pub async fn restart(agent: TestAgent) -> TestAgent {
    let config = (*agent.agent.state.config).clone();
    agent.agent.shutdown().await.unwrap();
    let restarted = host_agent::start(config).await.unwrap();
    TestAgent {
        agent: restarted,
        data_dir: agent.data_dir,
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
        net_spares: 0,
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
    let (config, data_dir) = config_with_base(adjust)?;
    let agent = host_agent::start(config).await.unwrap();
    Some(TestAgent { agent, data_dir })
}

/// The configuration [`start_agent_with`] starts an agent with, and its
/// data dir; `None` when VM tests are skipped.
pub fn config_with_base(
    adjust: impl FnOnce(&mut AgentConfig),
) -> Option<(AgentConfig, tempfile::TempDir)> {
    let (kernel, rootfs) = images()?;
    let data_dir = tempfile::tempdir().unwrap();
    let mut config = AgentConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        sandbox_listen: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: data_dir.path().to_path_buf(),
        accel: accel(),
        vmm: vmm(),
        api_keys: vec![API_KEY.to_string()],
        // Agents of parallel tests need disjoint network slots.
        net_slot_first: next_slot_range(),
        net_slot_count: SLOTS_PER_AGENT,
        // Tests create few sandboxes per agent: a warm-up boot would cost
        // more, and so would networks made ahead (which tests counting
        // namespaces would see).
        warm_templates: false,
        net_spares: 0,
        kernel: Some(kernel),
        rootfs: Some(rootfs),
        ..AgentConfig::default()
    };
    adjust(&mut config);
    Some((config, data_dir))
}
