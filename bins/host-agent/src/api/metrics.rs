//! Prometheus metrics at `GET /metrics` (text exposition format 0.0.4),
//! written by hand:
//!
//! - `petrel_sandboxes{state}`: gauge, sandboxes by state (every state, 0
//!   included), read from [`sandbox_core::Manager::list`] at scrape time;
//! - `petrel_sandbox_disk_bytes{sandbox}`: gauge, the disk space each
//!   sandbox's files take (allocated blocks), stopped ones left out;
//! - `petrel_snapshots`, `petrel_templates`: gauges;
//! - `petrel_pool_size{template}`, `petrel_pool_ready{template}`: gauges,
//!   each pooling template's configured and ready warm-pool sandboxes;
//!   `petrel_pool_hits_total{template}`, `petrel_pool_misses_total{template}`:
//!   counters of creates that took a pooled sandbox / found none;
//! - `petrel_network_spares`: gauge, networks made ahead of demand and
//!   ready now; `petrel_network_spares_taken_total`: counter of sandboxes
//!   that got one (namespaces only);
//! - `petrel_api_request_duration_seconds{operation}`: histogram of the
//!   handlers' latency (to the response head; for the SSE stream that is
//!   the start of the process);
//! - `petrel_api_requests_total{operation,status}`: counter;
//! - `petrel_api_errors_total{operation,code}`: counter of error responses
//!   by their JSON `code`;
//! - `petrel_uptime_seconds`: gauge.
//!
//! `operation` is the route's OpenAPI `operationId`.

use std::collections::BTreeMap;

use sandbox_core::PoolStats;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sandbox_core::{ListFilter, State as SandboxState};

use super::ApiState;
use super::error::ErrorCode;

/// Upper bounds (seconds) of the latency histogram's buckets.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

const STATES: [SandboxState; 8] = [
    SandboxState::Starting,
    SandboxState::Running,
    SandboxState::Pausing,
    SandboxState::Paused,
    SandboxState::Resuming,
    SandboxState::Stopping,
    SandboxState::Stopped,
    SandboxState::Error,
];

/// What the handlers recorded since the agent started.
#[derive(Debug, Default)]
pub struct Metrics {
    operations: Mutex<BTreeMap<&'static str, OperationStats>>,
}

#[derive(Debug, Default)]
struct OperationStats {
    /// Non-cumulative counts per bucket; the last one is `+Inf`.
    buckets: [u64; BUCKETS.len() + 1],
    sum_seconds: f64,
    count: u64,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<&'static str, u64>,
}

impl Metrics {
    /// Records one request of `operation`.
    pub fn record(
        &self,
        operation: &'static str,
        status: StatusCode,
        error: Option<&'static str>,
        took: Duration,
    ) {
        let seconds = took.as_secs_f64();
        let mut operations = self
            .operations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let stats = operations.entry(operation).or_default();
        let bucket = BUCKETS
            .iter()
            .position(|&le| seconds <= le)
            .unwrap_or(BUCKETS.len());
        stats.buckets[bucket] += 1;
        stats.sum_seconds += seconds;
        stats.count += 1;
        *stats.statuses.entry(status.as_u16()).or_default() += 1;
        if let Some(code) = error {
            *stats.errors.entry(code).or_default() += 1;
        }
    }

    /// The recorded metrics in the text exposition format.
    fn render_requests(&self, out: &mut String) {
        let operations = self
            .operations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        out.push_str("# HELP petrel_api_request_duration_seconds Latency of API requests by operation.\n# TYPE petrel_api_request_duration_seconds histogram\n");
        for (operation, stats) in operations.iter() {
            let mut cumulative = 0;
            for (i, count) in stats.buckets.iter().enumerate() {
                cumulative += count;
                let le = BUCKETS
                    .get(i)
                    .map_or_else(|| "+Inf".to_string(), f64::to_string);
                let _ = writeln!(
                    out,
                    "petrel_api_request_duration_seconds_bucket{{operation=\"{operation}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "petrel_api_request_duration_seconds_sum{{operation=\"{operation}\"}} {}",
                stats.sum_seconds
            );
            let _ = writeln!(
                out,
                "petrel_api_request_duration_seconds_count{{operation=\"{operation}\"}} {}",
                stats.count
            );
        }
        out.push_str("# HELP petrel_api_requests_total API requests by operation and HTTP status.\n# TYPE petrel_api_requests_total counter\n");
        for (operation, stats) in operations.iter() {
            for (status, count) in &stats.statuses {
                let _ = writeln!(
                    out,
                    "petrel_api_requests_total{{operation=\"{operation}\",status=\"{status}\"}} {count}"
                );
            }
        }
        out.push_str("# HELP petrel_api_errors_total API error responses by operation and error code.\n# TYPE petrel_api_errors_total counter\n");
        for (operation, stats) in operations.iter() {
            for (code, count) in &stats.errors {
                let _ = writeln!(
                    out,
                    "petrel_api_errors_total{{operation=\"{operation}\",code=\"{code}\"}} {count}"
                );
            }
        }
    }
}

/// The state of the [`track`] middleware of one route.
#[derive(Debug, Clone)]
pub struct Tracked {
    pub metrics: Arc<Metrics>,
    pub operation: &'static str,
}

/// Times a request, records it and logs it (reads at debug, the rest at
/// info).
pub async fn track(State(tracked): State<Tracked>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    let took = started.elapsed();
    let status = response.status();
    let error = response.extensions().get::<ErrorCode>().map(|c| c.0);
    tracked
        .metrics
        .record(tracked.operation, status, error, took);
    let took_ms = took.as_millis() as u64;
    if method == Method::GET && !status.is_server_error() {
        tracing::debug!(operation = tracked.operation, %method, %path, status = status.as_u16(), took_ms, "api request");
    } else {
        tracing::info!(operation = tracked.operation, %method, %path, status = status.as_u16(), error, took_ms, "api request");
    }
    response
}

/// A warm-pool metric: name, type, help, and its value of one pool.
type PoolMetric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&PoolStats) -> u64,
);

/// `GET /metrics`.
pub async fn metrics(State(state): State<ApiState>) -> Response {
    let manager = &state.app.manager;
    let mut out = String::new();
    out.push_str("# HELP petrel_sandboxes Sandboxes known to the agent, by state.\n# TYPE petrel_sandboxes gauge\n");
    let sandboxes = manager.list(&ListFilter::default());
    for s in STATES {
        let count = sandboxes.iter().filter(|i| i.state == s).count();
        let _ = writeln!(out, "petrel_sandboxes{{state=\"{s}\"}} {count}");
    }
    out.push_str("# HELP petrel_sandbox_disk_bytes Disk space a sandbox's files take (allocated blocks: overlay or CoW file, RAM file, state).\n# TYPE petrel_sandbox_disk_bytes gauge\n");
    for info in sandboxes
        .iter()
        .filter(|i| i.state != SandboxState::Stopped)
    {
        if let Ok(bytes) = manager.disk_usage(&info.id) {
            let _ = writeln!(
                out,
                "petrel_sandbox_disk_bytes{{sandbox=\"{}\"}} {bytes}",
                info.id
            );
        }
    }
    let snapshots = manager.snapshots().map_or(0, |s| s.len());
    let templates = manager.templates().map_or(0, |t| t.len());
    let _ = writeln!(
        out,
        "# HELP petrel_snapshots Saved snapshots.\n# TYPE petrel_snapshots gauge\npetrel_snapshots {snapshots}"
    );
    let _ = writeln!(
        out,
        "# HELP petrel_templates Registered templates.\n# TYPE petrel_templates gauge\npetrel_templates {templates}"
    );
    let pools = manager.pool_stats();
    let pool_metrics: [PoolMetric; 4] = [
        (
            "petrel_pool_size",
            "gauge",
            "Sandboxes a template's warm pool keeps ready.",
            |p| p.size as u64,
        ),
        (
            "petrel_pool_ready",
            "gauge",
            "Sandboxes ready in a template's warm pool now.",
            |p| p.ready as u64,
        ),
        (
            "petrel_pool_hits_total",
            "counter",
            "Creates that took a pooled sandbox.",
            |p| p.hits,
        ),
        (
            "petrel_pool_misses_total",
            "counter",
            "Creates of a pooling template that found no pooled sandbox and restored.",
            |p| p.misses,
        ),
    ];
    for (name, kind, help, value) in pool_metrics {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for pool in &pools {
            let _ = writeln!(
                out,
                "{name}{{template=\"{}\"}} {}",
                pool.template,
                value(pool)
            );
        }
    }
    if let Some(network) = &manager.config().network {
        let _ = writeln!(
            out,
            "# HELP petrel_network_spares Sandbox networks made ahead of demand, ready now.\n# TYPE petrel_network_spares gauge\npetrel_network_spares {}",
            network.spares()
        );
        let _ = writeln!(
            out,
            "# HELP petrel_network_spares_taken_total Sandboxes that got a network made ahead of demand.\n# TYPE petrel_network_spares_taken_total counter\npetrel_network_spares_taken_total {}",
            network.spares_taken()
        );
    }
    let _ = writeln!(
        out,
        "# HELP petrel_uptime_seconds Seconds since the agent started.\n# TYPE petrel_uptime_seconds gauge\npetrel_uptime_seconds {}",
        state.app.started_at.elapsed().as_secs_f64()
    );
    state.metrics.render_requests(&mut out);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_request_shows_in_histogram_and_counters() {
        let metrics = Metrics::default();
        metrics.record(
            "getSandbox",
            StatusCode::NOT_FOUND,
            Some("sandbox_not_found"),
            Duration::from_millis(20),
        );
        let mut out = String::new();

        metrics.render_requests(&mut out);

        let expected = [
            "petrel_api_request_duration_seconds_bucket{operation=\"getSandbox\",le=\"0.01\"} 0",
            "petrel_api_request_duration_seconds_bucket{operation=\"getSandbox\",le=\"0.025\"} 1",
            "petrel_api_request_duration_seconds_bucket{operation=\"getSandbox\",le=\"+Inf\"} 1",
            "petrel_api_request_duration_seconds_count{operation=\"getSandbox\"} 1",
            "petrel_api_requests_total{operation=\"getSandbox\",status=\"404\"} 1",
            "petrel_api_errors_total{operation=\"getSandbox\",code=\"sandbox_not_found\"} 1",
        ];
        let missing: Vec<&str> = expected
            .into_iter()
            .filter(|line| !out.lines().any(|l| l == *line))
            .collect();
        assert!(missing.is_empty(), "missing {missing:?} in\n{out}");
    }
}
