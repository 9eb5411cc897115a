//! One behavioural suite over every VMM backend usable here, so a feature
//! cannot silently exist on one backend only: QEMU always (TCG on our
//! hosts, KVM inside the KVM-host VM of `cargo xtask vmtest --kvm`), and
//! Firecracker where KVM works and a `firecracker` binary is found
//! (`PETREL_FIRECRACKER` or PATH); a backend that cannot run here is named
//! as skipped, with the reason. Every sandbox gets its own network
//! namespace (Firecracker has no user-mode network). Needs root.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{TestDir, images};
use qemu_vmm::Accel;
use sandbox_core::{
    FirecrackerBackend, GuestImages, Hypervisor, NetworkPool, QemuBackend, Sandbox, SandboxConfig,
};

/// The backends usable here, each with its name; the others are printed
/// as skipped with the reason.
fn backends() -> Vec<(&'static str, Arc<dyn Hypervisor>)> {
    let mut backends: Vec<(&'static str, Arc<dyn Hypervisor>)> =
        vec![("qemu", Arc::new(QemuBackend::new(common::accel())))];
    match firecracker() {
        Ok(backend) => backends.push(("firecracker", Arc::new(backend))),
        Err(why) => eprintln!("firecracker: skipped: {why}"),
    }
    backends
}

/// Firecracker, when it can run guests here.
fn firecracker() -> Result<FirecrackerBackend, String> {
    let backend =
        FirecrackerBackend::find().ok_or("no firecracker binary (PETREL_FIRECRACKER or PATH)")?;
    if !backend.binary.is_file() {
        return Err(format!("{} does not exist", backend.binary.display()));
    }
    if common::accel() != Accel::Kvm {
        return Err("KVM is not usable here (the accelerator probe chose TCG)".to_string());
    }
    Ok(backend)
}

/// A pool of network slots of its own per test and backend (32_100 to
/// 32_399: no other test file uses them).
fn pool(first_slot: u16) -> Arc<NetworkPool> {
    Arc::new(NetworkPool::new(first_slot..first_slot + 10).unwrap())
}

fn config(name: &str, images: &GuestImages, dir: &Path, pool: &Arc<NetworkPool>) -> SandboxConfig {
    SandboxConfig {
        network: Some(pool.clone()),
        internet: Some(false),
        ..SandboxConfig::new(name, images.clone(), dir)
    }
}

async fn sh(sandbox: &Sandbox, script: &str) -> String {
    let out = sandbox.exec_shell(script).await.unwrap();
    assert!(
        out.success(),
        "{script:?} failed in {}: {}",
        sandbox.id(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `petrel-<slot>` namespaces of the pool starting at `first_slot`.
fn namespaces(first_slot: u16) -> Vec<String> {
    (first_slot..first_slot + 10)
        .map(|slot| format!("petrel-{slot}"))
        .filter(|name| Path::new("/run/netns").join(name).exists())
        .collect()
}

/// Whether any process's command line names `dir` (a VMM left running).
fn process_naming(dir: &Path) -> Option<String> {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc").unwrap().find_map(|entry| {
        let cmdline = std::fs::read(entry.ok()?.path().join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        cmdline.contains(&needle).then_some(cmdline)
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn create_exec_files_and_destroy_leave_nothing_on_every_backend() {
    let Some(images) = images() else { return };
    for (slot, (name, backend)) in (32_100u16..).step_by(10).zip(backends()) {
        let dir = TestDir::new(&format!("be-basic-{name}"));
        let pool = pool(slot);
        let sandbox = Sandbox::boot(&*backend, config(name, &images, &dir.0, &pool))
            .await
            .unwrap_or_else(|err| panic!("{name}: boot: {err}"));
        let run_dir = sandbox.run_dir().to_path_buf();

        let echo = sh(&sandbox, "echo hello; uname -s").await;
        sandbox
            .envd()
            .write_file(
                "/home/user/from-host.txt",
                Some("user"),
                &b"host data\n"[..],
            )
            .await
            .unwrap();
        let read_back = sandbox
            .envd()
            .read_file("/home/user/from-host.txt", Some("user"))
            .await
            .unwrap();
        let seen = sh(&sandbox, "cat ~/from-host.txt; stat -c %U ~/from-host.txt").await;
        sandbox.destroy().await.unwrap();

        assert_eq!(echo, "hello\nLinux\n", "{name}");
        assert_eq!(read_back, b"host data\n", "{name}");
        assert_eq!(seen, "host data\nuser\n", "{name}");
        assert!(!run_dir.exists(), "{name}: the sandbox directory is left");
        assert_eq!(process_naming(&run_dir), None, "{name}: a VMM is left");
        assert_eq!(
            namespaces(slot),
            Vec::<String>::new(),
            "{name}: a namespace is left"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_and_resume_keep_files_and_running_processes_on_every_backend() {
    let Some(images) = images() else { return };
    for (slot, (name, backend)) in (32_200u16..).step_by(10).zip(backends()) {
        let dir = TestDir::new(&format!("be-pause-{name}"));
        let pool = pool(slot);
        let mut sandbox = Sandbox::boot(&*backend, config(name, &images, &dir.0, &pool))
            .await
            .unwrap_or_else(|err| panic!("{name}: boot: {err}"));
        sh(
            &sandbox,
            "echo kept > ~/file.txt; \
             nohup bash -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done' >/dev/null 2>&1 &",
        )
        .await;
        let before: u64 = sh(&sandbox, "sleep 0.5; cat /tmp/counter")
            .await
            .trim()
            .parse()
            .unwrap();

        sandbox
            .pause()
            .await
            .unwrap_or_else(|err| panic!("{name}: pause: {err}"));
        let paused_vmm = sandbox.vmm_pid();
        let paused_namespaces = namespaces(slot);
        sandbox
            .resume()
            .await
            .unwrap_or_else(|err| panic!("{name}: resume: {err}"));
        let after: u64 = sh(&sandbox, "sleep 0.5; cat /tmp/counter")
            .await
            .trim()
            .parse()
            .unwrap();
        let file = sh(&sandbox, "cat ~/file.txt").await;
        sandbox.destroy().await.unwrap();

        assert_eq!(paused_vmm, None, "{name}: a paused sandbox kept its VMM");
        assert_eq!(
            paused_namespaces,
            Vec::<String>::new(),
            "{name}: a paused sandbox kept its namespace"
        );
        assert!(
            after > before,
            "{name}: the counter did not go on ({before} -> {after})"
        );
        assert_eq!(file, "kept\n", "{name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_starts_clones_with_its_files_and_their_own_writes_on_every_backend() {
    let Some(images) = images() else { return };
    for (slot, (name, backend)) in (32_300u16..).step_by(10).zip(backends()) {
        let dir = TestDir::new(&format!("be-snap-{name}"));
        let pool = pool(slot);
        let mut source = Sandbox::boot(
            &*backend,
            config(&format!("{name}-src"), &images, &dir.0, &pool),
        )
        .await
        .unwrap_or_else(|err| panic!("{name}: boot: {err}"));
        sh(&source, "echo from-snapshot > ~/snap.txt").await;
        let snapshot = dir.0.join("snapshot");

        source
            .snapshot(&snapshot)
            .await
            .unwrap_or_else(|err| panic!("{name}: snapshot: {err}"));
        let source_after = sh(&source, "cat ~/snap.txt").await;
        let mut clones = Vec::new();
        for n in 0..2 {
            let config = SandboxConfig {
                snapshot: Some(snapshot.clone()),
                ..config(&format!("{name}-clone{n}"), &images, &dir.0, &pool)
            };
            clones.push(
                Sandbox::boot(&*backend, config)
                    .await
                    .unwrap_or_else(|err| panic!("{name}: start from the snapshot: {err}")),
            );
        }
        sh(&clones[0], "echo mine > ~/only-clone0.txt").await;
        let mut seen = Vec::new();
        for clone in &clones {
            seen.push(
                sh(
                    clone,
                    "cat ~/snap.txt; ls ~/only-clone0.txt 2>/dev/null | wc -l",
                )
                .await,
            );
        }
        for clone in clones {
            clone.destroy().await.unwrap();
        }
        source.destroy().await.unwrap();

        assert_eq!(
            source_after, "from-snapshot\n",
            "{name}: the source after its snapshot"
        );
        assert_eq!(seen, ["from-snapshot\n1\n", "from-snapshot\n0\n"], "{name}");
        assert_eq!(
            namespaces(slot),
            Vec::<String>::new(),
            "{name}: a namespace is left"
        );
    }
}
