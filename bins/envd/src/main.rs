//! The envd binary: parse the command line, set up logging, serve.

use anyhow::Context as _;
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

/// Petrel guest agent (E2B envd wire protocol).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Address to listen on.
    #[arg(long, env = "ENVD_LISTEN", default_value = "0.0.0.0:49983")]
    listen: SocketAddr,
    /// User for requests that name none (falls back to the current user,
    /// with a warning, if it does not exist).
    #[arg(long, env = "ENVD_DEFAULT_USER", default_value = envd::config::DEFAULT_USER)]
    default_user: String,
    /// Working directory for processes that name none (default: the user's home).
    #[arg(long, env = "ENVD_DEFAULT_WORKDIR")]
    default_workdir: Option<PathBuf>,
    /// Access token required from the start (normally set by `POST /init`).
    #[arg(long, env = "ENVD_ACCESS_TOKEN", hide_env_values = true)]
    access_token: Option<String>,
    /// Keepalive period, in seconds, for streams whose request sets none.
    #[arg(long, default_value_t = 50)]
    keepalive_secs: u64,
    /// Refuse `/init`'s hostname and entropy seed: for an envd that does
    /// not own its system (one run on a host rather than in a guest).
    #[arg(long)]
    unmanaged_identity: bool,
    /// Print the E2B envd version this envd is compatible with and exit.
    #[arg(long)]
    compat_version: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.compat_version {
        println!("{}", envd::ENVD_COMPAT_VERSION);
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // A guest out of memory must lose one of its processes, not its agent.
    if let Err(err) = envd::oom::last_resort_self() {
        tracing::warn!(%err, "cannot make envd the OOM killer's last resort; a guest out of memory may kill it first");
    }
    let config = envd::Config {
        listen: cli.listen,
        default_user: cli.default_user,
        default_workdir: cli.default_workdir,
        default_keepalive: Duration::from_secs(cli.keepalive_secs.max(1)),
        access_token: cli.access_token,
        manage_identity: !cli.unmanaged_identity,
    };
    let server = envd::Server::bind(config).await.context("starting envd")?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    server
        .run_until(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            tracing::info!("signalled, shutting down");
        })
        .await
        .context("serving")?;
    Ok(())
}
