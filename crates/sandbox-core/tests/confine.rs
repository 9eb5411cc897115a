//! VMM confinement and hostile guests, proven from outside the VMM with
//! real VMs: QEMU's `/proc/<pid>/status` (uid, capabilities, seccomp), its
//! view of the file system, its cgroup, and what a guest flooding its
//! console, fork-bombing or eating memory does to the host and to another
//! sandbox.
//!
//! The agent here is the test process (the `Sandbox` API), which must run
//! as root for confinement; otherwise these tests say so and skip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{TestDir, accel, images};
use envd_client::ExecRequest;
use sandbox_core::confine::VmmConfinement;
use sandbox_core::{QemuBackend, Sandbox, SandboxConfig};

/// The QEMU backend with confinement on, or `None` (after saying why).
fn confined_backend() -> Option<QemuBackend> {
    let backend = QemuBackend::new(accel());
    match &backend.confinement {
        Ok(_) => Some(backend),
        Err(why) => {
            eprintln!("skipped: VMM confinement is off: {why}");
            None
        }
    }
}

async fn boot(backend: &QemuBackend, name: &str, data_dir: &Path, memory_mib: u32) -> Sandbox {
    let images = images().unwrap();
    let config = SandboxConfig {
        memory_mib,
        ..SandboxConfig::new(name, images, data_dir)
    };
    Sandbox::boot(backend, config).await.unwrap()
}

/// The value of `field` (e.g. `Uid:`) in `/proc/<pid>/status`.
fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in status of {pid}"))
        .trim()
        .to_string()
}

fn cgroup_of(backend: &QemuBackend, sandbox: &Sandbox) -> jail::Cgroup {
    let confinement: &VmmConfinement = backend.confinement.as_ref().unwrap();
    confinement
        .cgroup(sandbox.id(), sandbox.run_dir())
        .expect("this host has usable cgroups")
}

/// This process's resident memory in KiB.
fn own_rss_kib() -> u64 {
    status_field(std::process::id(), "VmRSS:")
        .trim_end_matches(" kB")
        .parse()
        .unwrap()
}

async fn answers_exec(sandbox: &Sandbox) {
    let out = sandbox.exec_shell("echo still-here").await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still-here\n");
}

#[tokio::test]
async fn qemu_runs_as_its_own_uid_without_capabilities_under_seccomp() {
    let Some(backend) = confined_backend() else {
        return;
    };
    if images().is_none() {
        return;
    }
    let dir = TestDir::new("confine-status");
    let a = boot(&backend, "cfa", &dir.0, 256).await;
    let b = boot(&backend, "cfb", &dir.0, 256).await;
    let (pid_a, pid_b) = (a.vmm_pid().unwrap(), b.vmm_pid().unwrap());

    let uid_a = status_field(pid_a, "Uid:");
    let uid_b = status_field(pid_b, "Uid:");
    let cap_eff = status_field(pid_a, "CapEff:");
    let cap_prm = status_field(pid_a, "CapPrm:");
    let seccomp = status_field(pid_a, "Seccomp:");
    let no_new_privs = status_field(pid_a, "NoNewPrivs:");
    let cgroup = cgroup_of(&backend, &a);
    let in_cgroup = cgroup.procs();
    let memory_limit = cgroup
        .read("memory.limit_in_bytes")
        .or_else(|| cgroup.read("memory.max"));

    a.destroy().await.unwrap();
    b.destroy().await.unwrap();
    let real_uid: u32 = uid_a.split_whitespace().next().unwrap().parse().unwrap();
    assert_ne!(real_uid, 0, "Uid: {uid_a}");
    assert!(
        uid_a.split_whitespace().all(|u| u == real_uid.to_string()),
        "real, effective, saved and fs uid all dropped: {uid_a}"
    );
    assert_ne!(uid_a, uid_b, "each VMM has its own uid");
    assert_eq!(cap_eff, "0000000000000000");
    assert_eq!(cap_prm, "0000000000000000");
    assert_eq!(seccomp, "2", "seccomp filter mode");
    assert_eq!(no_new_privs, "1");
    assert_eq!(in_cgroup, vec![pid_a]);
    // 256 MiB of guest RAM + the documented overhead.
    let expected = (256 + u64::from(sandbox_core::confine::DEFAULT_MEMORY_OVERHEAD_MIB)) << 20;
    assert_eq!(memory_limit, Some(expected.to_string()));
    assert!(
        cgroup.dirs().iter().all(|d| !d.exists()),
        "cgroup removed on destroy"
    );
}

#[tokio::test]
async fn dropping_a_running_sandbox_kills_qemu_and_removes_its_cgroup() {
    let Some(backend) = confined_backend() else {
        return;
    };
    if images().is_none() {
        return;
    }
    let dir = TestDir::new("confine-drop");
    let a = boot(&backend, "cfdrop", &dir.0, 256).await;
    let pid = a.vmm_pid().unwrap();
    let cgroup = cgroup_of(&backend, &a);
    let existed = cgroup.dirs().iter().all(|d| d.exists());

    drop(a);

    assert!(existed);
    assert!(
        !common::alive(pid),
        "qemu {pid} outlived its dropped sandbox"
    );
    assert!(
        cgroup.dirs().iter().all(|d| !d.exists()),
        "cgroup {:?} leaked",
        cgroup.dirs()
    );
}

#[tokio::test]
async fn qemu_cannot_see_host_files_outside_its_jail() {
    let Some(backend) = confined_backend() else {
        return;
    };
    if images().is_none() {
        return;
    }
    let dir = TestDir::new("confine-jail");
    let a = boot(&backend, "cfjail", &dir.0, 256).await;
    let pid = a.vmm_pid().unwrap();
    let uid = status_field(pid, "Uid:")
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let secret = dir.0.join("host-secret");
    std::fs::write(&secret, "secret").unwrap();

    let top: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let sees_qemu = root.join("usr/bin").exists();
    let sees_shadow = root.join("etc/shadow").exists();
    let sees_secret = root.join(secret.strip_prefix("/").unwrap()).exists();
    let sees_proc = root.join("proc/1").exists();
    // From the process's own view: its mount namespace and root, its uid.
    let attempt = |path: &Path| {
        std::process::Command::new("nsenter")
            .args(["--target", &pid.to_string(), "--mount", "--root"])
            .args(["--setuid", &uid, "--setgid", &uid])
            .args(["/usr/bin/cat".as_ref(), path.as_os_str()])
            .output()
            .unwrap()
    };
    let shadow = attempt(Path::new("/etc/shadow"));
    let secret_read = attempt(&secret);
    let own_kernel_dir = a.run_dir().to_path_buf();

    a.destroy().await.unwrap();
    assert!(sees_qemu, "the jail holds /usr: {top:?}");
    assert!(!sees_shadow, "/etc/shadow visible in the jail: {top:?}");
    assert!(!sees_secret, "a host file beside the sandbox is visible");
    assert!(!sees_proc, "/proc is not mounted in the jail");
    for entry in &top {
        assert!(
            [
                "usr", "lib", "lib64", "bin", "sbin", "etc", "dev", "tmp", "var", "run", "work",
                "root", "home", "opt", "srv"
            ]
            .contains(&entry.as_str()),
            "unexpected top-level entry {entry} in {top:?}"
        );
    }
    assert!(!shadow.status.success(), "read /etc/shadow from the jail");
    assert!(
        String::from_utf8_lossy(&shadow.stderr).contains("No such file"),
        "{}",
        String::from_utf8_lossy(&shadow.stderr)
    );
    assert!(
        !secret_read.status.success(),
        "read {} from the jail",
        secret.display()
    );
    assert!(!own_kernel_dir.exists());
}

/// Rewrites the backing file name in the header of the qcow2 image at
/// `path` (as a VMM that escaped into its own process could).
fn rewrite_backing_file(path: &Path, backing: &Path) {
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::unix::ffi::OsStrExt;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut offset = [0_u8; 8];
    file.seek(SeekFrom::Start(8)).unwrap();
    file.read_exact(&mut offset).unwrap();
    let name = backing.as_os_str().as_bytes();
    file.seek(SeekFrom::Start(u64::from_be_bytes(offset)))
        .unwrap();
    file.write_all(name).unwrap();
    file.seek(SeekFrom::Start(16)).unwrap();
    file.write_all(&(name.len() as u32).to_be_bytes()).unwrap();
}

#[tokio::test]
async fn a_rewritten_backing_file_header_does_not_reach_into_the_host() {
    use std::os::unix::fs::PermissionsExt;
    let Some(backend) = confined_backend() else {
        return;
    };
    if images().is_none() {
        return;
    }
    let dir = TestDir::new("confine-backing");
    let secret = dir.0.join("host-secret.img");
    std::fs::write(&secret, vec![7_u8; 1 << 20]).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut a = boot(&backend, "cfbacking", &dir.0, 256).await;
    a.pause().await.unwrap();
    rewrite_backing_file(&a.run_dir().join("root.qcow2"), &secret);

    let resumed = a.resume().await;

    let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
    let _ = a.destroy().await;
    let err = resumed.expect_err("the VMM opened a backing file it was not given");
    assert!(err.to_string().contains("host-secret.img"), "{err}");
    assert_eq!(mode, 0o600, "the host file was made readable for the VMM");
}

#[tokio::test]
async fn console_flood_stays_under_the_cap_and_agent_memory_stays_bounded() {
    let Some(backend) = confined_backend() else {
        return;
    };
    if images().is_none() {
        return;
    }
    let dir = TestDir::new("confine-flood");
    let a = boot(&backend, "cfflood", &dir.0, 256).await;
    let log = a.run_dir().join("console.log");
    let old = a.run_dir().join("console.log.1");
    let rss_before = own_rss_kib();

    let flood = ExecRequest::shell(
        "timeout 30 yes 'flooding the serial console with a long line of text' > /dev/ttyS0; true",
    )
    .user("root")
    .timeout(Duration::from_secs(90));
    a.exec(flood).await.unwrap();
    let log_len = std::fs::metadata(&log).unwrap().len();
    let old_len = std::fs::metadata(&old).map(|m| m.len());
    let rss_after = own_rss_kib();
    answers_exec(&a).await;

    a.destroy().await.unwrap();
    let cap = qemu_vmm::CONSOLE_CAP_BYTES;
    assert!(log_len <= cap, "console.log {log_len} > cap {cap}");
    let old_len = old_len.expect("the flood passed the cap, so the log was rotated");
    assert!(old_len <= cap, "console.log.1 {old_len} > cap {cap}");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "agent RSS grew from {rss_before} to {rss_after} KiB"
    );
}

#[tokio::test]
async fn guest_fork_bomb_leaves_vmm_pids_and_other_sandbox_fine() {
    let Some(backend) = confined_backend() else {
        return;
    };
    if images().is_none() {
        return;
    }
    let dir = TestDir::new("confine-forkbomb");
    let bomber = boot(&backend, "cfbomb", &dir.0, 256).await;
    let other = boot(&backend, "cfother", &dir.0, 256).await;
    let cgroup = cgroup_of(&backend, &bomber);
    let pids_max: u64 = cgroup.read("pids.max").unwrap().parse().unwrap();

    let bomb =
        ExecRequest::shell("(setsid sh -c 'f(){ f | f & }; f' >/dev/null 2>&1 &) ; echo started")
            .user("root")
            .timeout(Duration::from_secs(60));
    let started = bomber.exec(bomb).await.unwrap();
    let mut peak = 0_u64;
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        let current: u64 = cgroup.read("pids.current").unwrap().parse().unwrap();
        peak = peak.max(current);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let bomber_pid = bomber.vmm_pid().unwrap();
    let bomber_alive = common::alive(bomber_pid);
    answers_exec(&other).await;

    bomber.destroy().await.unwrap();
    other.destroy().await.unwrap();
    assert_eq!(String::from_utf8_lossy(&started.stdout), "started\n");
    assert!(bomber_alive, "the fork bomb stays inside the guest");
    assert!(
        peak < pids_max / 2,
        "VMM threads peaked at {peak} of {pids_max}"
    );
}

#[tokio::test]
async fn exceeding_the_memory_limit_kills_that_vmm_only() {
    let Some(mut backend) = confined_backend() else {
        return;
    };
    if images().is_none() {
        return;
    }
    // Guest RAM on tmpfs is not reclaimable (no swap): a guest touching
    // all its RAM then really holds RAM + QEMU's own memory, which the
    // small overhead below cannot hold.
    let dir = TestDir(PathBuf::from(format!(
        "/dev/shm/petrel-test-oom-{}",
        std::process::id()
    )));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let other_dir = TestDir::new("confine-oom-other");
    let other = boot(&backend, "cfoomok", &other_dir.0, 256).await;
    if let Ok(confinement) = &mut backend.confinement {
        confinement.memory_overhead_mib = 16;
    }
    let victim = boot(&backend, "cfoom", &dir.0, 256).await;
    let victim_pid = victim.vmm_pid().unwrap();
    let cgroup = cgroup_of(&backend, &victim);

    // Touch every page the guest can: fill tmpfs, then allocate.
    let eat = ExecRequest::shell(
        "mkdir -p /mnt/eat && mount -t tmpfs -o size=100% tmpfs /mnt/eat; \
         dd if=/dev/zero of=/mnt/eat/fill bs=1M count=400 2>/dev/null; \
         head -c 400M /dev/zero | tail > /dev/null; echo survived",
    )
    .user("root")
    .timeout(Duration::from_secs(120));
    let outcome = victim.exec(eat).await;
    let until = Instant::now() + Duration::from_secs(60);
    while common::alive(victim_pid) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let victim_alive = common::alive(victim_pid);
    let oom = cgroup
        .read("memory.oom_control")
        .or_else(|| cgroup.read("memory.events"))
        .unwrap_or_default();
    answers_exec(&other).await;

    let _ = victim.destroy().await;
    other.destroy().await.unwrap();
    assert!(
        !victim_alive,
        "QEMU over its memory limit still runs (exec: {outcome:?})"
    );
    assert!(oom.contains("oom_kill 1"), "cgroup OOM record: {oom}");
}
