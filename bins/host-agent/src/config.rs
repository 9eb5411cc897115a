//! The agent's configuration: flags, `PETREL_*` environment variables, or a
//! TOML file (flags win over the file).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// Which VMM runs sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum VmmChoice {
    /// Firecracker when installed and KVM works, QEMU otherwise.
    Auto,
    Qemu,
    Firecracker,
}

/// Which accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    /// KVM when a probe VM reaches init under it, TCG otherwise.
    Auto,
    Kvm,
    Tcg,
}

/// How sandboxes are networked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NetworkChoice {
    /// Namespaces when running as root, user-mode otherwise.
    Auto,
    /// A network namespace per sandbox (veth, TAP, NAT, egress policy).
    Namespace,
    /// QEMU's user-mode network, isolated (`restrict=on`: the guest
    /// reaches neither the host nor the internet, only envd is forwarded
    /// in); sandboxes asking for internet are refused. No root needed.
    User,
}

/// Which provider makes sandboxes' copy-on-write root disks (see
/// [`sandbox_core::choose_provider`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RootfsProviderChoice {
    /// A qcow2 overlay backed by the template's image (QEMU).
    Qcow2,
    /// A sparse (reflinked where possible) copy of the template's image.
    Copy,
    /// A device-mapper snapshot (needs device-mapper and root).
    Dm,
}

impl RootfsProviderChoice {
    /// The name [`sandbox_core::choose_provider`] takes.
    pub fn as_str(self) -> &'static str {
        match self {
            RootfsProviderChoice::Qcow2 => "qcow2",
            RootfsProviderChoice::Copy => "copy",
            RootfsProviderChoice::Dm => "dm",
        }
    }
}

/// Everything the agent is configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The REST API, the test UI and the E2B control plane.
    pub listen: SocketAddr,
    /// The E2B envd proxy (`E2B_SANDBOX_URL`); `None`: not served.
    pub sandbox_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub vmm: VmmChoice,
    pub accel: AccelChoice,
    pub default_vcpus: u8,
    pub default_memory_mib: u32,
    /// Running sandboxes at most (503 beyond).
    pub max_sandboxes: usize,
    pub network: NetworkChoice,
    /// First network slot of this agent and how many it may use; agents on
    /// one host need disjoint ranges (slot `s` owns namespace `petrel-s`).
    pub net_slot_first: u16,
    pub net_slot_count: u16,
    /// Per sandbox (namespaces only): concurrent outbound connections and
    /// new ones per second (0: no limit), outbound SMTP (TCP 25).
    pub net_max_connections: u32,
    pub net_new_connections_per_sec: u32,
    pub net_allow_smtp: bool,
    /// Keep a booted snapshot of the `base` template so creates restore it
    /// instead of cold-booting (made in the background at start).
    pub warm_templates: bool,
    /// Forces the rootfs provider; `None`: chosen from the backend and the
    /// host (a qcow2 overlay on QEMU).
    pub rootfs_provider: Option<RootfsProviderChoice>,
    /// Accepted E2B API keys (`X-API-KEY`); empty: E2B endpoints refuse all.
    pub api_keys: Vec<String>,
    /// The `base` template's images (built by `cargo xtask images`).
    pub kernel: Option<PathBuf>,
    pub rootfs: Option<PathBuf>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            sandbox_listen: None,
            data_dir: PathBuf::from("/var/lib/petrel"),
            vmm: VmmChoice::Auto,
            accel: AccelChoice::Auto,
            default_vcpus: 1,
            default_memory_mib: 512,
            max_sandboxes: 16,
            network: NetworkChoice::Auto,
            net_slot_first: 1,
            net_slot_count: 1024,
            net_max_connections: sandbox_core::network::EgressPolicy::DEFAULT_MAX_CONNECTIONS,
            net_new_connections_per_sec:
                sandbox_core::network::EgressPolicy::DEFAULT_NEW_CONNECTIONS_PER_SEC,
            net_allow_smtp: false,
            warm_templates: true,
            rootfs_provider: None,
            api_keys: Vec::new(),
            kernel: None,
            rootfs: None,
        }
    }
}
