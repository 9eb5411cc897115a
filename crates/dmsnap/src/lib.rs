//! Device-mapper copy-on-write snapshots for sandbox root disks.
//!
//! Each sandbox's root disk is a persistent dm-snapshot,
//! `petrel-<sandbox>` = `snapshot <base loop> <cow loop> P 8`, over its
//! template's read-only base image, created in constant time whatever the
//! image's size:
//!
//! - [`LoopRegistry`] ([`loops`]): one read-only loop device per base image,
//!   shared by refcount among the sandboxes on it, detached when the last one
//!   goes; safe under concurrency.
//! - [`SnapshotManager`] ([`snapshot`]): [`create`](SnapshotManager::create)
//!   (new sparse CoW file on its own loop device), [`restore`](SnapshotManager::restore)
//!   (the device rebuilt from an existing CoW file, after a pause or an agent
//!   restart), [`remove`](SnapshotManager::remove) (device, then loops; every
//!   error collected), [`adopt`](SnapshotManager::adopt) (take over a device
//!   an earlier run left live because its VM still runs).
//! - [`flatten()`] ([`mod@flatten`]): base + CoW merged into a new standalone sparse
//!   image, the base of a new template.
//! - [`SnapshotManager::cleanup_stale`] ([`cleanup`]): at startup, removes the
//!   `petrel-*` dm devices and loop devices over our files that a previous run
//!   left behind.
//! - [`dir_size`] ([`usage`]): disk usage as `st_blocks * 512`, so a sparse
//!   CoW file counts what it really uses.
//!
//! It needs root and a kernel with device-mapper, dm-snapshot and loop
//! ([`device_mapper_available`] tells). It does not pick a rootfs provider,
//! manage templates or talk to a VMM (that is `sandbox-core`), and makes no
//! `/dev/mapper/*` nodes itself: a snapshot's device is the `/dev/dm-N` node
//! devtmpfs makes. It speaks to device-mapper through raw ioctls (the
//! `devicemapper` crate; no `dmsetup`, no libdevmapper at run time) and to
//! loop devices through `loopdev-3`.
//!
//! # Example
//!
//! ```no_run
//! use std::path::Path;
//!
//! use dmsnap::{SnapshotManager, SnapshotSpec, flatten};
//!
//! # fn main() -> Result<(), dmsnap::DmSnapError> {
//! let manager = SnapshotManager::new()?;
//! manager.cleanup_stale(&[Path::new("/var/lib/petrel")])?;
//! let spec = SnapshotSpec::new(
//!     "sbx1",
//!     "/var/lib/petrel/templates/base/rootfs.img",
//!     "/var/lib/petrel/sandboxes/sbx1/root.cow",
//! );
//! let snapshot = manager.create(&spec)?;
//! println!("boot the VM from {}", snapshot.device().display());
//! // ... VM stopped: keep its disk as a new template, then pause the sandbox.
//! flatten(&snapshot, Path::new("/var/lib/petrel/templates/new/rootfs.img"))?;
//! manager.remove(snapshot)?;
//! // ... later, or after an agent restart: the writes are all there.
//! let snapshot = manager.restore(&spec)?;
//! manager.remove(snapshot)?;
//! # Ok(()) }
//! ```

mod adopt;
pub mod cleanup;
pub mod cow;
mod error;
pub mod flatten;
pub mod loops;
pub mod naming;
pub mod snapshot;
pub mod usage;

pub use cleanup::CleanupReport;
pub use cow::cow_size;
pub use error::{DmSnapError, Result};
pub use flatten::{FlattenReport, flatten, flatten_device};
pub use loops::{BaseLease, KernelLoops, LoopBackend, LoopDev, LoopRegistry};
pub use naming::{DEVICE_PREFIX, device_name, is_petrel_device};
pub use snapshot::{Snapshot, SnapshotManager, SnapshotSpec};
pub use usage::dir_size;

/// Whether this kernel has device-mapper: `/proc/misc` lists
/// `device-mapper` and `/dev/mapper/control` exists. Says nothing of
/// permissions (root is needed too).
pub fn device_mapper_available() -> bool {
    let in_misc = std::fs::read_to_string("/proc/misc").is_ok_and(|misc| {
        misc.lines()
            .any(|line| line.split_whitespace().nth(1) == Some("device-mapper"))
    });
    in_misc && std::path::Path::new("/dev/mapper/control").exists()
}
