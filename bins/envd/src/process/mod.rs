//! `process.Process`: start, list, re-attach to, feed and signal processes.

pub mod manager;
pub mod pty;
pub mod run;
pub mod service;
pub mod spawn;

pub use service::router;
