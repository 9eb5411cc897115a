//! dm-snapshot against the real kernel: root and device-mapper are needed.
//!
//! Without them each test prints `skipped: ...` and passes, unless
//! `PETREL_REQUIRE_DM=1` (set by `cargo xtask vmtest dmsnap`, which runs this
//! binary in a guest whose kernel has DM, dm-snapshot and loop), which makes
//! it fail. The tests take one lock, so they never run at the same time (one
//! of them removes every `petrel-*` device), and put their images under
//! `/var/tmp`.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};

use devicemapper::{DM, DevId, DmName, DmOptions};
use dmsnap::{
    DmSnapError, KernelLoops, LoopBackend, LoopDev, Snapshot, SnapshotManager, SnapshotSpec,
    dir_size, flatten,
};
use sha2::{Digest, Sha256};

static DM_LOCK: Mutex<()> = Mutex::new(());

struct Env {
    manager: SnapshotManager,
    dir: tempfile::TempDir,
    _serial: MutexGuard<'static, ()>,
}

impl Env {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn spec(&self, sandbox: &str, base: &Path) -> SnapshotSpec {
        SnapshotSpec::new(sandbox, base, self.path(&format!("{sandbox}.cow")))
    }
}

/// The test's environment, or `None` (after printing why) when this host
/// cannot run dm tests and `PETREL_REQUIRE_DM=1` is not set.
fn dm_env() -> Option<Env> {
    let serial = DM_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(missing) = missing_requirement() {
        let required = std::env::var("PETREL_REQUIRE_DM").is_ok_and(|v| v == "1");
        assert!(!required, "PETREL_REQUIRE_DM=1 but {missing}");
        // Straight to stdout, past the harness's capture, so it shows.
        let _ = writeln!(
            std::io::stdout(),
            "skipped: {missing} (run cargo xtask vmtest dmsnap)"
        );
        return None;
    }
    let manager = SnapshotManager::new().unwrap();
    // Leftovers of an earlier failed test must not collide with this one.
    manager.cleanup_stale(&[]).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("dmsnap-test-")
        .tempdir_in("/var/tmp")
        .unwrap();
    Some(Env {
        manager,
        dir,
        _serial: serial,
    })
}

fn missing_requirement() -> Option<&'static str> {
    if !dmsnap::device_mapper_available() {
        return Some("no device-mapper in this kernel");
    }
    if !nix::unistd::geteuid().is_root() {
        return Some("dm tests need root");
    }
    None
}

/// A raw base image of `mib` MiB whose every 4 KiB block is non-zero and
/// distinct.
fn pattern_base(env: &Env, mib: usize) -> PathBuf {
    let path = env.path("base.img");
    let bytes: Vec<u8> = (0..mib << 20)
        .map(|i| ((i / 4096) % 251 + 1) as u8 ^ (i % 7) as u8)
        .collect();
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A 64 MiB ext4 base image holding `/hello.txt`.
fn ext4_base(env: &Env) -> PathBuf {
    let tree = env.path("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("hello.txt"), "from the base\n").unwrap();
    let path = env.path("base.img");
    run(
        "mkfs.ext4",
        &["-q", "-F", "-d", &s(&tree), &s(&path), "64M"],
    );
    path
}

fn s(path: &Path) -> String {
    path.display().to_string()
}

fn run(program: &str, args: &[&str]) {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A mount that is undone even when the test fails.
struct Mount(PathBuf);

impl Mount {
    fn new(source: &Path, target: &Path, options: &str) -> Self {
        std::fs::create_dir_all(target).unwrap();
        run(
            "mount",
            &["-t", "ext4", "-o", options, &s(source), &s(target)],
        );
        Self(target.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn sha256(path: &Path) -> String {
    let digest = Sha256::digest(std::fs::read(path).unwrap());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_at(device: &Path, offset: u64, data: &[u8]) {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(device)
        .unwrap();
    file.write_all_at(data, offset).unwrap();
    file.sync_all().unwrap();
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf
}

/// Whether the loop device is bound to a file (sysfs shows a backing file).
fn loop_bound(device: &LoopDev) -> bool {
    let name = device
        .path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    Path::new("/sys/block")
        .join(name)
        .join("loop/backing_file")
        .exists()
}

fn remove(env: &Env, snapshot: Snapshot) {
    env.manager.remove(snapshot).unwrap();
}

#[test]
fn create_shows_the_base_content() {
    let Some(env) = dm_env() else { return };
    let base = pattern_base(&env, 8);

    let snapshot = env.manager.create(&env.spec("t-create", &base)).unwrap();

    assert_eq!(snapshot.name(), "petrel-t-create");
    assert_eq!(snapshot.size_bytes(), 8 << 20);
    assert_eq!(sha256(snapshot.device()), sha256(&base));
    remove(&env, snapshot);
}

#[test]
fn writes_in_the_snapshot_leave_the_base_unchanged() {
    let Some(env) = dm_env() else { return };
    let base = pattern_base(&env, 8);
    let base_before = sha256(&base);
    let snapshot = env.manager.create(&env.spec("t-write", &base)).unwrap();
    let written = vec![0xee_u8; 64 << 10];

    write_at(snapshot.device(), 1 << 20, &written);

    assert_eq!(read_at(snapshot.device(), 1 << 20, written.len()), written);
    assert_ne!(sha256(snapshot.device()), base_before);
    let cow = snapshot.cow_file().to_path_buf();
    remove(&env, snapshot);
    assert_eq!(sha256(&base), base_before);
    let cow_used = dir_size(&cow).unwrap();
    assert!(cow_used >= written.len() as u64, "{cow_used}");
    assert!(
        cow_used < std::fs::metadata(&cow).unwrap().len() / 4,
        "{cow_used}"
    );
}

#[test]
fn restore_after_teardown_keeps_writes() {
    let Some(env) = dm_env() else { return };
    let base = pattern_base(&env, 8);
    let spec = env.spec("t-restore", &base);
    let snapshot = env.manager.create(&spec).unwrap();
    let written = b"written before the teardown".repeat(100);
    write_at(snapshot.device(), 3 << 20, &written);
    remove(&env, snapshot);

    let restored = env.manager.restore(&spec).unwrap();

    assert_eq!(read_at(restored.device(), 3 << 20, written.len()), written);
    assert_eq!(
        read_at(restored.device(), 0, 1 << 20),
        read_at(&base, 0, 1 << 20)
    );
    remove(&env, restored);
}

#[test]
fn restore_refuses_a_file_that_holds_no_snapshot() {
    let Some(env) = dm_env() else { return };
    let base = pattern_base(&env, 1);
    let spec = env.spec("t-badcow", &base);
    std::fs::write(&spec.cow, vec![0u8; 1 << 20]).unwrap();

    let err = env.manager.restore(&spec).unwrap_err();

    assert!(matches!(err, DmSnapError::BadCow { .. }), "{err}");
    assert!(!env.manager.device_exists("petrel-t-badcow").unwrap());
    assert!(env.manager.loops().in_use().is_empty());
}

#[test]
fn create_refuses_an_existing_cow_file() {
    let Some(env) = dm_env() else { return };
    let base = pattern_base(&env, 1);
    let spec = env.spec("t-cowexists", &base);
    std::fs::write(&spec.cow, b"a sandbox's writes").unwrap();

    let err = env.manager.create(&spec).unwrap_err();

    assert!(matches!(err, DmSnapError::CowExists { .. }), "{err}");
    assert_eq!(std::fs::read(&spec.cow).unwrap(), b"a sandbox's writes");
}

#[test]
fn flatten_yields_an_image_with_the_writes_that_mounts_alone() {
    let Some(env) = dm_env() else { return };
    let base = ext4_base(&env);
    let base_before = sha256(&base);
    let snapshot = env.manager.create(&env.spec("t-flatten", &base)).unwrap();
    let mounted = Mount::new(snapshot.device(), &env.path("mnt-snapshot"), "rw");
    std::fs::write(
        env.path("mnt-snapshot/written.txt"),
        "written in the snapshot\n",
    )
    .unwrap();
    drop(mounted);
    let flat = env.path("flat.img");

    let report = flatten(&snapshot, &flat).unwrap();

    remove(&env, snapshot);
    let _mounted = Mount::new(&flat, &env.path("mnt-flat"), "ro,loop");
    assert_eq!(
        std::fs::read_to_string(env.path("mnt-flat/written.txt")).unwrap(),
        "written in the snapshot\n"
    );
    assert_eq!(
        std::fs::read_to_string(env.path("mnt-flat/hello.txt")).unwrap(),
        "from the base\n"
    );
    assert_eq!(report.size_bytes, 64 << 20);
    assert!(dir_size(&flat).unwrap() < report.size_bytes / 2);
    assert_eq!(sha256(&base), base_before);
}

#[test]
fn two_sandboxes_on_one_base_share_its_loop_device() {
    let Some(env) = dm_env() else { return };
    let base = pattern_base(&env, 4);
    let a = env.manager.create(&env.spec("t-share-a", &base)).unwrap();
    let b = env.manager.create(&env.spec("t-share-b", &base)).unwrap();
    let base_loop = a.base_loop().clone();
    let shared = (
        b.base_loop() == &base_loop,
        env.manager.loops().users(&base).unwrap(),
    );

    remove(&env, a);
    let after_one = (
        env.manager.loops().users(&base).unwrap(),
        loop_bound(&base_loop),
    );
    let b_reads_base = sha256(b.device()) == sha256(&base);
    remove(&env, b);
    let after_both = (
        env.manager.loops().users(&base).unwrap(),
        loop_bound(&base_loop),
    );

    assert_eq!(shared, (true, 2));
    assert_eq!(after_one, (1, true));
    assert!(b_reads_base);
    assert_eq!(after_both, (0, false));
}

#[test]
fn cleanup_stale_removes_leftover_devices_and_loops() {
    let Some(env) = dm_env() else { return };
    let base = pattern_base(&env, 1);
    let leftover = env.manager.create(&env.spec("t-stale", &base)).unwrap();
    let mut leftover_loops = [leftover.base_loop().clone(), leftover.cow_loop().clone()];
    leftover_loops.sort_by(|x, y| x.path.cmp(&y.path));
    // The process "dies": the device and its loops are never removed.
    drop(leftover);
    let elsewhere = tempfile::Builder::new()
        .prefix("dmsnap-other-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let other = OtherDevice::new(elsewhere.path());
    let restarted = SnapshotManager::new().unwrap();

    let report = restarted.cleanup_stale(&[env.dir.path()]).unwrap();

    assert_eq!(report.dm_devices, ["petrel-t-stale"]);
    assert_eq!(
        report.loop_devices,
        leftover_loops
            .iter()
            .map(|l| l.path.clone())
            .collect::<Vec<_>>()
    );
    assert!(!restarted.device_exists("petrel-t-stale").unwrap());
    assert!(leftover_loops.iter().all(|l| !loop_bound(l)));
    assert!(restarted.device_exists(OtherDevice::NAME).unwrap());
    assert!(loop_bound(&other.device));
}

#[test]
fn adopt_takes_over_a_device_an_earlier_run_left_live() {
    let Some(env) = dm_env() else { return };
    let base = pattern_base(&env, 4);
    let spec = env.spec("t-adopt", &base);
    let earlier = env.manager.create(&spec).unwrap();
    let written = b"written by the earlier run".repeat(50);
    write_at(earlier.device(), 2 << 20, &written);
    let (base_loop, cow_loop) = (earlier.base_loop().clone(), earlier.cow_loop().clone());
    // The earlier run "dies" with its VM still using the device.
    drop(earlier);
    let restarted = SnapshotManager::new().unwrap();

    let adopted = restarted.adopt(&spec).unwrap();
    let cleaned = restarted.cleanup_stale(&[env.dir.path()]).unwrap();
    let seen = read_at(adopted.device(), 2 << 20, written.len());
    let loops = (adopted.base_loop().clone(), adopted.cow_loop().clone());
    restarted.remove(adopted).unwrap();

    assert_eq!(loops, (base_loop.clone(), cow_loop.clone()));
    assert_eq!(seen, written);
    assert!(cleaned.dm_devices.is_empty(), "{cleaned:?}");
    assert!(cleaned.loop_devices.is_empty(), "{cleaned:?}");
    assert!(!restarted.device_exists("petrel-t-adopt").unwrap());
    assert!(!loop_bound(&base_loop));
    assert!(!loop_bound(&cow_loop));
}

#[test]
fn adopt_refuses_a_device_over_another_cow_file() {
    let Some(env) = dm_env() else { return };
    let base = pattern_base(&env, 1);
    let snapshot = env
        .manager
        .create(&env.spec("t-adopt-other", &base))
        .unwrap();
    let restarted = SnapshotManager::new().unwrap();
    let wrong = SnapshotSpec::new("t-adopt-other", &base, env.path("elsewhere.cow"));
    std::fs::write(env.path("elsewhere.cow"), b"").unwrap();

    let err = restarted.adopt(&wrong).unwrap_err();

    assert!(matches!(err, DmSnapError::NotAdoptable { .. }), "{err}");
    assert!(err.to_string().contains("t-adopt-other.cow"), "{err}");
    remove(&env, snapshot);
}

#[test]
fn adopt_of_a_missing_device_names_it() {
    let Some(env) = dm_env() else { return };
    let base = pattern_base(&env, 1);

    let err = env
        .manager
        .adopt(&env.spec("t-adopt-none", &base))
        .unwrap_err();

    assert!(err.to_string().contains("petrel-t-adopt-none"), "{err}");
}

/// A dm device that is not ours (a linear map over a loop device of a file
/// outside our directories), which cleanup must leave alone.
struct OtherDevice {
    device: LoopDev,
}

impl OtherDevice {
    const NAME: &str = "dmsnap-test-other";

    fn new(dir: &Path) -> Self {
        let file = dir.join("other.img");
        std::fs::write(&file, vec![1u8; 1 << 20]).unwrap();
        let device = KernelLoops.attach(&file, false).unwrap();
        let dm = DM::new().unwrap();
        let name = DmName::new(Self::NAME).unwrap();
        dm.device_create(name, None, DmOptions::private()).unwrap();
        let table = [(
            0,
            2048,
            "linear".to_string(),
            format!("{} 0", device.devno()),
        )];
        dm.table_load(&DevId::Name(name), &table, DmOptions::private())
            .unwrap();
        dm.device_suspend(&DevId::Name(name), DmOptions::private())
            .unwrap();
        Self { device }
    }
}

impl Drop for OtherDevice {
    fn drop(&mut self) {
        let dm = DM::new().unwrap();
        let _ = dm.device_remove(
            &DevId::Name(DmName::new(Self::NAME).unwrap()),
            DmOptions::private(),
        );
        let _ = KernelLoops.detach(&self.device);
    }
}
