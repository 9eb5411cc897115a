//! `POST /init` (token, env, default user/workdir, clock, and Petrel's
//! clone identity: hostname and CRNG seed) and `GET /envs`.
//!
//! The first `/init` that sets a token arms authentication; from then on
//! every `/init` must prove it knows the current token (in `X-Access-Token`,
//! or the same token again in the body) and may replace it only with another
//! non-empty token: envd never goes back to running without a token.

use crate::auth::has_valid_token;
use crate::error::EnvdError;
use crate::identity;
use crate::state::SharedState;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse as _, Response};
use nix::sys::time::TimeSpec;
use nix::time::{ClockId, clock_gettime, clock_settime};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Body of `POST /init` (unknown fields are ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitRequest {
    /// Token required from now on in `X-Access-Token`.
    pub access_token: Option<String>,
    /// Variables added to every process's environment.
    pub env_vars: Option<BTreeMap<String, String>>,
    /// User for requests that name none.
    pub default_user: Option<String>,
    /// Working directory for processes that name none.
    pub default_workdir: Option<String>,
    /// The host's wall clock (RFC 3339), applied when ours is off by > 1 s.
    pub timestamp: Option<String>,
    /// Petrel: the system's hostname from now on (see [`crate::identity`]).
    pub hostname: Option<String>,
    /// Petrel: base64 bytes of host randomness to mix into the kernel's
    /// pool before a CRNG reseed (32 to 512 bytes).
    pub entropy_seed: Option<String>,
}

/// Response header by which envd says it applied `hostname` and
/// `entropySeed` (an envd without it ignored them as unknown fields).
pub const IDENTITY_HEADER: &str = "x-petrel-identity";

/// Sets the system clock to `timestamp` when it differs by more than a second.
/// Returns whether the clock was changed.
pub fn sync_clock(timestamp: &str) -> Result<bool, EnvdError> {
    let wanted = chrono::DateTime::parse_from_rfc3339(timestamp)
        .map_err(|e| EnvdError::InvalidArgument(format!("invalid timestamp '{timestamp}': {e}")))?;
    let now = clock_gettime(ClockId::CLOCK_REALTIME)
        .map_err(|e| EnvdError::Internal(format!("clock_gettime: {e}")))?;
    let wanted_nanos = wanted.timestamp_nanos_opt().ok_or_else(|| {
        EnvdError::InvalidArgument(format!("timestamp '{timestamp}' out of range"))
    })?;
    let now_nanos = i128::from(now.tv_sec()) * 1_000_000_000 + i128::from(now.tv_nsec());
    if (i128::from(wanted_nanos) - now_nanos).abs() <= 1_000_000_000 {
        return Ok(false);
    }
    let spec = TimeSpec::new(
        wanted.timestamp(),
        i64::from(wanted.timestamp_subsec_nanos()),
    );
    clock_settime(ClockId::CLOCK_REALTIME, spec)
        .map_err(|e| EnvdError::PermissionDenied(format!("clock_settime: {e}")))?;
    Ok(true)
}

/// Whether a caller sending `headers` and `request` may apply it while
/// `current` is the token in force: anyone before a token is set; afterwards
/// only a caller showing the current token, and never to remove it.
fn authorize(
    current: Option<&str>,
    headers: &HeaderMap,
    request: &InitRequest,
) -> Result<(), EnvdError> {
    let Some(current) = current else {
        return Ok(());
    };
    let body_token = request.access_token.as_deref();
    let knows_current = has_valid_token(headers, current)
        || body_token
            .is_some_and(|t| crate::auth::constant_time_eq(t.as_bytes(), current.as_bytes()));
    if !knows_current {
        return Err(EnvdError::Unauthenticated(
            "an access token is set: /init needs the current one in X-Access-Token".to_owned(),
        ));
    }
    if body_token == Some("") {
        return Err(EnvdError::InvalidArgument(
            "the access token cannot be removed once set".to_owned(),
        ));
    }
    Ok(())
}

/// Applies the identity parts of `request` (after checking them all), if
/// any; returns whether there were any.
fn apply_identity(state: &SharedState, request: &InitRequest) -> Result<bool, EnvdError> {
    if request.hostname.is_none() && request.entropy_seed.is_none() {
        return Ok(false);
    }
    if let Some(name) = request.hostname.as_deref() {
        identity::check_hostname(name)?;
    }
    let seed = request
        .entropy_seed
        .as_deref()
        .map(identity::decode_seed)
        .transpose()?;
    if !state.config.manage_identity {
        return Err(EnvdError::FailedPrecondition(
            "this envd does not manage its system's identity (started with --unmanaged-identity)"
                .to_owned(),
        ));
    }
    if let Some(seed) = seed {
        identity::reseed(&seed)?;
    }
    if let Some(name) = request.hostname.as_deref() {
        identity::set_hostname(name, std::path::Path::new("/etc"))?;
    }
    Ok(true)
}

/// `POST /init`: applies the host's settings; replies 204 (with
/// [`IDENTITY_HEADER`] when it applied a hostname or seed). Once a token is
/// set, 401 without it (see the module docs); 400 for an empty token then.
/// A bad or unappliable identity fails the request before any setting
/// changes.
pub async fn init(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, EnvdError> {
    let request: InitRequest = if body.iter().all(u8::is_ascii_whitespace) {
        InitRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| EnvdError::InvalidArgument(format!("invalid init body: {e}")))?
    };
    // Only a caller allowed to init may rename the system or stir its pool.
    if let Err(err) = authorize(state.settings().access_token.as_deref(), &headers, &request) {
        tracing::warn!(error = %err, "init refused");
        return Err(err);
    }
    let identity_applied = apply_identity(&state, &request)?;
    if let Some(user) = request.default_user.as_deref().filter(|u| !u.is_empty())
        && let Err(err) = crate::user::UserInfo::lookup(user)
    {
        tracing::warn!(%user, error = %err, "init: default user does not exist (yet)");
    }
    let timestamp = request.timestamp.clone();
    // Checked and applied under one lock, so two racing inits cannot both
    // pass the check against the same old token.
    state.update_settings(|settings| {
        if let Err(err) = authorize(settings.access_token.as_deref(), &headers, &request) {
            tracing::warn!(error = %err, "init refused");
            return Err(err);
        }
        if let Some(token) = request.access_token {
            settings.access_token = Some(token).filter(|t| !t.is_empty());
        }
        if let Some(vars) = request.env_vars {
            settings.env_vars.extend(vars);
        }
        if let Some(user) = request.default_user.filter(|u| !u.is_empty()) {
            settings.default_user = user;
        }
        if let Some(dir) = request.default_workdir.filter(|d| !d.is_empty()) {
            settings.default_workdir = Some(PathBuf::from(dir));
        }
        Ok(())
    })?;
    if let Some(timestamp) = timestamp.as_deref() {
        match sync_clock(timestamp) {
            Ok(true) => tracing::info!(%timestamp, "system clock set"),
            Ok(false) => {}
            Err(err) => tracing::warn!(%timestamp, error = %err, "cannot set the system clock"),
        }
    }
    tracing::info!(identity_applied, "init applied");
    let mut response = StatusCode::NO_CONTENT.into_response();
    if identity_applied {
        response
            .headers_mut()
            .insert(IDENTITY_HEADER, HeaderValue::from_static("applied"));
    }
    Ok(response)
}

/// `GET /envs`: the variables every process gets from `/init`.
pub async fn envs(State(state): State<SharedState>) -> Json<BTreeMap<String, String>> {
    Json(state.settings().env_vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_time_leaves_the_clock_alone() {
        let now = chrono::Utc::now().to_rfc3339();

        let changed = sync_clock(&now).unwrap();

        assert!(!changed);
    }

    fn token_request(token: &str) -> InitRequest {
        InitRequest {
            access_token: Some(token.to_owned()),
            ..InitRequest::default()
        }
    }

    fn header(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            crate::auth::ACCESS_TOKEN_HEADER,
            http::HeaderValue::from_str(token).unwrap(),
        );
        headers
    }

    #[test]
    fn first_init_needs_no_token() {
        let ok = authorize(None, &HeaderMap::new(), &token_request("new"));

        assert!(ok.is_ok());
    }

    #[test]
    fn new_token_needs_the_current_one() {
        let without = authorize(Some("old"), &HeaderMap::new(), &token_request("new"));
        let wrong = authorize(Some("old"), &header("guess"), &token_request("new"));
        let with = authorize(Some("old"), &header("old"), &token_request("new"));
        let same_in_body = authorize(Some("old"), &HeaderMap::new(), &token_request("old"));

        assert!(matches!(without, Err(EnvdError::Unauthenticated(_))));
        assert!(matches!(wrong, Err(EnvdError::Unauthenticated(_))));
        assert!(with.is_ok());
        assert!(same_in_body.is_ok());
    }

    #[test]
    fn empty_token_never_turns_auth_off() {
        let anonymous = authorize(Some("old"), &HeaderMap::new(), &token_request(""));
        let authorized = authorize(Some("old"), &header("old"), &token_request(""));

        assert!(matches!(anonymous, Err(EnvdError::Unauthenticated(_))));
        assert!(matches!(authorized, Err(EnvdError::InvalidArgument(_))));
    }

    #[test]
    fn garbage_timestamp_is_invalid_argument() {
        let err = sync_clock("yesterday").unwrap_err();

        assert!(matches!(err, EnvdError::InvalidArgument(_)));
    }
}
