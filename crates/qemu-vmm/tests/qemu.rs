//! Real QEMU tests with the guest images (`PETREL_KERNEL`, `PETREL_ROOTFS`,
//! set by `cargo xtask test`). Without them they print why they were skipped,
//! unless `PETREL_REQUIRE_VM=1`.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use qemu_vmm::{
    Accel, AccelProbe, Drive, NetConfig, QemuError, QemuVm, VmConfig, probe_accelerator,
};

struct Images {
    kernel: PathBuf,
    rootfs: PathBuf,
}

fn images() -> Option<Images> {
    let kernel = std::env::var_os("PETREL_KERNEL").map(PathBuf::from);
    let rootfs = std::env::var_os("PETREL_ROOTFS").map(PathBuf::from);
    match (kernel, rootfs) {
        (Some(kernel), Some(rootfs)) => Some(Images { kernel, rootfs }),
        _ if std::env::var("PETREL_REQUIRE_VM").as_deref() == Ok("1") => {
            panic!("PETREL_REQUIRE_VM=1 but PETREL_KERNEL/PETREL_ROOTFS are not set")
        }
        _ => {
            eprintln!("skipped: PETREL_KERNEL/PETREL_ROOTFS not set; run `cargo xtask test`");
            None
        }
    }
}

/// A VM whose init is `printf`, printing `PETREL_TEST_INIT` and exiting.
fn printf_vm(images: &Images, run_dir: &Path) -> VmConfig {
    VmConfig {
        kernel: images.kernel.clone(),
        kernel_args:
            "console=ttyS0 root=/dev/vda ro panic=-1 init=/usr/bin/printf PETREL_TEST%sINIT\\n _"
                .into(),
        drives: vec![Drive {
            read_only: true,
            ..Drive::raw(&images.rootfs)
        }],
        net: NetConfig::None,
        ..VmConfig::new("qemu-test", run_dir, Accel::Tcg)
    }
}

#[tokio::test]
async fn spawned_vm_answers_qmp_and_reaches_init() {
    let Some(images) = images() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut vm = QemuVm::spawn(printf_vm(&images, dir.path())).await.unwrap();

    let status = vm.qmp().status().await.unwrap();
    let reached = vm
        .wait_for_console("PETREL_TEST_INIT", Duration::from_secs(60))
        .await;
    let pid = vm.pid();
    vm.kill().await.unwrap();

    assert_eq!(status, "running");
    assert!(reached.is_ok(), "{reached:?}");
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}

#[tokio::test]
async fn spawn_with_missing_binary_names_it() {
    let Some(images) = images() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = VmConfig {
        binary: "/nonexistent/qemu".into(),
        ..printf_vm(&images, dir.path())
    };

    let err = QemuVm::spawn(config).await.unwrap_err();

    assert!(matches!(err, QemuError::Spawn { .. }));
    assert!(err.to_string().contains("/nonexistent/qemu"));
}

#[tokio::test]
async fn spawn_with_bad_option_reports_qemu_log() {
    let Some(images) = images() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = VmConfig {
        memory_file: Some(dir.path().join("no/such/dir/ram")),
        ..printf_vm(&images, dir.path())
    };

    let err = QemuVm::spawn(config).await.unwrap_err();

    assert!(matches!(err, QemuError::ExitedEarly { .. }), "{err}");
    assert!(err.to_string().contains("no/such/dir/ram"), "{err}");
}

#[tokio::test]
async fn probe_outcome_is_cached_and_reused() {
    let Some(images) = images() else { return };
    let dir = tempfile::tempdir().unwrap();
    let probe = AccelProbe {
        qemu: qemu_vmm::default_qemu_binary(),
        kernel: images.kernel.clone(),
        rootfs: images.rootfs.clone(),
        timeout: Duration::from_secs(20),
        cache_file: Some(dir.path().join("probe.json")),
        work_dir: dir.path().to_path_buf(),
    };

    let first = probe_accelerator(&probe).await;
    let second = probe_accelerator(&probe).await;

    assert!(!first.cached);
    assert!(second.cached);
    assert_eq!(first.accel, second.accel);
    assert!(dir.path().join("probe.json").is_file());
}

/// A VM whose init sleeps, with guest RAM in `dir/ram`.
fn sleeping_vm(images: &Images, dir: &Path, incoming: bool) -> VmConfig {
    VmConfig {
        kernel_args: "console=ttyS0 root=/dev/vda ro panic=-1 init=/bin/sleep 3600".into(),
        memory_file: Some(dir.join("ram")),
        memory_mib: 256,
        incoming,
        ..printf_vm(
            images,
            &dir.join(if incoming { "restored" } else { "original" }),
        )
    }
}

#[tokio::test]
async fn state_saved_with_shared_ram_restores_into_a_new_qemu() {
    let Some(images) = images() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut original = QemuVm::spawn(sleeping_vm(&images, dir.path(), false))
        .await
        .unwrap();
    original
        .wait_for_console("Run /bin/sleep as init process", Duration::from_secs(60))
        .await
        .unwrap();
    let state = dir.path().join("state");

    let saved = original.save_state(&state).await.unwrap();
    original.kill().await.unwrap();
    let mut restored = QemuVm::spawn(sleeping_vm(&images, dir.path(), true))
        .await
        .unwrap();
    restored
        .restore_state(&state, saved.ram_in_state)
        .await
        .unwrap();
    let status = restored.qmp().status().await.unwrap();
    restored.kill().await.unwrap();

    assert_eq!(status, "running");
    assert!(
        saved.state_bytes < 4 << 20,
        "state holds RAM: {} bytes",
        saved.state_bytes
    );
}

#[tokio::test]
async fn restore_without_incoming_is_rejected() {
    let Some(images) = images() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut vm = QemuVm::spawn(sleeping_vm(&images, dir.path(), false))
        .await
        .unwrap();

    let err = vm
        .restore_state(&dir.path().join("state"), true)
        .await
        .unwrap_err();
    vm.kill().await.unwrap();

    assert!(err.to_string().contains("incoming"), "{err}");
}
