//! `cargo xtask serve`: builds what is missing and runs the host agent with
//! the `base` template, printing where it listens, its API key and the
//! `export` lines for the E2B SDKs and the `petrel` CLI.
//!
//! The key is made once (`e2b_` and 32 hex digits from the OS RNG) and kept
//! in `<data dir>/serve-api-key` (0600), so exports printed once stay valid
//! across restarts. Ctrl-C or SIGTERM stops the agent (it leaves running
//! sandboxes running and re-adopts them at its next start).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::images::Images;
use crate::setup::Task;
use crate::{env, images, setup};

/// How long the agent gets to answer after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The REST API and the E2B control plane (`E2B_API_URL`).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The E2B envd proxy (`E2B_SANDBOX_URL`).
    #[arg(long, default_value = "127.0.0.1:8081")]
    sandbox_listen: SocketAddr,
    #[arg(long, default_value = "/var/lib/petrel")]
    data_dir: PathBuf,
    /// Build and run the agent with the release profile (slower first build).
    #[arg(long)]
    release: bool,
    /// More `host-agent serve` flags (see `host-agent serve --help`).
    #[arg(last = true)]
    agent_args: Vec<String>,
}

/// Builds, starts the agent, prints how to reach it, waits until it stops.
pub fn run(args: &ServeArgs) -> Result<()> {
    setup::run(Task::Serve)?;
    let images = images::build()?;
    let agent = build_agent(args.release)?;
    let key = api_key(&args.data_dir)?;
    env::step(&format!(
        "starting {} (data in {})",
        agent.display(),
        args.data_dir.display()
    ));
    let mut child = spawn_agent(&agent, args, &images, &key)?;
    // From here on Ctrl-C and SIGTERM go to the agent, which shuts down
    // cleanly; this process waits for it and exits with its status.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("installing the signal handler")?;
    }
    if let Err(err) = wait_ready(&mut child, args.listen, &key, &stop) {
        stop_agent(&mut child);
        return Err(err);
    }
    print_banner(args, &key);
    let mut forwarded = false;
    loop {
        if let Some(status) = child.try_wait().context("waiting for the agent")? {
            if status.success() || forwarded {
                eprintln!("[serve] the agent stopped ({status})");
                return Ok(());
            }
            bail!("the host agent exited ({status})");
        }
        if stop.load(Ordering::Relaxed) && !forwarded {
            signal_agent(&child);
            forwarded = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn build_agent(release: bool) -> Result<PathBuf> {
    env::step("building host-agent");
    env::build_binary("host-agent", "host-agent", release)
}

/// The agent's API key: the one kept in the data dir, or a new one.
fn api_key(data_dir: &Path) -> Result<String> {
    let path = data_dir.join("serve-api-key");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let key = text.trim().to_string();
        if is_e2b_key(&key) {
            return Ok(key);
        }
        eprintln!(
            "[serve] {} holds no e2b_<32 hex> key: making a new one",
            path.display()
        );
    }
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for the API key")?;
    let key = format!(
        "e2b_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(format!("{key}\n").as_bytes()))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(key)
}

/// `e2b_` and 32 lowercase hex digits: the keys the agent accepts.
fn is_e2b_key(key: &str) -> bool {
    key.strip_prefix("e2b_").is_some_and(|hex| {
        hex.len() == 32
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn spawn_agent(agent: &Path, args: &ServeArgs, images: &Images, key: &str) -> Result<Child> {
    Command::new(agent)
        .arg("serve")
        .arg("--listen")
        .arg(args.listen.to_string())
        .arg("--sandbox-listen")
        .arg(args.sandbox_listen.to_string())
        .arg("--data-dir")
        .arg(&args.data_dir)
        .arg("--api-key")
        .arg(key)
        .args(&args.agent_args)
        .envs(images.envs())
        .env_remove("PETREL_API_KEYS")
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", agent.display()))
}

/// Waits until the agent answers `GET /v1/templates` with 200, saying what
/// it waits for every few seconds.
fn wait_ready(child: &mut Child, listen: SocketAddr, key: &str, stop: &AtomicBool) -> Result<()> {
    let start = Instant::now();
    let mut said = Duration::ZERO;
    loop {
        if let Some(status) = child.try_wait().context("waiting for the agent")? {
            bail!("the host agent exited before it answered on {listen} ({status})");
        }
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted while the agent was starting");
        }
        if get_status(listen, "/v1/templates", Some(key)).is_ok_and(|s| s == 200) {
            return Ok(());
        }
        let waited = start.elapsed();
        if waited > READY_TIMEOUT {
            bail!(
                "the host agent did not answer on {listen} within {} s",
                READY_TIMEOUT.as_secs()
            );
        }
        if waited.saturating_sub(said) >= Duration::from_secs(5) {
            eprintln!(
                "[serve] waiting for the agent on {listen} ({} s)",
                waited.as_secs()
            );
            said = waited;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The status code of `GET path` (with `X-API-KEY: key`).
fn get_status(addr: SocketAddr, path: &str, key: Option<&str>) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = key.map_or_else(String::new, |k| format!("X-API-KEY: {k}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP status line: {line:?}")))
}

fn print_banner(args: &ServeArgs, key: &str) {
    let api = format!("http://{}", args.listen);
    let sandboxes = format!("http://{}", args.sandbox_listen);
    println!();
    println!("Petrel is running (Ctrl-C stops the agent; sandboxes keep running).");
    println!("  API:        {api}   (REST under /v1, E2B control plane, /test UI)");
    println!("  sandboxes:  {sandboxes}   (E2B envd proxy)");
    println!(
        "  API key:    {key}   (kept in {})",
        args.data_dir.join("serve-api-key").display()
    );
    println!();
    println!("For the E2B SDKs (pip install e2b / npm install e2b):");
    println!("export E2B_API_KEY={key}");
    println!("export E2B_API_URL={api}");
    println!("export E2B_SANDBOX_URL={sandboxes}");
    println!();
    println!("For the petrel CLI (cargo install --path bins/petrel):");
    println!("export PETREL_URL={api}");
    println!("export PETREL_API_KEY={key}");
    println!();
}

fn signal_agent(child: &Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

/// SIGTERM, then SIGKILL after 30 s; reaps the agent.
fn stop_agent(child: &mut Child) {
    signal_agent(child);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs `cargo xtask serve` on free loopback ports with a
/// fresh data dir, as a user would, and checks what its banner says: the
/// API answers with the printed key, E2B routes refuse a request without
/// it, and SIGTERM stops the agent.
pub fn smoke_test(images: &Images) -> Result<()> {
    let data_dir = std::env::temp_dir().join(format!("petrel-serve-smoke-{}", std::process::id()));
    let result = smoke_in(images, &data_dir);
    let cleanup = std::fs::remove_dir_all(&data_dir)
        .with_context(|| format!("removing {}", data_dir.display()));
    result?;
    cleanup
}

fn smoke_in(_images: &Images, data_dir: &Path) -> Result<()> {
    let free_port = || -> Result<SocketAddr> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
        listener.local_addr().context("a free port")
    };
    let (api, sandboxes) = (free_port()?, free_port()?);
    // Through cargo, as a user types it: `cargo test` may have rebuilt the
    // xtask binary under this running one.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut child = Command::new(&cargo)
        .args(["run", "--quiet", "--package", "xtask", "--"])
        .args(["serve", "--listen", &api.to_string(), "--sandbox-listen"])
        .arg(sandboxes.to_string())
        .arg("--data-dir")
        .arg(data_dir)
        .args([
            "--",
            "--warm-templates",
            "false",
            "--net-slot-first",
            "900",
            "--net-slot-count",
            "8",
        ])
        .stdout(Stdio::piped())
        .current_dir(env::root())
        .spawn()
        .with_context(|| format!("running {cargo} run -p xtask -- serve"))?;
    let outcome = check_banner(&mut child, api);
    signal_agent(&child);
    let status = wait_for(&mut child, Duration::from_secs(60));
    outcome?;
    let status = status?;
    if !status.success() {
        bail!("`cargo xtask serve` exited with {status} after SIGTERM");
    }
    if TcpStream::connect_timeout(&api, Duration::from_secs(1)).is_ok() {
        bail!("{api} still answers after `cargo xtask serve` stopped");
    }
    eprintln!("[serve] smoke test passed: banner, key, URLs, clean stop");
    Ok(())
}

fn check_banner(child: &mut Child, api: SocketAddr) -> Result<()> {
    let stdout = child.stdout.take().context("serve's stdout")?;
    let mut exports = Vec::new();
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.context("reading serve's stdout")?;
        println!("{line}");
        if let Some(export) = line.strip_prefix("export ") {
            exports.push(export.to_string());
        }
        if line.starts_with("export PETREL_API_KEY=") {
            break;
        }
    }
    // The agent logs to that stdout too: keep reading it until it closes.
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            println!("{line}");
        }
    });
    let value = |name: &str| {
        exports
            .iter()
            .find_map(|e| e.strip_prefix(&format!("{name}=")))
            .map(str::to_string)
            .with_context(|| format!("serve printed no `export {name}=`"))
    };
    let key = value("E2B_API_KEY")?;
    if value("E2B_API_URL")? != format!("http://{api}") || value("PETREL_API_KEY")? != key {
        bail!("serve's exports do not name the agent it started: {exports:?}");
    }
    let with_key = get_status(api, "/sandboxes", Some(&key)).context("GET /sandboxes")?;
    let without = get_status(api, "/sandboxes", None).context("GET /sandboxes")?;
    let templates = get_status(api, "/v1/templates", Some(&key)).context("GET /v1/templates")?;
    let templates_without = get_status(api, "/v1/templates", None).context("GET /v1/templates")?;
    if (with_key, without, templates, templates_without) != (200, 401, 200, 401) {
        bail!(
            "the agent answered GET /sandboxes {with_key} with the printed key and {without} without it, \
             GET /v1/templates {templates} and {templates_without} (want 200, 401, 200, 401)"
        );
    }
    Ok(())
}

fn wait_for(child: &mut Child, limit: Duration) -> Result<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().context("waiting for serve")? {
            return Ok(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "`cargo xtask serve` did not stop within {} s of SIGTERM",
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_e2b_keys_of_32_hex_digits_are_kept() {
        assert!(is_e2b_key("e2b_0123456789abcdef0123456789abcdef"));
        assert!(!is_e2b_key("e2b_0123456789ABCDEF0123456789abcdef"));
        assert!(!is_e2b_key("e2b_0123"));
        assert!(!is_e2b_key("0123456789abcdef0123456789abcdef"));
    }
}
