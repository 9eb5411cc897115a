//! `host-agent`: serve the API, print the host's capabilities, or install
//! itself as a systemd service.

mod install;

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use host_agent::AgentConfig;
use host_agent::config::{AccelChoice, NetworkChoice, RootfsProviderChoice, VmmChoice};

#[derive(Parser)]
#[command(name = "host-agent", about = "Petrel host agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API until SIGTERM or Ctrl-C (sandboxes keep running).
    Serve(Box<ServeArgs>),
    /// Print the host's capabilities (KVM, device-mapper, userfaultfd,
    /// nftables, QEMU, Firecracker) and the choices `serve` would make.
    Doctor(DoctorArgs),
    /// Install as the systemd service petrel-host-agent (binary, unit,
    /// documented config, data dir) and start it; --uninstall removes it.
    Install(install::InstallArgs),
    /// Print the SHA-256 of an API key read from standard input, for
    /// `api_key_sha256` in the config (so the file need not hold the key).
    HashKey,
    /// List the named crash points of the lifecycle operations: with
    /// PETREL_TEST_CRASH_AT=<point>, `serve` aborts there (recovery tests).
    CrashPoints,
}

#[derive(clap::Args)]
struct DoctorArgs {
    /// Where `serve` keeps its data (the accelerator probe is cached there).
    #[arg(long, env = "PETREL_DATA_DIR", default_value = "/var/lib/petrel")]
    data_dir: PathBuf,
    #[arg(long, env = "PETREL_VMM", value_enum, default_value = "auto")]
    vmm: VmmChoice,
    #[arg(long, env = "PETREL_ACCEL", value_enum, default_value = "auto")]
    accel: AccelChoice,
    /// Sandbox networking, as `serve` would have it (Firecracker needs namespaces).
    #[arg(long, env = "PETREL_NETWORK", value_enum, default_value = "auto")]
    network: NetworkChoice,
    /// Force the rootfs provider (default: chosen per backend).
    #[arg(long, env = "PETREL_ROOTFS_PROVIDER", value_enum)]
    rootfs_provider: Option<RootfsProviderChoice>,
    /// The guest kernel the KVM probe boots (default: PETREL_KERNEL).
    #[arg(long, env = "PETREL_KERNEL")]
    kernel: Option<PathBuf>,
    /// The guest rootfs the KVM probe boots (default: PETREL_ROOTFS).
    #[arg(long, env = "PETREL_ROOTFS")]
    rootfs: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML file with the same keys as the flags (flags win).
    #[arg(long, env = "PETREL_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "PETREL_LISTEN")]
    listen: Option<SocketAddr>,
    /// The E2B envd proxy (E2B_SANDBOX_URL).
    #[arg(long, env = "PETREL_SANDBOX_LISTEN")]
    sandbox_listen: Option<SocketAddr>,
    /// The base domain of sandbox host names, `{port}-{sandboxID}.{domain}`
    /// (optionally `:port`), returned to the E2B SDKs for `get_host`.
    #[arg(long, env = "PETREL_SANDBOX_DOMAIN")]
    sandbox_domain: Option<String>,
    #[arg(long, env = "PETREL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[arg(long, env = "PETREL_VMM", value_enum)]
    vmm: Option<VmmChoice>,
    #[arg(long, env = "PETREL_ACCEL", value_enum)]
    accel: Option<AccelChoice>,
    #[arg(long, env = "PETREL_VCPUS")]
    vcpus: Option<u8>,
    #[arg(long, env = "PETREL_MEMORY_MIB")]
    memory_mib: Option<u32>,
    #[arg(long, env = "PETREL_MAX_SANDBOXES")]
    max_sandboxes: Option<usize>,
    /// Paused sandboxes at most (default 64).
    #[arg(long, env = "PETREL_MAX_PAUSED")]
    max_paused: Option<usize>,
    /// Seconds a sandbox may stay paused before it is destroyed (default 30 days).
    #[arg(long, env = "PETREL_PAUSED_TTL_S")]
    paused_ttl_s: Option<u64>,
    /// Snapshots at most (default 64).
    #[arg(long, env = "PETREL_MAX_SNAPSHOTS")]
    max_snapshots: Option<usize>,
    /// Bytes all snapshots may use together (default 64 GiB).
    #[arg(long, env = "PETREL_MAX_SNAPSHOT_BYTES")]
    max_snapshot_bytes: Option<u64>,
    /// Bytes of each of stdout/stderr an exec's JSON reply carries (default 4 MiB).
    #[arg(long, env = "PETREL_EXEC_OUTPUT_LIMIT")]
    exec_output_limit: Option<usize>,
    /// File uploads in progress at once (default 4).
    #[arg(long, env = "PETREL_MAX_CONCURRENT_UPLOADS")]
    max_concurrent_uploads: Option<usize>,
    /// Sandbox networking: a namespace each (default as root) or user-mode.
    #[arg(long, env = "PETREL_NETWORK", value_enum)]
    network: Option<NetworkChoice>,
    /// First network slot of this agent (agents on one host need disjoint
    /// slot ranges).
    #[arg(long, env = "PETREL_NET_SLOT_FIRST")]
    net_slot_first: Option<u16>,
    #[arg(long, env = "PETREL_NET_SLOT_COUNT")]
    net_slot_count: Option<u16>,
    /// Sandbox networks made ahead of demand (namespaces only; default 2;
    /// 0: none).
    #[arg(long, env = "PETREL_NET_SPARES")]
    net_spares: Option<usize>,
    /// Keep a booted snapshot of the base template for fast creates
    /// (default true).
    #[arg(long, env = "PETREL_WARM_TEMPLATES")]
    warm_templates: Option<bool>,
    /// Sandboxes each warm template keeps ready for creates (default 2;
    /// 0: no pools).
    #[arg(long, env = "PETREL_POOL_SIZE")]
    pool_size: Option<usize>,
    /// Force the sandboxes' root disk provider (default: qcow2 overlay on
    /// QEMU); refused at start when unusable on this host.
    #[arg(long, env = "PETREL_ROOTFS_PROVIDER", value_enum)]
    rootfs_provider: Option<RootfsProviderChoice>,
    /// API keys for every route of --listen (repeatable; PETREL_API_KEYS is
    /// comma-separated). At least one key (or --api-key-sha256) is needed.
    #[arg(long = "api-key", env = "PETREL_API_KEYS", value_delimiter = ',')]
    api_keys: Vec<String>,
    /// API keys given as their SHA-256 hex (`host-agent hash-key`).
    #[arg(
        long = "api-key-sha256",
        env = "PETREL_API_KEY_SHA256",
        value_delimiter = ','
    )]
    api_key_sha256: Vec<String>,
    /// Host names the API answers to besides IP addresses and localhost.
    #[arg(
        long = "allowed-host",
        env = "PETREL_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    allowed_hosts: Vec<String>,
    /// Browser origins allowed to call the API besides its own.
    #[arg(
        long = "allowed-origin",
        env = "PETREL_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    allowed_origins: Vec<String>,
    /// The base template's kernel (default: PETREL_KERNEL).
    #[arg(long, env = "PETREL_KERNEL")]
    kernel: Option<PathBuf>,
    /// The base template's rootfs (default: PETREL_ROOTFS).
    #[arg(long, env = "PETREL_ROOTFS")]
    rootfs: Option<PathBuf>,
}

impl ServeArgs {
    fn into_config(self) -> Result<AgentConfig> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => AgentConfig::default(),
        };
        if let Some(v) = self.listen {
            config.listen = v;
        }
        if self.sandbox_listen.is_some() {
            config.sandbox_listen = self.sandbox_listen;
        }
        if self.sandbox_domain.is_some() {
            config.sandbox_domain = self.sandbox_domain;
        }
        if let Some(v) = self.data_dir {
            config.data_dir = v;
        }
        if let Some(v) = self.vmm {
            config.vmm = v;
        }
        if let Some(v) = self.accel {
            config.accel = v;
        }
        if let Some(v) = self.vcpus {
            config.default_vcpus = v;
        }
        if let Some(v) = self.memory_mib {
            config.default_memory_mib = v;
        }
        if let Some(v) = self.max_sandboxes {
            config.max_sandboxes = v;
        }
        if let Some(v) = self.max_paused {
            config.max_paused = v;
        }
        if let Some(v) = self.paused_ttl_s {
            config.paused_ttl_s = v;
        }
        if let Some(v) = self.max_snapshots {
            config.max_snapshots = v;
        }
        if let Some(v) = self.max_snapshot_bytes {
            config.max_snapshot_bytes = v;
        }
        if let Some(v) = self.exec_output_limit {
            config.exec_output_limit = v;
        }
        if let Some(v) = self.max_concurrent_uploads {
            config.max_concurrent_uploads = v;
        }
        if let Some(v) = self.network {
            config.network = v;
        }
        if let Some(v) = self.net_slot_first {
            config.net_slot_first = v;
        }
        if let Some(v) = self.net_slot_count {
            config.net_slot_count = v;
        }
        if let Some(v) = self.net_spares {
            config.net_spares = v;
        }
        if let Some(v) = self.warm_templates {
            config.warm_templates = v;
        }
        if let Some(v) = self.pool_size {
            config.pool_size = v;
        }
        if self.rootfs_provider.is_some() {
            config.rootfs_provider = self.rootfs_provider;
        }
        if !self.api_key_sha256.is_empty() {
            config.api_key_sha256 = self.api_key_sha256;
        }
        if !self.allowed_hosts.is_empty() {
            config.allowed_hosts = self.allowed_hosts;
        }
        if !self.allowed_origins.is_empty() {
            config.allowed_origins = self.allowed_origins;
        }
        if !self.api_keys.is_empty() {
            config.api_keys = self.api_keys;
        }
        if self.kernel.is_some() {
            config.kernel = self.kernel;
        }
        if self.rootfs.is_some() {
            config.rootfs = self.rootfs;
        }
        Ok(config)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    // Everything the agent writes (database, run dirs, saved RAM, snapshots)
    // is for root's eyes only; QEMU inherits this too.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    // Colours only on a terminal: under systemd, stdout is the journal.
    let ansi = std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(ansi)
        .init();
    match Cli::parse().command {
        Command::Serve(args) => {
            let agent = host_agent::start(args.into_config()?).await?;
            println!("petrel host agent: API on http://{}", agent.api_addr);
            if let Some(addr) = agent.sandbox_addr {
                println!("petrel host agent: envd proxy on http://{addr}");
            }
            wait_for_signal().await?;
            tracing::info!("shutting down; running sandboxes keep running");
            agent.shutdown().await
        }
        Command::Doctor(args) => {
            let options = host_agent::doctor::DoctorOptions {
                data_dir: args.data_dir,
                vmm: args.vmm,
                accel: args.accel,
                network: args.network,
                rootfs_provider: args.rootfs_provider,
                kernel: args.kernel,
                rootfs: args.rootfs,
            };
            print!("{}", host_agent::doctor::run(&options).await);
            Ok(())
        }
        Command::Install(args) => install::run(&args).await,
        Command::HashKey => {
            let mut key = String::new();
            std::io::stdin()
                .read_line(&mut key)
                .context("reading the key from standard input")?;
            let key = key.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!key.is_empty(), "no key on standard input");
            println!("{}", host_agent::auth::sha256_hex(key));
            Ok(())
        }
        Command::CrashPoints => {
            for (name, what) in sandbox_core::crash::POINTS {
                println!("{name:<22} {what}");
            }
            Ok(())
        }
    }
}

async fn wait_for_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C")?,
    }
    Ok(())
}
