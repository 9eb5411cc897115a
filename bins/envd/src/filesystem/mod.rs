//! `filesystem.Filesystem`: stat, list, create, move, remove and watch.

pub mod entry;
pub mod ops;
pub mod service;
pub mod watch;

pub use service::router;
