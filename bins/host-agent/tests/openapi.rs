//! Keeps `/openapi.json` true: the served document lists exactly the routes
//! of [`host_agent::api::routes`] (the table the router is built from),
//! every documented route is answered by a handler (not the router's
//! "no route" 404 or its 405), undocumented methods on documented paths are
//! 405, and the document is well formed (operations have summaries and
//! responses, path parameters are declared, every `$ref` resolves).
//!
//! Needs no VM: the agent runs without a base template.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client;

use std::collections::BTreeSet;

use client::Client;
use host_agent::config::AccelChoice;
use host_agent::{AgentConfig, RunningAgent};
use http::Method;
use serde_json::Value;

async fn start() -> (RunningAgent, tempfile::TempDir) {
    let data_dir = tempfile::tempdir().unwrap();
    let config = AgentConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        sandbox_listen: None,
        data_dir: data_dir.path().to_path_buf(),
        accel: AccelChoice::Tcg,
        api_keys: vec![client::TEST_API_KEY.to_string()],
        ..AgentConfig::default()
    };
    (host_agent::start(config).await.unwrap(), data_dir)
}

async fn served_document() -> Value {
    let (agent, _dir) = start().await;
    let reply = Client::new(format!("http://{}", agent.api_addr))
        .get("/openapi.json")
        .await;
    agent.shutdown().await.unwrap();
    reply.json()
}

/// `(METHOD, path)` of every operation in `doc`.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    doc["paths"]
        .as_object()
        .into_iter()
        .flatten()
        .flat_map(|(path, item)| {
            item.as_object()
                .into_iter()
                .flatten()
                .map(move |(method, _)| (method.to_ascii_uppercase(), path.clone()))
        })
        .collect()
}

/// `path` with its `{param}`s filled with plausible values that name
/// nothing.
fn concrete(path: &str) -> String {
    path.replace("{id}", "0123456789abcdef")
        .replace("{name}", "no-such-name")
}

fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("$ref", Value::String(target)) => out.push(target.clone()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

fn resolves(doc: &Value, target: &str) -> bool {
    target
        .strip_prefix("#/")
        .is_some_and(|pointer| doc.pointer(&format!("/{pointer}")).is_some())
}

#[tokio::test]
async fn served_document_lists_exactly_the_router_routes() {
    let doc = served_document().await;

    let served: BTreeSet<(String, String)> = host_agent::api::routes()
        .into_iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();

    assert_eq!(doc["openapi"].as_str(), Some("3.0.3"));
    assert_eq!(documented(&doc), served);
}

#[tokio::test]
async fn every_documented_route_is_answered_by_its_handler() {
    let (agent, _dir) = start().await;
    let api = Client::new(format!("http://{}", agent.api_addr));
    let doc = api.get("/openapi.json").await.json();
    let mut replies = Vec::new();
    for (method, path) in documented(&doc) {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let reply = api.send(method.clone(), &concrete(&path), "{}").await;
        replies.push((format!("{method} {path}"), reply));
    }

    agent.shutdown().await.unwrap();

    // A handler answers with a body (JSON error, document, metrics, SSE);
    // the router's misses are 404/405 with an empty body.
    let missed: Vec<String> = replies
        .iter()
        .filter(|(_, reply)| reply.body.is_empty())
        .map(|(route, reply)| format!("{route} -> {}", reply.status))
        .collect();
    assert!(missed.is_empty(), "not served: {missed:?}");
}

#[tokio::test]
async fn undocumented_methods_on_documented_paths_are_405() {
    let (agent, _dir) = start().await;
    let api = Client::new(format!("http://{}", agent.api_addr));
    let doc = api.get("/openapi.json").await.json();
    let documented = documented(&doc);
    let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    let undocumented: Vec<(Method, String)> = paths
        .into_iter()
        .flat_map(|path| {
            [
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::DELETE,
                Method::PATCH,
            ]
            .into_iter()
            .map(move |method| (method, path.clone()))
        })
        .filter(|(method, path)| !documented.contains(&(method.to_string(), path.clone())))
        .collect();
    let mut statuses = Vec::new();
    for (method, path) in &undocumented {
        let reply = api.send(method.clone(), &concrete(path), "{}").await;
        statuses.push((format!("{method} {path}"), reply.status.as_u16()));
    }

    agent.shutdown().await.unwrap();

    let answered: Vec<&(String, u16)> = statuses.iter().filter(|(_, s)| *s != 405).collect();
    assert!(!statuses.is_empty());
    assert!(answered.is_empty(), "served but undocumented: {answered:?}");
}

#[tokio::test]
async fn every_operation_is_documented_with_parameters_and_responses() {
    let doc = served_document().await;

    let mut problems = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let declared: BTreeSet<&str> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "path")
                .filter_map(|p| p["name"].as_str())
                .collect();
            let in_path: BTreeSet<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            let checks = [
                (
                    "summary",
                    op["summary"].as_str().is_some_and(|s| !s.is_empty()),
                ),
                ("operationId", op["operationId"].is_string()),
                (
                    "responses",
                    op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                ),
                ("path parameters", declared == in_path),
            ];
            problems.extend(
                checks
                    .into_iter()
                    .filter(|(_, ok)| !ok)
                    .map(|(what, _)| format!("{method} {path}: {what}")),
            );
        }
    }

    assert!(problems.is_empty(), "{problems:#?}");
}

#[tokio::test]
async fn every_ref_in_the_document_resolves() {
    let doc = served_document().await;
    let mut targets = Vec::new();

    refs(&doc, &mut targets);
    let dangling: Vec<&String> = targets.iter().filter(|t| !resolves(&doc, t)).collect();

    assert!(!targets.is_empty());
    assert!(dangling.is_empty(), "dangling $refs: {dangling:?}");
}
