//! The REST API under `/v1` (JSON), its OpenAPI document at
//! `/openapi.json` and Prometheus metrics at `/metrics`.
//!
//! Every route is one row of one table (`endpoints()`): the router is
//! built from it and so is the OpenAPI document ([`openapi::document`]), so
//! neither can list a route the other lacks; `tests/openapi.rs` checks the served
//! document against [`routes`] and the running router.
//!
//! - [`sandboxes`]: create, list, get, delete, pause, resume, timeout,
//!   egress rules;
//! - [`exec`]: run a command (JSON result, or Server-Sent Events);
//! - [`pty`]: an interactive terminal session over a WebSocket;
//! - [`files`]: upload, download, list a directory;
//! - [`snapshots`], [`templates`];
//! - [`error`]: [`ApiError`], the `{"error":{"code","message"}}` body and
//!   how manager and envd failures map to statuses;
//! - [`metrics`]: the `/metrics` exposition and the per-route middleware
//!   that times requests and counts errors.
//!
//! Times are RFC 3339 strings in UTC with milliseconds
//! (`2025-01-31T12:00:00.000Z`). Request bodies are limited to
//! [`JSON_BODY_LIMIT`] (files: [`FILE_BODY_LIMIT`]); beyond that: 413.
//! A body must be of the route's media type ([`MediaType`]: JSON, or raw
//! bytes for file uploads); anything else is 415, so an HTML form or a
//! `text/plain` fetch from another site cannot drive the API. Every route
//! sits behind the listener's [`crate::auth`] guard (API key, host, origin).

pub mod error;
pub mod exec;
mod extract;
pub mod files;
pub mod metrics;
pub mod openapi;
pub mod pty;
pub mod sandboxes;
pub mod snapshots;
pub mod templates;

use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::routing::{MethodRouter, delete, get, post, put};
use chrono::{DateTime, SecondsFormat, Utc};

pub use error::ApiError;

use crate::state::AppState;
use metrics::{Metrics, Tracked};

/// The largest JSON request body: 1 MiB.
pub const JSON_BODY_LIMIT: usize = 1 << 20;
/// The largest file upload: 1 GiB (streamed to the guest as it comes,
/// never held whole; at most `max_concurrent_uploads` at once).
pub const FILE_BODY_LIMIT: usize = 1 << 30;

/// What the API's handlers share.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub app: AppState,
    pub metrics: Arc<Metrics>,
}

/// One route of the API: its method, its path (axum syntax, `{param}`,
/// which is also OpenAPI's) and its OpenAPI `operationId`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub operation_id: &'static str,
}

/// What a route's request body must be (its `Content-Type`); a request
/// without a body needs none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaType {
    /// `application/json`.
    Json,
    /// `application/octet-stream` (file uploads).
    OctetStream,
}

impl MediaType {
    /// The media type as in `Content-Type`.
    pub fn as_str(self) -> &'static str {
        match self {
            MediaType::Json => "application/json",
            MediaType::OctetStream => "application/octet-stream",
        }
    }
}

struct Endpoint {
    route: Route,
    handler: MethodRouter<ApiState>,
    body_limit: usize,
    media_type: MediaType,
}

fn endpoint(
    method: Method,
    path: &'static str,
    operation_id: &'static str,
    handler: MethodRouter<ApiState>,
) -> Endpoint {
    Endpoint {
        route: Route {
            method,
            path,
            operation_id,
        },
        handler,
        body_limit: JSON_BODY_LIMIT,
        media_type: MediaType::Json,
    }
}

/// Every route the API serves.
fn endpoints() -> Vec<Endpoint> {
    const SANDBOX: &str = "/v1/sandboxes/{id}";
    vec![
        endpoint(
            Method::POST,
            "/v1/sandboxes",
            "createSandbox",
            post(sandboxes::create),
        ),
        endpoint(
            Method::GET,
            "/v1/sandboxes",
            "listSandboxes",
            get(sandboxes::list),
        ),
        endpoint(Method::GET, SANDBOX, "getSandbox", get(sandboxes::get)),
        endpoint(
            Method::DELETE,
            SANDBOX,
            "deleteSandbox",
            delete(sandboxes::delete),
        ),
        endpoint(
            Method::POST,
            "/v1/sandboxes/{id}/pause",
            "pauseSandbox",
            post(sandboxes::pause),
        ),
        endpoint(
            Method::POST,
            "/v1/sandboxes/{id}/resume",
            "resumeSandbox",
            post(sandboxes::resume),
        ),
        endpoint(
            Method::POST,
            "/v1/sandboxes/{id}/timeout",
            "setSandboxTimeout",
            post(sandboxes::set_timeout),
        ),
        endpoint(
            Method::PUT,
            "/v1/sandboxes/{id}/network",
            "setSandboxNetwork",
            put(sandboxes::set_network),
        ),
        endpoint(
            Method::POST,
            "/v1/sandboxes/{id}/exec",
            "exec",
            post(exec::exec),
        ),
        endpoint(
            Method::POST,
            "/v1/sandboxes/{id}/exec/stream",
            "execStream",
            post(exec::stream),
        ),
        endpoint(
            Method::GET,
            "/v1/sandboxes/{id}/pty",
            "openPty",
            get(pty::open),
        ),
        Endpoint {
            body_limit: FILE_BODY_LIMIT,
            media_type: MediaType::OctetStream,
            ..endpoint(
                Method::PUT,
                "/v1/sandboxes/{id}/files",
                "writeFile",
                put(files::write),
            )
        },
        endpoint(
            Method::GET,
            "/v1/sandboxes/{id}/files",
            "readFile",
            get(files::read),
        ),
        endpoint(
            Method::GET,
            "/v1/sandboxes/{id}/files/list",
            "listFiles",
            get(files::list),
        ),
        endpoint(
            Method::POST,
            "/v1/sandboxes/{id}/snapshots",
            "createSnapshot",
            post(snapshots::create),
        ),
        endpoint(
            Method::GET,
            "/v1/snapshots",
            "listSnapshots",
            get(snapshots::list),
        ),
        endpoint(
            Method::GET,
            "/v1/snapshots/{name}",
            "getSnapshot",
            get(snapshots::get),
        ),
        endpoint(
            Method::DELETE,
            "/v1/snapshots/{name}",
            "deleteSnapshot",
            delete(snapshots::delete),
        ),
        endpoint(
            Method::GET,
            "/v1/templates",
            "listTemplates",
            get(templates::list),
        ),
        endpoint(
            Method::GET,
            "/v1/templates/{name}",
            "getTemplate",
            get(templates::get),
        ),
        endpoint(
            Method::DELETE,
            "/v1/templates/{name}",
            "deleteTemplate",
            delete(templates::delete),
        ),
        endpoint(
            Method::GET,
            "/openapi.json",
            "getOpenApi",
            get(openapi::serve),
        ),
        endpoint(Method::GET, "/metrics", "getMetrics", get(metrics::metrics)),
    ]
}

/// Every route the API serves, in the order of the table.
pub fn routes() -> Vec<Route> {
    endpoints().into_iter().map(|e| e.route).collect()
}

/// `/v1/...`, `/openapi.json`, `/metrics`.
pub fn router(state: AppState) -> Router {
    let metrics = Arc::new(Metrics::default());
    let mut router = Router::new();
    for endpoint in endpoints() {
        let tracked = Tracked {
            metrics: metrics.clone(),
            operation: endpoint.route.operation_id,
        };
        let handler = endpoint
            .handler
            .layer(DefaultBodyLimit::max(endpoint.body_limit))
            .route_layer(axum::middleware::from_fn_with_state(
                endpoint.media_type,
                extract::require_media_type,
            ))
            .route_layer(axum::middleware::from_fn_with_state(
                tracked,
                metrics::track,
            ));
        router = router.route(endpoint.route.path, handler);
    }
    router.with_state(ApiState {
        app: state,
        metrics,
    })
}

/// `t` as RFC 3339 in UTC with milliseconds; `None` outside what RFC 3339
/// years (and chrono) can hold, e.g. a guest file's mtime set to 1e13 s.
pub fn checked_rfc3339(t: SystemTime) -> Option<String> {
    let (secs, nanos) = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => (i64::try_from(after.as_secs()).ok()?, after.subsec_nanos()),
        Err(before) => {
            let d = before.duration();
            let secs = i64::try_from(d.as_secs()).ok()?;
            if d.subsec_nanos() == 0 {
                (-secs, 0)
            } else {
                (-secs - 1, 1_000_000_000 - d.subsec_nanos())
            }
        }
    };
    let time = DateTime::<Utc>::from_timestamp(secs, nanos)?;
    Some(time.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// `t` as RFC 3339 in UTC with milliseconds, for times the agent set
/// itself (out-of-range ones, which it never sets, become the epoch).
pub fn rfc3339(t: SystemTime) -> String {
    checked_rfc3339(t).unwrap_or_else(|| "1970-01-01T00:00:00.000Z".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_a_unique_operation_id() {
        let routes = routes();

        let mut ids: Vec<&str> = routes.iter().map(|r| r.operation_id).collect();
        ids.sort_unstable();
        ids.dedup();

        assert_eq!(ids.len(), routes.len());
    }

    #[test]
    fn far_future_time_is_none_not_a_panic() {
        let far = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(10_000_000_000_000);

        let text = checked_rfc3339(far);

        assert_eq!(text, None);
    }

    #[test]
    fn unix_epoch_is_rfc3339() {
        let text = rfc3339(SystemTime::UNIX_EPOCH);

        assert_eq!(text, "1970-01-01T00:00:00.000Z");
    }
}
