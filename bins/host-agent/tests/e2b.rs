//! E2B compatibility against an in-process agent with real VMs:
//!
//! - `python_sdk_suite`: the official `e2b` Python SDK (pinned in
//!   `tests/e2b/requirements.txt`, installed into a venv under the target
//!   dir) runs `tests/e2b/test_sdk.py` with `E2B_API_KEY`, `E2B_API_URL` and
//!   `E2B_SANDBOX_URL` pointing at the agent.
//! - `npm_sdk_smoke`: the npm `e2b` package (pinned below, installed under
//!   the target dir) runs `tests/e2b/smoke.mjs`; skipped without `npm`
//!   unless `PETREL_REQUIRE_NPM=1`.
//! - `errors_and_routing`: status codes and bodies the SDKs rely on, the
//!   legacy paths, and the proxy's routing by header, host name and
//!   signature, over raw HTTP.
//! - `egress_rules_hold_after_an_agent_restart`: a sandbox's egress rules
//!   are in its namespace's chain and its detail before and after the
//!   agent restarts and adopts it.
//!
//! The tests take turns (one agent and its VMs at a time: each boot costs
//! seconds under TCG).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::process::Command;

/// The npm `e2b` version of the smoke test (the newest the spec checked).
const NPM_E2B_PIN: &str = "2.51.0";

/// The `--sandbox-domain` of the Python suite's agent (never resolved: the
/// suite connects to the proxy and sends the host name, as a hosts-file or
/// wildcard DNS entry would make a client do).
const SANDBOX_DOMAIN: &str = "sbx.petrel.test";

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn suite_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2b")
}

/// Gitignored scratch space of integration tests (`target/tmp`).
fn scratch() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// `name==version` of `tests/e2b/requirements.txt`.
fn python_pin(name: &str) -> String {
    let text = std::fs::read_to_string(suite_dir().join("requirements.txt")).unwrap();
    text.lines()
        .filter_map(|line| line.trim().split_once("=="))
        .find(|(n, _)| n.trim() == name)
        .map_or_else(
            || panic!("{name} is not pinned in requirements.txt"),
            |(_, v)| v.trim().to_string(),
        )
}

fn show(output: &Output) -> String {
    format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `command` to completion (at most `limit`), panicking with its
/// output when it fails.
async fn run_ok(command: &mut Command, what: &str, limit: Duration) -> Output {
    let output = tokio::time::timeout(limit, command.kill_on_drop(true).output())
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {limit:?}"))
        .unwrap_or_else(|err| panic!("{what}: cannot run: {err}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}",
        output.status,
        show(&output)
    );
    output
}

/// The venv with the pinned SDK and pytest, made (or repaired) on demand.
async fn python_env() -> PathBuf {
    let venv = scratch().join(format!("e2b-sdk-venv-{}", python_pin("e2b")));
    let python = venv.join("bin/python");
    let requirements = suite_dir().join("requirements.txt");
    let check = r"
import importlib.metadata as m, sys
pins = [l.split('==') for l in open(sys.argv[1]) if '==' in l and not l.lstrip().startswith('#')]
sys.exit(0 if all(m.version(n.strip()) == v.strip() for n, v in pins) else 1)
";
    let ready = Command::new(&python)
        .args(["-c", check])
        .arg(&requirements)
        .output()
        .await
        .is_ok_and(|o| o.status.success());
    if !ready {
        eprintln!("installing the pinned E2B SDK into {}", venv.display());
        run_ok(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv (install python3-venv: cargo xtask setup)",
            Duration::from_secs(120),
        )
        .await;
        run_ok(
            Command::new(venv.join("bin/pip"))
                .args(["install", "--disable-pip-version-check", "-q", "-r"])
                .arg(&requirements),
            "pip install -r tests/e2b/requirements.txt",
            Duration::from_secs(600),
        )
        .await;
    }
    python
}

/// Points a command at the agent the way E2B users do, and nothing else.
fn e2b_env<'a>(command: &'a mut Command, agent: &common::TestAgent) -> &'a mut Command {
    for name in [
        "E2B_DOMAIN",
        "E2B_DEBUG",
        "E2B_ACCESS_TOKEN",
        "E2B_HTTP_VERSION",
    ] {
        command.env_remove(name);
    }
    command
        .env("E2B_API_KEY", common::API_KEY)
        .env("E2B_API_URL", agent.url())
        .env("E2B_SANDBOX_URL", agent.sandbox_url())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_suite() {
    let _turn = SERIAL.lock().await;
    let Some(agent) =
        common::start_agent_with(|c| c.sandbox_domain = Some(SANDBOX_DOMAIN.to_string())).await
    else {
        return;
    };
    let python = python_env().await;
    let mut pytest = Command::new(&python);
    pytest
        .args(["-m", "pytest", "-v", "--color=no"])
        .arg(suite_dir())
        .current_dir(suite_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PETREL_SANDBOX_DOMAIN", SANDBOX_DOMAIN)
        .kill_on_drop(true);
    e2b_env(&mut pytest, &agent);
    let output = tokio::time::timeout(Duration::from_secs(900), pytest.output()).await;
    agent.stop().await;
    let output = output
        .expect("pytest finished within 15 minutes")
        .expect("pytest ran");
    println!("{}", show(&output));
    assert!(output.status.success(), "the E2B Python SDK suite failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_sdk_smoke() {
    let _turn = SERIAL.lock().await;
    let npm_found = std::process::Command::new("npm")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !npm_found {
        assert!(
            std::env::var("PETREL_REQUIRE_NPM").as_deref() != Ok("1"),
            "PETREL_REQUIRE_NPM=1 but npm is not installed"
        );
        eprintln!("skipped: npm is not installed (Node >= 20.18.1 runs the npm e2b smoke test)");
        return;
    }
    let Some(agent) = common::start_agent().await else {
        return;
    };
    let dir = scratch().join(format!("e2b-npm-{NPM_E2B_PIN}"));
    std::fs::create_dir_all(&dir).unwrap();
    let installed = std::fs::read_to_string(dir.join("node_modules/e2b/package.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .is_some_and(|pkg| pkg["version"] == NPM_E2B_PIN);
    if !installed {
        std::fs::write(
            dir.join("package.json"),
            r#"{"private": true, "type": "module"}"#,
        )
        .unwrap();
        run_ok(
            Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--silent"])
                .arg(format!("e2b@{NPM_E2B_PIN}"))
                .current_dir(&dir),
            "npm install e2b",
            Duration::from_secs(600),
        )
        .await;
    }
    // ESM resolves `e2b` from the script's directory: run a copy there.
    std::fs::copy(suite_dir().join("smoke.mjs"), dir.join("smoke.mjs")).unwrap();
    let mut node = Command::new("node");
    node.arg("smoke.mjs").current_dir(&dir).kill_on_drop(true);
    e2b_env(&mut node, &agent);
    let output = tokio::time::timeout(Duration::from_secs(300), node.output()).await;
    agent.stop().await;
    let output = output
        .expect("node finished within 5 minutes")
        .expect("node ran");
    println!("{}", show(&output));
    assert!(output.status.success(), "the npm e2b smoke test failed");
}

/// A raw HTTP client for the status codes and bodies themselves.
struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    fn new() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> (u16, http::HeaderMap, Value) {
        let mut request = http::Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let response = self
            .client
            .request(request.body(Full::new(body)).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, headers, value)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_routing() {
    let _turn = SERIAL.lock().await;
    let Some(agent) = common::start_agent().await else {
        return;
    };
    let http = Http::new();
    let api = agent.url();
    let proxy = agent.sandbox_url();
    let key = [("X-API-KEY", common::API_KEY)];

    // Auth: 401 with E2B's error body.
    let (status, _, body) = http
        .send("GET", &format!("{api}/v2/sandboxes"), &[], None)
        .await;
    assert_eq!(status, 401);
    assert_eq!(body["code"], 401);
    assert!(body["message"].is_string());
    let wrong = [("X-API-KEY", "e2b_wrong")];
    let (status, _, _) = http
        .send("GET", &format!("{api}/sandboxes/x"), &wrong, None)
        .await;
    assert_eq!(status, 401);

    // Empty list, no next page.
    let (status, headers, body) = http
        .send("GET", &format!("{api}/v2/sandboxes"), &key, None)
        .await;
    assert_eq!((status, body), (200, json!([])));
    assert!(!headers.contains_key("x-next-token"));

    // Unknown sandboxes, templates and snapshots.
    for (method, path) in [
        ("GET", "/sandboxes/nope"),
        ("DELETE", "/sandboxes/nope"),
        ("POST", "/sandboxes/nope/pause"),
        ("POST", "/sandboxes/nope/connect"),
        ("POST", "/v2/sandboxes/nope/connect"),
        ("POST", "/sandboxes/nope/snapshots"),
        ("GET", "/sandboxes/nope/metrics"),
        ("DELETE", "/templates/nope"),
        ("DELETE", "/templates/base"),
    ] {
        let (status, _, body) = http
            .send(method, &format!("{api}{path}"), &key, Some(json!({})))
            .await;
        assert_eq!(
            (status, &body["code"]),
            (404, &json!(404)),
            "{method} {path}: {body}"
        );
    }
    let (status, _, _) = http
        .send(
            "POST",
            &format!("{api}/v2/sandboxes"),
            &key,
            Some(json!({"templateID": "no-such"})),
        )
        .await;
    assert_eq!(status, 404);

    // Template aliases (the SDKs' Template.exists): JSON either way.
    let (status, _, body) = http
        .send("GET", &format!("{api}/templates/aliases/base"), &key, None)
        .await;
    assert_eq!(
        (status, body),
        (200, json!({"templateID": "base", "public": false}))
    );
    let (status, _, body) = http
        .send(
            "GET",
            &format!("{api}/templates/aliases/no-such"),
            &key,
            None,
        )
        .await;
    assert_eq!((status, &body["code"]), (404, &json!(404)), "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("no-such"),
        "{body}"
    );
    let (status, _, body) = http
        .send("GET", &format!("{api}/templates/aliases/a%20b"), &key, None)
        .await;
    assert_eq!((status, &body["code"]), (400, &json!(400)), "{body}");
    for bad in [
        json!({}),
        json!({"templateID": "base", "timeout": -1}),
        json!({"templateID": "../x"}),
    ] {
        let (status, _, body) = http
            .send(
                "POST",
                &format!("{api}/v2/sandboxes"),
                &key,
                Some(bad.clone()),
            )
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }

    // The proxy: unknown sandbox, missing routing, unmatched signature.
    let (status, _, body) = http
        .send(
            "GET",
            &format!("{proxy}/health"),
            &[("E2b-Sandbox-Id", "nope"), ("E2b-Sandbox-Port", "49983")],
            None,
        )
        .await;
    assert_eq!(status, 502);
    assert_eq!(
        body,
        json!({"sandboxId": "nope", "message": "The sandbox was not found", "code": 502})
    );
    let (status, _, _) = http
        .send("GET", &format!("{proxy}/health"), &[], None)
        .await;
    assert_eq!(status, 400);
    let (status, _, _) = http
        .send(
            "GET",
            &format!("{proxy}/files?path=%2Fetc%2Fhostname&signature=v1_abc"),
            &[],
            None,
        )
        .await;
    assert_eq!(status, 401);

    // One sandbox through the legacy create path.
    let (status, _, created) = http
        .send(
            "POST",
            &format!("{api}/sandboxes"),
            &key,
            Some(json!({"templateID": "base", "timeout": 120, "metadata": {"k": "v"}, "secure": true})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["sandboxID"].as_str().unwrap().to_string();
    assert_eq!(created["templateID"], "base");
    assert_eq!(created["clientID"], "petrel");
    assert_eq!(created["envdVersion"], "0.6.4");
    assert!(created.get("domain").is_none());
    let token = created["envdAccessToken"].as_str().unwrap().to_string();

    // Legacy list: running ones.
    let (status, _, listed) = http
        .send(
            "GET",
            &format!("{api}/sandboxes?metadata=k%3Dv"),
            &key,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["sandboxID"], id.as_str());
    assert_eq!(listed[0]["state"], "running");

    // Routing by header, by host name; other ports; /init is the host's.
    let by_header = [
        ("E2b-Sandbox-Id", id.as_str()),
        ("E2b-Sandbox-Port", "49983"),
    ];
    let (status, _, _) = http
        .send("GET", &format!("{proxy}/health"), &by_header, None)
        .await;
    assert_eq!(status, 204);
    let host = format!("49983-{id}.petrel.test");
    let (status, _, _) = http
        .send(
            "GET",
            &format!("{proxy}/health"),
            &[("Host", host.as_str())],
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _, body) = http
        .send(
            "GET",
            &format!("{proxy}/envs"),
            &[("Host", host.as_str()), ("X-Access-Token", token.as_str())],
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = http
        .send(
            "GET",
            &format!("{proxy}/"),
            &[
                ("E2b-Sandbox-Id", id.as_str()),
                ("E2b-Sandbox-Port", "3000"),
            ],
            None,
        )
        .await;
    assert_eq!(status, 502);
    assert_eq!(
        body,
        json!({"sandboxId": id, "message": "The sandbox is running but port is not open", "port": "3000", "code": 502})
    );
    // Another guest port: reachable when the sandbox has its own network
    // namespace (every guest port forwarded), "not open" on QEMU's
    // user-mode network (envd's port only).
    let manager = agent.agent.state.manager.clone();
    manager
        .exec(
            &id,
            envd_client::ExecRequest::shell(
                "cd /tmp && echo served > page.txt && setsid -f python3 -m http.server 8000 >/dev/null 2>&1",
            ),
        )
        .await
        .unwrap();
    let port_8000 = [
        ("E2b-Sandbox-Id", id.as_str()),
        ("E2b-Sandbox-Port", "8000"),
    ];
    let namespaced = manager.config().network.is_some();
    eprintln!(
        "sandbox network: {}",
        if namespaced { "namespace" } else { "user-mode" }
    );
    if namespaced {
        let mut served = None;
        for _ in 0..100 {
            let (status, _, body) = http
                .send("GET", &format!("{proxy}/page.txt"), &port_8000, None)
                .await;
            if status == 200 {
                served = Some(body);
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(served, Some(Value::String("served\n".into())));
        let host_8000 = format!("8000-{id}.petrel.test");
        let (status, _, body) = http
            .send(
                "GET",
                &format!("{proxy}/page.txt"),
                &[("Host", host_8000.as_str())],
                None,
            )
            .await;
        assert_eq!((status, body), (200, Value::String("served\n".into())));
    } else {
        let (status, _, body) = http
            .send("GET", &format!("{proxy}/page.txt"), &port_8000, None)
            .await;
        assert_eq!((status, &body["port"]), (502, &json!("8000")));
    }

    let (status, _, _) = http
        .send(
            "POST",
            &format!("{proxy}/init"),
            &by_header,
            Some(json!({"accessToken": "mine"})),
        )
        .await;
    assert_eq!(status, 403);

    // Legacy resume of a running sandbox: 409; connect v1: 200.
    let (status, _, _) = http
        .send(
            "POST",
            &format!("{api}/sandboxes/{id}/resume"),
            &key,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 409);
    let (status, _, body) = http
        .send(
            "POST",
            &format!("{api}/sandboxes/{id}/connect"),
            &key,
            Some(json!({"timeout": 60})),
        )
        .await;
    assert_eq!((status, &body["sandboxID"]), (200, &json!(id)));

    // Pause: 204, then 409; legacy resume: 201; a filesystem-only
    // snapshot: refused (filesystem-only pauses are the SDK suite's).
    let (status, _, _) = http
        .send(
            "POST",
            &format!("{api}/sandboxes/{id}/snapshots"),
            &key,
            Some(json!({"memory": false})),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _, _) = http
        .send("POST", &format!("{api}/sandboxes/{id}/pause"), &key, None)
        .await;
    assert_eq!(status, 204);
    let (status, _, body) = http
        .send("POST", &format!("{api}/sandboxes/{id}/pause"), &key, None)
        .await;
    assert_eq!((status, &body["code"]), (409, &json!(409)));
    let (status, _, body) = http
        .send("GET", &format!("{proxy}/health"), &by_header, None)
        .await;
    assert_eq!(
        (status, &body["message"]),
        (502, &json!("The sandbox was not found"))
    );
    let (status, _, detail) = http
        .send("GET", &format!("{api}/sandboxes/{id}"), &key, None)
        .await;
    assert_eq!((status, &detail["state"]), (200, &json!("paused")));
    let (status, _, body) = http
        .send(
            "POST",
            &format!("{api}/sandboxes/{id}/resume"),
            &key,
            Some(json!({"timeout": 60})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, _, detail) = http
        .send("GET", &format!("{api}/sandboxes/{id}"), &key, None)
        .await;
    assert_eq!((status, &detail["state"]), (200, &json!("running")));
    for field in [
        "startedAt",
        "endAt",
        "cpuCount",
        "memoryMB",
        "diskSizeMB",
        "envdVersion",
        "clientID",
    ] {
        assert!(detail.get(field).is_some(), "{field} missing from {detail}");
    }

    // Kill: 204, then 404.
    let (status, _, _) = http
        .send("DELETE", &format!("{api}/sandboxes/{id}"), &key, None)
        .await;
    assert_eq!(status, 204);
    let (status, _, _) = http
        .send("DELETE", &format!("{api}/sandboxes/{id}"), &key, None)
        .await;
    assert_eq!(status, 404);

    agent.stop().await;
}

/// The `egress` chains of every Petrel sandbox namespace, joined.
fn egress_chains() -> String {
    let names = std::fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    n.strip_prefix("petrel-")
                        .is_some_and(|s| s.parse::<u32>().is_ok())
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    // Per namespace: its egress chain, its domain-rule redirect chain and
    // the sockets listening on the egress proxy's port.
    let run = |name: &str, args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", name])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    names
        .iter()
        .map(|name| {
            [
                run(
                    name,
                    &["nft", "list", "chain", "inet", "petrel_filter", "egress"],
                ),
                run(
                    name,
                    &["nft", "list", "chain", "ip", "petrel_nat", "egress_names"],
                ),
                run(name, &["ss", "-ltnH", "sport", "=", ":15080"]),
            ]
            .concat()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_rules_hold_after_an_agent_restart() {
    let _turn = SERIAL.lock().await;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: egress rules need the agent's network namespaces (root)");
        return;
    }
    let Some(agent) = common::start_agent().await else {
        return;
    };
    let http = Http::new();
    let key = [("X-API-KEY", common::API_KEY)];
    // A range no other rule names, so its set element marks this sandbox.
    let network = json!({"denyOut": ["203.1.0.0/16"], "allowOut": ["203.1.2.3", "restart.test"]});

    let (status, _, body) = http
        .send(
            "POST",
            &format!("{}/v2/sandboxes", agent.url()),
            &key,
            Some(json!({"templateID": "base", "timeout": 120, "network": network})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["sandboxID"].as_str().unwrap().to_string();
    let before = egress_chains();
    let agent = common::restart(agent).await;
    let after = egress_chains();
    let (status, _, detail) = http
        .send(
            "GET",
            &format!("{}/sandboxes/{id}", agent.url()),
            &key,
            None,
        )
        .await;
    agent.stop().await;

    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["network"]["denyOut"], json!(["203.1.0.0/16"]));
    assert_eq!(
        detail["network"]["allowOut"],
        json!(["203.1.2.3/32", "restart.test"])
    );
    // The rules are in force again, and the domain rules' proxy listens
    // again (the old agent's socket went with it).
    for chains in [&before, &after] {
        assert!(chains.contains("203.1.0.0/16"), "{chains}");
        assert!(chains.contains("203.1.2.3"), "{chains}");
        assert!(chains.contains("redirect to :15080"), "{chains}");
        assert!(chains.contains("169.254.0.22:15080"), "{chains}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filesystem_only_pause_survives_an_agent_restart_and_boots_afresh() {
    let _turn = SERIAL.lock().await;
    let Some(agent) = common::start_agent().await else {
        return;
    };
    let http = Http::new();
    let key = [("X-API-KEY", common::API_KEY)];
    let (status, _, body) = http
        .send(
            "POST",
            &format!("{}/v2/sandboxes", agent.url()),
            &key,
            Some(json!({"templateID": "base", "timeout": 120})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["sandboxID"].as_str().unwrap().to_string();
    let sandbox = |path: &str| format!("{}/sandboxes/{id}{path}", agent.url());

    let (paused, _, _) = http
        .send(
            "POST",
            &sandbox("/pause"),
            &key,
            Some(json!({"memory": false})),
        )
        .await;
    let agent = common::restart(agent).await;
    let sandbox = |path: &str| format!("{}/sandboxes/{id}{path}", agent.url());
    let (_, _, detail) = http.send("GET", &sandbox(""), &key, None).await;
    let (connected, _, resumed) = http
        .send(
            "POST",
            &sandbox("/connect"),
            &key,
            Some(json!({"timeout": 60})),
        )
        .await;
    let (_, _, after) = http.send("GET", &sandbox(""), &key, None).await;
    let (killed, _, _) = http.send("DELETE", &sandbox(""), &key, None).await;
    agent.stop().await;

    assert_eq!(paused, 204);
    assert_eq!(detail["state"], "paused", "{detail}");
    assert_eq!(connected, 201, "{resumed}");
    assert_eq!(after["state"], "running", "{after}");
    assert_eq!(killed, 204);
}
