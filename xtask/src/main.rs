//! `cargo xtask`: Petrel's developer tasks.
//!
//! - `setup`: installs the host packages Petrel needs (apt, QEMU 10 from
//!   bookworm-backports, the kernel source, debootstrap, ...), when missing.
//! - `images`: builds envd and the guest kernel and rootfs (cached by recipe).
//! - `doctor`: shows the host's capabilities and the accelerator probe.
//! - `demo`: boots a VM, runs `echo hello` in it through envd, cleans up.
//! - `test`: fmt, clippy and every test, VM tests included (dm tests inside
//!   a VM where the host has no device-mapper).
//! - `bench boot|network|providers|lifecycle`: timings as JSON (the last
//!   line of stdout); `providers` also measures inside a VM where the host
//!   has no device-mapper.
//! - `vmtest <package>`: a crate's test binaries run inside a VM (`--nested`:
//!   with QEMU and the guest images, to boot VMs in there).

mod bench;
mod demo;
mod env;
mod images;
mod setup;
mod vmtest;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Petrel developer tasks")]
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
    /// Install missing host packages (needs root).
    Setup,
    /// Build envd, the guest kernel and the rootfs; print their paths.
    Images,
    /// Show host capabilities and the accelerator choice.
    Doctor,
    /// Boot a VM, run `echo hello` through envd, print it, clean up.
    Demo {
        #[arg(long, value_enum, default_value = "qemu")]
        vmm: VmmChoice,
    },
    /// fmt check, clippy, and all tests including VM tests.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        cargo_args: Vec<String>,
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
        /// Only this integration test target.
        #[arg(long)]
        test: Option<String>,
        /// Give the tests QEMU and the guest images to boot VMs of their own
        /// inside the VM (slow: keep to a few tests).
        #[arg(long)]
        nested: bool,
        /// Extra arguments for each test binary (e.g. a test name filter).
        #[arg(last = true)]
        test_args: Vec<String>,
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
        Command::Setup => setup::run(),
        Command::Images => {
            setup::run()?;
            let images = images::build()?;
            println!("PETREL_KERNEL={}", images.kernel.display());
            println!("PETREL_ROOTFS={}", images.rootfs.display());
            Ok(())
        }
        Command::Doctor => demo::doctor(),
        Command::Demo { vmm } => demo::run(vmm),
        Command::Test { cargo_args } => test(&cargo_args),
        Command::Bench { which, runs } => bench::run(which, runs),
        Command::Vmtest {
            package,
            test,
            nested,
            test_args,
        } => vmtest::run(&vmtest::VmTest {
            package,
            test,
            nested,
            test_args,
        }),
    }
}

fn test(cargo_args: &[String]) -> Result<()> {
    setup::run()?;
    let images = images::build()?;
    env::step("cargo fmt --check");
    env::cargo(&["fmt", "--all", "--", "--check"], &[])?;
    env::step("cargo clippy");
    env::cargo(
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    env::step("cargo test (VM tests boot real guests)");
    let mut args = vec!["test", "--workspace"];
    args.extend(cargo_args.iter().map(String::as_str));
    let kernel = images.kernel.display().to_string();
    let rootfs = images.rootfs.display().to_string();
    env::cargo(
        &args,
        &[
            ("PETREL_KERNEL", kernel.as_str()),
            ("PETREL_ROOTFS", rootfs.as_str()),
            ("PETREL_REQUIRE_VM", "1"),
        ],
    )?;
    if cargo_args.is_empty() && !dmsnap::device_mapper_available() {
        env::step("device-mapper tests inside a VM (this host kernel has no device-mapper)");
        vmtest::run(&vmtest::VmTest::package("dmsnap"))?;
        env::step("VMs booting from dm-snapshot disks, inside a VM (nested; minutes)");
        vmtest::run(&vmtest::VmTest {
            package: "sandbox-core".to_string(),
            test: Some("providers".to_string()),
            nested: true,
            test_args: vec!["dm".to_string()],
        })?;
    }
    env::step("all checks passed");
    Ok(())
}
