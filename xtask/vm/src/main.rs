//! `xtask-vm`: the half of `cargo xtask` that links Petrel's own crates.
//!
//! Those crates need system packages to compile (libclang for bindgen,
//! libdevmapper, protoc, SQLite), so the light `xtask` binary, which
//! compiles with none of them, runs its setup step first and then this
//! binary through a second `cargo run`. It is not meant to be run by hand:
//! it takes the guest images from `PETREL_KERNEL` and `PETREL_ROOTFS`,
//! which `xtask` builds and sets.
//!
//! - `demo`: boots a VM, runs `echo hello` in it through envd, cleans up.
//! - `doctor`: the host's capabilities and the accelerator probe.
//! - `bench boot|network|providers|lifecycle`: timings as JSON (the last
//!   line of stdout).
//! - `vmtest <package>`: a crate's test binaries run inside a VM.
//! - `nested-tests`: what this host cannot run itself, inside VMs (a step of
//!   `cargo xtask test`): the dm tests where the host kernel has no
//!   device-mapper, and the sandbox lifecycle under KVM where the host's KVM
//!   is not usable (in a KVM-host VM, nested).
//!
//! ```sh
//! cargo xtask demo        # runs setup and the images, then `xtask-vm demo`
//! ```

mod bench;
mod bench_api;
mod bench_kvm;
mod demo;
mod guest_job;
mod images;
mod nested_kvm;
mod soak;
mod vmtest;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use xtask::env;

#[derive(Parser)]
#[command(
    name = "xtask-vm",
    about = "Petrel developer tasks that boot VMs (run them through `cargo xtask`)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum VmmChoice {
    Qemu,
    Firecracker,
}

#[derive(Subcommand)]
enum Command {
    /// Show host capabilities and the accelerator choice.
    Doctor,
    /// Boot a VM, run `echo hello` through envd, print it, clean up.
    Demo {
        #[arg(long, value_enum, default_value = "qemu")]
        vmm: VmmChoice,
    },
    /// Benchmarks; the last line of stdout is one JSON object.
    Bench {
        #[arg(value_enum, default_value = "boot")]
        which: bench::Which,
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
    /// Run a crate's test binaries inside a VM (e.g. `vmtest dmsnap`: DM tests).
    Vmtest {
        package: String,
        /// Only this integration test target (repeatable).
        #[arg(long)]
        test: Vec<String>,
        /// Give the tests QEMU and the guest images to boot VMs of their own
        /// inside the VM (slow: keep to a few tests).
        #[arg(long)]
        nested: bool,
        /// Nested, under KVM: the VM boots the KVM-host kernel
        /// (`PETREL_KVM_KERNEL`) and gets a working /dev/kvm.
        #[arg(long)]
        kvm: bool,
        /// Extra arguments for each test binary (e.g. a test name filter).
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// What this host cannot test itself, inside VMs: the device-mapper
    /// tests where its kernel has no device-mapper, and the sandbox
    /// lifecycle under KVM where its KVM is not usable (nothing to do where
    /// both work: `cargo test` ran them here).
    NestedTests,
    /// Debugging aid: run a shell script as root in a nested (`--kvm`: a
    /// KVM-host) VM with the test disk's QEMU, nft and guest images.
    #[command(hide = true)]
    GuestSh {
        #[arg(long)]
        kvm: bool,
        script: String,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Doctor => demo::doctor(),
        Command::Demo { vmm } => demo::run(vmm),
        Command::Bench { which, runs } => bench::run(which, runs),
        Command::Vmtest {
            package,
            test,
            nested,
            kvm,
            test_args,
        } => vmtest::run(&vmtest::VmTest {
            package,
            tests: test,
            nesting: vmtest::Nesting::from_flags(nested, kvm),
            test_args,
        }),
        Command::NestedTests => nested_tests(),
        Command::GuestSh { kvm, script } => {
            let job = vmtest::GuestJob {
                binary: "/bin/bash".into(),
                args: vec!["-c".to_string(), script],
                env: Vec::new(),
            };
            let nesting = vmtest::Nesting::from_flags(true, kvm);
            let outputs = vmtest::run_in_guest("guest-sh", &[job], nesting, true)?;
            vmtest::require_success("the script", &outputs)
        }
    }
}

/// The sandbox-core test files run under nested KVM by `cargo xtask test`:
/// the lifecycle (boot, exec, files, pause/resume, snapshots and clones),
/// the manager (warm templates, fork, restart, limits), the root disk
/// providers (dm-snapshot needs the VM's device-mapper), the behavioural
/// suite over both backends and Firecracker's own (those two skip
/// Firecracker, saying so, when the host has no binary to carry along).
/// The host agent's `backends` suite runs there too: the agent serving
/// QEMU under KVM, and Firecracker when a binary is carried along.
const KVM_TESTS: [&str; 5] = ["vm", "manager", "providers", "backends", "firecracker"];

fn nested_tests() -> Result<()> {
    let dm_here = dmsnap::device_mapper_available();
    if dm_here {
        env::step("device-mapper is available here: its tests ran with `cargo test`");
    } else {
        env::step("device-mapper tests inside a VM (this host kernel has no device-mapper)");
        vmtest::run(&vmtest::VmTest::package("dmsnap"))?;
    }
    let images = images::from_env()?;
    let outcome = demo::runtime()?.block_on(demo::probe(&images));
    if outcome.accel == qemu_vmm::Accel::Kvm && dm_here {
        env::step("KVM is usable here: the sandbox tests ran under it with `cargo test`");
        return Ok(());
    }
    env::step(&format!(
        "sandbox lifecycle under KVM (here: {}, {}) and VMs booting from dm-snapshot disks, inside a KVM-host VM",
        outcome.accel, outcome.reason
    ));
    let mut jobs = vmtest::test_jobs(&vmtest::VmTest {
        package: "sandbox-core".to_string(),
        tests: KVM_TESTS.iter().map(|t| (*t).to_string()).collect(),
        nesting: vmtest::Nesting::Kvm,
        test_args: Vec::new(),
    })?;
    // The agent's own lifecycle over every backend, through its API.
    jobs.extend(vmtest::test_jobs(&vmtest::VmTest {
        package: "host-agent".to_string(),
        tests: vec!["backends".to_string()],
        nesting: vmtest::Nesting::Kvm,
        test_args: Vec::new(),
    })?);
    env::step("building host-agent (its doctor must find KVM usable in the VM)");
    let agent = env::build_binary("host-agent", "host-agent", false)?;
    jobs.insert(
        0,
        vmtest::GuestJob {
            binary: agent,
            args: vec!["doctor".to_string()],
            env: Vec::new(),
        },
    );
    let outputs = vmtest::run_in_guest("vmtest-kvm", &jobs, vmtest::Nesting::Kvm, true)?;
    vmtest::require_success("the nested KVM tests", &outputs)?;
    let doctor = String::from_utf8_lossy(&outputs[0].stdout);
    let usable = doctor
        .lines()
        .find(|line| line.starts_with("KVM usable:"))
        .context("host-agent doctor printed no `KVM usable:` line")?;
    if !usable
        .trim_start_matches("KVM usable:")
        .trim()
        .starts_with("yes")
    {
        bail!("host-agent doctor in the KVM-host VM does not find KVM usable: {usable}");
    }
    env::step(&format!("host-agent doctor in the VM: {usable}"));
    Ok(())
}
