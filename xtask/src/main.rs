//! `cargo xtask`: Petrel's developer tasks.
//!
//! This binary compiles with no system library (`tests/bare_host.rs` keeps
//! it so): on a bare Debian host with only Rust, every task first runs
//! [`setup`] for what that task needs, then builds the rest. The tasks that
//! link Petrel's own crates (demo, doctor, bench, vmtest) live in
//! `xtask/vm` (`xtask-vm`), which this binary runs through a second
//! `cargo run` once setup has installed what those crates need.
//!
//! - `setup [--task T] [--dry-run [--bare]]`: installs the host packages a
//!   task needs (all by default), saying what and why.
//! - `images`: builds envd and the guest kernel and rootfs (cached by recipe).
//! - `doctor`: shows the host's capabilities and the accelerator probe.
//! - `demo`: boots a VM, runs `echo hello` in it through envd, cleans up.
//! - `serve`: builds what is missing and runs the host agent with the
//!   `base` template, printing the URLs, an API key and the E2B exports.
//! - `test`: fmt, clippy and every test, VM tests included (dm tests inside
//!   a VM where the host has no device-mapper).
//! - `bench boot|network|providers|lifecycle|api|kvm|soak`: timings as JSON (the last
//!   line of stdout).
//! - `vmtest <package>`: a crate's test binaries run inside a VM.
//!
//! ```sh
//! cargo xtask setup --dry-run --bare   # what a bare host gets, per task
//! cargo xtask demo                     # installs what the demo needs, prints hello
//! ```

mod images;
mod serve;
mod setup;
mod test;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use setup::Task;
use xtask::env;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Petrel developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the host packages a task needs (needs root when some are missing).
    Setup {
        /// Only what this task needs (default: every task).
        #[arg(long, value_enum, default_value = "all")]
        task: Task,
        /// Print each task's packages and the backports source; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: as for a bare host, where none is installed.
        #[arg(long, requires = "dry_run")]
        bare: bool,
    },
    /// Build envd, the guest kernel and the rootfs; print their paths.
    Images,
    /// Show host capabilities and the accelerator choice.
    Doctor,
    /// Boot a VM, run `echo hello` through envd, print it, clean up.
    Demo {
        #[arg(long, value_parser = ["qemu", "firecracker"], default_value = "qemu")]
        vmm: String,
    },
    /// Build what is missing and run the host agent with the `base` template.
    Serve(serve::ServeArgs),
    /// fmt check, clippy, and all tests including VM tests.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Benchmarks; the last line of stdout is one JSON object.
    Bench {
        #[arg(value_parser = ["boot", "network", "providers", "lifecycle", "api", "kvm", "soak"], default_value = "boot")]
        which: String,
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
        /// Nested under KVM: the VM boots the KVM-host kernel and gets a
        /// working /dev/kvm (QEMU's TCG emulates AMD SVM); the tests' VMs
        /// run under KVM there.
        #[arg(long)]
        kvm: bool,
        /// Extra arguments for each test binary (e.g. a test name filter).
        #[arg(last = true)]
        test_args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: what failed and why, without a backtrace dump.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Setup {
            task,
            dry_run: true,
            bare,
        } => setup::dry_run((task != Task::All).then_some(task), bare),
        Command::Setup { task, .. } => setup::run(task),
        Command::Images => {
            setup::run(Task::Images)?;
            let images = images::build()?;
            for (key, value) in images.envs() {
                println!("{key}={value}");
            }
            Ok(())
        }
        Command::Doctor => with_images(Task::Doctor, &["doctor"], false),
        // Where KVM is not usable, the Firecracker demo runs in a KVM-host VM.
        Command::Demo { vmm } => {
            with_images(Task::Demo, &["demo", "--vmm", &vmm], vmm == "firecracker")
        }
        Command::Serve(args) => serve::run(&args),
        Command::Test { cargo_args } => test::run(&cargo_args),
        Command::Bench { which, runs } => {
            let runs = runs.to_string();
            let args = ["bench", which.as_str(), "--runs", &runs];
            with_images(Task::Bench, &args, which == "kvm")
        }
        Command::Vmtest {
            package,
            test,
            nested,
            kvm,
            test_args,
        } => {
            let mut args = vec!["vmtest", package.as_str()];
            for test in &test {
                args.extend(["--test", test.as_str()]);
            }
            if nested {
                args.push("--nested");
            }
            if kvm {
                args.push("--kvm");
            }
            if !test_args.is_empty() {
                args.push("--");
                args.extend(test_args.iter().map(String::as_str));
            }
            with_images(Task::Vmtest, &args, kvm)
        }
    }
}

/// Setup for `task`, the images (and the KVM-host kernel when
/// `kvm_kernel`), then `xtask-vm ARGS`.
fn with_images(task: Task, args: &[&str], kvm_kernel: bool) -> Result<()> {
    setup::run(task)?;
    let mut images = images::build()?;
    if kvm_kernel {
        images = images.with_kvm_kernel()?;
    }
    images::xtask_vm(args, Some(&images))
}
