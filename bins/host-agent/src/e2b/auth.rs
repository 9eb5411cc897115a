//! `X-API-KEY` on every control-plane route, checked against the agent's
//! configured keys (`--api-key`, `PETREL_API_KEYS`); 401 with E2B's error
//! body otherwise. With no keys configured every request is refused.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::StatusCode;

use super::error::ApiError;
use super::signature::constant_time_eq;
use crate::state::AppState;

/// The header E2B's SDKs send the API key in.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Middleware: passes the request on when its `X-API-KEY` is configured.
pub async fn require_api_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    match check(&state.config.api_keys, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(err) => err.into_response(),
    }
}

fn check(keys: &[String], headers: &http::HeaderMap) -> Result<(), ApiError> {
    let unauthorized = |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, message);
    let Some(given) = headers.get(API_KEY_HEADER) else {
        return Err(unauthorized("missing X-API-KEY header"));
    };
    let given = given
        .to_str()
        .map_err(|_| unauthorized("invalid X-API-KEY header"))?;
    if keys.is_empty() {
        return Err(unauthorized(
            "no API keys are configured on this agent (--api-key or PETREL_API_KEYS)",
        ));
    }
    // Compare with every key so the time taken does not tell which matched.
    let matched = keys
        .iter()
        .fold(false, |found, key| constant_time_eq(key, given) | found);
    if matched {
        Ok(())
    } else {
        Err(unauthorized("invalid API key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(key: Option<&str>) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        if let Some(key) = key {
            map.insert(API_KEY_HEADER, key.parse().unwrap());
        }
        map
    }

    #[test]
    fn accepts_only_configured_keys() {
        let keys = vec!["e2b_a".to_string(), "e2b_b".to_string()];
        assert!(check(&keys, &headers(Some("e2b_b"))).is_ok());
        let err = check(&keys, &headers(Some("e2b_c"))).unwrap_err();
        assert_eq!(err.status, StatusCode::UNAUTHORIZED);
        assert!(check(&keys, &headers(None)).is_err());
        assert!(check(&[], &headers(Some("e2b_a"))).is_err());
    }
}
