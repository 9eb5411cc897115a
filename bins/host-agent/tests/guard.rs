//! The API listener's guard, tried from outside as an attacker would: no
//! route answers without a key, a foreign web page cannot drive the API
//! (CSRF, DNS rebinding), and thousands of malformed requests get no 5xx
//! and no dropped connection.
//!
//! Needs no VM (the agent has no template); the last test also runs the
//! malformed requests against a real sandbox when images are available.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client;
mod common;

use client::{Client, Reply};
use http::Method;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::json;

const UNKNOWN_ID: &str = "0123456789abcdef";

/// Every route of the API listener, parameters filled in: the REST API's
/// table, E2B's control plane and the test UI.
fn every_route() -> Vec<(Method, String)> {
    let mut routes: Vec<(Method, String)> = host_agent::api::routes()
        .into_iter()
        .map(|r| {
            let path = r
                .path
                .replace("{id}", UNKNOWN_ID)
                .replace("{name}", "some-name");
            (r.method, path)
        })
        .collect();
    let e2b = [
        (Method::POST, "/v2/sandboxes"),
        (Method::GET, "/v2/sandboxes"),
        (Method::POST, "/sandboxes"),
        (Method::GET, "/sandboxes"),
        (Method::GET, "/sandboxes/ID"),
        (Method::DELETE, "/sandboxes/ID"),
        (Method::POST, "/v2/sandboxes/ID/connect"),
        (Method::POST, "/sandboxes/ID/connect"),
        (Method::POST, "/sandboxes/ID/resume"),
        (Method::POST, "/sandboxes/ID/timeout"),
        (Method::POST, "/sandboxes/ID/refreshes"),
        (Method::POST, "/sandboxes/ID/pause"),
        (Method::GET, "/sandboxes/ID/metrics"),
        (Method::POST, "/sandboxes/ID/fork"),
        (Method::POST, "/sandboxes/ID/snapshots"),
        (Method::GET, "/snapshots"),
        (Method::DELETE, "/templates/some-name"),
        (Method::GET, "/test"),
        (Method::GET, "/no/such/route"),
    ];
    routes.extend(
        e2b.into_iter()
            .map(|(m, p)| (m, p.replace("ID", UNKNOWN_ID))),
    );
    routes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_requests_without_a_valid_key() {
    // Arrange
    let agent = common::start_agent_without_vms().await;
    let anonymous = Client::anonymous(agent.url());
    let wrong = Client::anonymous(agent.url())
        .with_header("x-api-key", "e2b_ffffffffffffffffffffffffffffffff");
    let wrong_bearer =
        Client::anonymous(agent.url()).with_header("authorization", "Bearer e2b_nope");

    // Act
    let mut answers = Vec::new();
    for (method, path) in every_route() {
        for (who, client) in [
            ("none", &anonymous),
            ("wrong", &wrong),
            ("bearer", &wrong_bearer),
        ] {
            let reply = client.send(method.clone(), &path, "{}").await;
            answers.push((format!("{who} {method} {path}"), reply));
        }
    }
    let test_page = anonymous.get("/test").await;
    agent.stop().await;

    // Assert
    for (what, reply) in &answers {
        assert_eq!(reply.status.as_u16(), 401, "{what}: {}", reply.text());
        assert!(
            !reply.text().contains("sandbox"),
            "{what} told more than 401: {}",
            reply.text()
        );
    }
    let challenge = test_page.headers["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Basic realm="), "{challenge}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_is_accepted_as_header_bearer_or_basic_password() {
    // Arrange
    let agent = common::start_agent_without_vms().await;
    let base = agent.url();
    let basic = format!(
        "Basic {}",
        base64_encode(format!("anyone:{}", common::API_KEY).as_bytes())
    );

    // Act
    let header = Client::new(&base).get("/v1/templates").await;
    let bearer = Client::anonymous(&base)
        .with_header("authorization", &format!("Bearer {}", common::API_KEY))
        .get("/metrics")
        .await;
    let page = Client::anonymous(&base)
        .with_header("authorization", &basic)
        .get("/test")
        .await;
    let e2b = Client::new(&base).get("/sandboxes").await;
    agent.stop().await;

    // Assert
    assert_eq!(header.status.as_u16(), 200, "{}", header.text());
    assert_eq!(bearer.status.as_u16(), 200, "{}", bearer.text());
    assert_eq!(page.status.as_u16(), 200);
    assert!(
        page.text().contains(&format!(
            "<meta name=\"petrel-api-key\" content=\"{}\">",
            common::API_KEY
        )),
        "the page carries the key its script sends"
    );
    assert_eq!(e2b.status.as_u16(), 200, "{}", e2b.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_web_page_cannot_drive_the_api() {
    // Arrange: what a page on evil.example can make a browser send.
    let agent = common::start_agent_without_vms().await;
    let own_origin = format!("http://{}", agent.agent.api_addr);
    let api = Client::new(agent.url());
    let create = json!({"template": "base"}).to_string();

    // Act
    let form = api
        .clone()
        .with_header("content-type", "application/x-www-form-urlencoded")
        .send(Method::POST, "/v1/sandboxes", "template=base")
        .await;
    let text_plain = api
        .clone()
        .with_header("content-type", "text/plain")
        .send(Method::POST, "/v1/sandboxes", create.clone())
        .await;
    let no_type = api
        .clone()
        .without_header("content-type")
        .send(Method::POST, "/v1/sandboxes", create.clone())
        .await;
    let foreign_origin = api
        .clone()
        .with_header("origin", "http://evil.example")
        .send(Method::POST, "/v1/sandboxes", create.clone())
        .await;
    let cross_site = api
        .clone()
        .with_header("sec-fetch-site", "cross-site")
        .get("/v1/sandboxes")
        .await;
    let rebound_host = api
        .clone()
        .with_header("host", "evil.example:8080")
        .get("/v1/sandboxes")
        .await;
    let e2b_rebound = api
        .clone()
        .with_header("host", "attacker.test")
        .get("/sandboxes")
        .await;
    let own_page = api
        .clone()
        .with_header("origin", &own_origin)
        .get("/v1/sandboxes")
        .await;
    let upload_as_json = api
        .clone()
        .with_header("content-type", "application/json")
        .send(
            Method::PUT,
            &format!("/v1/sandboxes/{UNKNOWN_ID}/files?path=/tmp/x"),
            "x",
        )
        .await;
    agent.stop().await;

    // Assert
    assert_eq!(
        form.status_code(),
        (415, "unsupported_media_type".into()),
        "{}",
        form.text()
    );
    assert_eq!(
        text_plain.status_code(),
        (415, "unsupported_media_type".into())
    );
    assert_eq!(
        no_type.status_code(),
        (415, "unsupported_media_type".into())
    );
    assert_eq!(
        foreign_origin.status_code(),
        (403, "forbidden_origin".into())
    );
    assert_eq!(cross_site.status_code(), (403, "forbidden_origin".into()));
    assert_eq!(rebound_host.status_code(), (421, "forbidden_host".into()));
    assert_eq!(e2b_rebound.status.as_u16(), 421, "{}", e2b_rebound.text());
    assert_eq!(own_page.status.as_u16(), 200, "{}", own_page.text());
    assert_eq!(
        upload_as_json.status_code(),
        (415, "unsupported_media_type".into())
    );
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One request of the malformed-request run.
#[derive(Debug, Clone)]
struct Attempt {
    method: Method,
    path: String,
    content_type: Option<String>,
    body: Vec<u8>,
    extra_header: Option<(String, String)>,
}

fn attempt(ids: Vec<String>) -> impl Strategy<Value = Attempt> {
    let templates = [
        "/v1/sandboxes",
        "/v1/sandboxes/{id}",
        "/v1/sandboxes/{id}/pause",
        "/v1/sandboxes/{id}/resume",
        "/v1/sandboxes/{id}/timeout",
        "/v1/sandboxes/{id}/exec",
        "/v1/sandboxes/{id}/exec/stream",
        "/v1/sandboxes/{id}/files?path={name}",
        "/v1/sandboxes/{id}/files/list?path={name}",
        "/v1/sandboxes/{id}/snapshots",
        "/v1/sandboxes?state={name}&metadata={name}",
        "/v1/snapshots/{name}",
        "/v1/templates/{name}",
        "/sandboxes",
        "/v2/sandboxes?limit={name}&nextToken={name}&metadata={name}",
        "/sandboxes/{id}",
        "/sandboxes/{id}/connect",
        "/sandboxes/{id}/timeout",
        "/sandboxes/{id}/metrics?start={name}",
        "/sandboxes/{id}/fork",
        "/sandboxes/{id}/snapshots",
        "/snapshots?limit={name}",
        "/templates/{name}",
    ];
    let methods = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
    ];
    let names = prop_oneof![
        Just(String::new()),
        Just("..%2F..%2Fetc%2Fpasswd".to_string()),
        Just("%00".to_string()),
        Just("%ff%fe".to_string()),
        Just("a".repeat(5000)),
        "[a-zA-Z0-9._%/-]{0,80}",
    ];
    let id = prop_oneof![
        proptest::sample::select(ids),
        "[0-9a-f]{16}",
        "[a-zA-Z0-9%._-]{0,40}",
    ];
    let body = prop_oneof![
        Just(b"{}".to_vec()),
        Just(b"{\"template\":\"base\",\"memory_mb\":-1}".to_vec()),
        Just(b"{\"timeout_s\":1e300}".to_vec()),
        Just(b"{\"timeout\":-5}".to_vec()),
        Just(b"{\"cmd\":\"\",\"timeout_s\":18446744073709551615}".to_vec()),
        Just(b"{\"cmd\":123,\"envs\":[1,2]}".to_vec()),
        Just(b"{\"name\":\"../x\"}".to_vec()),
        Just(b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]".to_vec()),
        Just(b"{\"templateID\":null,\"metadata\":{\"a\":{\"b\":1}}}".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..300),
        "\\PC{0,200}".prop_map(String::into_bytes),
    ];
    let content_type = prop_oneof![
        Just(Some("application/json".to_string())),
        Just(Some("application/octet-stream".to_string())),
        Just(Some("text/plain".to_string())),
        Just(None),
        "[ -~]{0,40}".prop_map(Some),
    ];
    let extra_header = prop_oneof![
        Just(None),
        Just(Some(("e2b-sandbox-id".to_string(), "../../x".to_string()))),
        Just(Some((
            "connect-timeout-ms".to_string(),
            "99999999999999999999".to_string()
        ))),
        Just(Some(("range".to_string(), "bytes=-1-".to_string()))),
        ("[a-z-]{1,20}", "[ -~]{0,60}").prop_map(Some),
    ];
    (
        proptest::sample::select(methods.to_vec()),
        proptest::sample::select(templates.to_vec()),
        id,
        names,
        content_type,
        body,
        extra_header,
    )
        .prop_map(
            |(method, template, id, name, content_type, body, extra_header)| Attempt {
                method,
                path: template.replace("{id}", &id).replace("{name}", &name),
                content_type,
                body,
                extra_header,
            },
        )
}

/// Sends `cases` malformed requests; every one must get an answer below
/// 500 (no panic, no dropped connection).
/// With `keep_ids`, requests that would delete those sandboxes are skipped.
/// Returns how many requests were sent.
fn hammer(
    url: &str,
    ids: Vec<String>,
    cases: u32,
    keep_ids: bool,
    rt: &tokio::runtime::Handle,
) -> usize {
    let sent = std::sync::atomic::AtomicUsize::new(0);
    let api = Client::new(url).without_header("content-type");
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&attempt(ids), |a| {
            let mut client = api.clone();
            if let Some(ct) = &a.content_type
                && http::HeaderValue::from_str(ct).is_ok()
            {
                client = client.with_header("content-type", ct);
            }
            if let Some((name, value)) = &a.extra_header
                && http::HeaderValue::from_str(value).is_ok()
                && name != "host"
                && name != "x-api-key"
            {
                client = client.with_header(name, value);
            }
            if http::Uri::try_from(format!("{url}{}", a.path)).is_err()
                || (keep_ids && a.method == Method::DELETE)
            {
                return Ok(());
            }
            sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let reply: Reply = rt
                .block_on(async {
                    tokio::time::timeout(
                        std::time::Duration::from_secs(60),
                        client.try_send(a.method.clone(), &a.path, a.body.clone()),
                    )
                    .await
                    .map_err(|_| "no answer within 60 s".to_string())?
                })
                .map_err(|err| TestCaseError::fail(format!("{a:?}: {err}")))?;
            prop_assert!(
                reply.status.as_u16() < 500,
                "{a:?} -> {} {}",
                reply.status,
                reply.text()
            );
            Ok(())
        })
        .unwrap();
    sent.into_inner()
}

#[test]
fn thousands_of_malformed_requests_get_no_server_error() {
    // Arrange
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let agent = rt.block_on(common::start_agent_without_vms());
    let url = agent.url();

    // Act (each case asserts)
    let sent = hammer(&url, vec![UNKNOWN_ID.to_string()], 3000, false, rt.handle());
    let answers = rt.block_on(Client::new(&url).get("/v1/templates"));
    rt.block_on(agent.stop());

    // Assert
    assert!(sent > 2500, "only {sent} requests were sent");
    assert_eq!(answers.status.as_u16(), 200);
}

#[test]
fn malformed_requests_against_a_live_sandbox_get_no_server_error() {
    // Arrange
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let Some(agent) = rt.block_on(common::start_agent()) else {
        return;
    };
    let url = agent.url();
    let created = rt.block_on(Client::new(&url).post(
        "/v1/sandboxes",
        &json!({"template": "base", "memory_mb": 256, "timeout_s": 600}),
    ));
    assert_eq!(created.status.as_u16(), 201, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_string();

    // Act + Assert (each case asserts)
    let sent = hammer(&url, vec![id.clone(); 4], 200, true, rt.handle());
    assert!(sent > 100, "only {sent} requests were sent");
    let api = Client::new(&url);
    let _ = rt.block_on(api.post(&format!("/v1/sandboxes/{id}/resume"), &json!({})));
    let alive = rt.block_on(api.post(
        &format!("/v1/sandboxes/{id}/exec"),
        &json!({"cmd": "echo alive"}),
    ));
    rt.block_on(agent.stop());
    assert_eq!(alive.json()["stdout"], "alive\n", "{}", alive.text());
}
