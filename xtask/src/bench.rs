//! `cargo xtask bench`: timings as JSON (the last line of stdout).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::ValueEnum;
use qemu_vmm::{Accel, Drive, NetConfig, QemuVm, VmConfig};
use sandbox_core::{GuestImages, QemuBackend, Sandbox, SandboxConfig};
use serde_json::json;

use crate::{demo, images, setup};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Which {
    /// Cold boot to envd-ready and exec round trip, beside a raw QEMU boot to init.
    Boot,
    /// CreateNetwork / RemoveNetwork (namespace, veth, TAP, NAT) latency.
    Network,
}

pub fn run(which: Which, runs: usize) -> Result<()> {
    setup::run()?;
    match which {
        Which::Boot => {
            let images = images::build()?;
            demo::runtime()?.block_on(boot(&images, runs.max(1)))
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

fn stats(samples: &[Duration]) -> serde_json::Value {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        let index = ((ms.len() as f64 - 1.0) * q).round() as usize;
        (ms[index.min(ms.len() - 1)] * 10.0).round() / 10.0
    };
    json!({ "p50": pick(0.5), "p95": pick(0.95), "min": pick(0.0), "max": pick(1.0) })
}
