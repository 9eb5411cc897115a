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
//! - `dm-tests`: where the host kernel has no device-mapper, the dm tests
//!   inside a VM (the last step of `cargo xtask test`).
//!
//! ```sh
//! cargo xtask demo        # runs setup and the images, then `xtask-vm demo`
//! ```

mod bench;
mod demo;
mod images;
mod soak;
mod vmtest;

use anyhow::Result;
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
    /// The device-mapper tests inside a VM, where this host kernel has no
    /// device-mapper (nothing to do where it has: `cargo test` ran them).
    DmTests,
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
            test_args,
        } => vmtest::run(&vmtest::VmTest {
            package,
            test,
            nested,
            test_args,
        }),
        Command::DmTests => dm_tests(),
    }
}

fn dm_tests() -> Result<()> {
    if dmsnap::device_mapper_available() {
        env::step("device-mapper is available here: its tests ran with `cargo test`");
        return Ok(());
    }
    env::step("device-mapper tests inside a VM (this host kernel has no device-mapper)");
    vmtest::run(&vmtest::VmTest::package("dmsnap"))?;
    env::step("VMs booting from dm-snapshot disks, inside a VM (nested; minutes)");
    vmtest::run(&vmtest::VmTest {
        package: "sandbox-core".to_string(),
        test: Some("providers".to_string()),
        nested: true,
        test_args: vec!["dm".to_string()],
    })
}
