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

impl NetworkChoice {
    /// Whether sandboxes get network namespaces (`Auto`: when running as root).
    pub fn namespaces(self) -> bool {
        match self {
            NetworkChoice::Namespace => true,
            NetworkChoice::User => false,
            NetworkChoice::Auto => nix::unistd::geteuid().is_root(),
        }
    }
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
    /// The base domain of sandbox host names, `{port}-{sandboxID}.{domain}`,
    /// which the proxy routes: returned as `domain` by the E2B API, so the
    /// SDKs' `get_host(port)` names the proxy. May end with `:port` (the
    /// proxy's, when it does not listen on 80). `None`: no `domain` is
    /// returned and the SDKs fall back to `E2B_DOMAIN`.
    pub sandbox_domain: Option<String>,
    pub data_dir: PathBuf,
    pub vmm: VmmChoice,
    pub accel: AccelChoice,
    pub default_vcpus: u8,
    pub default_memory_mib: u32,
    /// Running sandboxes at most (503 beyond), on every path that starts
    /// a VM (create, resume, connect, fork, warm-up, start from snapshot).
    pub max_sandboxes: usize,
    /// Paused sandboxes at most (a pause beyond: 429 `quota_exceeded`).
    pub max_paused: usize,
    /// Seconds a sandbox may stay paused before the reaper destroys it.
    pub paused_ttl_s: u64,
    /// Snapshots at most, and the bytes they may use together (a snapshot
    /// beyond either: 429 `quota_exceeded`).
    pub max_snapshots: usize,
    pub max_snapshot_bytes: u64,
    /// Bytes of each of stdout and stderr the JSON exec route returns; the
    /// rest is dropped and the reply says `truncated`.
    pub exec_output_limit: usize,
    /// File uploads in progress at once (429 `too_many_uploads` beyond).
    pub max_concurrent_uploads: usize,
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
    /// Networks (namespaces only) made ahead of demand, so a create only
    /// sets a made one's egress policy (0: none).
    pub net_spares: usize,
    /// Keep a booted snapshot of the `base` template so creates restore it
    /// instead of cold-booting (made in the background at start).
    pub warm_templates: bool,
    /// Sandboxes each warm template keeps ready for creates (0: none).
    pub pool_size: usize,
    /// Per-template pool sizes overriding `pool_size`.
    pub template_pool_sizes: std::collections::BTreeMap<String, usize>,
    /// Forces the rootfs provider; `None`: chosen from the backend and the
    /// host (a qcow2 overlay on QEMU).
    pub rootfs_provider: Option<RootfsProviderChoice>,
    /// Accepted API keys (`X-API-KEY`, `Authorization: Bearer`), for `/v1`,
    /// the E2B routes, `/metrics` and `/test` alike. Held hashed after start.
    pub api_keys: Vec<String>,
    /// Accepted API keys given as their SHA-256 (64 hex digits), so the
    /// config file need not hold the key itself (`host-agent hash-key`).
    pub api_key_sha256: Vec<String>,
    /// Host names (besides IP addresses and `localhost`) the API answers to
    /// in the `Host` header; others get 421 (DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// Browser origins (`https://app.example`) allowed to call the API
    /// besides the agent's own; others get 403 (CSRF).
    pub allowed_origins: Vec<String>,
    /// The `base` template's images (built by `cargo xtask images`).
    pub kernel: Option<PathBuf>,
    pub rootfs: Option<PathBuf>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            sandbox_listen: None,
            sandbox_domain: None,
            data_dir: PathBuf::from("/var/lib/petrel"),
            vmm: VmmChoice::Auto,
            accel: AccelChoice::Auto,
            default_vcpus: 1,
            default_memory_mib: 512,
            max_sandboxes: 16,
            max_paused: 64,
            paused_ttl_s: sandbox_core::DEFAULT_PAUSED_TTL.as_secs(),
            max_snapshots: 64,
            max_snapshot_bytes: 64 << 30,
            exec_output_limit: 4 << 20,
            max_concurrent_uploads: 4,
            network: NetworkChoice::Auto,
            net_slot_first: 1,
            net_slot_count: 1024,
            net_max_connections: sandbox_core::network::EgressPolicy::DEFAULT_MAX_CONNECTIONS,
            net_new_connections_per_sec:
                sandbox_core::network::EgressPolicy::DEFAULT_NEW_CONNECTIONS_PER_SEC,
            net_allow_smtp: false,
            warm_templates: true,
            net_spares: sandbox_core::network::DEFAULT_SPARES,
            pool_size: sandbox_core::DEFAULT_POOL_SIZE,
            template_pool_sizes: std::collections::BTreeMap::new(),
            rootfs_provider: None,
            api_keys: Vec::new(),
            api_key_sha256: Vec::new(),
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            kernel: None,
            rootfs: None,
        }
    }
}

/// Why `domain` is not a usable sandbox domain (`--sandbox-domain`): DNS
/// labels of letters, digits and hyphens, at least two of them, then an
/// optional `:port`; `None` when it is.
pub fn sandbox_domain_problem(domain: &str) -> Option<String> {
    let (host, port) = match domain.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    if let Some(port) = port
        && port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Some(format!("{port:?} is not a TCP port (1..=65535)"));
    }
    let labels: Vec<&str> = host.split('.').collect();
    let bad_label = labels.iter().find(|label| {
        label.is_empty()
            || label.len() > 63
            || label.starts_with('-')
            || label.ends_with('-')
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if let Some(label) = bad_label {
        return Some(format!(
            "label {label:?} is not a DNS label (1..=63 letters, digits or inner hyphens)"
        ));
    }
    if labels.len() < 2 || host.len() > 200 {
        return Some(
            "it must be a host name of at least two labels and at most 200 characters, \
             e.g. petrel.localhost"
                .to_string(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_domain_takes_host_names_with_an_optional_port() {
        let ok = ["petrel.localhost", "sbx.example.test:8081", "a-b.c0"];

        let problems: Vec<_> = ok
            .iter()
            .filter_map(|d| sandbox_domain_problem(d))
            .collect();

        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn sandbox_domain_rejects_what_is_no_host_name() {
        let bad = [
            "localhost",
            "",
            "petrel..localhost",
            "-x.test",
            "x_y.test",
            "x.test:0",
            "x.test:99999",
            "x.test:",
            "http://x.test",
            "x.test/path",
        ];

        let accepted: Vec<_> = bad
            .iter()
            .filter(|d| sandbox_domain_problem(d).is_none())
            .collect();

        assert!(accepted.is_empty(), "{accepted:?}");
    }
}
