//! `cargo xtask vmtest <package>`: runs a crate's test binaries inside a real
//! VM, for tests that need what the host kernel lacks (device-mapper for
//! `dmsnap`; our guest kernel has DM, dm-snapshot and loop built in).
//!
//! Builds the test binaries (`cargo test -p <package> --no-run`), boots a
//! sandbox as `cargo xtask demo` does, uploads the binaries (debug info
//! stripped) through envd, runs each as root with `--test-threads=1` and
//! `PETREL_REQUIRE_DM=1`, prints their output, destroys the sandbox, and
//! fails unless every binary exited 0. The guest rootfs is Debian 12 like
//! the host, so the binaries run there as built.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use envd_client::ExecRequest;
use qemu_vmm::Accel;
use sandbox_core::{GuestImages, QemuBackend, Sandbox, SandboxConfig};

use crate::{demo, env, images, setup};

/// Where the binaries go in the guest (on its root disk, not in RAM).
const GUEST_DIR: &str = "/var/tmp/petrel-vmtest";
/// Bound of one test binary's run (TCG is slow).
const RUN_TIMEOUT: Duration = Duration::from_mins(30);
/// Bound of one upload through envd.
const UPLOAD_TIMEOUT: Duration = Duration::from_mins(10);

/// Runs every test binary of `package` in a VM.
#[allow(dead_code, reason = "for `cargo xtask test`, which is to call it")]
pub fn run(package: &str) -> Result<()> {
    run_with_args(package, &[])
}

/// Like [`run`], passing `test_args` (e.g. a test name filter) to each test
/// binary.
pub fn run_with_args(package: &str, test_args: &[String]) -> Result<()> {
    setup::run()?;
    let images = images::build()?;
    env::step(&format!("building the test binaries of {package}"));
    let binaries = test_binaries(package)?;
    if binaries.is_empty() {
        bail!("cargo test -p {package} --no-run built no test binary");
    }
    let work = demo::tempdir("petrel-vmtest")?;
    let result = stripped_copies(&binaries, &work.join("bin")).and_then(|uploads| {
        demo::runtime()?.block_on(async {
            let outcome = demo::probe(&images).await;
            demo::announce_boot(&outcome);
            run_in_vm(&images, outcome.accel, &work, package, &uploads, test_args).await
        })
    });
    let cleanup =
        std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()));
    let exits = result?;
    cleanup?;
    let failed: Vec<String> = exits
        .iter()
        .filter(|(_, code)| *code != 0)
        .map(|(name, code)| format!("{name} (exit code {code})"))
        .collect();
    if !failed.is_empty() {
        bail!("tests of {package} failed in the VM: {}", failed.join(", "));
    }
    env::step(&format!(
        "all {} test binaries of {package} passed in the VM",
        exits.len()
    ));
    Ok(())
}

/// The test executables `cargo test -p <package> --no-run` builds, from its
/// JSON messages (diagnostics still rendered on stderr).
fn test_binaries(package: &str) -> Result<Vec<PathBuf>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut child = Command::new(&cargo)
        .args([
            "test",
            "--package",
            package,
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(env::root())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("running {cargo} test -p {package} --no-run"))?;
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
        bail!("cargo test -p {package} --no-run failed ({status})");
    }
    Ok(binaries)
}

/// Copies of the binaries without debug info (a debug test binary is tens of
/// MB, most of it DWARF; the upload goes through QEMU's user network).
fn stripped_copies(binaries: &[PathBuf], dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    binaries
        .iter()
        .map(|binary| {
            let name = binary
                .file_name()
                .with_context(|| format!("{} has no file name", binary.display()))?;
            let copy = dir.join(name);
            let status = Command::new("objcopy")
                .arg("--strip-debug")
                .arg(binary)
                .arg(&copy)
                .status()
                .context("running objcopy (binutils)")?;
            if !status.success() {
                bail!(
                    "objcopy --strip-debug {} failed ({status})",
                    binary.display()
                );
            }
            Ok(copy)
        })
        .collect()
}

/// Boots the sandbox, runs the binaries, destroys it; the exit code of each.
async fn run_in_vm(
    images: &GuestImages,
    accel: Accel,
    work: &Path,
    package: &str,
    binaries: &[PathBuf],
    test_args: &[String],
) -> Result<Vec<(String, i32)>> {
    let backend = QemuBackend::new(accel);
    let boot_start = Instant::now();
    let sandbox = Sandbox::boot(
        &backend,
        SandboxConfig::new(format!("vmtest-{package}"), images.clone(), work),
    )
    .await
    .context("booting the vmtest sandbox")?;
    env::step(&format!(
        "guest ready in {}",
        demo::ms(boot_start.elapsed())
    ));
    let exits = run_binaries(&sandbox, binaries, test_args).await;
    let destroyed = sandbox.destroy().await;
    let exits = exits?;
    destroyed.context("destroying the vmtest sandbox")?;
    Ok(exits)
}

async fn run_binaries(
    sandbox: &Sandbox,
    binaries: &[PathBuf],
    test_args: &[String],
) -> Result<Vec<(String, i32)>> {
    let envd = sandbox.envd().clone().with_request_timeout(UPLOAD_TIMEOUT);
    let mut exits = Vec::new();
    for binary in binaries {
        let name = binary
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .with_context(|| format!("{} has no file name", binary.display()))?;
        let guest_path = format!("{GUEST_DIR}/{name}");
        let bytes =
            std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
        env::step(&format!(
            "uploading {name} ({} KiB) to {guest_path}",
            bytes.len() / 1024
        ));
        envd.write_file(&guest_path, Some("root"), bytes)
            .await
            .with_context(|| format!("uploading {name} to the guest"))?;
        let chmod = sandbox
            .exec(
                ExecRequest::new("chmod")
                    .args(["+x", guest_path.as_str()])
                    .user("root"),
            )
            .await
            .with_context(|| format!("chmod +x {guest_path}"))?;
        if !chmod.success() {
            bail!(
                "chmod +x {guest_path} failed: {}",
                String::from_utf8_lossy(&chmod.stderr)
            );
        }
        env::step(&format!("running {name} in the guest as root"));
        let start = Instant::now();
        let request = ExecRequest::new(guest_path.as_str())
            .arg("--test-threads=1")
            .args(test_args.iter().cloned())
            .env("PETREL_REQUIRE_DM", "1")
            .env("RUST_BACKTRACE", "1")
            .cwd(GUEST_DIR)
            .user("root")
            .timeout(RUN_TIMEOUT);
        let output = sandbox
            .exec(request)
            .await
            .with_context(|| format!("running {name} in the guest"))?;
        print!("{}", String::from_utf8_lossy(&output.stdout));
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        eprintln!(
            "[vmtest] {name}: exit code {} ({}) in {}",
            output.exit_code,
            output.status,
            demo::ms(start.elapsed())
        );
        exits.push((name, output.exit_code));
    }
    Ok(exits)
}
