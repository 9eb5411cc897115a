//! The crate's error type: every variant names the resource it failed on (dm
//! device, loop device, file).

use std::path::PathBuf;

/// A failed dmsnap operation.
#[derive(Debug, thiserror::Error)]
pub enum DmSnapError {
    /// `/dev/mapper/control` could not be opened (no device-mapper in this
    /// kernel, or not root).
    #[error("device-mapper control /dev/mapper/control: {source}")]
    Control {
        #[source]
        source: devicemapper::DmError,
    },
    /// The sandbox id cannot name a dm device.
    #[error("sandbox id {id:?} cannot name a dm device: {source}")]
    InvalidSandboxId {
        id: String,
        #[source]
        source: safename::SafeNameError,
    },
    /// A device-mapper ioctl on one device failed.
    #[error("{op} dm device {name}: {source}")]
    Dm {
        op: &'static str,
        name: String,
        #[source]
        source: devicemapper::DmError,
    },
    /// A dm device with this name exists already.
    #[error("dm device {name} already exists")]
    DeviceExists { name: String },
    /// The dm device has no node under `/dev` (no devtmpfs?).
    #[error("dm device {name} ({major}:{minor}) has no device node: {reason}")]
    DeviceNode {
        name: String,
        major: u32,
        minor: u32,
        reason: String,
    },
    /// `/dev/loop-control` could not be used.
    #[error("loop control /dev/loop-control: {source}")]
    LoopControl {
        #[source]
        source: std::io::Error,
    },
    /// Attaching a file to a loop device failed.
    #[error("attaching {file} to loop device {device}: {source}")]
    LoopAttach {
        device: PathBuf,
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No free loop device could be claimed (others kept taking them).
    #[error("attaching {file}: no free loop device after {attempts} attempts")]
    NoFreeLoop { file: PathBuf, attempts: u32 },
    /// Detaching a loop device failed.
    #[error("detaching loop device {device} (backing {file}): {source}")]
    LoopDetach {
        device: PathBuf,
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The base image cannot back a snapshot.
    #[error("base image {path}: {reason}")]
    BadBase { path: PathBuf, reason: String },
    /// `create` found a CoW file already there (use `restore`).
    #[error("CoW file {path} already exists (restore it instead of creating it)")]
    CowExists { path: PathBuf },
    /// `restore` found a file that is not a usable dm-snapshot exception store.
    #[error("CoW file {path} cannot be restored: {reason}")]
    BadCow { path: PathBuf, reason: String },
    /// `adopt` found no device of that name, or one that is not the
    /// snapshot of the given base and CoW file.
    #[error("dm device {name} cannot be adopted: {reason}")]
    NotAdoptable { name: String, reason: String },
    /// A flatten destination exists already.
    #[error("flatten destination {path} already exists")]
    DestinationExists { path: PathBuf },
    /// A multi-step teardown (remove, cleanup) in which some steps failed;
    /// every step was tried.
    #[error("{what} left {} error(s): {}", .errors.len(), join(.errors))]
    Incomplete {
        what: String,
        errors: Vec<DmSnapError>,
    },
}

fn join(errors: &[DmSnapError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl DmSnapError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            what,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn dm(op: &'static str, name: &str, source: devicemapper::DmError) -> Self {
        Self::Dm {
            op,
            name: name.to_string(),
            source,
        }
    }
}

/// Results of this crate.
pub type Result<T, E = DmSnapError> = std::result::Result<T, E>;
