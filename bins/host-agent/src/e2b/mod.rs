//! The E2B-compatible control plane and envd proxy: the official `e2b` SDKs
//! work against the agent unchanged with `E2B_API_KEY`, `E2B_API_URL`
//! (→ [`control_router`]) and `E2B_SANDBOX_URL` (→ [`proxy_router`]).
//!
//! - [`sandboxes`]: create (v2 and legacy), connect/resume, kill, list with
//!   filters and `x-next-token` pagination, detail, timeout, pause, metrics.
//! - [`snapshots`]: create, list, delete (`DELETE /templates/{id}`).
//! - [`templates`]: whether a template name exists
//!   (`GET /templates/aliases/{alias}`, the SDKs' `Template.exists`).
//! - [`proxy`]: routes envd traffic to the sandbox's guest agent by
//!   `E2b-Sandbox-Id`/`E2b-Sandbox-Port`, `{port}-{id}.` host names or signed
//!   `/files` URLs, streaming both ways.
//! - [`models`]: the JSON bodies, names exactly as E2B spells them.
//!
//! The lifecycle itself is [`sandbox_core::Manager`]'s; this module maps
//! E2B's requests and states onto it (`running`/`paused` only).
//!
//! Honoured: `network.maskRequestHost` (the `Host` the proxy sends to the
//! sandbox's ports), `allowOut`/`denyOut` with IPv4 CIDRs and addresses
//! and domain names in `allowOut`, `allowPublicTraffic: false` and
//! `autoResume` (the proxy resumes a paused sandbox that has it). Refused
//! rather than silently ignored (400): `dnsServers`, `egressProxy`, per-host
//! `rules`, `httpsPorts`, volume mounts, MCP,
//! IAM, filesystem-only snapshots (`memory: false`), filesystem-only pauses
//! and reboots on Firecracker. Filesystem-only pauses and connect with
//! `memory: false` (reboot) boot the guest afresh from its disk. Not
//! implemented: `Idempotency-Key` on
//! create, WebSocket upgrades through the proxy, guest ports other than
//! envd's for sandboxes on QEMU's user-mode network.

pub mod error;
pub mod models;
pub mod network;
pub mod proxy;
pub mod query;
pub mod sandboxes;
pub mod signature;
pub mod snapshots;
pub mod templates;
pub mod time;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

use crate::state::AppState;
use error::ApiError;

/// The guest port envd listens on.
pub const ENVD_PORT: u16 = 49983;

/// HTTP/1.1 client to guests' envd (proxying, metrics).
pub type HttpClient = Client<HttpConnector, Body>;

/// What control-plane handlers share.
#[derive(Debug, Clone)]
pub struct Control {
    pub app: AppState,
    pub http: HttpClient,
}

/// E2B's control-plane routes (`/sandboxes`, `/v2/sandboxes`, `/snapshots`,
/// `/templates/{id}`, `/templates/aliases/{alias}`); the listener's [`crate::auth`] guard checks their
/// `X-API-KEY`.
pub fn control_router(state: AppState) -> Router {
    let control = Control {
        app: state,
        http: http_client(),
    };
    Router::new()
        .merge(sandboxes::routes())
        .merge(snapshots::routes())
        .merge(templates::routes())
        .with_state(control)
}

/// The envd proxy served on `--sandbox-listen` (`E2B_SANDBOX_URL`).
pub fn proxy_router(state: AppState) -> Router {
    proxy::router(state, http_client())
}

fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    connector.set_nodelay(true);
    // A dead guest is noticed as envd-client notices it.
    connector.set_keepalive(Some(envd_client::KEEPALIVE_IDLE));
    connector.set_keepalive_interval(Some(envd_client::KEEPALIVE_INTERVAL));
    connector.set_keepalive_retries(Some(envd_client::KEEPALIVE_RETRIES));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// A JSON body; an empty body is `T::default()` (the SDKs send `{}` or
/// nothing for optional bodies). Content-Type is not required (JS sends
/// chunked bodies, some clients omit it).
fn parse_body<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_required(body)
}

/// A JSON body that must be present.
fn parse_required<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|err| ApiError::bad_request(format!("invalid request body: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_bodies_are_defaults() {
        let parsed: models::ConnectRequest = parse_body(&Bytes::new()).unwrap();
        assert!(parsed.timeout.is_none());
        let parsed: models::ConnectRequest =
            parse_body(&Bytes::from_static(b"{\"timeout\": 30}")).unwrap();
        assert_eq!(parsed.timeout, Some(30.0));
        assert!(parse_body::<models::ConnectRequest>(&Bytes::from_static(b"{")).is_err());
    }
}
