//! The manager's public data: requests, infos, states and errors.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::SandboxError;
use crate::network::EgressRules;

/// Lifecycle state of a managed sandbox.
///
/// ```text
/// starting -> running -> pausing -> paused -> resuming -> running
///                 \                     \
///                  +-> stopping -> stopped (record kept; files removed)
/// any failed step -> error (files kept for inspection until destroyed)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Starting,
    Running,
    Pausing,
    Paused,
    Resuming,
    Stopping,
    Stopped,
    Error,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Pausing => "pausing",
            State::Paused => "paused",
            State::Resuming => "resuming",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Error => "error",
        }
    }

    /// Every state.
    pub const ALL: [State; 8] = [
        State::Starting,
        State::Running,
        State::Pausing,
        State::Paused,
        State::Resuming,
        State::Stopping,
        State::Stopped,
        State::Error,
    ];

    /// Parses [`State::as_str`]'s names.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to create.
// Independent switches of the E2B API, each kept in records by name.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateSandbox {
    /// A template name, or a snapshot name (the sandbox then starts from
    /// the snapshot).
    pub template: String,
    pub vcpus: Option<u8>,
    pub memory_mib: Option<u32>,
    /// Time to live from now; the manager's default when `None`.
    pub timeout: Option<Duration>,
    pub env_vars: BTreeMap<String, String>,
    pub metadata: BTreeMap<String, String>,
    /// At expiry: pause instead of kill.
    pub auto_pause: bool,
    /// With `auto_pause`: a filesystem-only pause (memory dropped, the
    /// resume boots afresh from the disk).
    pub auto_pause_filesystem: bool,
    /// While paused, the next request for it through a front end (the
    /// E2B proxy) resumes it.
    pub auto_resume: bool,
    /// Outbound internet; `None`: the network's default (on in a
    /// namespace; user-mode networking is always isolated and refuses
    /// `Some(true)`: see [`crate::network::resolve_internet`]).
    pub internet: Option<bool>,
    /// The `Host` header requests proxied to the sandbox's ports carry
    /// (`${PORT}` is replaced by the port); `None`: the caller's.
    pub host_mask: Option<String>,
    /// The sandbox's own allow and deny ranges (namespace networks only).
    pub egress: EgressRules,
    /// Requests to the sandbox's ports (envd's aside) need its traffic
    /// token ([`SandboxInfo::traffic_token`], made at create).
    pub private_traffic: bool,
}

/// A managed sandbox as callers see it.
// Independent switches of the E2B API, each kept in records by name.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxInfo {
    pub id: String,
    pub template: String,
    pub state: State,
    pub vcpus: u8,
    pub memory_mib: u32,
    pub created_at: SystemTime,
    /// When the sandbox is killed (or paused, with `auto_pause`).
    pub end_at: SystemTime,
    pub auto_pause: bool,
    /// See [`CreateSandbox::auto_pause_filesystem`].
    #[serde(default)]
    pub auto_pause_filesystem: bool,
    /// See [`CreateSandbox::auto_resume`].
    #[serde(default)]
    pub auto_resume: bool,
    pub internet: bool,
    pub metadata: BTreeMap<String, String>,
    pub env_vars: BTreeMap<String, String>,
    /// Where envd answers while running.
    pub envd_addr: Option<SocketAddr>,
    pub envd_access_token: String,
    /// The last failure, in state `error`.
    pub error: Option<String>,
    /// Milliseconds of the last create/resume steps, for the UI and logs.
    pub timings_ms: BTreeMap<String, u64>,
    /// When it was paused, while paused: it is destroyed `paused_ttl`
    /// (`ManagerConfig`) after.
    #[serde(default)]
    pub paused_at: Option<SystemTime>,
    /// See [`CreateSandbox::host_mask`].
    #[serde(default)]
    pub host_mask: Option<String>,
    /// See [`CreateSandbox::egress`].
    #[serde(default)]
    pub egress: EgressRules,
    /// With [`CreateSandbox::private_traffic`]: the token requests to the
    /// sandbox's ports must carry (E2B's `trafficAccessToken`).
    #[serde(default)]
    pub traffic_token: Option<String>,
    /// The time to live it was created with: an auto-resume starts it
    /// afresh (E2B's rule). `None` in records written before it was kept.
    #[serde(default)]
    pub create_timeout: Option<Duration>,
}

/// A saved snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub name: String,
    /// The sandbox it was taken from.
    pub sandbox_id: String,
    /// The template the sandbox ran.
    pub template: String,
    pub created_at: SystemTime,
    /// Disk usage of the snapshot's files (allocated blocks).
    pub size_bytes: u64,
    /// What its disk stands on (see [`StandsOn`]); `None` only in rows
    /// written before lineage was recorded, until the manager next reads
    /// them (it then records it from the disk's backing chain).
    #[serde(default)]
    pub stands_on: Option<StandsOn>,
}

/// What a sandbox's or snapshot's root disk stands on: its parent in the
/// lineage base image <- warm snapshot <- sandbox <- snapshot <- sandbox
/// <- child snapshot. Nothing is deleted while anything stands on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StandsOn {
    /// Nothing: a self-contained disk (a snapshot of a sandbox whose disk
    /// was raw: sparse copy or dm-snapshot).
    Nothing,
    /// A template's base image file (`templates/<name>/rootfs-*`).
    Base { file: std::path::PathBuf },
    /// A template's warm snapshot (`templates/<name>/warm-*/`), itself
    /// standing on the base image `base`.
    Warm {
        dir: std::path::PathBuf,
        base: std::path::PathBuf,
    },
    /// A named snapshot (whose disk this disk's backs onto).
    Snapshot { name: String },
}

/// A template sandboxes are created from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateInfo {
    pub name: String,
    pub kernel: std::path::PathBuf,
    pub rootfs: std::path::PathBuf,
    pub created_at: SystemTime,
    pub size_bytes: u64,
    /// Where it came from (e.g. `images/build.sh`).
    pub source: String,
    /// A snapshot of a booted, envd-ready guest of this template: creates
    /// restore it instead of cold-booting (see `Manager::warm_template`).
    #[serde(default)]
    pub warm_snapshot: Option<std::path::PathBuf>,
}

/// Filters of [`crate::Manager::list`]; empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub states: Vec<State>,
    /// Every pair must be in the sandbox's metadata.
    pub metadata: BTreeMap<String, String>,
    pub template: Option<String>,
}

/// Why a manager operation failed; callers map it to HTTP statuses.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("invalid name: {0}")]
    InvalidName(#[from] safename::SafeNameError),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("sandbox {0} not found")]
    SandboxNotFound(String),
    #[error("template or snapshot {0} not found")]
    TemplateNotFound(String),
    #[error("snapshot {0} not found")]
    SnapshotNotFound(String),
    #[error("sandbox {id} is {state}: cannot {operation}")]
    InvalidState {
        id: String,
        state: State,
        operation: &'static str,
    },
    #[error("{0}")]
    Conflict(String),
    /// No VM may start now: `limit` are running (or starting, pausing,
    /// resuming, warming up).
    #[error("at capacity: {running} of {limit} sandboxes running; try again later")]
    Capacity { running: usize, limit: usize },
    /// A configured quota (paused sandboxes, snapshots, snapshot bytes)
    /// would be exceeded.
    #[error("quota exceeded: {used} of {limit} {what} ({hint})")]
    Quota {
        what: &'static str,
        used: u64,
        limit: u64,
        hint: &'static str,
    },
    #[error(transparent)]
    Sandbox(Box<SandboxError>),
    #[error("sandbox store {path}: {message}")]
    Store {
        path: std::path::PathBuf,
        message: String,
    },
}

impl From<SandboxError> for ManagerError {
    fn from(err: SandboxError) -> Self {
        ManagerError::Sandbox(Box::new(err))
    }
}
