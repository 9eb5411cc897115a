//! `cargo xtask bench`: timings as JSON (the last line of stdout).

use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::ValueEnum;
use qemu_vmm::{Accel, Drive, NetConfig, QemuVm, VmConfig};
use sandbox_core::disk::{self, RootfsProvider};
use sandbox_core::{GuestImages, Hypervisor, QemuBackend, Sandbox, SandboxConfig};
use serde_json::json;

use crate::{demo, images};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Which {
    /// Cold boot to envd-ready and exec round trip, beside a raw QEMU boot to init.
    Boot,
    /// CreateNetwork / RemoveNetwork (namespace, veth, TAP, NAT) latency.
    Network,
    /// Rootfs provider create time over sparse 1, 4 and 16 GiB base images.
    Providers,
    /// Cold and warm create, pause, resume, exec, disk use; beside raw QEMU.
    Lifecycle,
    /// The lifecycle bench inside a KVM-host VM (nested): QEMU under KVM,
    /// QEMU under (nested) TCG and Firecracker (when there is one), in one
    /// run.
    Kvm,
    /// The lifecycle bench on Firecracker (network namespaces; needs KVM and
    /// a `firecracker` binary). Run by `bench kvm` inside its VM.
    #[value(hide = true)]
    FirecrackerLifecycle,
    /// The release host agent over its HTTP API (and the e2b SDK where
    /// its venv is): create, exec, files, pause, resume, kill, concurrent
    /// creates, idle memory; beside a raw QEMU restore and in-guest bash.
    Api,
    /// `--runs` create/exec/destroy and runs/5 pause/resume cycles through
    /// the manager; fails when host listings differ after.
    Soak,
}

pub fn run(which: Which, runs: usize) -> Result<()> {
    match which {
        Which::Boot => {
            let images = images::from_env()?;
            demo::runtime()?.block_on(boot(&images, runs.max(1)))
        }
        Which::Providers => {
            let runs = runs.max(1);
            let mut report = demo::runtime()?.block_on(providers(runs))?;
            let in_guest = std::env::var_os(crate::vmtest::IN_GUEST_ENV).is_some();
            if disk::DmProvider::shared().is_err() && !in_guest {
                crate::env::step(
                    "device-mapper is unusable here: all three providers again, inside a VM",
                );
                report["in_vm"] = providers_in_vm(runs)?;
            }
            println!("{report}");
            Ok(())
        }
        Which::Lifecycle => {
            let images = images::from_env()?;
            demo::runtime()?.block_on(lifecycle(&images, runs.max(1)))
        }
        Which::FirecrackerLifecycle => {
            let images = images::from_env()?;
            demo::runtime()?.block_on(firecracker_lifecycle(&images, runs.max(1)))
        }
        Which::Kvm => crate::bench_kvm::run(runs.max(1)),
        Which::Api => crate::bench_api::run(runs.max(1)),
        Which::Soak => {
            let images = images::from_env()?;
            demo::runtime()?.block_on(crate::soak::soak(&images, runs.max(1)))
        }
        Which::Network => {
            let runs = runs.max(1).to_string();
            crate::env::cargo(
                &[
                    "run",
                    "--quiet",
                    "--release",
                    "-p",
                    "netns",
                    "--example",
                    "bench_network",
                ],
                &[("BENCH_RUNS", runs.as_str())],
            )
        }
    }
}

async fn boot(images: &GuestImages, runs: usize) -> Result<()> {
    let outcome = demo::probe(images).await;
    let work = demo::tempdir("petrel-bench")?;
    let result = boot_runs(images, outcome.accel, runs, &work).await;
    let cleanup = std::fs::remove_dir_all(&work);
    let (raw, cold, exec) = result?;
    cleanup.with_context(|| format!("removing {}", work.display()))?;
    let report = json!({
        "bench": "boot",
        "accel": outcome.accel.to_string(),
        "runs": runs,
        "vcpus": 1,
        "memory_mib": 512,
        "raw_qemu_boot_to_init_ms": stats(&raw),
        "cold_boot_to_envd_ready_ms": stats(&cold),
        "exec_round_trip_ms": stats(&exec),
    });
    println!("{report}");
    Ok(())
}

type Samples = Vec<Duration>;

async fn boot_runs(
    images: &GuestImages,
    accel: Accel,
    runs: usize,
    work: &std::path::Path,
) -> Result<(Samples, Samples, Samples)> {
    let (mut raw, mut cold, mut exec) = (Vec::new(), Vec::new(), Vec::new());
    let backend = QemuBackend::new(accel);
    for run in 0..runs {
        raw.push(raw_boot(images, accel, &work.join(format!("raw-{run}"))).await?);
        let start = Instant::now();
        let sandbox = Sandbox::boot(
            &backend,
            SandboxConfig::new(format!("bench-{run}"), images.clone(), work),
        )
        .await?;
        cold.push(start.elapsed());
        let exec_start = Instant::now();
        let output = sandbox.exec_shell("true").await;
        exec.push(exec_start.elapsed());
        sandbox.destroy().await?;
        output?;
        eprintln!(
            "[bench] run {}/{runs}: raw {:?}, cold {:?}, exec {:?}",
            run + 1,
            raw[run],
            cold[run],
            exec[run]
        );
    }
    Ok((raw, cold, exec))
}

/// QEMU with the same kernel and rootfs (read-only, no network, no envd):
/// process start until init's first output on the console.
async fn raw_boot(
    images: &GuestImages,
    accel: Accel,
    run_dir: &std::path::Path,
) -> Result<Duration> {
    let config = VmConfig {
        kernel: images.kernel.clone(),
        kernel_args:
            "console=ttyS0 root=/dev/vda ro panic=-1 init=/usr/bin/printf PETREL%sINIT\\n _AT_"
                .into(),
        drives: vec![Drive {
            read_only: true,
            ..Drive::raw(&images.rootfs)
        }],
        net: NetConfig::None,
        ..VmConfig::new("bench-raw", run_dir, accel)
    };
    let start = Instant::now();
    let mut vm = QemuVm::spawn(config).await?;
    let reached = vm
        .wait_for_console("PETREL_AT_INIT", Duration::from_mins(1))
        .await;
    let took = start.elapsed();
    vm.kill().await?;
    std::fs::remove_dir_all(run_dir).with_context(|| format!("removing {}", run_dir.display()))?;
    reached?;
    Ok(took)
}

/// Base image sizes of the providers bench, in GiB.
const PROVIDER_BASE_GIB: [u64; 3] = [1, 4, 16];
/// Data in each base: 1 MiB every 64 MiB (16 MiB per GiB), the rest holes.
const DATA_STRIDE: u64 = 64 << 20;

/// The providers' create times on this host, as the JSON report.
async fn providers(runs: usize) -> Result<serde_json::Value> {
    let work = demo::tempdir("petrel-bench-providers")?;
    let result = provider_runs(runs, &work).await;
    let cleanup = std::fs::remove_dir_all(&work);
    let (results, reasons) = result?;
    cleanup.with_context(|| format!("removing {}", work.display()))?;
    Ok(json!({
        "bench": "providers",
        "runs": runs,
        "base": "sparse (truncate), 1 MiB of data every 64 MiB",
        "dm": reasons,
        "create_ms": results,
    }))
}

/// This bench run inside a VM whose kernel has device-mapper (TCG, test
/// disk with `qemu-img`): its JSON report.
fn providers_in_vm(runs: usize) -> Result<serde_json::Value> {
    let job = crate::vmtest::GuestJob {
        binary: std::env::current_exe().context("locating the xtask-vm binary")?,
        args: ["bench", "providers", "--runs", &runs.to_string()]
            .map(String::from)
            .to_vec(),
        env: Vec::new(),
    };
    let outputs = crate::vmtest::run_in_guest(
        "bench-providers",
        &[job],
        crate::vmtest::Nesting::Tcg,
        false,
    )?;
    outputs
        .first()
        .context("the guest ran no bench")?
        .json_report()
}

async fn provider_runs(
    runs: usize,
    work: &std::path::Path,
) -> Result<(serde_json::Map<String, serde_json::Value>, String)> {
    let mut providers: Vec<Arc<dyn RootfsProvider>> =
        vec![Arc::new(disk::Qcow2Provider), Arc::new(disk::CopyProvider)];
    let dm = match disk::DmProvider::shared() {
        Ok(dm) => {
            providers.push(dm);
            "measured".to_string()
        }
        Err(why) => format!("skipped: {why}"),
    };
    let mut results = serde_json::Map::new();
    for gib in PROVIDER_BASE_GIB {
        let base = work.join(format!("base-{gib}g.img"));
        make_base(&base, gib << 30)?;
        for provider in &providers {
            let mut samples = Vec::new();
            for run in 0..runs {
                let run_dir = work.join(format!("{}-{gib}g-{run}", provider.name()));
                std::fs::create_dir_all(&run_dir)
                    .with_context(|| format!("creating {}", run_dir.display()))?;
                let sandbox = format!("bench-{run}");
                let start = Instant::now();
                provider
                    .create(&sandbox, &base, disk::DiskFormat::Raw, &run_dir)
                    .await?;
                samples.push(start.elapsed());
                provider.remove(&sandbox, &run_dir).await?;
                std::fs::remove_dir_all(&run_dir)
                    .with_context(|| format!("removing {}", run_dir.display()))?;
            }
            eprintln!("[bench] {} {gib} GiB: {}", provider.name(), stats(&samples));
            results
                .entry(provider.name())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .context("provider results are an object")?
                .insert(format!("{gib}GiB"), stats(&samples));
        }
        std::fs::remove_file(&base).with_context(|| format!("removing {}", base.display()))?;
    }
    Ok((results, dm))
}

/// A sparse image of `bytes` (`truncate`) with 1 MiB of data every
/// [`DATA_STRIDE`].
fn make_base(path: &std::path::Path, bytes: u64) -> Result<()> {
    let status = std::process::Command::new("truncate")
        .arg("-s")
        .arg(bytes.to_string())
        .arg(path)
        .status()
        .context("running truncate")?;
    anyhow::ensure!(status.success(), "truncate {} failed", path.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let chunk = vec![0xa5_u8; 1 << 20];
    for offset in (0..bytes).step_by(usize::try_from(DATA_STRIDE)?) {
        file.seek(SeekFrom::Start(offset))?;
        file.write_all(&chunk)?;
    }
    file.sync_all()?;
    Ok(())
}

pub(crate) fn stats(samples: &[Duration]) -> serde_json::Value {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        let index = ((ms.len() as f64 - 1.0) * q).round() as usize;
        (ms[index.min(ms.len() - 1)] * 10.0).round() / 10.0
    };
    json!({ "p50": pick(0.5), "p95": pick(0.95), "min": pick(0.0), "max": pick(1.0) })
}

/// Lifecycle timings of a 512 MiB guest (user-mode network): cold create,
/// create from a warm snapshot, pause, resume, exec round trip and the
/// disk a paused sandbox and a snapshot take, beside the raw QEMU
/// operations (boot to init, save and restore of a file-backed-RAM guest)
/// measured in the same run.
async fn lifecycle(images: &GuestImages, runs: usize) -> Result<()> {
    let outcome = demo::probe(images).await;
    let backend = QemuBackend::new(outcome.accel);
    let bench = LifecycleBench {
        backend: &backend,
        raw_qemu: Some(outcome.accel),
        network: None,
    };
    print_lifecycle(images, &bench, runs, "petrel-bench-lifecycle").await
}

/// Firecracker's lifecycle timings (the same as [`lifecycle`]'s, without
/// a raw baseline), each sandbox in a network namespace of its own.
async fn firecracker_lifecycle(images: &GuestImages, runs: usize) -> Result<()> {
    let backend = sandbox_core::FirecrackerBackend::find()
        .context("no firecracker binary (PETREL_FIRECRACKER or PATH)")?;
    let pool = Arc::new(sandbox_core::NetworkPool::new(FIRECRACKER_SLOTS)?);
    let bench = LifecycleBench {
        backend: &backend,
        raw_qemu: None,
        network: Some(pool),
    };
    print_lifecycle(images, &bench, runs, "petrel-bench-fc").await
}

/// Runs `bench` in a scratch directory (removed after) and prints its
/// JSON report.
async fn print_lifecycle(
    images: &GuestImages,
    bench: &LifecycleBench<'_>,
    runs: usize,
    scratch: &str,
) -> Result<()> {
    let work = demo::tempdir(scratch)?;
    let result = lifecycle_runs(images, bench, runs, &work).await;
    let cleanup = std::fs::remove_dir_all(&work);
    let report = result?;
    cleanup.with_context(|| format!("removing {}", work.display()))?;
    println!("{report}");
    Ok(())
}

/// Network slots of the Firecracker lifecycle bench (no test uses them).
const FIRECRACKER_SLOTS: std::ops::Range<u16> = 32_400..32_410;

/// What a lifecycle bench runs on.
struct LifecycleBench<'a> {
    backend: &'a dyn Hypervisor,
    /// Measure raw QEMU (boot, save, restore) beside, with this accelerator.
    raw_qemu: Option<Accel>,
    /// Network namespaces (Firecracker needs them); `None`: user-mode.
    network: Option<Arc<sandbox_core::NetworkPool>>,
}

impl LifecycleBench<'_> {
    fn config(&self, name: String, images: &GuestImages, work: &std::path::Path) -> SandboxConfig {
        SandboxConfig {
            network: self.network.clone(),
            internet: self.network.as_ref().map(|_| false),
            ..SandboxConfig::new(name, images.clone(), work)
        }
    }
}

async fn lifecycle_runs(
    images: &GuestImages,
    bench: &LifecycleBench<'_>,
    runs: usize,
    work: &std::path::Path,
) -> Result<serde_json::Value> {
    let backend = bench.backend;
    let mut source =
        Sandbox::boot(backend, bench.config("bench-src".to_string(), images, work)).await?;
    let snapshot = work.join("warm");
    source.snapshot(&snapshot).await?;
    source.destroy().await?;
    let snapshot_bytes = dmsnap::dir_size(&snapshot).unwrap_or(0);
    let mut t = Timings::default();
    for run in 0..runs {
        if let Some(accel) = bench.raw_qemu {
            t.raw_boot
                .push(raw_boot(images, accel, &work.join(format!("raw-{run}"))).await?);
            let (save, restore) =
                raw_save_restore(images, accel, &work.join(format!("rawsr-{run}"))).await?;
            t.raw_save.push(save);
            t.raw_restore.push(restore);
        }

        let start = Instant::now();
        let mut cold =
            Sandbox::boot(backend, bench.config(format!("cold-{run}"), images, work)).await?;
        t.cold.push(start.elapsed());
        let start = Instant::now();
        cold.pause().await?;
        t.pause_cold.push(start.elapsed());
        let start = Instant::now();
        cold.resume().await?;
        t.resume_cold.push(start.elapsed());
        cold.destroy().await?;

        let start = Instant::now();
        let config = SandboxConfig {
            snapshot: Some(snapshot.clone()),
            ..bench.config(format!("warm-{run}"), images, work)
        };
        let mut sandbox = Sandbox::boot(backend, config).await?;
        t.warm.push(start.elapsed());
        let start = Instant::now();
        sandbox.exec_shell("true").await?;
        t.exec.push(start.elapsed());
        let start = Instant::now();
        sandbox.pause().await?;
        t.pause.push(start.elapsed());
        t.paused_bytes = dmsnap::dir_size(sandbox.run_dir()).unwrap_or(0);
        let start = Instant::now();
        sandbox.resume().await?;
        t.resume.push(start.elapsed());
        sandbox.destroy().await?;
        eprintln!("[bench] run {}/{runs} done", run + 1);
    }
    let mut report = json!({
        "bench": "lifecycle",
        "vmm": backend.kind().as_str(),
        "network": if bench.network.is_some() { "namespace" } else { "user-mode" },
        "runs": runs,
        "memory_mib": 512,
        "create_cold_ms": stats(&t.cold),
        "create_from_warm_snapshot_ms": stats(&t.warm),
        "pause_ms": stats(&t.pause),
        "resume_ms": stats(&t.resume),
        "pause_resume_note": "pause_ms/resume_ms: a sandbox started from the warm snapshot, whose \
            first pause writes its RAM (a private mapping of the snapshot's) into the state; \
            *_after_cold_boot_ms: a cold-booted sandbox, whose RAM stays in its own file",
        "pause_after_cold_boot_ms": stats(&t.pause_cold),
        "resume_after_cold_boot_ms": stats(&t.resume_cold),
        "exec_round_trip_ms": stats(&t.exec),
        "paused_sandbox_disk_bytes": t.paused_bytes,
        "snapshot_disk_bytes": snapshot_bytes,
    });
    if let Some(accel) = bench.raw_qemu {
        report["accel"] = json!(accel.to_string());
        report["raw_qemu_boot_to_init_ms"] = stats(&t.raw_boot);
        report["raw_qemu_save_state_ms"] = stats(&t.raw_save);
        report["raw_qemu_restore_state_ms"] = stats(&t.raw_restore);
    } else {
        report["accel"] = json!("kvm");
    }
    Ok(report)
}

#[derive(Default)]
struct Timings {
    raw_boot: Vec<Duration>,
    raw_save: Vec<Duration>,
    raw_restore: Vec<Duration>,
    cold: Vec<Duration>,
    warm: Vec<Duration>,
    pause: Vec<Duration>,
    resume: Vec<Duration>,
    pause_cold: Vec<Duration>,
    resume_cold: Vec<Duration>,
    exec: Vec<Duration>,
    paused_bytes: u64,
}

/// Raw QEMU: a guest with file-backed RAM whose init sleeps, saved to a
/// file (`x-ignore-shared`) and restored into a new QEMU.
pub(crate) async fn raw_save_restore(
    images: &GuestImages,
    accel: Accel,
    dir: &std::path::Path,
) -> Result<(Duration, Duration)> {
    let config = |incoming: bool| VmConfig {
        kernel: images.kernel.clone(),
        kernel_args: "console=ttyS0 root=/dev/vda ro panic=-1 init=/bin/sleep 3600".into(),
        drives: vec![Drive {
            read_only: true,
            ..Drive::raw(&images.rootfs)
        }],
        net: NetConfig::None,
        memory_file: Some(dir.join("ram")),
        incoming,
        ..VmConfig::new(
            "bench-raw-sr",
            dir.join(if incoming { "b" } else { "a" }),
            accel,
        )
    };
    let mut vm = QemuVm::spawn(config(false)).await?;
    vm.wait_for_console("Run /bin/sleep as init process", Duration::from_secs(60))
        .await?;
    let state = dir.join("state");
    let saved = vm.save_state(&state).await?;
    vm.kill().await?;
    let mut restored = QemuVm::spawn(config(true)).await?;
    let loaded = restored.restore_state(&state, saved.ram_in_state).await;
    restored.kill().await?;
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok((saved.took, loaded?.took))
}
