//! `/v1/sandboxes`: create, list (filters), get, delete, pause, resume,
//! timeout, egress rules.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use safename::SafeName;
use sandbox_core::network::EgressRules;
use sandbox_core::{CreateSandbox, ListFilter, SandboxInfo, State as SandboxState};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::extract::{ApiPath, JsonBody};
use super::{ApiState, rfc3339};

/// `POST /v1/sandboxes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// A template or a snapshot name.
    template: String,
    vcpus: Option<u8>,
    memory_mb: Option<u32>,
    timeout_s: Option<u64>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    /// Outbound internet; unset: the network mode's default (see
    /// `sandbox_core::network::resolve_internet`).
    internet: Option<bool>,
    /// At expiry: pause instead of kill.
    #[serde(default)]
    auto_pause: bool,
    /// IPv4 CIDRs or addresses the sandbox may reach even where `deny_out`
    /// covers them or internet is off.
    #[serde(default)]
    allow_out: Vec<String>,
    /// IPv4 CIDRs or addresses the sandbox may not reach (`0.0.0.0/0`: all
    /// but `allow_out`).
    #[serde(default)]
    deny_out: Vec<String>,
}

/// `PUT /v1/sandboxes/{id}/network`: the sandbox's new egress rules (a
/// field left out is cleared).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkBody {
    #[serde(default)]
    allow_out: Vec<String>,
    #[serde(default)]
    deny_out: Vec<String>,
}

/// The egress rules of a request's `allow_out` and `deny_out`.
fn egress(allow_out: &[String], deny_out: &[String]) -> Result<EgressRules, ApiError> {
    Ok(crate::policy::egress_rules(
        ("allow_out", allow_out),
        ("deny_out", deny_out),
    )?)
}

/// A sandbox as the API shows it: no access token, no env var values.
#[derive(Debug, Serialize)]
pub struct SandboxView {
    id: String,
    template: String,
    state: SandboxState,
    vcpus: u8,
    memory_mb: u32,
    /// RFC 3339, UTC, milliseconds.
    created_at: String,
    /// RFC 3339: when the sandbox is killed (or paused, with `auto_pause`).
    end_at: String,
    auto_pause: bool,
    internet: bool,
    /// The sandbox's own egress rules (CIDRs).
    allow_out: Vec<String>,
    deny_out: Vec<String>,
    metadata: BTreeMap<String, String>,
    /// `http://ADDR` of envd while running (it needs the access token,
    /// which the API does not give out).
    envd_url: Option<String>,
    /// The last failure, if any.
    error: Option<String>,
    timings_ms: BTreeMap<String, u64>,
}

impl From<SandboxInfo> for SandboxView {
    fn from(info: SandboxInfo) -> Self {
        Self {
            id: info.id,
            template: info.template,
            state: info.state,
            vcpus: info.vcpus,
            memory_mb: info.memory_mib,
            created_at: rfc3339(info.created_at),
            end_at: rfc3339(info.end_at),
            auto_pause: info.auto_pause,
            internet: info.internet,
            allow_out: info.egress.allow_texts(),
            deny_out: info.egress.deny.iter().map(ToString::to_string).collect(),
            metadata: info.metadata,
            envd_url: info.envd_addr.map(|addr| format!("http://{addr}")),
            error: info.error,
            timings_ms: info.timings_ms,
        }
    }
}

/// `{timeout_s}` of `POST .../timeout` and `POST .../resume`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutBody {
    timeout_s: Option<u64>,
}

/// A TTL in seconds, as [`crate::policy::ttl`] allows it.
pub fn timeout(seconds: u64) -> Result<Duration, ApiError> {
    Ok(crate::policy::ttl("timeout_s", seconds as f64)?)
}

pub async fn create(
    State(state): State<ApiState>,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<Response, ApiError> {
    SafeName::new(&body.template)?;
    let egress = egress(&body.allow_out, &body.deny_out)?;
    let request = CreateSandbox {
        template: body.template,
        vcpus: body.vcpus,
        memory_mib: body.memory_mb,
        timeout: body.timeout_s.map(timeout).transpose()?,
        env_vars: body.env,
        metadata: body.metadata,
        auto_pause: body.auto_pause,
        auto_pause_filesystem: false,
        auto_resume: false,
        internet: body.internet,
        host_mask: None,
        egress,
        private_traffic: false,
    };
    let info = state.app.manager.create(request).await?;
    tracing::info!(sandbox = %info.id, template = %info.template, "sandbox created over the API");
    Ok((StatusCode::CREATED, Json(SandboxView::from(info))).into_response())
}

pub async fn list(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<SandboxView>>, ApiError> {
    let filter = parse_filter(query.as_deref().unwrap_or(""))?;
    let sandboxes = state.app.manager.list(&filter);
    Ok(Json(sandboxes.into_iter().map(SandboxView::from).collect()))
}

/// `state=running,paused` (comma-separated and/or repeated),
/// `metadata=k=v` (repeated; each value is itself form-encoded, so
/// `metadata=a%3D1%26b%3D2` asks for both pairs), `template=NAME`.
pub fn parse_filter(query: &str) -> Result<ListFilter, ApiError> {
    let mut filter = ListFilter::default();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "state" => {
                for name in value.split(',').filter(|s| !s.is_empty()) {
                    let state = SandboxState::parse(name).ok_or_else(|| {
                        ApiError::invalid_request(format!("unknown state {name:?}"))
                    })?;
                    filter.states.push(state);
                }
            }
            "metadata" => {
                for pair in value.split('&').filter(|s| !s.is_empty()) {
                    let (k, v) = pair.split_once('=').ok_or_else(|| {
                        ApiError::invalid_request(format!(
                            "metadata filter {pair:?} is not key=value"
                        ))
                    })?;
                    let decode = |s: &str| {
                        form_urlencoded::parse(format!("x={s}").as_bytes())
                            .next()
                            .map(|(_, v)| v.into_owned())
                            .unwrap_or_default()
                    };
                    filter.metadata.insert(decode(k), decode(v));
                }
            }
            "template" => filter.template = Some(value.into_owned()),
            other => {
                return Err(ApiError::invalid_request(format!(
                    "unknown query parameter {other:?} (known: state, metadata, template)"
                )));
            }
        }
    }
    Ok(filter)
}

pub async fn get(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SandboxView>, ApiError> {
    Ok(Json(state.app.manager.get(&id)?.into()))
}

pub async fn delete(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.app.manager.destroy(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn pause(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SandboxView>, ApiError> {
    crate::policy::settled(&state.app.manager, &id).await?;
    Ok(Json(state.app.manager.pause(&id).await?.into()))
}

pub async fn resume(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
    JsonBody(body): JsonBody<TimeoutBody>,
) -> Result<Json<SandboxView>, ApiError> {
    let ttl = body.timeout_s.map(timeout).transpose()?;
    crate::policy::settled(&state.app.manager, &id).await?;
    Ok(Json(state.app.manager.resume(&id, ttl).await?.into()))
}

pub async fn set_timeout(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
    JsonBody(body): JsonBody<TimeoutBody>,
) -> Result<Json<SandboxView>, ApiError> {
    let seconds = body
        .timeout_s
        .ok_or_else(|| ApiError::invalid_request("timeout_s is required"))?;
    let ttl = timeout(seconds)?;
    Ok(Json(state.app.manager.set_timeout(&id, ttl)?.into()))
}

pub async fn set_network(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
    JsonBody(body): JsonBody<NetworkBody>,
) -> Result<Json<SandboxView>, ApiError> {
    let egress = egress(&body.allow_out, &body.deny_out)?;
    Ok(Json(
        state.app.manager.set_egress(&id, egress).await?.into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_with_states_and_repeated_metadata_parses() {
        let query = "state=running,paused&metadata=team%3Dblue&metadata=env=dev";

        let filter = parse_filter(query).unwrap();

        assert_eq!(
            (filter.states, filter.metadata),
            (
                vec![SandboxState::Running, SandboxState::Paused],
                BTreeMap::from([
                    ("env".to_string(), "dev".to_string()),
                    ("team".to_string(), "blue".to_string()),
                ])
            )
        );
    }

    #[test]
    fn filter_with_form_encoded_metadata_parses() {
        let query = "metadata=a%3D1%26b%3Dx%2520y";

        let filter = parse_filter(query).unwrap();

        assert_eq!(
            filter.metadata,
            BTreeMap::from([
                ("a".to_string(), "1".to_string()),
                ("b".to_string(), "x y".to_string()),
            ])
        );
    }

    #[test]
    fn filter_with_unknown_state_is_400() {
        let err = parse_filter("state=sleeping").unwrap_err();

        assert_eq!(err.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn filter_with_unknown_parameter_is_400() {
        let err = parse_filter("color=red").unwrap_err();

        assert_eq!(err.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn timeout_of_zero_is_400() {
        let err = timeout(0).unwrap_err();

        assert_eq!(err.status, StatusCode::BAD_REQUEST);
    }
}
