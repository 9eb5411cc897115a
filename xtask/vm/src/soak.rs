//! `cargo xtask bench soak --runs N`: N create/exec/destroy cycles and
//! N/5 pause/resume cycles through the lifecycle manager, each sandbox in
//! its own network namespace, then the host listings (VMM processes,
//! namespaces, loop devices, nftables tables, run dirs, the agent's open
//! files) compared with those taken before. The soak is
//! `--runs 1000` (200 pause/resume cycles); CI runs a smaller count.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use envd_client::ExecRequest;
use qemu_vmm::Accel;
use sandbox_core::network::NetworkPool;
use sandbox_core::{CreateSandbox, GuestImages, Manager, ManagerConfig, QemuBackend};
use serde_json::json;

use crate::demo;

/// Slots no test uses.
const SLOTS: std::ops::Range<u16> = 32_000..32_004;

pub async fn soak(images: &GuestImages, cycles: usize) -> Result<()> {
    let outcome = demo::probe(images).await;
    let work = demo::tempdir("petrel-bench-soak")?;
    let result = soak_runs(images, outcome.accel, cycles, &work).await;
    let cleanup = std::fs::remove_dir_all(&work);
    let report = result?;
    cleanup.with_context(|| format!("removing {}", work.display()))?;
    println!("{report}");
    if report["listings_identical"] != json!(true) {
        bail!(
            "the host listings changed over the soak: {}",
            report["changed"]
        );
    }
    Ok(())
}

async fn soak_runs(
    images: &GuestImages,
    accel: Accel,
    cycles: usize,
    work: &Path,
) -> Result<serde_json::Value> {
    let pool = Arc::new(NetworkPool::new(SLOTS)?);
    let config = ManagerConfig {
        network: Some(pool),
        ..ManagerConfig::new(work.join("data"))
    };
    let manager = Manager::open(config, Arc::new(QemuBackend::new(accel))).await?;
    manager.register_template("base", images, "soak").await?;
    let request = || CreateSandbox {
        template: "base".into(),
        ..CreateSandbox::default()
    };
    // The first create builds what stays for the run (template files).
    let first = manager.create(request()).await?;
    manager.destroy(&first.id).await?;
    let before = listings(work);
    let (mut create, mut exec, mut destroy) = (Vec::new(), Vec::new(), Vec::new());
    for cycle in 0..cycles {
        let start = Instant::now();
        let info = manager.create(request()).await?;
        create.push(start.elapsed());
        let start = Instant::now();
        let out = manager
            .exec(&info.id, ExecRequest::shell("echo soak"))
            .await?;
        exec.push(start.elapsed());
        if out.stdout != b"soak\n" {
            bail!("cycle {cycle}: exec answered {:?}", out.stdout);
        }
        let start = Instant::now();
        manager.destroy(&info.id).await?;
        destroy.push(start.elapsed());
        if (cycle + 1) % 50 == 0 {
            eprintln!("[soak] create/exec/destroy {}/{cycles}", cycle + 1);
        }
    }
    let pause_cycles = (cycles / 5).max(1);
    let (mut pause, mut resume) = (Vec::new(), Vec::new());
    let info = manager.create(request()).await?;
    manager
        .exec(
            &info.id,
            ExecRequest::shell(
                "echo 0 > /tmp/n; nohup sh -c 'while sleep 1; do :; done' >/dev/null 2>&1 &",
            ),
        )
        .await?;
    for cycle in 0..pause_cycles {
        let start = Instant::now();
        manager.pause(&info.id).await?;
        pause.push(start.elapsed());
        let start = Instant::now();
        manager.resume(&info.id, None).await?;
        resume.push(start.elapsed());
        let n = manager
            .exec(
                &info.id,
                ExecRequest::shell("n=$(( $(cat /tmp/n) + 1 )); echo $n > /tmp/n; echo $n"),
            )
            .await?;
        if String::from_utf8_lossy(&n.stdout).trim() != (cycle + 1).to_string() {
            bail!(
                "pause/resume cycle {cycle}: the guest's count is {:?}",
                n.stdout
            );
        }
    }
    manager.destroy(&info.id).await?;
    let after = listings(work);
    let changed: BTreeMap<&String, (&String, &String)> = before
        .iter()
        .filter_map(|(k, v)| {
            let now = &after[k];
            (now != v).then_some((k, (v, now)))
        })
        .collect();
    Ok(json!({
        "bench": "soak",
        "accel": accel.to_string(),
        "create_exec_destroy_cycles": cycles,
        "pause_resume_cycles": pause_cycles,
        "create_ms": super::bench::stats(&create),
        "exec_ms": super::bench::stats(&exec),
        "destroy_ms": super::bench::stats(&destroy),
        "pause_ms": super::bench::stats(&pause),
        "resume_ms": super::bench::stats(&resume),
        "listings_before": before,
        "listings_after": after,
        "changed": changed,
        "listings_identical": changed.is_empty(),
    }))
}

/// What a leak would show on the host: counts of each kind of resource.
fn listings(work: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let needle = work.display().to_string();
    let vmms = std::fs::read_dir("/proc").map_or(0, |entries| {
        entries
            .flatten()
            .filter(|e| {
                std::fs::read(e.path().join("cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
            })
            .count()
    });
    out.insert("vmm_processes".into(), vmms.to_string());
    let namespaces = std::fs::read_dir("/run/netns").map_or(0, |entries| {
        entries
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("petrel-"))
                    .and_then(|n| n.parse::<u16>().ok())
                    .is_some_and(|slot| SLOTS.contains(&slot))
            })
            .count()
    });
    out.insert("network_namespaces".into(), namespaces.to_string());
    out.insert(
        "loop_devices".into(),
        command_lines("losetup", &["-n", "-l"]),
    );
    out.insert(
        "nft_tables".into(),
        command_lines("nft", &["list", "tables"]),
    );
    out.insert(
        "host_links".into(),
        command_lines("ip", &["-o", "link", "show"]),
    );
    let run_dirs = std::fs::read_dir(work.join("data/sandboxes")).map_or(0, Iterator::count);
    out.insert("run_dirs".into(), run_dirs.to_string());
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count);
    // A few descriptors come and go with the runtime: count in tens.
    out.insert("open_files_tens".into(), (fds / 10).to_string());
    out
}

/// The number of output lines of a listing command ("unavailable" when it
/// cannot run).
fn command_lines(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unavailable".to_string(),
            |o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .count()
                    .to_string()
            },
        )
}
