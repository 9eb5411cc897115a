//! What both halves of `cargo xtask` share: the workspace's paths and how
//! to run cargo in it.
//!
//! The `xtask` binary (setup, images, serve, test) and `xtask-vm` (the
//! tasks that link Petrel's crates) both use it; it depends on nothing but
//! `anyhow`, so `xtask` still compiles on a bare host. Not for task logic.
//!
//! ```no_run
//! xtask::env::step("building envd");
//! xtask::env::cargo(&["build", "-p", "envd"], &[]).unwrap();
//! ```

pub mod env;
