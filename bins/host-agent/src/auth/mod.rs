//! Who may talk to the agent's API listener: one guard in front of every
//! route there (`/v1`, the E2B control plane, `/openapi.json`, `/metrics`,
//! `/test`), so no route can be reached around it.
//!
//! In order, a request must:
//! 1. name an allowed `Host` ([`hosts`]): an IP literal, `localhost`, or a
//!    name in `allowed_hosts` — a DNS-rebinding page's own host name is
//!    none of these;
//! 2. come from no foreign browser origin: an `Origin` header must be the
//!    agent's own (`http://<Host>`, the test UI) or in `allowed_origins`;
//!    without one, `Sec-Fetch-Site: cross-site` is refused too;
//! 3. carry a configured API key ([`keys`]): `X-API-KEY`,
//!    `Authorization: Bearer`, or the password of `Authorization: Basic`.
//!
//! Refusals are 421 (host), 403 (origin) and 401 (key), in the error form
//! of the API the path belongs to; `/test` answers 401 with a Basic
//! challenge, so a browser asks for the key. `/v1` request bodies must
//! also be JSON (415), which the API's route table enforces per route.
//!
//! Not here: the envd proxy (`--sandbox-listen`), whose requests carry the
//! sandbox's own envd access token (or a signed URL) that envd checks.

pub mod hosts;
pub mod keys;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header::{HOST, ORIGIN, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, StatusCode};

pub use keys::{API_KEY_HEADER, KeyError, KeyStore, credential, sha256_hex};

use crate::config::AgentConfig;

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 421: the `Host` is not one this agent answers to.
    Host(String),
    /// 403: a browser page of another origin sent it.
    Origin(String),
    /// 401: no key, or not a configured one.
    Key(&'static str),
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::Host(_) => StatusCode::MISDIRECTED_REQUEST,
            Refusal::Origin(_) => StatusCode::FORBIDDEN,
            Refusal::Key(_) => StatusCode::UNAUTHORIZED,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Refusal::Host(_) => "forbidden_host",
            Refusal::Origin(_) => "forbidden_origin",
            Refusal::Key(_) => "unauthorized",
        }
    }

    fn message(&self) -> String {
        match self {
            Refusal::Host(host) => format!(
                "host {host:?} is not served here: use an IP address or localhost, or add the name to allowed_hosts"
            ),
            Refusal::Origin(origin) => format!(
                "requests from the web origin {origin:?} are refused (add it to allowed_origins to allow it)"
            ),
            Refusal::Key(why) => (*why).to_string(),
        }
    }
}

/// The listener's guard: the key store and the allowed hosts and origins.
#[derive(Debug, Clone)]
pub struct Guard {
    keys: KeyStore,
    allowed_hosts: Vec<String>,
    allowed_origins: Vec<String>,
}

impl Guard {
    /// The guard `config` asks for.
    pub fn from_config(config: &AgentConfig) -> Result<Self, KeyError> {
        Ok(Self {
            keys: KeyStore::new(&config.api_keys, &config.api_key_sha256)?,
            allowed_hosts: config
                .allowed_hosts
                .iter()
                .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
                .collect(),
            allowed_origins: config
                .allowed_origins
                .iter()
                .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        })
    }

    /// Whether any key is configured.
    pub fn has_keys(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Whether a request with `headers` may pass.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let host = headers.get(HOST).and_then(|v| v.to_str().ok());
        if let Some(host) = host
            && !hosts::host_allowed(host, &self.allowed_hosts)
        {
            return Err(Refusal::Host(host.to_owned()));
        }
        self.check_origin(headers, host)?;
        let Some(key) = credential(headers) else {
            return Err(Refusal::Key(
                "an API key is required: send it as X-API-KEY (or Authorization: Bearer)",
            ));
        };
        if self.keys.verify(&key) {
            Ok(())
        } else {
            Err(Refusal::Key("invalid API key"))
        }
    }

    fn check_origin(&self, headers: &HeaderMap, host: Option<&str>) -> Result<(), Refusal> {
        let Some(origin) = headers.get(ORIGIN) else {
            let cross = headers
                .get("sec-fetch-site")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
            return if cross {
                Err(Refusal::Origin("(cross-site)".to_owned()))
            } else {
                Ok(())
            };
        };
        let origin = origin.to_str().unwrap_or("(not text)").to_ascii_lowercase();
        let same = host.is_some_and(|host| {
            let host = host.to_ascii_lowercase();
            origin == format!("http://{host}") || origin == format!("https://{host}")
        });
        if same || self.allowed_origins.contains(&origin) {
            Ok(())
        } else {
            Err(Refusal::Origin(origin))
        }
    }
}

/// Middleware over the whole API listener.
pub async fn guard(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    match guard.check(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            tracing::debug!(path = request.uri().path(), ?refusal, "request refused");
            refusal_response(request.uri().path(), &refusal)
        }
    }
}

/// `refusal` in the error form of the API `path` belongs to.
fn refusal_response(path: &str, refusal: &Refusal) -> Response {
    let (status, message) = (refusal.status(), refusal.message());
    if path == "/test" || path.starts_with("/test/") {
        let mut response = (status, message).into_response();
        if matches!(refusal, Refusal::Key(_)) {
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static(
                    "Basic realm=\"Petrel test UI: the password is an API key\", charset=\"UTF-8\"",
                ),
            );
        }
        return response;
    }
    let petrel_api =
        path.starts_with("/v1/") || path == "/v1" || path == "/openapi.json" || path == "/metrics";
    if petrel_api {
        crate::api::ApiError::new(status, refusal.code(), message).into_response()
    } else {
        crate::e2b::error::ApiError::new(status, message).into_response()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn guard() -> Guard {
        Guard::from_config(&AgentConfig {
            api_keys: vec!["e2b_k".into()],
            allowed_hosts: vec!["Petrel.Example.".into()],
            allowed_origins: vec!["https://app.example/".into()],
            ..AgentConfig::default()
        })
        .unwrap()
    }

    /// A header map of `pairs` (also for the `keys` tests).
    pub(crate) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn check_passes_a_keyed_request_without_origin() {
        let result = guard().check(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("x-api-key", "e2b_k"),
        ]));

        assert_eq!(result, Ok(()));
    }

    #[test]
    fn check_refuses_missing_and_wrong_keys() {
        let g = guard();

        let missing = g.check(&headers(&[("host", "127.0.0.1:8080")]));
        let wrong = g.check(&headers(&[("host", "127.0.0.1"), ("x-api-key", "e2b_x")]));

        assert!(matches!(missing, Err(Refusal::Key(_))));
        assert!(matches!(wrong, Err(Refusal::Key("invalid API key"))));
    }

    #[test]
    fn check_refuses_rebinding_host_names() {
        let g = guard();

        let rebound = g.check(&headers(&[
            ("host", "evil.example:8080"),
            ("x-api-key", "e2b_k"),
        ]));
        let named = g.check(&headers(&[
            ("host", "petrel.example:8080"),
            ("x-api-key", "e2b_k"),
        ]));

        assert!(matches!(rebound, Err(Refusal::Host(_))));
        assert_eq!(named, Ok(()));
    }

    #[test]
    fn check_refuses_foreign_origins_but_not_its_own() {
        let g = guard();
        let with_origin = |origin: &str| {
            g.check(&headers(&[
                ("host", "127.0.0.1:8080"),
                ("origin", origin),
                ("x-api-key", "e2b_k"),
            ]))
        };

        assert!(matches!(
            with_origin("http://evil.example"),
            Err(Refusal::Origin(_))
        ));
        assert!(matches!(with_origin("null"), Err(Refusal::Origin(_))));
        assert!(matches!(
            with_origin("http://127.0.0.1:9999"),
            Err(Refusal::Origin(_))
        ));
        assert_eq!(with_origin("http://127.0.0.1:8080"), Ok(()));
        assert_eq!(with_origin("https://app.example"), Ok(()));
        let cross = g.check(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("sec-fetch-site", "cross-site"),
            ("x-api-key", "e2b_k"),
        ]));
        assert!(matches!(cross, Err(Refusal::Origin(_))));
    }
}
