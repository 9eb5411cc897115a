//! Shared by the VM test files: the images `cargo xtask test` builds, the
//! QEMU backend with the chosen accelerator, and per-test directories.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use qemu_vmm::Accel;
use sandbox_core::{CreateSandbox, GuestImages, ListFilter, Manager, ManagerConfig, QemuBackend};

/// The images from `PETREL_KERNEL`/`PETREL_ROOTFS`, or `None` (after
/// saying why) when VM tests are not required; with `PETREL_REQUIRE_VM=1`
/// (set by `cargo xtask test`) missing images fail the test.
pub fn images() -> Option<GuestImages> {
    match GuestImages::from_env() {
        Ok(images) => Some(images),
        Err(err) if std::env::var("PETREL_REQUIRE_VM").as_deref() != Ok("1") => {
            eprintln!(
                "skipped: {err}; run `cargo xtask test` to build the images and run VM tests"
            );
            None
        }
        Err(err) => panic!("VM tests required but images are missing: {err}"),
    }
}

/// TCG unless `PETREL_ACCEL=kvm`.
pub fn accel() -> Accel {
    match std::env::var("PETREL_ACCEL").as_deref() {
        Ok("kvm") => Accel::Kvm,
        _ => Accel::Tcg,
    }
}

pub fn backend() -> QemuBackend {
    QemuBackend::new(accel())
}

/// A fresh directory under the temp dir, removed at drop (kept with
/// `PETREL_KEEP_TEST_DIRS=1` for debugging).
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("petrel-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("PETREL_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A manager on `dir` (QEMU backend) with no template.
pub async fn open_manager(dir: &Path) -> Manager {
    Manager::open(ManagerConfig::new(dir), Arc::new(backend()))
        .await
        .unwrap()
}

/// A manager on `dir` with the `base` template of `images`.
pub async fn open_with_base(dir: &Path, images: &GuestImages) -> Manager {
    let manager = open_manager(dir).await;
    manager
        .register_template("base", images, "test")
        .await
        .unwrap();
    manager
}

/// A create from template or snapshot `name`, defaults otherwise.
pub fn from(name: &str) -> CreateSandbox {
    CreateSandbox {
        template: name.into(),
        ..CreateSandbox::default()
    }
}

/// Destroys every sandbox of `manager`.
pub async fn destroy_all(manager: &Manager) {
    for info in manager.list(&ListFilter::default()) {
        manager.destroy(&info.id).await.unwrap();
    }
}

/// A rebuilt image: the same content in another file under `dir` (a new
/// base for the template on registration).
pub fn rebuilt(images: &GuestImages, dir: &Path) -> GuestImages {
    let rebuilt = GuestImages {
        kernel: images.kernel.clone(),
        rootfs: dir.join("rebuilt.ext4"),
    };
    let copied = std::process::Command::new("cp")
        .args(["--sparse=always"])
        .arg(&images.rootfs)
        .arg(&rebuilt.rootfs)
        .status()
        .unwrap();
    assert!(copied.success());
    rebuilt
}
