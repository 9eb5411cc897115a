//! `cargo xtask bench api`: the release host agent, started here on
//! 127.0.0.1 with a scratch data dir, driven over its HTTP API the way a
//! user drives it (and through the official e2b Python SDK when the test
//! suite's venv is there), beside raw baselines measured in the same run:
//! a raw QEMU restore of a guest and the in-guest cost of `bash -l -c true`.
//!
//! Everything it creates it destroys, also when a step fails; the agent is
//! stopped by its pid and its data dir removed.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use petrel::client::{Client, segment};
use sandbox_core::GuestImages;
use serde_json::{Value, json};

use crate::bench::stats;
use crate::{demo, images};

/// How long the agent may take to start and warm its `base` template.
const WARM_TIMEOUT: Duration = Duration::from_secs(600);
/// The concurrent bursts measured (without pools).
const BURSTS: [usize; 2] = [8, 20];
/// The pool of phase 2, sized for the first burst.
const POOL: usize = 8;
/// Idle time before the per-sandbox memory is read.
const IDLE_SETTLE: Duration = Duration::from_secs(10);

pub fn run(runs: usize) -> Result<()> {
    let images = images::from_env()?;
    crate::env::step("building the release host agent");
    let binary = crate::env::build_binary("host-agent", "host-agent", true)?;
    let runtime = demo::runtime()?;
    crate::env::step("phase 1: an agent without pools (every create restores)");
    let mut report = with_agent(&runtime, &binary, BURSTS[1] + 4, 0, |agent| {
        let images = images.clone();
        Box::pin(async move { measure(agent, &images, runs).await })
    })?;
    crate::env::step(&format!(
        "phase 2: an agent pooling {POOL} sandboxes of base"
    ));
    report["pooled"] = with_agent(&runtime, &binary, POOL * 2 + 2, POOL, |agent| {
        Box::pin(measure_pooled(agent, runs))
    })?;
    println!("{report}");
    Ok(())
}

type Measured<'a> = std::pin::Pin<Box<dyn Future<Output = Result<Value>> + 'a>>;

/// Runs `work` against a fresh agent, then destroys whatever it left and
/// stops the agent, whatever happened.
fn with_agent(
    runtime: &tokio::runtime::Runtime,
    binary: &Path,
    max_sandboxes: usize,
    pool_size: usize,
    work: impl for<'a> FnOnce(&'a Agent) -> Measured<'a>,
) -> Result<Value> {
    let agent = Agent::start(binary, max_sandboxes, pool_size)?;
    let measured = runtime.block_on(async {
        let result = match agent.wait_warm().await {
            Ok(()) => work(&agent).await,
            Err(err) => Err(err),
        };
        let cleaned = agent.destroy_all().await;
        result.and_then(|report| cleaned.map(|()| report))
    });
    let stopped = agent.stop();
    let report = measured?;
    stopped?;
    Ok(report)
}

/// Creates taking a pooled sandbox (the pool full before each), and a
/// burst of [`POOL`] creates into a full pool.
async fn measure_pooled(agent: &Agent, runs: usize) -> Result<Value> {
    let api = &agent.client;
    let (mut hits, mut first_exec) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        agent.wait_pool(POOL).await?;
        let (id, took) = timed(create_sandbox(api)).await?;
        hits.push(took);
        first_exec.push(timed(exec(api, &id, "echo hi")).await?.1);
        destroy(api, &id).await?;
    }
    agent.wait_pool(POOL).await?;
    let burst = burst(api, POOL).await?;
    let metrics = api.download("/metrics").await?;
    let metrics = String::from_utf8_lossy(&metrics);
    let metric = |name: &str| {
        let prefix = format!("{name}{{template=\"base\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Ok(json!({
        "pool_size": POOL,
        "create_pool_hit": stats(&hits),
        "first_exec_after_hit": stats(&first_exec),
        "concurrent_creates": {POOL.to_string(): burst.report},
        "hits": metric("petrel_pool_hits_total"),
        "misses": metric("petrel_pool_misses_total"),
    }))
}

/// What `n` concurrent creates did; the sandboxes are still there.
struct Burst {
    ids: Vec<String>,
    report: Value,
}

/// `n` creates at once, then destroys them; fails naming the creates that
/// failed.
async fn burst(api: &Client, n: usize) -> Result<Burst> {
    let burst = burst_keep(api, n).await;
    if let Ok(burst) = &burst {
        for id in &burst.ids {
            destroy(api, id).await?;
        }
    }
    burst
}

/// `n` creates at once, left running (on failure the ones made are
/// destroyed).
async fn burst_keep(api: &Client, n: usize) -> Result<Burst> {
    crate::env::step(&format!("{n} concurrent creates"));
    let start = Instant::now();
    let results = futures::future::join_all((0..n).map(|_| timed(create_sandbox(api)))).await;
    let wall = start.elapsed();
    let mut ids = Vec::new();
    let mut each = Vec::new();
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok((id, took)) => {
                ids.push(id);
                each.push(took);
            }
            Err(err) => failures.push(format!("{err:#}")),
        }
    }
    if !failures.is_empty() {
        for id in &ids {
            destroy(api, id).await?;
        }
        bail!(
            "{} of {n} concurrent creates failed: {}",
            failures.len(),
            failures.join("; ")
        );
    }
    Ok(Burst {
        ids,
        report: json!({"wall_ms": ms(wall), "each": stats(&each)}),
    })
}

async fn measure(agent: &Agent, images: &GuestImages, runs: usize) -> Result<Value> {
    let api = &agent.client;

    crate::env::step(&format!(
        "{runs} creates (pool miss: a warm-snapshot restore), first exec, kill"
    ));
    let (mut create, mut first_exec, mut kill) = (Vec::new(), Vec::new(), Vec::new());
    let mut steps: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    for _ in 0..runs {
        let (id, took) = timed(create_sandbox(api)).await?;
        create.push(took);
        for (step, ms) in agent_steps(api, &id).await? {
            steps
                .entry(step)
                .or_default()
                .push(Duration::from_millis(ms));
        }
        first_exec.push(timed(exec(api, &id, "echo hi")).await?.1);
        kill.push(timed(destroy(api, &id)).await?.1);
    }

    crate::env::step("exec, files, pause, resume on one sandbox");
    let id = create_sandbox(api).await?;
    let mut exec_echo = Vec::new();
    let mut exec_bash = Vec::new();
    let mut exec_bash_direct = Vec::new();
    let mut in_guest_bash = Vec::new();
    for _ in 0..runs {
        exec_echo.push(timed(exec(api, &id, "echo hi")).await?.1);
        // `cmd` alone runs in `bash -l -c` (E2B's semantics): two login
        // shells; with `args` the program runs by itself, the very process
        // the in-guest baseline times.
        exec_bash.push(timed(exec(api, &id, "bash -l -c true")).await?.1);
        exec_bash_direct.push(
            timed(exec_program(api, &id, "/bin/bash", &["-l", "-c", "true"]))
                .await?
                .1,
        );
        let out = exec(
            api,
            &id,
            "s=$(date +%s%N); bash -l -c true; e=$(date +%s%N); echo $((e-s))",
        )
        .await?;
        let nanos: u64 = out
            .trim()
            .parse()
            .with_context(|| format!("in-guest timing {out:?}"))?;
        in_guest_bash.push(Duration::from_nanos(nanos));
    }
    let mut files = serde_json::Map::new();
    for (name, size) in [("1KiB", 1_usize << 10), ("10MiB", 10 << 20)] {
        let data = Bytes::from(vec![b'p'; size]);
        let path = format!(
            "/v1/sandboxes/{}/files?path=/tmp/bench-{name}",
            segment(&id)
        );
        let (mut write, mut read) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            write.push(
                timed(async {
                    api.upload(&path, data.clone())
                        .await
                        .with_context(|| format!("PUT {path}"))
                })
                .await?
                .1,
            );
            let (got, took) = timed(async {
                api.download(&path)
                    .await
                    .with_context(|| format!("GET {path}"))
            })
            .await?;
            if got.len() != size {
                bail!(
                    "read back {} bytes of the {size} written to {path}",
                    got.len()
                );
            }
            read.push(took);
        }
        files.insert(format!("write_{name}"), stats(&write));
        files.insert(format!("read_{name}"), stats(&read));
    }
    let (mut pause, mut resume, mut exec_after_resume) = (Vec::new(), Vec::new(), Vec::new());
    let mut resume_steps: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    for _ in 0..runs {
        pause.push(timed(transition(api, &id, "pause")).await?.1);
        resume.push(timed(transition(api, &id, "resume")).await?.1);
        for (step, ms) in agent_steps(api, &id).await? {
            if let Some(step) = step.strip_prefix("resume_") {
                resume_steps
                    .entry(step.to_owned())
                    .or_default()
                    .push(Duration::from_millis(ms));
            }
        }
        exec_after_resume.push(timed(exec(api, &id, "echo hi")).await?.1);
    }
    destroy(api, &id).await?;

    let mut bursts = serde_json::Map::new();
    bursts.insert(BURSTS[0].to_string(), burst(api, BURSTS[0]).await?.report);
    let last = burst_keep(api, BURSTS[1]).await?;
    crate::env::step(&format!("{} idle sandboxes: memory per VMM", BURSTS[1]));
    tokio::time::sleep(IDLE_SETTLE).await;
    let density = vmm_memory(agent.pid());
    for id in &last.ids {
        destroy(api, id).await?;
    }
    let density = density?;
    bursts.insert(BURSTS[1].to_string(), last.report);

    crate::env::step("raw QEMU restore of a guest (baseline)");
    let accel = demo::probe(images).await.accel;
    let mut raw_restore = Vec::new();
    for n in 0..runs.min(5) {
        let dir =
            std::env::temp_dir().join(format!("petrel-bench-api-raw-{}-{n}", std::process::id()));
        raw_restore.push(crate::bench::raw_save_restore(images, accel, &dir).await?.1);
    }

    let sdk = sdk_figures(agent, runs)?;
    let p50 = |samples: &[Duration]| stats(samples)["p50"].as_f64().unwrap_or(f64::NAN);
    let ratio = |a: f64, b: f64| ((a / b) * 100.0).round() / 100.0;
    Ok(json!({
        "bench": "api",
        "accel": accel.to_string(),
        "runs": runs,
        "create_pool_miss": stats(&create),
        "create_pool_miss_steps": steps_report(&steps),
        "first_exec": stats(&first_exec),
        "exec_echo": stats(&exec_echo),
        "exec_bash_login": stats(&exec_bash),
        "exec_bash_login_direct": stats(&exec_bash_direct),
        "files": files,
        "pause": stats(&pause),
        "resume": stats(&resume),
        "resume_steps": steps_report(&resume_steps),
        "first_exec_after_resume": stats(&exec_after_resume),
        "kill": stats(&kill),
        "concurrent_creates": bursts,
        "idle_memory_at_20": density,
        "baseline": {
            "raw_qemu_restore": stats(&raw_restore),
            "in_guest_bash_login": stats(&in_guest_bash),
        },
        "ratios": {
            "create_miss_to_raw_restore": ratio(p50(&create), p50(&raw_restore)),
            "exec_bash_login_to_in_guest": ratio(p50(&exec_bash), p50(&in_guest_bash)),
            "exec_bash_login_direct_to_in_guest": ratio(p50(&exec_bash_direct), p50(&in_guest_bash)),
        },
        "sdk": sdk,
        "targets": {
            "create_hit_p50_ms": 30, "create_miss_p50_ms": 150, "exec_to_in_guest": 1.3,
            "pause_ms": 30, "resume_ms": 100, "burst_8_wall_ms_pooled": 1500,
            "burst_8_wall_ms_unpooled": 4000, "idle_rss_mib": 48,
        },
    }))
}

/// p50/p95 of each step.
fn steps_report(steps: &BTreeMap<String, Vec<Duration>>) -> serde_json::Map<String, Value> {
    steps
        .iter()
        .map(|(step, samples)| (step.clone(), stats(samples)))
        .collect()
}

async fn timed<T>(work: impl Future<Output = Result<T>>) -> Result<(T, Duration)> {
    let start = Instant::now();
    let value = work.await?;
    Ok((value, start.elapsed()))
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

async fn create_sandbox(api: &Client) -> Result<String> {
    let reply = api
        .post(
            "/v1/sandboxes",
            &json!({"template": "base", "timeout_s": 600}),
        )
        .await
        .context("creating a sandbox")?;
    reply.value["id"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("create replied without an id: {}", reply.text))
}

/// The agent's own timings of a sandbox's last create or resume
/// (`timings_ms`: prepare, VM started, envd ready, init, total; or
/// `resume_` disk, network, VM restore, envd ready, init), in ms.
async fn agent_steps(api: &Client, id: &str) -> Result<Vec<(String, u64)>> {
    let path = format!("/v1/sandboxes/{}", segment(id));
    let reply = api
        .get(&path)
        .await
        .with_context(|| format!("GET {path}"))?;
    Ok(reply.value["timings_ms"]
        .as_object()
        .map(|steps| {
            steps
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                .collect()
        })
        .unwrap_or_default())
}

/// `program args...` run by itself (no shell), checked to exit 0.
async fn exec_program(api: &Client, id: &str, program: &str, args: &[&str]) -> Result<()> {
    let path = format!("/v1/sandboxes/{}/exec", segment(id));
    let reply = api
        .post(&path, &json!({"cmd": program, "args": args}))
        .await
        .with_context(|| format!("POST {path} {program} {args:?}"))?;
    if reply.value["exit_code"] != 0 {
        bail!("{program} {args:?} in {id} failed: {}", reply.text);
    }
    Ok(())
}

async fn exec(api: &Client, id: &str, command: &str) -> Result<String> {
    let path = format!("/v1/sandboxes/{}/exec", segment(id));
    let reply = api
        .post(&path, &json!({"cmd": command}))
        .await
        .with_context(|| format!("POST {path} `{command}`"))?;
    if reply.value["exit_code"] != 0 {
        bail!("`{command}` in {id} failed: {}", reply.text);
    }
    Ok(reply.value["stdout"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

async fn transition(api: &Client, id: &str, verb: &str) -> Result<()> {
    let path = format!("/v1/sandboxes/{}/{verb}", segment(id));
    api.post(&path, &json!({}))
        .await
        .with_context(|| format!("{verb} {id}"))?;
    Ok(())
}

async fn destroy(api: &Client, id: &str) -> Result<()> {
    api.delete(&format!("/v1/sandboxes/{}", segment(id)))
        .await
        .with_context(|| format!("destroying {id}"))
}

/// RSS and PSS of the agent's VMM children (one per sandbox), in MiB.
fn vmm_memory(agent: u32) -> Result<Value> {
    let mut rss = Vec::new();
    let mut pss = Vec::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Ok(pid) = entry?.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().trim_end_matches(" kB").trim().to_owned())
        };
        let is_vmm = field("Name:").is_some_and(|n| n.starts_with("qemu") || n == "firecracker");
        if !is_vmm || field("PPid:").as_deref() != Some(&agent.to_string()) {
            continue;
        }
        let kib = |v: Option<String>| v.and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        rss.push(kib(field("VmRSS:")) / 1024.0);
        let rollup =
            std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        let pss_kib = rollup
            .lines()
            .find_map(|l| l.strip_prefix("Pss:"))
            .map_or(0.0, |v| {
                v.trim()
                    .trim_end_matches(" kB")
                    .trim()
                    .parse::<f64>()
                    .unwrap_or(0.0)
            });
        pss.push(pss_kib / 1024.0);
    }
    let mean = |v: &[f64]| (v.iter().sum::<f64>() / v.len().max(1) as f64 * 10.0).round() / 10.0;
    Ok(json!({"vmms": rss.len(), "rss_mib_mean": mean(&rss), "pss_mib_mean": mean(&pss)}))
}

/// The e2b SDK's own timings, through the venv `cargo xtask test` makes
/// for the SDK suite; skipped, saying why, when there is none.
fn sdk_figures(agent: &Agent, runs: usize) -> Result<Value> {
    let Some(python) = sdk_python() else {
        return Ok(
            json!({"skipped": "no e2b SDK venv (cargo xtask test makes one under target/)"}),
        );
    };
    crate::env::step(&format!("the e2b Python SDK ({})", python.display()));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bench_api_sdk.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(runs.to_string())
        .env("E2B_API_URL", format!("http://{}", agent.api))
        .env("E2B_SANDBOX_URL", format!("http://{}", agent.sandbox))
        .env("E2B_API_KEY", &agent.key)
        .env_remove("E2B_DOMAIN")
        .env_remove("E2B_ACCESS_TOKEN")
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("the SDK bench failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| format!("the SDK bench printed {last:?}"))
}

fn sdk_python() -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        PathBuf::from,
    );
    let venvs = std::fs::read_dir(target.join("tmp")).ok()?;
    venvs
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("e2b-sdk-venv-"))
        .map(|e| e.path().join("bin/python"))
        .find(|p| p.is_file())
}

/// The release host agent on 127.0.0.1, with a scratch data dir.
struct Agent {
    child: Child,
    client: Client,
    api: String,
    sandbox: String,
    key: String,
    data_dir: tempfile::TempDir,
}

impl Agent {
    fn start(binary: &Path, max_sandboxes: usize, pool_size: usize) -> Result<Self> {
        let data_dir = tempfile::Builder::new()
            .prefix("petrel-bench-api-")
            .tempdir()
            .context("making the agent's scratch data dir")?;
        let (api, sandbox) = (free_port()?, free_port()?);
        let key = format!("e2b_{}", hex(&random_bytes(16)?));
        let child = Command::new(binary)
            .arg("serve")
            .args(["--listen", &api, "--sandbox-listen", &sandbox])
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(["--api-key", &key])
            .args(["--max-sandboxes", &max_sandboxes.to_string()])
            .args(["--pool-size", &pool_size.to_string()])
            .env_remove("PETREL_API_KEYS")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let client = Client::new(&api, Some(&key))?;
        Ok(Self {
            child,
            client,
            api,
            sandbox,
            key,
            data_dir,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the base pool has `ready` sandboxes (its metric).
    async fn wait_pool(&self, ready: usize) -> Result<()> {
        let want = format!("petrel_pool_ready{{template=\"base\"}} {ready}");
        let start = Instant::now();
        loop {
            if let Ok(metrics) = self.client.download("/metrics").await
                && String::from_utf8_lossy(&metrics).lines().any(|l| l == want)
            {
                return Ok(());
            }
            if start.elapsed() > WARM_TIMEOUT {
                bail!(
                    "the base pool did not reach {ready} ready within {} s",
                    WARM_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_warm(&self) -> Result<()> {
        crate::env::step("waiting for the agent to warm its base template");
        let start = Instant::now();
        loop {
            if let Ok(reply) = self.client.get("/v1/templates/base").await
                && reply.value["warm"] == true
            {
                return Ok(());
            }
            if start.elapsed() > WARM_TIMEOUT {
                bail!(
                    "the agent's base template was not warm within {} s",
                    WARM_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Destroys every sandbox the agent has, collecting failures.
    async fn destroy_all(&self) -> Result<()> {
        let Ok(list) = self.client.get("/v1/sandboxes").await else {
            return Ok(()); // never answered: it made nothing
        };
        let mut failures = Vec::new();
        for sandbox in list.value.as_array().into_iter().flatten() {
            if let Some(id) = sandbox["id"].as_str()
                && let Err(err) = destroy(&self.client, id).await
            {
                failures.push(format!("{err:#}"));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            bail!("cleaning up: {}", failures.join("; "))
        }
    }

    /// SIGTERM to the agent (by its pid), then its data dir goes.
    fn stop(mut self) -> Result<()> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let status = self.child.wait().context("waiting for the agent to stop")?;
        tracing::debug!(%status, "agent stopped");
        self.data_dir
            .close()
            .context("removing the agent's scratch data dir")
    }
}

fn free_port() -> Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.to_string())
}

fn random_bytes(n: usize) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = vec![0; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
