//! `cargo xtask test`: fmt, clippy and every test, VM tests included.

use anyhow::Result;

use crate::setup::Task;
use crate::{env, images, serve, setup};

/// Runs every check; `cargo_args` go to `cargo test` (a filter skips the
/// steps after it).
pub fn run(cargo_args: &[String]) -> Result<()> {
    setup::run(Task::Test)?;
    let images = images::build()?.with_kvm_kernel()?;
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
    let mut envs = images.envs();
    envs.push(("PETREL_REQUIRE_VM", "1".to_string()));
    // The tests' accelerator probe shares the cache of demo and doctor.
    envs.push(("PETREL_CACHE_DIR", env::cache_dir().display().to_string()));
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env::cargo(&args, &envs)?;
    if cargo_args.is_empty() {
        env::step("`cargo xtask serve` answers with the printed key and URLs");
        serve::smoke_test(&images)?;
        images::xtask_vm(&["nested-tests"], Some(&images))?;
        env::step(
            "soak: 20 create/exec/destroy and 4 pause/resume cycles leave the host as it was",
        );
        images::xtask_vm(&["bench", "soak", "--runs", "20"], Some(&images))?;
    }
    env::step("all checks passed");
    Ok(())
}
