//! The JSON bodies of E2B's control plane, with its exact field names (as in
//! the generated client of the `e2b` SDK, `e2b/api/client/models`).
//!
//! Requests accept what the SDKs send and ignore fields we do not use;
//! optional response fields are omitted when absent (the SDK treats a
//! missing `domain` as "use `E2B_DOMAIN`"; with `E2B_SANDBOX_URL` set it
//! reaches envd there either way, and `domain` only names sandbox hosts).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The envd version the control plane reports (`envdVersion`): the highest
/// version whose features the guest agent implements.
pub const ENVD_VERSION: &str = envd::ENVD_COMPAT_VERSION;

/// `clientID` of every sandbox (E2B's is an opaque cluster id).
pub const CLIENT_ID: &str = "petrel";

/// `{"code": 404, "message": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: u16,
    pub message: String,
}

/// `TemplateAliasResponse` (`GET /templates/aliases/{alias}`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateAlias {
    #[serde(rename = "templateID")]
    pub template_id: String,
    pub public: bool,
}

/// `NewSandboxV2` (`POST /v2/sandboxes`) and the legacy `NewSandbox`
/// (`POST /sandboxes`, which also has `secure`).
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NewSandbox {
    #[serde(rename = "templateID")]
    pub template_id: Option<String>,
    /// Seconds to live from now.
    pub timeout: Option<f64>,
    pub auto_pause: Option<bool>,
    /// `false`: a filesystem-only pause at expiry (memory dropped, the
    /// resume boots afresh from the disk).
    pub auto_pause_memory: Option<bool>,
    pub auto_resume: Option<AutoResume>,
    #[serde(rename = "allow_internet_access")]
    pub allow_internet_access: Option<bool>,
    pub network: Option<serde_json::Value>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub env_vars: Option<BTreeMap<String, String>>,
    pub mcp: Option<serde_json::Value>,
    pub iam: Option<serde_json::Value>,
    pub volume_mounts: Option<Vec<serde_json::Value>>,
    /// Legacy: envd access tokens are always issued (and enforced).
    pub secure: Option<bool>,
}

/// `autoResume` of a create request.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct AutoResume {
    pub enabled: bool,
}

/// `Sandbox`: the answer of create, connect, resume and fork.
#[derive(Debug, Clone, Serialize)]
pub struct Sandbox {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "clientID")]
    pub client_id: String,
    #[serde(rename = "envdVersion")]
    pub envd_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    #[serde(rename = "envdAccessToken", skip_serializing_if = "Option::is_none")]
    pub envd_access_token: Option<String>,
    /// With `allowPublicTraffic: false`: what requests to the sandbox's
    /// ports send in `e2b-traffic-access-token`.
    #[serde(rename = "trafficAccessToken", skip_serializing_if = "Option::is_none")]
    pub traffic_access_token: Option<String>,
    /// The agent's `--sandbox-domain`, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

/// `lifecycle` of a sandbox's detail.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    pub auto_resume: bool,
    /// `kill` or `pause`.
    pub on_timeout: &'static str,
}

/// `SandboxDetail` (`GET /sandboxes/{id}`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxDetail {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "clientID")]
    pub client_id: String,
    pub started_at: String,
    pub end_at: String,
    pub envd_version: String,
    pub cpu_count: u32,
    #[serde(rename = "memoryMB")]
    pub memory_mb: u32,
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u64,
    /// `running` or `paused`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    pub metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envd_access_token: Option<String>,
    /// The agent's `--sandbox-domain`, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    pub allow_internet_access: bool,
    /// The sandbox's network options, when it has any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkInfo>,
    pub lifecycle: Lifecycle,
}

/// `network` of a `SandboxDetail`: the options the sandbox has.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkInfo {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_out: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny_out: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask_request_host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_public_traffic: Option<bool>,
}

/// `ListedSandbox` (`GET /v2/sandboxes`, `GET /sandboxes`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListedSandbox {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "clientID")]
    pub client_id: String,
    pub started_at: String,
    pub end_at: String,
    pub cpu_count: u32,
    #[serde(rename = "memoryMB")]
    pub memory_mb: u32,
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u64,
    pub state: &'static str,
    pub envd_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// `SandboxMetric` (`GET /sandboxes/{id}/metrics`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxMetric {
    pub timestamp: String,
    pub timestamp_unix: i64,
    pub cpu_count: u32,
    pub cpu_used_pct: f64,
    pub mem_used: u64,
    pub mem_total: u64,
    pub mem_cache: u64,
    pub disk_used: u64,
    pub disk_total: u64,
}

/// What the guest's envd answers on `GET /metrics`.
#[derive(Debug, Clone, Deserialize)]
pub struct EnvdMetrics {
    pub ts: i64,
    pub cpu_count: u32,
    pub cpu_used_pct: f64,
    pub mem_total: u64,
    pub mem_used: u64,
    #[serde(default)]
    pub mem_cache: u64,
    pub disk_used: u64,
    pub disk_total: u64,
}

/// `SnapshotInfo`.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotInfo {
    /// Usable as `templateID` on create.
    #[serde(rename = "snapshotID")]
    pub snapshot_id: String,
    pub names: Vec<String>,
}

/// `ConnectSandboxV2` / `ConnectSandbox`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ConnectRequest {
    pub timeout: Option<f64>,
    /// `false`: boot afresh from the disk ("reboot"), memory dropped.
    pub memory: Option<bool>,
}

/// `ResumedSandbox` (legacy `POST /sandboxes/{id}/resume`).
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ResumeRequest {
    pub timeout: Option<f64>,
    pub auto_pause: Option<bool>,
    pub memory: Option<bool>,
}

/// `SandboxTimeoutRequest`.
#[derive(Debug, Deserialize)]
pub struct TimeoutRequest {
    pub timeout: f64,
}

/// `SandboxRefreshRequest`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RefreshRequest {
    pub duration: Option<f64>,
}

/// `SandboxPauseRequest`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PauseRequest {
    pub memory: Option<bool>,
    pub require_healthy_guest: Option<bool>,
}

/// `SandboxSnapshotRequest`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SnapshotRequest {
    pub name: Option<String>,
    pub memory: Option<bool>,
}

/// `SandboxForkRequest`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ForkRequest {
    pub timeout: Option<f64>,
    pub count: Option<u32>,
}

/// One element of the fork answer: a sandbox or an error.
#[derive(Debug, Clone, Serialize)]
pub struct ForkResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<Sandbox>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}
