//! Shared by the VM test files: the images `cargo xtask test` builds, the
//! QEMU backend with the chosen accelerator, and per-test directories.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use qemu_vmm::{Accel, AccelProbe, probe_accelerator};
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

/// The accelerator the platform would choose here: `PETREL_ACCEL=kvm|tcg`
/// forces one, otherwise a real KVM probe decides (once per test process;
/// cached in `$PETREL_CACHE_DIR` or the temp dir). With
/// `PETREL_EXPECT_ACCEL=kvm|tcg` (set by `cargo xtask vmtest --kvm`) a
/// probe that chose otherwise fails the test, with the probe's reason.
pub fn accel() -> Accel {
    static CHOSEN: OnceLock<Accel> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let (accel, reason) = match std::env::var("PETREL_ACCEL").as_deref() {
            Ok("kvm") => (Accel::Kvm, "forced by PETREL_ACCEL=kvm".to_string()),
            Ok("tcg") => (Accel::Tcg, "forced by PETREL_ACCEL=tcg".to_string()),
            _ => probe(),
        };
        if let Ok(expected) = std::env::var("PETREL_EXPECT_ACCEL") {
            assert_eq!(
                accel.to_string(),
                expected,
                "the accelerator probe chose {accel} ({reason}), PETREL_EXPECT_ACCEL={expected}"
            );
        }
        eprintln!("accelerator: {accel} ({reason})");
        accel
    })
}

/// A real KVM probe VM, on a thread of its own (tests call [`accel`] from
/// inside their runtime). TCG when there are no images to probe with.
fn probe() -> (Accel, String) {
    let Ok(images) = GuestImages::from_env() else {
        return (Accel::Tcg, "no guest images to probe KVM with".to_string());
    };
    let cache_dir =
        std::env::var_os("PETREL_CACHE_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let probe = AccelProbe::new(
        images.kernel,
        images.rootfs,
        Some(&cache_dir),
        std::env::temp_dir(),
    );
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let outcome = runtime.block_on(probe_accelerator(&probe));
        (outcome.accel, outcome.reason)
    })
    .join()
    .unwrap()
}

pub fn backend() -> QemuBackend {
    QemuBackend::new(accel())
}

/// Whether `pid` runs (a zombie counts as gone).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

/// The `petrel-<slot>` network namespaces of `slots` that exist now.
pub fn namespaces_in(slots: std::ops::Range<u16>) -> Vec<String> {
    slots
        .map(|slot| format!("petrel-{slot}"))
        .filter(|name| Path::new("/run/netns").join(name).exists())
        .collect()
}

/// Live (not zombie) processes whose command line names `path` (a VMM of
/// a sandbox's run dir or socket).
pub fn processes_naming(path: &Path) -> Vec<u32> {
    let needle = path.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(&needle) && alive(*pid)
        })
        .collect()
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
