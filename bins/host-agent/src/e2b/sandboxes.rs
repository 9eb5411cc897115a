//! Sandbox endpoints of E2B's control plane, over [`sandbox_core::Manager`].
//!
//! | request | does |
//! |---|---|
//! | `POST /v2/sandboxes`, `POST /sandboxes` | create (201 `Sandbox`) |
//! | `GET /v2/sandboxes` | list running and paused, filters, `x-next-token` pages |
//! | `GET /sandboxes` | legacy list: running ones, `metadata` filter, one page |
//! | `GET /sandboxes/{id}` | `SandboxDetail` |
//! | `DELETE /sandboxes/{id}` | kill (204; 404 unknown) |
//! | `POST /v2/sandboxes/{id}/connect`, `POST /sandboxes/{id}/connect` | extend a running one (200) or resume a paused one (201) |
//! | `POST /sandboxes/{id}/resume` | legacy resume (201; 409 when running) |
//! | `POST /sandboxes/{id}/timeout` | TTL from now, shorter or longer (204) |
//! | `POST /sandboxes/{id}/refreshes` | extend the TTL, never shorten (204) |
//! | `POST /sandboxes/{id}/pause` | pause, memory and disk (204; 409 when paused) |
//! | `GET /sandboxes/{id}/metrics` | one current sample from the guest's envd |
//! | `POST /sandboxes/{id}/fork` | 201 `[{sandbox} or {error}]` |
//! | `PUT /sandboxes/{id}/network` | replace the egress rules (204; see [`super::network`]) |
//!
//! E2B shows two states: `running` (ours: running, resuming) and `paused`
//! (paused, pausing). Sandboxes still starting, stopping or failed are not
//! listed and are 404 to `GET`.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use http_body_util::BodyExt;
use sandbox_core::{CreateSandbox, ListFilter, Manager, ManagerError, SandboxInfo, State as Phase};

use super::error::ApiError;
use super::models::{
    self, CLIENT_ID, ConnectRequest, ENVD_VERSION, EnvdMetrics, ErrorBody, ForkRequest, ForkResult,
    Lifecycle, ListedSandbox, NewSandbox, PauseRequest, RefreshRequest, ResumeRequest,
    SandboxDetail, SandboxMetric, TimeoutRequest,
};
use super::query::{Cursor, decode_metadata_filter, paginate};
use super::time::{format_rfc3339, parse_rfc3339};
use super::{Control, parse_body, parse_required};
use crate::policy::{Wake, settled, ttl, wake};

/// Why `memory: false` on a snapshot (a filesystem-only snapshot, whose
/// sandboxes would cold-boot) is refused: snapshots here keep memory.
pub(super) const FILESYSTEM_ONLY_SNAPSHOT: &str = "memory: false (a filesystem-only snapshot) is not supported: snapshots keep memory and disk; omit the field (pauses may drop memory)";

/// Page size when the request gives none, and the most a page may hold.
const MAX_PAGE: usize = 100;

pub(super) fn routes() -> Router<Control> {
    Router::new()
        .route("/v2/sandboxes", post(create).get(list_v2))
        .route("/sandboxes", post(create).get(list_v1))
        .route("/sandboxes/{id}", get(detail).delete(kill))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/resume", post(resume))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/refreshes", post(refresh))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/metrics", get(metrics))
        .route("/sandboxes/{id}/fork", post(fork))
        .route("/sandboxes/{id}/network", put(super::network::update))
}

/// E2B's name of a manager state; `None` for states E2B does not show.
pub fn e2b_state(state: Phase) -> Option<&'static str> {
    match state {
        Phase::Running | Phase::Resuming => Some("running"),
        Phase::Paused | Phase::Pausing => Some("paused"),
        Phase::Starting | Phase::Stopping | Phase::Stopped | Phase::Error => None,
    }
}

/// The `Sandbox` answer for `info`; `domain` is the agent's
/// `--sandbox-domain`.
pub fn sandbox_of(info: &SandboxInfo, domain: Option<&str>) -> models::Sandbox {
    models::Sandbox {
        template_id: info.template.clone(),
        sandbox_id: info.id.clone(),
        client_id: CLIENT_ID.to_string(),
        envd_version: ENVD_VERSION.to_string(),
        alias: Some(info.template.clone()),
        envd_access_token: Some(info.envd_access_token.clone()).filter(|t| !t.is_empty()),
        traffic_access_token: info.traffic_token.clone(),
        domain: domain.map(str::to_owned),
    }
}

fn lifecycle_of(info: &SandboxInfo) -> Lifecycle {
    Lifecycle {
        auto_resume: info.auto_resume,
        on_timeout: if info.auto_pause { "pause" } else { "kill" },
    }
}

/// Disk size in MiB of every template and snapshot, by name.
fn disk_sizes(manager: &Manager) -> BTreeMap<String, u64> {
    const MIB: u64 = 1024 * 1024;
    let mut sizes: BTreeMap<String, u64> = manager
        .templates()
        .unwrap_or_default()
        .into_iter()
        .map(|t| (t.name, t.size_bytes / MIB))
        .collect();
    for snapshot in manager.snapshots().unwrap_or_default() {
        let size = sizes.get(&snapshot.template).copied().unwrap_or(0);
        sizes.insert(snapshot.name, size);
    }
    sizes
}

fn detail_of(
    info: &SandboxInfo,
    state: &'static str,
    sizes: &BTreeMap<String, u64>,
    domain: Option<&str>,
) -> SandboxDetail {
    SandboxDetail {
        template_id: info.template.clone(),
        sandbox_id: info.id.clone(),
        client_id: CLIENT_ID.to_string(),
        started_at: format_rfc3339(info.created_at),
        end_at: format_rfc3339(info.end_at),
        envd_version: ENVD_VERSION.to_string(),
        cpu_count: u32::from(info.vcpus),
        memory_mb: info.memory_mib,
        disk_size_mb: sizes.get(&info.template).copied().unwrap_or(0),
        state,
        alias: Some(info.template.clone()),
        metadata: info.metadata.clone(),
        envd_access_token: Some(info.envd_access_token.clone()).filter(|t| !t.is_empty()),
        domain: domain.map(str::to_owned),
        allow_internet_access: info.internet,
        network: super::network::info_of(info),
        lifecycle: lifecycle_of(info),
    }
}

fn listed_of(
    info: &SandboxInfo,
    state: &'static str,
    sizes: &BTreeMap<String, u64>,
) -> ListedSandbox {
    ListedSandbox {
        template_id: info.template.clone(),
        sandbox_id: info.id.clone(),
        client_id: CLIENT_ID.to_string(),
        started_at: format_rfc3339(info.created_at),
        end_at: format_rfc3339(info.end_at),
        cpu_count: u32::from(info.vcpus),
        memory_mb: info.memory_mib,
        disk_size_mb: sizes.get(&info.template).copied().unwrap_or(0),
        state,
        envd_version: ENVD_VERSION.to_string(),
        alias: Some(info.template.clone()),
        metadata: info.metadata.clone(),
    }
}

/// The sandbox and its E2B state, or 404 when E2B would not show it.
fn visible(manager: &Manager, id: &str) -> Result<(SandboxInfo, &'static str), ApiError> {
    let info = manager
        .get(id)
        .map_err(|_| ApiError::sandbox_not_found(id))?;
    match e2b_state(info.state) {
        Some(state) => Ok((info, state)),
        None => Err(ApiError::sandbox_not_found(id)),
    }
}

fn created(info: &SandboxInfo, domain: Option<&str>) -> Response {
    (StatusCode::CREATED, Json(sandbox_of(info, domain))).into_response()
}

/// The agent's `--sandbox-domain`, returned as `domain`.
fn domain(control: &Control) -> Option<&str> {
    control.app.config.sandbox_domain.as_deref()
}

/// Refuses what a create request asks for that we cannot honour, rather
/// than silently ignoring it.
fn check_supported(request: &NewSandbox) -> Result<(), ApiError> {
    if request.auto_pause_memory == Some(false) {
        if request.auto_pause != Some(true) {
            return Err(ApiError::bad_request(
                "autoPauseMemory: false (a filesystem-only auto-pause) needs autoPause: true",
            ));
        }
        if request.auto_resume.as_ref().is_some_and(|a| a.enabled) {
            return Err(ApiError::bad_request(
                "a filesystem-only auto-pause (autoPauseMemory: false) cannot be combined with \
                 autoResume: its resume reboots the guest, which a request should not do unseen",
            ));
        }
    }
    if request
        .volume_mounts
        .as_ref()
        .is_some_and(|v| !v.is_empty())
    {
        return Err(ApiError::bad_request("volumeMounts are not supported"));
    }
    if request.mcp.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(ApiError::bad_request("mcp is not supported"));
    }
    if request.iam.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(ApiError::bad_request("iam is not supported"));
    }
    if let Some(network) = &request.network {
        super::network::check_supported(network)?;
    }
    Ok(())
}

/// `POST /v2/sandboxes` and the legacy `POST /sandboxes`.
async fn create(State(control): State<Control>, body: Bytes) -> Result<Response, ApiError> {
    let request: NewSandbox = parse_required(&body)?;
    check_supported(&request)?;
    let network = request.network.as_ref();
    let host_mask = super::network::host_mask(network)?;
    let egress = super::network::egress_rules(network)?;
    let private_traffic = super::network::private_traffic(network)?;
    let template = request
        .template_id
        .clone()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::bad_request("templateID is required"))?;
    let timeout = request.timeout.map(|t| ttl("timeout", t)).transpose()?;
    let info = control
        .app
        .manager
        .create(CreateSandbox {
            template,
            timeout,
            env_vars: request.env_vars.unwrap_or_default(),
            metadata: request.metadata.unwrap_or_default(),
            auto_pause: request.auto_pause.unwrap_or(false),
            auto_pause_filesystem: request.auto_pause_memory == Some(false),
            auto_resume: request.auto_resume.as_ref().is_some_and(|a| a.enabled),
            internet: request.allow_internet_access,
            host_mask,
            egress,
            private_traffic,
            ..CreateSandbox::default()
        })
        .await?;
    tracing::info!(sandbox = %info.id, template = %info.template, "e2b: sandbox created");
    Ok(created(&info, domain(&control)))
}

/// The parsed query of a list request.
#[derive(Debug)]
struct ListQuery {
    filter: ListFilter,
    started_after: Option<SystemTime>,
    desc: bool,
    limit: usize,
    after: Option<Cursor>,
}

impl ListQuery {
    fn parse(pairs: &[(String, String)], default_states: &[Phase]) -> Result<Self, ApiError> {
        let mut query = ListQuery {
            filter: ListFilter::default(),
            started_after: None,
            desc: true,
            limit: MAX_PAGE,
            after: None,
        };
        for (key, value) in pairs {
            match key.as_str() {
                "metadata" => query.filter.metadata.extend(decode_metadata_filter(value)),
                "state" => {
                    for name in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                        match name {
                            "running" => query
                                .filter
                                .states
                                .extend([Phase::Running, Phase::Resuming]),
                            "paused" => query.filter.states.extend([Phase::Paused, Phase::Pausing]),
                            other => {
                                return Err(ApiError::bad_request(format!(
                                    "state must be running or paused, got {other:?}"
                                )));
                            }
                        }
                    }
                }
                "template" if !value.is_empty() => query.filter.template = Some(value.clone()),
                "startedAfter" => {
                    query.started_after = Some(parse_rfc3339(value).ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "startedAfter must be an RFC 3339 time, got {value:?}"
                        ))
                    })?);
                }
                "order" => {
                    query.desc = match value.as_str() {
                        "desc" => true,
                        "asc" => false,
                        other => {
                            return Err(ApiError::bad_request(format!(
                                "order must be asc or desc, got {other:?}"
                            )));
                        }
                    }
                }
                "limit" => {
                    query.limit = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE).contains(n))
                        .ok_or_else(|| {
                            ApiError::bad_request(format!(
                                "limit must be 1..={MAX_PAGE}, got {value:?}"
                            ))
                        })?;
                }
                "nextToken" if !value.is_empty() => {
                    query.after = Some(
                        Cursor::parse(value)
                            .ok_or_else(|| ApiError::bad_request("invalid nextToken"))?,
                    );
                }
                _ => {}
            }
        }
        if query.filter.states.is_empty() {
            query.filter.states = default_states.to_vec();
        }
        Ok(query)
    }
}

/// `GET /v2/sandboxes`: running and paused ones unless `state` says.
async fn list_v2(
    State(control): State<Control>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(
        &pairs,
        &[
            Phase::Running,
            Phase::Resuming,
            Phase::Paused,
            Phase::Pausing,
        ],
    )?;
    Ok(list(&control.app.manager, &query))
}

/// `GET /sandboxes` (legacy): running ones, `metadata` filter; the legacy
/// API has no pagination, so every match is on the one page.
async fn list_v1(
    State(control): State<Control>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let pairs: Vec<(String, String)> = pairs.into_iter().filter(|(k, _)| k == "metadata").collect();
    let mut query = ListQuery::parse(&pairs, &[Phase::Running, Phase::Resuming])?;
    query.limit = usize::MAX;
    Ok(list(&control.app.manager, &query))
}

fn list(manager: &Manager, query: &ListQuery) -> Response {
    let mut infos: Vec<(SandboxInfo, &'static str)> = manager
        .list(&query.filter)
        .into_iter()
        .filter(|info| {
            query
                .started_after
                .is_none_or(|after| info.created_at >= after)
        })
        .filter_map(|info| e2b_state(info.state).map(|state| (info, state)))
        .collect();
    // The manager lists oldest first.
    if query.desc {
        infos.reverse();
    }
    let (page, next) = paginate(
        infos,
        |(info, _)| Cursor::new(info.created_at, &info.id),
        query.desc,
        query.after.as_ref(),
        query.limit,
    );
    let sizes = disk_sizes(manager);
    let body: Vec<ListedSandbox> = page
        .iter()
        .map(|(info, state)| listed_of(info, state, &sizes))
        .collect();
    let mut response = Json(body).into_response();
    if let Some(token) = next.and_then(|t| HeaderValue::from_str(&t).ok()) {
        response.headers_mut().insert("x-next-token", token);
    }
    response
}

/// `GET /sandboxes/{id}`.
async fn detail(
    State(control): State<Control>,
    Path(id): Path<String>,
) -> Result<Json<SandboxDetail>, ApiError> {
    let manager = &control.app.manager;
    let (info, state) = visible(manager, &id)?;
    Ok(Json(detail_of(
        &info,
        state,
        &disk_sizes(manager),
        domain(&control),
    )))
}

/// `DELETE /sandboxes/{id}`: 204, or 404 when unknown.
async fn kill(
    State(control): State<Control>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    match control.app.manager.destroy(&id).await {
        Ok(()) => {
            tracing::info!(sandbox = %id, "e2b: sandbox killed");
            Ok(StatusCode::NO_CONTENT)
        }
        Err(ManagerError::SandboxNotFound(_)) => Err(ApiError::sandbox_not_found(&id)),
        Err(err) => Err(err.into()),
    }
}

/// `POST /v2/sandboxes/{id}/connect` (and the v1 path): a running sandbox
/// gets its TTL extended to at least `timeout` from now (200); a paused one
/// is resumed with that TTL (201).
async fn connect(
    State(control): State<Control>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: ConnectRequest = parse_body(&body)?;
    let reboot = request.memory == Some(false);
    let manager = &control.app.manager;
    let timeout = match request.timeout {
        Some(t) => ttl("timeout", t)?,
        None => manager.config().default_timeout,
    };
    match wake(manager, &id, Some(timeout), reboot).await? {
        Wake::Running(_) => {
            let info = manager.extend_timeout(&id, timeout)?;
            Ok((StatusCode::OK, Json(sandbox_of(&info, domain(&control)))).into_response())
        }
        Wake::Resumed(info) => {
            tracing::info!(sandbox = %id, "e2b: sandbox resumed by connect");
            Ok(created(&info, domain(&control)))
        }
        Wake::NotResumable => Err(ApiError::sandbox_not_found(&id)),
        Wake::Contended => Err(ApiError::conflict(format!(
            "sandbox {id} kept changing state; try again"
        ))),
    }
}

/// `POST /sandboxes/{id}/resume` (legacy): 201, or 409 when not paused.
async fn resume(
    State(control): State<Control>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: ResumeRequest = parse_body(&body)?;
    let reboot = request.memory == Some(false);
    if request.auto_pause.is_some() {
        tracing::debug!(sandbox = %id, "e2b: autoPause on resume ignored; it is fixed at create");
    }
    let manager = &control.app.manager;
    let timeout = match request.timeout {
        Some(t) => ttl("timeout", t)?,
        None => manager.config().default_timeout,
    };
    let info = settled(manager, &id).await?;
    match info.state {
        Phase::Paused => Ok(created(
            &manager.resume_as(&id, Some(timeout), reboot).await?,
            domain(&control),
        )),
        Phase::Running => Err(ApiError::conflict(format!(
            "sandbox {id} is already running"
        ))),
        _ => Err(ApiError::sandbox_not_found(&id)),
    }
}

/// `POST /sandboxes/{id}/timeout`: the sandbox ends `timeout` seconds from
/// now (shorter or longer than before).
async fn set_timeout(
    State(control): State<Control>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let request: TimeoutRequest = parse_required(&body)?;
    let timeout = ttl("timeout", request.timeout)?;
    let manager = &control.app.manager;
    visible(manager, &id)?;
    manager.set_timeout(&id, timeout)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /sandboxes/{id}/refreshes`: keeps the sandbox alive at least
/// `duration` seconds more (never shortens).
async fn refresh(
    State(control): State<Control>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let request: RefreshRequest = parse_body(&body)?;
    let manager = &control.app.manager;
    let duration = match request.duration {
        Some(d) => ttl("duration", d)?,
        None => manager.config().default_timeout,
    };
    visible(manager, &id)?;
    manager.extend_timeout(&id, duration)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /sandboxes/{id}/pause`: 204; 409 when already paused. A pause
/// keeps memory and disk; `memory: false` keeps the disk only (the resume
/// boots afresh).
async fn pause(
    State(control): State<Control>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let request: PauseRequest = parse_body(&body)?;
    let filesystem_only = request.memory == Some(false);
    let manager = &control.app.manager;
    let info = settled(manager, &id).await?;
    match info.state {
        Phase::Running => {
            manager.pause_as(&id, filesystem_only).await?;
            tracing::info!(sandbox = %id, filesystem_only, "e2b: sandbox paused");
            Ok(StatusCode::NO_CONTENT)
        }
        Phase::Paused => Err(ApiError::conflict(format!(
            "sandbox {id} is already paused"
        ))),
        _ => Err(ApiError::sandbox_not_found(&id)),
    }
}

/// `start`/`end` of a metrics request (unix seconds).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct MetricsQuery {
    start: Option<i64>,
    end: Option<i64>,
}

/// `GET /sandboxes/{id}/metrics`: we keep no history, so this is one sample
/// taken now from the guest's envd (none while paused, or when now is
/// outside `start..=end`).
async fn metrics(
    State(control): State<Control>,
    Path(id): Path<String>,
    Query(range): Query<MetricsQuery>,
) -> Result<Json<Vec<SandboxMetric>>, ApiError> {
    let (info, _) = visible(&control.app.manager, &id)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let in_range = range.start.is_none_or(|s| s <= now) && range.end.is_none_or(|e| now <= e);
    let (Some(addr), Phase::Running, true) = (info.envd_addr, info.state, in_range) else {
        return Ok(Json(Vec::new()));
    };
    match fetch_envd_metrics(&control, addr, &info.envd_access_token).await {
        Ok(m) => {
            let sampled = UNIX_EPOCH + Duration::from_secs(m.ts.max(0).unsigned_abs());
            Ok(Json(vec![SandboxMetric {
                timestamp: format_rfc3339(sampled),
                timestamp_unix: m.ts,
                cpu_count: m.cpu_count,
                cpu_used_pct: m.cpu_used_pct,
                mem_used: m.mem_used,
                mem_total: m.mem_total,
                mem_cache: m.mem_cache,
                disk_used: m.disk_used,
                disk_total: m.disk_total,
            }]))
        }
        Err(message) => {
            tracing::warn!(sandbox = %id, %message, "e2b: no metrics from envd");
            Ok(Json(Vec::new()))
        }
    }
}

/// The largest envd `/metrics` reply read (it is a few hundred bytes).
const ENVD_METRICS_LIMIT: usize = 64 * 1024;

async fn fetch_envd_metrics(
    control: &Control,
    addr: std::net::SocketAddr,
    token: &str,
) -> Result<EnvdMetrics, String> {
    let mut request = http::Request::get(format!("http://{addr}/metrics"));
    if !token.is_empty() {
        request = request.header("X-Access-Token", token);
    }
    let request = request.body(Body::empty()).map_err(|e| e.to_string())?;
    let fetch = async {
        let response = control
            .http
            .request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        // The guest writes this reply: at most 64 KiB of it is read.
        let body = http_body_util::Limited::new(response.into_body(), ENVD_METRICS_LIMIT)
            .collect()
            .await
            .map_err(|e| format!("reading the reply (at most {ENVD_METRICS_LIMIT} bytes): {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("envd answered {status}"));
        }
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// `POST /sandboxes/{id}/fork` `{"timeout"?, "count"?: 1..20}`: new
/// sandboxes continuing this one (a `fork-<hex>` snapshot, then one start
/// from it per fork); 201 with one `{sandbox}` or `{error}` per fork.
async fn fork(
    State(control): State<Control>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: ForkRequest = parse_body(&body)?;
    let manager = &control.app.manager;
    visible(manager, &id)?;
    let count = request.count.unwrap_or(1);
    if !(1..=20).contains(&count) {
        return Err(ApiError::bad_request(format!(
            "count must be 1..20, got {count}"
        )));
    }
    let timeout = match request.timeout {
        Some(t) => Some(ttl("timeout", t)?),
        None => None,
    };
    let forks = manager.fork(&id, count as usize, timeout).await?;
    let results: Vec<ForkResult> = forks
        .into_iter()
        .map(|fork| match fork {
            Ok(info) => ForkResult {
                sandbox: Some(sandbox_of(&info, domain(&control))),
                error: None,
            },
            Err(err) => {
                let api = ApiError::from(err);
                ForkResult {
                    sandbox: None,
                    error: Some(ErrorBody {
                        code: api.status.as_u16(),
                        message: api.message,
                    }),
                }
            }
        })
        .collect();
    Ok((StatusCode::CREATED, Json(results)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    #[test]
    fn parses_list_queries() {
        let q = ListQuery::parse(
            &pairs(&[
                ("metadata", "k=v%2520w&a=b"),
                ("state", "paused"),
                ("limit", "2"),
                ("order", "asc"),
                ("template", "base"),
                ("startedAfter", "2025-01-02T03:04:05Z"),
            ]),
            &[Phase::Running],
        )
        .unwrap();
        assert_eq!(q.filter.states, vec![Phase::Paused, Phase::Pausing]);
        assert_eq!(q.filter.metadata.get("k").map(String::as_str), Some("v w"));
        assert_eq!(q.filter.metadata.get("a").map(String::as_str), Some("b"));
        assert_eq!(q.filter.template.as_deref(), Some("base"));
        assert_eq!((q.limit, q.desc), (2, false));
        assert!(q.started_after.is_some());

        let q = ListQuery::parse(&pairs(&[("state", "running,paused")]), &[]).unwrap();
        assert_eq!(q.filter.states.len(), 4);
        let q = ListQuery::parse(&[], &[Phase::Running]).unwrap();
        assert_eq!(
            (q.filter.states, q.limit, q.desc),
            (vec![Phase::Running], MAX_PAGE, true)
        );

        for bad in [
            ("state", "stopped"),
            ("limit", "0"),
            ("limit", "101"),
            ("order", "up"),
            ("nextToken", "zz"),
            ("startedAfter", "yesterday"),
        ] {
            assert!(ListQuery::parse(&pairs(&[bad]), &[]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        let parse = |json: &str| -> NewSandbox { serde_json::from_str(json).unwrap() };
        assert!(check_supported(&parse(r#"{"templateID":"base"}"#)).is_ok());
        assert!(
            check_supported(&parse(
                r#"{"templateID":"base","network":{"allowPublicTraffic":true,"allowOut":[]}}"#
            ))
            .is_ok()
        );
        assert!(
            check_supported(&parse(
                r#"{"templateID":"base","autoResume":{"enabled":false}}"#
            ))
            .is_ok()
        );
        assert!(
            check_supported(&parse(
                r#"{"templateID":"base","autoPause":true,"autoPauseMemory":false}"#
            ))
            .is_ok()
        );
        for json in [
            r#"{"templateID":"base","volumeMounts":[{"name":"v","path":"/v"}]}"#,
            r#"{"templateID":"base","mcp":{"x":{}}}"#,
            r#"{"templateID":"base","autoPauseMemory":false}"#,
            r#"{"templateID":"base","autoPause":true,"autoPauseMemory":false,"autoResume":{"enabled":true}}"#,
            r#"{"templateID":"base","network":{"dnsServers":["1.1.1.1"]}}"#,
            r#"{"templateID":"base","network":{"egressProxy":{"address":"x:1"}}}"#,
            r#"{"templateID":"base","network":{"httpsPorts":[8443]}}"#,
        ] {
            assert!(check_supported(&parse(json)).is_err(), "{json}");
        }
    }

    #[test]
    fn maps_states() {
        assert_eq!(e2b_state(Phase::Running), Some("running"));
        assert_eq!(e2b_state(Phase::Resuming), Some("running"));
        assert_eq!(e2b_state(Phase::Paused), Some("paused"));
        assert_eq!(e2b_state(Phase::Pausing), Some("paused"));
        assert_eq!(e2b_state(Phase::Starting), None);
        assert_eq!(e2b_state(Phase::Error), None);
    }
}
