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

use common::{TestDir, images, processes_naming};
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

/// One backend's run of a test: its own directory and pool of network
/// slots (10 from `slot`; 32_100 to 32_399 are used by no other test file).
struct Case {
    name: &'static str,
    backend: Arc<dyn Hypervisor>,
    images: GuestImages,
    dir: TestDir,
    pool: Arc<NetworkPool>,
    slot: u16,
}

/// A [`Case`] per usable backend of test `test`, its slots from
/// `first_slot`; none when VM tests are not required and images are missing.
fn cases(test: &str, first_slot: u16) -> Vec<Case> {
    let Some(images) = images() else {
        return Vec::new();
    };
    (first_slot..)
        .step_by(10)
        .zip(backends())
        .map(|(slot, (name, backend))| Case {
            name,
            backend,
            images: images.clone(),
            dir: TestDir::new(&format!("be-{test}-{name}")),
            pool: Arc::new(NetworkPool::new(slot..slot + 10).unwrap()),
            slot,
        })
        .collect()
}

impl Case {
    /// Boots sandbox `id` (internet off) in a namespace of the pool, from
    /// `snapshot` if given.
    async fn boot(&self, id: &str, snapshot: Option<&Path>) -> Sandbox {
        let config = SandboxConfig {
            network: Some(self.pool.clone()),
            internet: Some(false),
            snapshot: snapshot.map(Path::to_path_buf),
            ..SandboxConfig::new(id, self.images.clone(), &self.dir.0)
        };
        Sandbox::boot(&*self.backend, config)
            .await
            .unwrap_or_else(|err| panic!("{}: boot of {id}: {err}", self.name))
    }

    /// The pool's `petrel-<slot>` namespaces that exist.
    fn namespaces(&self) -> Vec<String> {
        common::namespaces_in(self.slot..self.slot + 10)
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

const NONE: Vec<String> = Vec::new();

#[tokio::test(flavor = "multi_thread")]
async fn create_exec_files_and_destroy_leave_nothing_on_every_backend() {
    for case in cases("basic", 32_100) {
        let name = case.name;
        let sandbox = case.boot(name, None).await;
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
        assert_eq!(
            processes_naming(&run_dir),
            Vec::<u32>::new(),
            "{name}: a VMM is left"
        );
        assert_eq!(case.namespaces(), NONE, "{name}: a namespace is left");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_and_resume_keep_files_and_running_processes_on_every_backend() {
    for case in cases("pause", 32_200) {
        let name = case.name;
        let mut sandbox = case.boot(name, None).await;
        sh(
            &sandbox,
            "echo kept > ~/file.txt; \
             nohup bash -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done' >/dev/null 2>&1 &",
        )
        .await;
        let counter = "sleep 0.5; cat /tmp/counter";
        let before: u64 = sh(&sandbox, counter).await.trim().parse().unwrap();

        sandbox
            .pause()
            .await
            .unwrap_or_else(|err| panic!("{name}: pause: {err}"));
        let paused_vmm = sandbox.vmm_pid();
        let paused_namespaces = case.namespaces();
        sandbox
            .resume()
            .await
            .unwrap_or_else(|err| panic!("{name}: resume: {err}"));
        let after: u64 = sh(&sandbox, counter).await.trim().parse().unwrap();
        let file = sh(&sandbox, "cat ~/file.txt").await;
        sandbox.destroy().await.unwrap();

        assert_eq!(paused_vmm, None, "{name}: a paused sandbox kept its VMM");
        assert_eq!(
            paused_namespaces, NONE,
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
    for case in cases("snap", 32_300) {
        let name = case.name;
        let mut source = case.boot(&format!("{name}-src"), None).await;
        sh(&source, "echo from-snapshot > ~/snap.txt").await;
        let snapshot = case.dir.0.join("snapshot");

        source
            .snapshot(&snapshot)
            .await
            .unwrap_or_else(|err| panic!("{name}: snapshot: {err}"));
        let source_after = sh(&source, "cat ~/snap.txt").await;
        let mut clones = Vec::new();
        for n in 0..2 {
            clones.push(
                case.boot(&format!("{name}-clone{n}"), Some(&snapshot))
                    .await,
            );
        }
        sh(&clones[0], "echo mine > ~/only-clone0.txt").await;
        let mut seen = Vec::new();
        for clone in &clones {
            let listing = "cat ~/snap.txt; ls ~/only-clone0.txt 2>/dev/null | wc -l";
            seen.push(sh(clone, listing).await);
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
        assert_eq!(case.namespaces(), NONE, "{name}: a namespace is left");
    }
}
