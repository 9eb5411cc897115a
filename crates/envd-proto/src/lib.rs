//! Rust types for the envd wire protocol (E2B-compatible guest agent).
//!
//! The `.proto` sources live in `proto/envd/` at the workspace root and are
//! compiled at build time with `connectrpc-axum-build` (prost + pbjson), so
//! nothing generated is committed. Every message is a [`prost::Message`]
//! (binary codec) and implements `serde` in proto3-JSON form (camelCase out,
//! snake_case accepted in, `bytes` as base64, enums by name), which is what
//! the E2B SDKs speak.
//!
//! With the `server` feature, each package also contains the
//! connectrpc-axum service builders (`process::process_connect::ProcessServiceBuilder`,
//! `filesystem::filesystem_connect::FilesystemServiceBuilder`).
//!
//! `google.protobuf.Timestamp` maps to [`wkt::Timestamp`] (canonical,
//! `Z`-normalized JSON), convertible from/to `pbjson_types::Timestamp`.
//!
//! This crate has no logic: no transport, no client, no handlers.
//!
//! # Example
//!
//! ```
//! use envd_proto::process::{ProcessSelector, SendSignalRequest, Signal, process_selector};
//! use prost::Message as _;
//!
//! let req = SendSignalRequest {
//!     process: Some(ProcessSelector { selector: Some(process_selector::Selector::Pid(42)) }),
//!     signal: Signal::Sigkill.into(),
//! };
//! let json = serde_json::to_string(&req).unwrap();
//! assert_eq!(json, r#"{"process":{"pid":42},"signal":"SIGNAL_SIGKILL"}"#);
//! let bytes = req.encode_to_vec();
//! assert_eq!(SendSignalRequest::decode(bytes.as_slice()).unwrap(), req);
//! ```

/// `package process`: the `Process` service (start, connect, input, signals).
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    rust_2018_idioms,
    unused_qualifications
)]
pub mod process {
    include!(concat!(env!("OUT_DIR"), "/process.rs"));
}

/// `package filesystem`: the `Filesystem` service (stat, list, watch, ...).
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    rust_2018_idioms,
    unused_qualifications
)]
pub mod filesystem {
    include!(concat!(env!("OUT_DIR"), "/filesystem.rs"));
}

pub mod wkt;

/// Fully qualified service names, as used in Connect routes
/// (`POST /{service}/{Method}`).
pub mod service_names {
    /// `process.Process`.
    pub const PROCESS: &str = "process.Process";
    /// `filesystem.Filesystem`.
    pub const FILESYSTEM: &str = "filesystem.Filesystem";
}
