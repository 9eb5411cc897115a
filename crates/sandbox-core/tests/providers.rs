//! Rootfs providers with real VMs: for the qcow2 overlay, the sparse copy
//! and the dm-snapshot, the same behaviour: a sandbox boots from the
//! provider's disk and writes a file; after a pause and resume (with the
//! guest's page cache dropped) and after a cold boot of a new VM from the
//! same disk, the file is there; another sandbox of the same template does
//! not see it; the template's raw base image is byte-for-byte unchanged.
//! A running dm sandbox is taken over by a later process (device adopted).
//!
//! The dm tests need device-mapper and root: skipped (saying so) where
//! they are missing, unless `PETREL_REQUIRE_DM=1`. A host kernel without
//! device-mapper runs them inside a VM, booting their VMs there (part of
//! `cargo xtask test`): `cargo xtask vmtest sandbox-core --test providers
//! --nested -- dm`.
//!
//! Images from `PETREL_KERNEL` / `PETREL_ROOTFS`; skipped without them
//! unless `PETREL_REQUIRE_VM=1`.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TestDir, backend, images};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;

use envd_client::{EnvdClient, ExecRequest};
use sandbox_core::disk::{self, RootfsProvider};
use sandbox_core::{GuestImages, Hypervisor, Sandbox, SandboxConfig, VmNetwork, VmSpec};

/// One VM test at a time: TCG guests on a small host.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MARK: &str = "/home/user/provider-mark";

fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn free_port() -> SocketAddr {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn boot(
    name: &str,
    images: &GuestImages,
    dir: &TestDir,
    provider: &Arc<dyn RootfsProvider>,
) -> Sandbox {
    let config = SandboxConfig {
        rootfs_provider: Some(Arc::clone(provider)),
        ..SandboxConfig::new(name, images.clone(), &dir.0)
    };
    Sandbox::boot(&backend(), config).await.unwrap()
}

async fn shell(sandbox: &Sandbox, command: &str) -> String {
    let out = sandbox.exec_shell(command).await.unwrap();
    assert_eq!(
        out.exit_code,
        0,
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The dm provider of this process, or `None` (after saying why) where
/// device-mapper is unusable and `PETREL_REQUIRE_DM=1` is not set.
fn dm_usable() -> bool {
    match disk::DmProvider::shared() {
        Ok(_) => true,
        Err(why) => {
            let required = std::env::var("PETREL_REQUIRE_DM").is_ok_and(|v| v == "1");
            assert!(!required, "PETREL_REQUIRE_DM=1 but {why}");
            // Straight to stdout, past the harness's capture, so it shows.
            let _ = writeln!(
                std::io::stdout(),
                "skipped: {why} (`cargo xtask vmtest sandbox-core --test providers --nested -- dm` runs it in a VM)"
            );
            false
        }
    }
}

/// Cold-boots a new VM (user-mode network, no `/init`) from the paused
/// sandbox `id`'s root disk (made usable by `provider` first, let go of
/// after) and reads the mark there.
async fn read_mark_after_cold_boot(
    images: &GuestImages,
    dir: &TestDir,
    provider: &Arc<dyn RootfsProvider>,
    id: &str,
    sandbox_dir: &Path,
) -> String {
    let run_dir = dir.0.join("coldboot");
    std::fs::create_dir_all(&run_dir).unwrap();
    let host = free_port();
    let root = provider
        .restore(id, &images.rootfs, sandbox_dir)
        .await
        .unwrap();
    let spec = VmSpec {
        id: "coldboot".to_string(),
        vcpus: 1,
        memory_mib: 512,
        kernel: images.kernel.clone(),
        kernel_args: "console=ttyS0 root=/dev/vda rw init=/sbin/petrel-init panic=-1 quiet \
                      ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off petrel.dns=10.0.2.3 \
                      petrel.hostname=coldboot"
            .to_string(),
        root_disk_qcow2: root.is_qcow2(),
        root_disk: root.path,
        extra_drives: Vec::new(),
        network: VmNetwork::UserForward { host },
        run_dir,
        base_image: Some(images.rootfs.clone()),
    };
    let mut vm = backend().create(spec).await.unwrap();
    vm.start().await.unwrap();
    let envd = EnvdClient::new(host);
    let ready = envd
        .wait_healthy(sandbox_core::default_boot_timeout() * 3 / 2)
        .await;
    let out = match ready {
        Ok(_) => envd
            .exec(ExecRequest::shell(format!("cat {MARK} 2>&1")))
            .await
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned()),
        Err(err) => Err(err),
    };
    vm.destroy().await.unwrap();
    provider.release(id, sandbox_dir).await.unwrap();
    out.unwrap()
}

async fn provider_keeps_a_sandboxs_writes_to_itself(provider_name: &str) {
    let Some(images) = images() else { return };
    if provider_name == "dm" && !dm_usable() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let provider = disk::choose_provider(sandbox_core::BackendKind::Qemu, Some(provider_name))
        .unwrap()
        .0;
    assert_eq!(provider.name(), provider_name);
    let dir = TestDir::new(provider_name);
    let base_before = sha256(&images.rootfs);

    let mut a = boot(&format!("{provider_name}-a"), &images, &dir, &provider).await;
    let root = disk::locate(a.run_dir());
    assert_eq!(root.is_qcow2(), provider_name == "qcow2", "{root:?}");
    shell(&a, &format!("echo written-by-a > {MARK} && sync")).await;

    let b = boot(&format!("{provider_name}-b"), &images, &dir, &provider).await;
    let in_b = shell(&b, &format!("cat {MARK} 2>/dev/null || echo absent")).await;
    b.destroy().await.unwrap();

    a.pause().await.unwrap();
    a.resume().await.unwrap();
    let dropped = a
        .exec(ExecRequest::shell("sync && echo 3 > /proc/sys/vm/drop_caches").user("root"))
        .await
        .unwrap();
    assert_eq!(
        dropped.exit_code,
        0,
        "{}",
        String::from_utf8_lossy(&dropped.stderr)
    );
    let after_resume = shell(&a, &format!("cat {MARK}")).await;
    a.pause().await.unwrap();

    let after_cold_boot =
        read_mark_after_cold_boot(&images, &dir, &provider, a.id(), a.run_dir()).await;
    a.destroy().await.unwrap();
    let base_after = sha256(&images.rootfs);

    assert_eq!(in_b, "absent\n", "another sandbox saw a's file");
    assert_eq!(after_resume, "written-by-a\n");
    assert_eq!(after_cold_boot, "written-by-a\n");
    assert_eq!(base_before, base_after, "the base image changed");
}

#[tokio::test]
async fn qcow2_overlay_keeps_a_sandboxs_writes_to_itself() {
    provider_keeps_a_sandboxs_writes_to_itself("qcow2").await;
}

#[tokio::test]
async fn sparse_copy_keeps_a_sandboxs_writes_to_itself() {
    provider_keeps_a_sandboxs_writes_to_itself("copy").await;
}

#[tokio::test]
async fn dm_snapshot_keeps_a_sandboxs_writes_to_itself() {
    provider_keeps_a_sandboxs_writes_to_itself("dm").await;
}

/// `petrel-*` dm devices, from `/sys/block/dm-*/dm/name`.
fn petrel_dm_devices() -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir("/sys/block").unwrap() {
        let name = std::fs::read_to_string(entry.unwrap().path().join("dm/name"));
        if let Ok(name) = name.map(|n| n.trim().to_string())
            && name.starts_with("petrel-")
        {
            names.push(name);
        }
    }
    names
}

/// Loop devices bound to `path` or to files below it.
fn loops_below(path: &Path) -> Vec<String> {
    let path = path.canonicalize().unwrap();
    let mut loops = Vec::new();
    for entry in std::fs::read_dir("/sys/block").unwrap() {
        let entry = entry.unwrap();
        let backing = std::fs::read_to_string(entry.path().join("loop/backing_file"));
        if backing.is_ok_and(|b| Path::new(b.trim()).starts_with(&path)) {
            loops.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    loops
}

#[tokio::test]
async fn a_running_dm_sandbox_is_taken_over_by_a_later_process() {
    let Some(images) = images() else { return };
    if !dm_usable() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let dir = TestDir::new("dmrestart");
    // The earlier process: a dm provider of its own, gone with it.
    let earlier: Arc<dyn RootfsProvider> = Arc::new(disk::DmProvider::new().unwrap());
    let sandbox = boot("dmrestart", &images, &dir, &earlier).await;
    shell(&sandbox, &format!("echo before-restart > {MARK} && sync")).await;
    let record = sandbox.detach();
    drop(earlier);

    let mut taken_over = Sandbox::reattach(&backend(), record, None).await.unwrap();
    let after_restart = shell(&taken_over, &format!("cat {MARK}")).await;
    taken_over.pause().await.unwrap();
    let devices_while_paused = petrel_dm_devices();
    taken_over.resume().await.unwrap();
    let after_resume = shell(&taken_over, &format!("cat {MARK}")).await;
    taken_over.destroy().await.unwrap();

    assert_eq!(after_restart, "before-restart\n");
    assert!(devices_while_paused.is_empty(), "{devices_while_paused:?}");
    assert_eq!(after_resume, "before-restart\n");
    assert!(petrel_dm_devices().is_empty(), "{:?}", petrel_dm_devices());
    assert!(loops_below(&dir.0).is_empty(), "{:?}", loops_below(&dir.0));
    assert!(
        loops_below(&images.rootfs).is_empty(),
        "{:?}",
        loops_below(&images.rootfs)
    );
}

#[tokio::test]
async fn copy_provider_refuses_a_snapshot_base() {
    let dir = TestDir::new("copysnap");
    let base = dir.0.join("disk.qcow2");
    std::fs::write(&base, b"").unwrap();
    let err = disk::CopyProvider
        .create("x", &base, disk::DiskFormat::Qcow2, &dir.0)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("qcow2 provider"), "{err}");
}

#[tokio::test]
async fn a_snapshot_of_a_sparse_copy_sandbox_starts_clones_with_its_files() {
    let Some(images) = images() else { return };
    let _serial = SERIAL.lock().await;
    let copy: Arc<dyn RootfsProvider> = Arc::new(disk::CopyProvider);
    let dir = TestDir::new("copysnapshot");
    let mut source = boot("copysnap-src", &images, &dir, &copy).await;
    shell(&source, &format!("echo in-snapshot > {MARK} && sync")).await;
    let snapshot = dir.0.join("snapshots").join("s1");
    std::fs::create_dir_all(&snapshot).unwrap();
    let taken = source.snapshot(&snapshot).await;
    source.destroy().await.unwrap();
    taken.unwrap();

    // The snapshot's disk is qcow2; only the qcow2 provider starts from it.
    let refused = Sandbox::boot(
        &backend(),
        SandboxConfig {
            snapshot: Some(snapshot.clone()),
            rootfs_provider: Some(Arc::clone(&copy)),
            ..SandboxConfig::new("copysnap-refused", images.clone(), &dir.0)
        },
    )
    .await
    .unwrap_err();
    let clone = Sandbox::boot(
        &backend(),
        SandboxConfig {
            snapshot: Some(snapshot),
            ..SandboxConfig::new("copysnap-clone", images, &dir.0)
        },
    )
    .await
    .unwrap();
    let seen = shell(&clone, &format!("cat {MARK}")).await;
    clone.destroy().await.unwrap();

    assert!(refused.to_string().contains("qcow2 provider"), "{refused}");
    assert_eq!(seen, "in-snapshot\n");
}
