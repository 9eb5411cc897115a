//! `cargo xtask demo` and `cargo xtask doctor`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use qemu_vmm::{Accel, AccelProbe, ProbeOutcome, probe_accelerator};
use sandbox_core::{
    BackendKind, FirecrackerBackend, GuestImages, Hypervisor, NetworkPool, QemuBackend, Sandbox,
    SandboxConfig, choose_provider,
};

use crate::{VmmChoice, env, images};

/// Boots a VM, runs `echo hello` in it through envd, prints the output and
/// the time of each step, and removes everything it made.
pub fn run(vmm: VmmChoice) -> Result<()> {
    let images = images::from_env()?;
    if matches!(vmm, VmmChoice::Firecracker) {
        return firecracker(&images);
    }
    runtime()?.block_on(async {
        let outcome = probe(&images).await;
        announce_boot(&outcome);
        let work = tempdir("petrel-demo")?;
        let backend = QemuBackend::new(outcome.accel);
        let result = demo(&backend, SandboxConfig::new("demo", images.clone(), &work)).await;
        let cleanup =
            std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()));
        result?;
        cleanup?;
        Ok::<_, anyhow::Error>(())
    })
}

/// The demo on Firecracker: here when KVM is usable, else inside a
/// KVM-host VM (nested KVM; `PETREL_KVM_KERNEL`) that gets this host's
/// Firecracker. The sandbox has a network namespace of its own.
fn firecracker(images: &GuestImages) -> Result<()> {
    let backend = FirecrackerBackend::find().context(
        "--vmm firecracker: no firecracker binary (PETREL_FIRECRACKER or PATH); Firecracker is in no \
         registry: build it from its source beside the project and point PETREL_FIRECRACKER at it",
    )?;
    let runtime = runtime()?;
    let outcome = runtime.block_on(probe(images));
    if outcome.accel == Accel::Kvm {
        env::step(&format!(
            "booting a Firecracker VM ({}) under KVM",
            backend.binary.display()
        ));
        return runtime.block_on(async {
            let work = tempdir("petrel-demo-fc")?;
            let pool = Arc::new(NetworkPool::new(DEMO_SLOTS)?);
            let config = SandboxConfig {
                network: Some(pool),
                internet: Some(false),
                ..SandboxConfig::new("demo-fc", images.clone(), &work)
            };
            let result = demo(&backend, config).await;
            let cleanup = std::fs::remove_dir_all(&work)
                .with_context(|| format!("removing {}", work.display()));
            result?;
            cleanup
        });
    }
    if std::env::var_os(crate::vmtest::IN_GUEST_ENV).is_some() {
        bail!(
            "--vmm firecracker: KVM is not usable in this VM either ({})",
            outcome.reason
        );
    }
    env::step(&format!(
        "KVM is not usable here ({}): the Firecracker demo runs inside a KVM-host VM",
        outcome.reason
    ));
    let job = crate::vmtest::GuestJob {
        binary: std::env::current_exe().context("locating the xtask-vm binary")?,
        args: ["demo", "--vmm", "firecracker"].map(String::from).to_vec(),
        env: Vec::new(),
    };
    let outputs =
        crate::vmtest::run_in_guest("demo-kvm", &[job], crate::vmtest::Nesting::Kvm, true)?;
    crate::vmtest::require_success("the Firecracker demo", &outputs)
}

/// Network slots of the Firecracker demo (no test uses them).
const DEMO_SLOTS: std::ops::Range<u16> = 32_410..32_412;

async fn demo(backend: &dyn Hypervisor, config: SandboxConfig) -> Result<()> {
    let sandbox = Sandbox::boot(backend, config)
        .await
        .context("booting the demo sandbox")?;
    let timings = sandbox.timings();
    let exec_start = Instant::now();
    let exec = sandbox.exec_shell("echo hello").await;
    let exec_time = exec_start.elapsed();
    let destroy_start = Instant::now();
    let destroyed = sandbox.destroy().await;
    let destroy_time = destroy_start.elapsed();
    let output = exec.context("running `echo hello` in the guest")?;
    destroyed.context("destroying the demo sandbox")?;
    print!("{}", String::from_utf8_lossy(&output.stdout));
    eprintln!("exit code {}", output.exit_code);
    eprintln!(
        "timings: prepare {} | vm start {} | envd ready {} (from vm start) | init {} | exec {} | destroy {}",
        ms(timings.prepare),
        ms(timings.vm_started),
        ms(timings.envd_ready),
        ms(timings.init),
        ms(exec_time),
        ms(destroy_time)
    );
    if output.exit_code != 0 || output.stdout != b"hello\n" {
        bail!("unexpected output from the guest: {output:?}");
    }
    Ok(())
}

/// The accelerator: `PETREL_ACCEL=kvm|tcg` forces one, otherwise the cached
/// outcome of a real KVM probe.
pub async fn probe(images: &GuestImages) -> ProbeOutcome {
    let probe = AccelProbe::new(
        &images.kernel,
        &images.rootfs,
        Some(&env::cache_dir()),
        std::env::temp_dir(),
    );
    let mut outcome = probe_accelerator(&probe).await;
    match std::env::var("PETREL_ACCEL").as_deref() {
        Ok("kvm") => {
            outcome.accel = Accel::Kvm;
            outcome.reason = "forced by PETREL_ACCEL=kvm".into();
        }
        Ok("tcg") => {
            outcome.accel = Accel::Tcg;
            outcome.reason = "forced by PETREL_ACCEL=tcg".into();
        }
        _ => {}
    }
    outcome
}

/// Says which accelerator the VM boots with and why.
pub fn announce_boot(outcome: &ProbeOutcome) {
    let source = if outcome.cached {
        "cached probe"
    } else {
        "probe"
    };
    env::step(&format!(
        "booting a {} VM ({source}: {})",
        outcome.accel, outcome.reason
    ));
}

/// Prints what this host can do and what Petrel chose.
pub fn doctor() -> Result<()> {
    let images = images::from_env()?;
    let outcome = runtime()?.block_on(probe(&images));
    let yes = |b: bool| if b { "yes" } else { "no" };
    let kvm_module = ["kvm_pvm", "kvm_intel", "kvm_amd"]
        .into_iter()
        .find(|m| Path::new("/sys/module").join(m).exists())
        .unwrap_or("none");
    println!("host kernel:       {}", command_line("uname", &["-r"]));
    println!(
        "/dev/kvm:          {} (module {kvm_module})",
        yes(Path::new("/dev/kvm").exists())
    );
    println!(
        "accelerator:       {} ({}{})",
        outcome.accel,
        outcome.reason,
        if outcome.cached { ", cached" } else { "" }
    );
    println!("qemu:              {}", outcome.qemu_version);
    println!(
        "firecracker:       {}",
        which("firecracker").map_or_else(
            || "not found".to_string(),
            |p| command_line(&p, &["--version"])
        )
    );
    println!(
        "device-mapper:     {}",
        yes(std::fs::read_to_string("/proc/misc").is_ok_and(|m| m.contains("device-mapper")))
    );
    println!(
        "userfaultfd:       {}",
        yes(Path::new("/proc/sys/vm/unprivileged_userfaultfd").exists()
            || Path::new("/dev/userfaultfd").exists())
    );
    println!("nftables:          {}", command_line("nft", &["--version"]));
    println!("guest kernel:      {}", images.kernel.display());
    println!("guest rootfs:      {}", images.rootfs.display());
    println!("vmm backend:       qemu ({} on this host)", outcome.accel);
    for backend in [BackendKind::Qemu, BackendKind::Firecracker] {
        println!(
            "rootfs provider:   {}",
            choose_provider(backend, None).map_or_else(
                |err| format!("{} -> none ({err})", backend.as_str()),
                |(provider, why)| format!("{} -> {} ({why})", backend.as_str(), provider.name())
            )
        );
    }
    Ok(())
}

fn which(name: &str) -> Option<String> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

fn command_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map_or_else(
            |err| format!("not runnable ({err})"),
            |o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string()
            },
        )
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// A fresh directory under the system temp dir (removed by the caller).
/// Directories of the same kind left by a run that was killed (its pid is
/// gone and no live process names the directory) are removed first: a
/// nested test disk takes gigabytes.
pub fn tempdir(prefix: &str) -> Result<std::path::PathBuf> {
    remove_dead_runs(prefix);
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Removes `<temp>/<prefix>-<pid>` directories whose pid is not running
/// and which no live process's command line names.
fn remove_dead_runs(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| {
            n.strip_prefix(prefix)?
                .strip_prefix('-')?
                .parse::<u32>()
                .ok()
        }) else {
            continue;
        };
        let path = entry.path();
        if std::path::Path::new(&format!("/proc/{pid}")).exists() || named_by_a_process(&path) {
            continue;
        }
        remove_dead_cgroups(&path);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => eprintln!("[xtask] removed {} (left by a killed run)", path.display()),
            Err(err) => eprintln!("[xtask] could not remove {}: {err}", path.display()),
        }
    }
}

/// Removes the VMM cgroups of the sandboxes a killed run left in `dir`
/// (`<dir>/sandboxes/<id>`): named after the id and run dir, they are
/// outside `dir` and would stay behind, empty, for good.
fn remove_dead_cgroups(dir: &std::path::Path) {
    let Ok(sandboxes) = std::fs::read_dir(dir.join("sandboxes")) else {
        return;
    };
    let Ok(confinement) = sandbox_core::confine::VmmConfinement::for_host(BackendKind::Qemu) else {
        return;
    };
    for sandbox in sandboxes.flatten() {
        let Some(id) = sandbox.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Some(cgroup) = confinement.cgroup(&id, &sandbox.path()) else {
            continue;
        };
        if !cgroup.dirs().iter().any(|d| d.exists()) {
            continue;
        }
        match cgroup.remove() {
            Ok(()) => eprintln!("[xtask] removed the cgroup of {id} (left by a killed run)"),
            Err(err) => eprintln!("[xtask] could not remove the cgroup of {id}: {err}"),
        }
    }
}

fn named_by_a_process(path: &std::path::Path) -> bool {
    let needle = path.to_string_lossy().into_owned();
    std::fs::read_dir("/proc").is_ok_and(|procs| {
        procs.flatten().any(|p| {
            std::fs::read(p.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
    })
}

pub fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_run_sweep_removes_the_cgroups_of_its_sandboxes() {
        let Ok(confinement) = sandbox_core::confine::VmmConfinement::for_host(BackendKind::Qemu)
        else {
            eprintln!("skipped: VMM confinement (root) is not available here");
            return;
        };
        // Arrange: a run dir of a process that is gone (pid beyond
        // pid_max) holding a sandbox whose cgroup exists.
        let prefix = format!("petrel-test-sweep-{}", std::process::id());
        let dead = std::env::temp_dir().join(format!("{prefix}-{}", u32::MAX - 1));
        let run_dir = dead.join("sandboxes").join("sweep-sb");
        std::fs::create_dir_all(&run_dir).unwrap();
        let Some(cgroup) = confinement.cgroup("sweep-sb", &run_dir) else {
            let _ = std::fs::remove_dir_all(&dead);
            eprintln!("skipped: no cgroup hierarchy here");
            return;
        };
        cgroup.create(confinement.limits(1, 64)).unwrap();
        let made = cgroup.dirs().iter().all(|d| d.exists());

        // Act
        remove_dead_runs(&prefix);

        // Assert
        let left: Vec<_> = cgroup.dirs().iter().filter(|d| d.exists()).collect();
        let _ = cgroup.remove();
        assert!(made);
        assert!(left.is_empty(), "cgroups left: {left:?}");
        assert!(!dead.exists());
    }
}
