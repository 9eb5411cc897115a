//! `cargo xtask vmtest <package>`: runs a crate's test binaries inside a real
//! VM, for tests that need what the host kernel lacks (device-mapper for
//! `dmsnap` and the dm rootfs provider; our guest kernel has DM,
//! dm-snapshot and loop built in).
//!
//! Builds the test binaries (`cargo test -p <package> [--test <name>]
//! --no-run`), puts them (debug info stripped) on an ext4 disk that a
//! sandbox gets as `/dev/vdb` beside its root disk, boots the sandbox as
//! `cargo xtask demo` does, mounts the disk, runs each binary as root with
//! `--test-threads=1` and `PETREL_REQUIRE_DM=1`, prints their output,
//! destroys the sandbox, and fails unless every binary exited 0. The guest
//! rootfs is Debian 12 like the host, so the binaries run there as built.
//!
//! With `--nested` the disk also carries this host's QEMU (binary, shared
//! libraries, firmware), the guest kernel and rootfs, and scratch space, so
//! the tests boot VMs of their own inside the VM (`PETREL_KERNEL`,
//! `PETREL_ROOTFS`, `PETREL_REQUIRE_VM=1` set; QEMU on `PATH`). Under TCG
//! twice over, a guest takes minutes to boot: keep such runs to a few tests.
//!
//! With `--kvm` (nested, faster) the VM boots the KVM-host kernel
//! (`images/kernel/kvm-host.config`, `PETREL_KVM_KERNEL`): QEMU's TCG
//! emulates AMD SVM, so the VM gets a working `/dev/kvm` and the tests'
//! VMs run under KVM there, chosen by the accelerator probe on its own
//! (`PETREL_EXPECT_ACCEL=kvm` makes a probe that chose TCG fail the tests).
//! The VM is told the host's TSC frequency (`tsc_early_khz`): an outer
//! guest that could not calibrate its TSC hangs nested KVM guests, so the
//! run is refused, with the reason, when the guest still logs that it could
//! not. The VM has one vCPU (`nested_kvm::KVM_HOST_VCPUS` says why). Firecracker
//! (`PETREL_FIRECRACKER`, or on PATH) is carried along when there is one
//! (see `nested_kvm`).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use envd_client::ExecRequest;
use qemu_vmm::Accel;
use sandbox_core::{GuestImages, QemuBackend, Sandbox, SandboxConfig};

use crate::{demo, env, guest_job, images, nested_kvm};

/// Where the test disk is mounted in the guest.
const GUEST_DIR: &str = "/mnt/petrel-vmtest";
/// Bound of one test binary's run (TCG is slow, nested TCG more so).
const RUN_TIMEOUT: Duration = Duration::from_mins(45);
/// Free space on a nested test disk for the inner VMs' disks and RAM files.
const NESTED_SCRATCH_BYTES: u64 = 6 << 30;
/// Set for every job: the program runs in a vmtest guest (`bench
/// providers` does not start another VM from there).
pub const IN_GUEST_ENV: &str = "PETREL_IN_VMTEST";
/// The host programs a nested test disk carries (with their libraries):
/// QEMU's, and `nft` for the network namespace rules (the guest rootfs has
/// no nftables).
const HOST_PROGRAMS: [&str; 3] = ["qemu-system-x86_64", "qemu-img", "nft"];
/// Whether and how a vmtest's tests boot VMs of their own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Nesting {
    /// The tests boot no VMs.
    #[default]
    None,
    /// VMs under TCG inside the TCG VM (slow; any host).
    Tcg,
    /// VMs under KVM inside a TCG VM with the KVM-host kernel.
    Kvm,
}

impl Nesting {
    pub fn from_flags(nested: bool, kvm: bool) -> Self {
        match (nested, kvm) {
            (_, true) => Nesting::Kvm,
            (true, false) => Nesting::Tcg,
            (false, false) => Nesting::None,
        }
    }

    /// How long a nested guest gets to answer on envd
    /// (`PETREL_BOOT_TIMEOUT_SECS`): a TCG guest inside TCG boots in ~25 s
    /// quiet and much slower under load; under nested KVM in ~3-8 s (the
    /// backends suite there also boots TCG guests).
    fn boot_timeout_secs(self) -> &'static str {
        match self {
            Nesting::Kvm => "300",
            _ => "900",
        }
    }

    /// Silence after which a job is taken as hung: well past the boot
    /// timeout, so that a guest that never boots fails its test first.
    /// `PETREL_VMTEST_STALL_SECS` overrides it.
    fn stall(self) -> Duration {
        if let Some(secs) = std::env::var("PETREL_VMTEST_STALL_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
        {
            return Duration::from_secs(secs);
        }
        match self {
            Nesting::Kvm => Duration::from_mins(10),
            _ => Duration::from_mins(20),
        }
    }

    fn nested(self) -> bool {
        self != Nesting::None
    }
}

/// What to run in the VM.
#[derive(Debug, Clone, Default)]
pub struct VmTest {
    pub package: String,
    /// Only these integration test targets (`cargo test --test <name>`);
    /// empty: every test binary of the package.
    pub tests: Vec<String>,
    /// Give the tests QEMU and the guest images, to boot VMs themselves
    /// (and under which accelerator).
    pub nesting: Nesting,
    /// Passed to each test binary (e.g. a test name filter).
    pub test_args: Vec<String>,
}

impl VmTest {
    /// Every test binary of `package`, no nesting, no arguments.
    pub fn package(package: &str) -> Self {
        Self {
            package: package.to_string(),
            ..Self::default()
        }
    }
}

/// One program to run in the guest, as root, from the test disk.
#[derive(Debug, Clone)]
pub struct GuestJob {
    /// A host executable; copied (debug info stripped) onto the disk.
    pub binary: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// How a [`GuestJob`] ended.
#[derive(Debug, Clone)]
pub struct GuestOutput {
    pub name: String,
    pub exit_code: i32,
    pub stdout: Vec<u8>,
}

impl GuestOutput {
    /// The JSON report a bench prints as its last stdout line, if it
    /// exited 0 and printed one.
    pub fn json_report(&self) -> Result<serde_json::Value> {
        if self.exit_code != 0 {
            bail!(
                "{} failed in the VM (exit code {})",
                self.name,
                self.exit_code
            );
        }
        let stdout = String::from_utf8_lossy(&self.stdout);
        let last = stdout
            .lines()
            .last()
            .with_context(|| format!("{} printed nothing", self.name))?;
        serde_json::from_str(last).with_context(|| format!("{}'s report {last:?}", self.name))
    }
}

/// The test disk of a run: the image, and whether it carries Firecracker.
struct TestDisk {
    path: PathBuf,
    firecracker: bool,
}

/// Runs the test binaries `what` names in a VM.
pub fn run(what: &VmTest) -> Result<()> {
    let jobs = test_jobs(what)?;
    let outputs = run_in_guest(
        &format!("vmtest-{}", what.package),
        &jobs,
        what.nesting,
        true,
    )?;
    require_success(&what.package, &outputs)
}

/// One job per test binary of `what` (built here), each run with
/// `--test-threads=1`, the test arguments and `PETREL_REQUIRE_DM=1`.
pub fn test_jobs(what: &VmTest) -> Result<Vec<GuestJob>> {
    let package = &what.package;
    env::step(&format!("building the test binaries of {package}"));
    let binaries = test_binaries(what)?;
    if binaries.is_empty() {
        bail!("cargo test -p {package} --no-run built no test binary");
    }
    Ok(binaries
        .into_iter()
        .map(|binary| GuestJob {
            binary,
            args: std::iter::once("--test-threads=1".to_string())
                .chain(what.test_args.iter().cloned())
                .collect(),
            env: vec![("PETREL_REQUIRE_DM".to_string(), "1".to_string())],
        })
        .collect())
}

/// Fails naming every job of `what` that did not exit 0.
pub fn require_success(what: &str, outputs: &[GuestOutput]) -> Result<()> {
    let failed: Vec<String> = outputs
        .iter()
        .filter(|out| out.exit_code != 0)
        .map(|out| format!("{} (exit code {})", out.name, out.exit_code))
        .collect();
    if !failed.is_empty() {
        bail!("{what} failed in the VM: {}", failed.join(", "));
    }
    env::step(&format!(
        "all {} programs of {what} passed in the VM",
        outputs.len()
    ));
    Ok(())
}

/// Boots a sandbox named `name` with a test disk holding the jobs'
/// binaries (and, nested, QEMU and the guest images), runs each job as
/// root (its stderr shown as it comes, its stdout too when `echo_stdout`;
/// stdout returned), destroys the sandbox.
pub fn run_in_guest(
    name: &str,
    jobs: &[GuestJob],
    nesting: Nesting,
    echo_stdout: bool,
) -> Result<Vec<GuestOutput>> {
    let images = images::from_env()?;
    let work = demo::tempdir("petrel-vmtest")?;
    let binaries: Vec<PathBuf> = jobs.iter().map(|job| job.binary.clone()).collect();
    let result = test_disk(nesting, &images, &binaries, &work).and_then(|disk| {
        demo::runtime()?.block_on(async {
            let outcome = demo::probe(&images).await;
            demo::announce_boot(&outcome);
            let vm = GuestVm {
                name,
                nesting,
                echo_stdout,
                firecracker: disk.firecracker,
            };
            run_in_vm(&images, outcome.accel, &work, &vm, &disk.path, jobs).await
        })
    });
    let cleanup =
        std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()));
    let outputs = result?;
    cleanup?;
    Ok(outputs)
}

/// The test executables `cargo test --no-run` builds, from its JSON
/// messages (diagnostics still rendered on stderr).
fn test_binaries(what: &VmTest) -> Result<Vec<PathBuf>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut command = Command::new(&cargo);
    command.args(["test", "--package", &what.package]);
    for test in &what.tests {
        command.args(["--test", test]);
    }
    let mut child = command
        .args(["--no-run", "--message-format=json-render-diagnostics"])
        .current_dir(env::root())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("running {cargo} test -p {} --no-run", what.package))?;
    let stdout = child.stdout.take().context("cargo's stdout")?;
    let mut binaries = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo's JSON messages")?;
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let is_test =
            message["reason"] == "compiler-artifact" && message["profile"]["test"] == true;
        if let (true, Some(executable)) = (is_test, message["executable"].as_str()) {
            binaries.push(PathBuf::from(executable));
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    if !status.success() {
        bail!("cargo test -p {} --no-run failed ({status})", what.package);
    }
    Ok(binaries)
}

/// The ext4 image the guest gets as `/dev/vdb`: `bin/` with the test
/// binaries (and, nested, QEMU wrappers), `qemu/` with QEMU's programs,
/// libraries and firmware, `vmlinux`, `rootfs.ext4` and `tmp/`.
fn test_disk(
    nesting: Nesting,
    images: &GuestImages,
    binaries: &[PathBuf],
    work: &Path,
) -> Result<TestDisk> {
    let tree = work.join("disk");
    let bin = tree.join("bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    for binary in binaries {
        strip_into(binary, &bin)?;
    }
    let mut free = 256 << 20;
    let mut firecracker = false;
    if nesting.nested() {
        env::step("adding this host's QEMU and the guest images for nested VMs");
        add_host_programs(&tree)?;
        if nesting == Nesting::Kvm {
            firecracker = nested_kvm::add_firecracker(&tree)?;
        }
        copy_sparse(&images.kernel, &tree.join("vmlinux"))?;
        copy_sparse(&images.rootfs, &tree.join("rootfs.ext4"))?;
        let tmp = tree.join("tmp");
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        free += NESTED_SCRATCH_BYTES;
    }
    let used = apparent_size(&tree)?;
    let disk = work.join("vmtest.ext4");
    let size_mib = (used + free) / (1 << 20) + 64;
    run_tool(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "petrel-vmtest", "-d"])
            .arg(&tree)
            .arg(&disk)
            .arg(format!("{size_mib}M")),
    )?;
    std::fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    Ok(TestDisk {
        path: disk,
        firecracker,
    })
}

/// A copy of `binary` in `dir` without debug info (a debug test binary is
/// tens of MB, most of it DWARF).
fn strip_into(binary: &Path, dir: &Path) -> Result<()> {
    let name = binary
        .file_name()
        .with_context(|| format!("{} has no file name", binary.display()))?;
    run_tool(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(binary)
            .arg(dir.join(name)),
    )
}

/// This host's QEMU programs and `nft` with every shared library they load
/// (run through the copied dynamic loader, so the guest's own libraries do
/// not matter) and QEMU's firmware directory, behind wrappers in `bin/`.
fn add_host_programs(tree: &Path) -> Result<()> {
    let qemu = tree.join("qemu");
    let lib = qemu.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for program in HOST_PROGRAMS {
        let path = which(program)?;
        copy_sparse(&path, &qemu.join(program))?;
        for library in shared_libraries(&path)? {
            let name = library
                .file_name()
                .with_context(|| format!("{} has no file name", library.display()))?;
            copy_sparse(&library, &lib.join(name))?;
        }
        let wrapper = tree.join("bin").join(program);
        let script = format!(
            "#!/bin/sh\n\
             # {program} of the host that built this disk, with its own libraries.\n\
             d=\"$(dirname \"$(readlink -f \"$0\")\")/../qemu\"\n\
             exec \"$d/lib/ld-linux-x86-64.so.2\" --library-path \"$d/lib\" \"$d/{program}\"{} \"$@\"\n",
            if program == "qemu-system-x86_64" {
                " -L \"$d/share\""
            } else {
                ""
            }
        );
        std::fs::write(&wrapper, script)
            .with_context(|| format!("writing {}", wrapper.display()))?;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", wrapper.display()))?;
    }
    run_tool(
        Command::new("cp")
            .args(["-rL", "/usr/share/qemu"])
            .arg(qemu.join("share")),
    )
}

/// The full path of `program` on PATH.
pub fn which(program: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .with_context(|| format!("{program} is not on PATH (run cargo xtask setup)"))
}

/// The shared libraries `ldd` says `program` loads, the dynamic loader
/// included.
fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(program)
        .output()
        .context("running ldd")?;
    if !output.status.success() {
        bail!("ldd {} failed ({})", program.display(), output.status);
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let libraries: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, target)) => target.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect();
    if !libraries
        .iter()
        .any(|l| l.ends_with("ld-linux-x86-64.so.2"))
    {
        bail!("ldd {} named no ld-linux-x86-64.so.2", program.display());
    }
    Ok(libraries)
}

pub fn copy_sparse(from: &Path, to: &Path) -> Result<()> {
    run_tool(
        Command::new("cp")
            .args(["-L", "--sparse=always"])
            .arg(from)
            .arg(to),
    )
}

/// The bytes the files below `dir` hold (sparse ones counted whole, as
/// `mkfs.ext4 -d` may need).
fn apparent_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let meta = entry
            .metadata()
            .with_context(|| format!("stat {}", entry.path().display()))?;
        total += if meta.is_dir() {
            apparent_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

fn run_tool(command: &mut Command) -> Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The sandbox a run uses and how its jobs' output is shown.
struct GuestVm<'a> {
    name: &'a str,
    nesting: Nesting,
    echo_stdout: bool,
    /// The test disk carries Firecracker (`bin/firecracker`).
    firecracker: bool,
}

/// Boots the sandbox with the test disk, runs the jobs, destroys it.
async fn run_in_vm(
    images: &GuestImages,
    accel: Accel,
    work: &Path,
    vm: &GuestVm<'_>,
    disk: &Path,
    jobs: &[GuestJob],
) -> Result<Vec<GuestOutput>> {
    let backend = QemuBackend::new(accel);
    let boot_start = Instant::now();
    let mut config = SandboxConfig::new(vm.name, images.clone(), work);
    config.extra_drives = vec![disk.to_path_buf()];
    if vm.nesting.nested() {
        // Room for two inner guests and their page cache.
        config.vcpus = if vm.nesting == Nesting::Kvm {
            nested_kvm::KVM_HOST_VCPUS
        } else {
            2
        };
        config.memory_mib = 3072;
    }
    if vm.nesting == Nesting::Kvm {
        config.images.kernel = images::kvm_kernel_from_env()?;
        let khz = nested_kvm::host_tsc_khz()?;
        config.extra_kernel_args = format!("tsc_early_khz={khz}");
        env::step(&format!(
            "booting the KVM-host kernel ({}) with tsc_early_khz={khz}",
            config.images.kernel.display()
        ));
    }
    let sandbox = Sandbox::boot(&backend, config)
        .await
        .context("booting the vmtest sandbox")?;
    env::step(&format!(
        "guest ready in {}",
        demo::ms(boot_start.elapsed())
    ));
    let outputs = async {
        if vm.nesting == Nesting::Kvm {
            nested_kvm::check_guest(&sandbox).await?;
        }
        run_jobs(&sandbox, vm, jobs).await
    }
    .await;
    if outputs.is_err() {
        // The VM's own end (a panic, its OOM killer) explains a lost job.
        let console = sandbox.run_dir().join("console.log");
        eprintln!(
            "[vmtest] the VM's console ends with:\n{}",
            qemu_vmm::log_tail(&console, 40)
        );
    }
    let destroyed = sandbox.destroy().await;
    let outputs = outputs?;
    destroyed.context("destroying the vmtest sandbox")?;
    Ok(outputs)
}

async fn root_shell(sandbox: &Sandbox, script: &str) -> Result<()> {
    let out = sandbox
        .exec(
            ExecRequest::new("/bin/sh")
                .args(["-c", script])
                .user("root"),
        )
        .await
        .with_context(|| format!("running {script:?} in the guest"))?;
    if !out.success() {
        bail!(
            "{script:?} failed in the guest: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether a failed test program's output shows an inner guest that
/// never booted: a sandbox whose envd never answered and whose console
/// stayed empty (the kernel did not print a line).
fn inner_boot_lost(stdout: &[u8]) -> bool {
    let text = String::from_utf8_lossy(stdout);
    text.contains("EnvdNotReady {") && text.contains("console: \"\"")
}

async fn run_jobs(
    sandbox: &Sandbox,
    vm: &GuestVm<'_>,
    jobs: &[GuestJob],
) -> Result<Vec<GuestOutput>> {
    root_shell(
        sandbox,
        &format!("mkdir -p {GUEST_DIR} && mount /dev/vdb {GUEST_DIR}"),
    )
    .await?;
    let mut outputs = Vec::new();
    for job in jobs {
        let name = job
            .binary
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .with_context(|| format!("{} has no file name", job.binary.display()))?;
        let guest_path = format!("{GUEST_DIR}/bin/{name}");
        env::step(&format!("running {name} in the guest as root"));
        let start = Instant::now();
        let mut request = ExecRequest::new(guest_path.as_str())
            .args(job.args.iter().cloned())
            .env("RUST_BACKTRACE", "1")
            .env(IN_GUEST_ENV, "1")
            .cwd(GUEST_DIR)
            .user("root")
            .timeout(RUN_TIMEOUT);
        if vm.nesting.nested() {
            request = request
                .env(
                    "PATH",
                    format!("{GUEST_DIR}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
                )
                .env("PETREL_KERNEL", format!("{GUEST_DIR}/vmlinux"))
                .env("PETREL_ROOTFS", format!("{GUEST_DIR}/rootfs.ext4"))
                .env("PETREL_REQUIRE_VM", "1")
                .env("PETREL_BOOT_TIMEOUT_SECS", vm.nesting.boot_timeout_secs())
                // The nested QEMU is this host's binary run through a
                // wrapper and a copied loader on the test disk, which the
                // VMM jail (binds of /usr and the binary's prefix) does not
                // model; its confinement is proven on the host
                // (sandbox-core/tests/confine.rs). Firecracker, a plain
                // binary, runs confined here (tests/firecracker.rs checks).
                .env("PETREL_VMM_CONFINE", "off:qemu")
                .env("TMPDIR", format!("{GUEST_DIR}/tmp"));
        }
        if vm.nesting == Nesting::Kvm {
            // The tests' own accelerator probe must pick KVM.
            request = request.env("PETREL_EXPECT_ACCEL", "kvm");
            if vm.firecracker {
                request = request.env("PETREL_FIRECRACKER", format!("{GUEST_DIR}/bin/firecracker"));
            }
        }
        for (key, value) in &job.env {
            request = request.env(key.as_str(), value.as_str());
        }
        let mut attempt = 1;
        let (exit_code, stdout) = loop {
            let (exit_code, stdout) =
                guest_job::stream(sandbox, request.clone(), vm.echo_stdout, vm.nesting.stall())
                    .await
                    .with_context(|| format!("running {name} in the guest"))?;
            if exit_code != 0
                && vm.nesting == Nesting::Kvm
                && attempt == 1
                && inner_boot_lost(&stdout)
            {
                eprintln!(
                    "[vmtest] {name}: exit code {exit_code}: an inner KVM guest never wrote to its \
                     console (the nested-KVM boot loss of an SVM-emulating TCG host, not a Petrel \
                     failure; see the README on KVM); running {name} once more"
                );
                attempt += 1;
                continue;
            }
            break (exit_code, stdout);
        };
        eprintln!(
            "[vmtest] {name}: exit code {exit_code} in {} ({attempt} run{})",
            demo::ms(start.elapsed()),
            if attempt == 1 { "" } else { "s" }
        );
        outputs.push(GuestOutput {
            name,
            exit_code,
            stdout,
        });
    }
    Ok(outputs)
}
