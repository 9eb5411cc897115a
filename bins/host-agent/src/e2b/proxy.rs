//! The envd proxy (`E2B_SANDBOX_URL`): one listener for every sandbox's
//! guest agent.
//!
//! Which sandbox and guest port a request is for, first match wins:
//! 1. the `E2b-Sandbox-Id` and `E2b-Sandbox-Port` headers the SDKs send with
//!    every envd request (port 49983 when the port header is missing);
//! 2. a `{port}-{sandboxID}.{domain}` Host header (the SDKs' `get_host`);
//! 3. for `/files` without either: the `signature` of a signed URL, matched
//!    against the signature each running sandbox's access token gives.
//!
//! Requests stream to the guest and back without buffering (Connect
//! streams, uploads and downloads alike). Envd's port goes to the sandbox's
//! `envd_addr`, where the guest's envd checks the access token or signature
//! itself; `POST /init` is refused there: only the host may set a sandbox's
//! token. Other guest ports are reachable when the sandbox has its own
//! network namespace (`envd_addr` is then the sandbox's address on envd's
//! port, and every guest port is forwarded to it); with QEMU's user-mode
//! network only envd's port is forwarded, so other ports, like ports nothing
//! listens on, get E2B's 502 "port is not open" answer. Unknown, paused or
//! gone sandboxes get E2B's 502 "sandbox was not found" body, which the
//! SDK's `is_running()` reads as `False`. WebSocket upgrades are not relayed.
//!
//! Requests to a sandbox's own ports (not envd's) carry its
//! `maskRequestHost` as `Host` when it was created with one (`${PORT}`
//! replaced by the port), else the caller's `Host`. A sandbox created with
//! `allowPublicTraffic: false` answers those only with its traffic token in
//! `e2b-traffic-access-token` (403 otherwise; the header is not passed on).
//!
//! A response still streaming when its sandbox's VM goes away (killed,
//! timed out, paused) is cut off within [`sandbox_core::GONE_POLL`]: a guest that is gone
//! sends no FIN, so without it a `commands.run` would wait for its request
//! timeout. The SDK then asks the API, finds the sandbox not running and
//! says it "was killed or reached its end of life".

use std::net::SocketAddr;

use crate::policy::{Wake, wake};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderMap, HeaderName};
use http::{Method, StatusCode, Uri};
use sandbox_core::{ListFilter, Manager, SandboxInfo, State as Phase};
use serde_json::json;

use super::signature::{constant_time_eq, file_signature};
use super::{ENVD_PORT, HttpClient};
use crate::state::AppState;

/// The SDKs' routing headers.
pub const SANDBOX_ID_HEADER: &str = "e2b-sandbox-id";
pub const SANDBOX_PORT_HEADER: &str = "e2b-sandbox-port";
/// The header carrying a private sandbox's traffic token.
pub const TRAFFIC_TOKEN_HEADER: &str = "e2b-traffic-access-token";

#[derive(Debug, Clone)]
struct Proxy {
    app: AppState,
    client: HttpClient,
}

/// Every path and method goes to [`forward`].
pub(super) fn router(app: AppState, client: HttpClient) -> Router {
    Router::new()
        .fallback(forward)
        .with_state(Proxy { app, client })
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    sandbox_id: String,
    port: u16,
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn not_found(sandbox_id: &str) -> Response {
    json_response(
        StatusCode::BAD_GATEWAY,
        &json!({
            "sandboxId": sandbox_id,
            "message": "The sandbox was not found",
            "code": 502,
        }),
    )
}

fn port_not_open(sandbox_id: &str, port: u16) -> Response {
    json_response(
        StatusCode::BAD_GATEWAY,
        &json!({
            "sandboxId": sandbox_id,
            "message": "The sandbox is running but port is not open",
            "port": port.to_string(),
            "code": 502,
        }),
    )
}

fn error(status: StatusCode, message: &str) -> Response {
    json_response(
        status,
        &json!({"code": status.as_u16(), "message": message}),
    )
}

/// Target from the `E2b-Sandbox-*` headers; `Err` names the malformed one.
fn from_headers(headers: &HeaderMap) -> Result<Option<Target>, &'static str> {
    let Some(id) = headers.get(SANDBOX_ID_HEADER) else {
        return Ok(None);
    };
    let id = id
        .to_str()
        .ok()
        .filter(|id| !id.is_empty())
        .ok_or("invalid E2b-Sandbox-Id header")?;
    let port = match headers.get(SANDBOX_PORT_HEADER) {
        None => ENVD_PORT,
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .ok_or("invalid E2b-Sandbox-Port header")?,
    };
    Ok(Some(Target {
        sandbox_id: id.to_string(),
        port,
    }))
}

/// Target from a `{port}-{sandboxID}.{domain}[:port]` host name.
fn from_host(host: &str) -> Option<Target> {
    let (label, domain) = host.split_once('.')?;
    if domain.is_empty() {
        return None;
    }
    let (port, id) = label.split_once('-')?;
    let port = port.parse().ok()?;
    let valid_id = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    valid_id.then(|| Target {
        sandbox_id: id.to_string(),
        port,
    })
}

/// The `Host` of a request (HTTP/1.1 header, or the URI's authority).
fn host_of(request: &Request) -> Option<String> {
    request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| request.uri().authority().map(ToString::to_string))
}

/// Target of a signed `/files` URL: the running sandbox whose token gives
/// the URL's signature. `None` when nothing matches.
fn from_signature(app: &AppState, method: &Method, uri: &Uri) -> Option<Target> {
    let params: Vec<(String, String)> = uri
        .query()
        .map(super::query::form_pairs)
        .unwrap_or_default();
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let signature = get("signature")?;
    let operation = match *method {
        Method::GET | Method::HEAD => "read",
        _ => "write",
    };
    let path = get("path").unwrap_or("");
    let user = get("username").unwrap_or("");
    let expiration = get("signature_expiration");
    let running = ListFilter {
        states: vec![Phase::Running],
        ..ListFilter::default()
    };
    app.manager
        .list(&running)
        .into_iter()
        .filter(|info| !info.envd_access_token.is_empty())
        .find(|info| {
            file_signature(path, operation, user, &info.envd_access_token, expiration)
                .is_some_and(|expected| constant_time_eq(&expected, signature))
        })
        .map(|info| Target {
            sandbox_id: info.id,
            port: ENVD_PORT,
        })
}

/// `info`'s sandbox once it runs: as it is when running; a paused (or
/// pausing, resuming) one created with `autoResume` is resumed by the
/// request, its time to live starting afresh at the one it was created
/// with (E2B's rule). `None`: not running and not to be resumed.
async fn running(manager: &Manager, info: SandboxInfo) -> Option<SandboxInfo> {
    if info.state == Phase::Running {
        return Some(info);
    }
    let resumable = matches!(info.state, Phase::Pausing | Phase::Resuming | Phase::Paused);
    if !(info.auto_resume && resumable) {
        return None;
    }
    match wake(manager, &info.id, info.create_timeout, false).await {
        Ok(Wake::Running(info)) => Some(info),
        Ok(Wake::Resumed(info)) => {
            tracing::info!(sandbox = %info.id, "e2b proxy: paused sandbox auto-resumed by a request");
            Some(info)
        }
        Ok(Wake::NotResumable | Wake::Contended) | Err(_) => None,
    }
}

/// Whether `request` may reach guest port `port` of the sandbox `info`: a
/// sandbox with a traffic token (`allowPublicTraffic: false`) takes
/// requests to its ports (envd's aside) only with that token.
fn traffic_allowed(info: &SandboxInfo, port: u16, request: &Request) -> bool {
    let Some(token) = info.traffic_token.as_deref().filter(|_| port != ENVD_PORT) else {
        return true;
    };
    request
        .headers()
        .get(TRAFFIC_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|sent| constant_time_eq(sent, token))
}

/// Headers that describe one connection, not the message (RFC 9110 7.6.1).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// The proxy's one handler.
async fn forward(State(proxy): State<Proxy>, request: Request) -> Response {
    let target = match from_headers(request.headers()) {
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
        Ok(Some(target)) => Some(target),
        Ok(None) => host_of(&request).and_then(|h| from_host(&h)),
    };
    let target = match target {
        Some(target) => target,
        None if request.uri().path() == "/files" => {
            match from_signature(&proxy.app, request.method(), request.uri()) {
                Some(target) => target,
                None if has_query_param(request.uri(), "signature") => {
                    return error(
                        StatusCode::UNAUTHORIZED,
                        "the signature matches no running sandbox",
                    );
                }
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "missing E2b-Sandbox-Id header (or a signed /files URL)",
                    );
                }
            }
        }
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                "missing E2b-Sandbox-Id header or {port}-{sandboxID}. host name",
            );
        }
    };
    let Ok(info) = proxy.app.manager.get(&target.sandbox_id) else {
        return not_found(&target.sandbox_id);
    };
    // Before any auto-resume: a request without the token wakes nothing.
    if !traffic_allowed(&info, target.port, &request) {
        return error(
            StatusCode::FORBIDDEN,
            &format!(
                "sandbox {} takes private traffic only: send its trafficAccessToken in the {TRAFFIC_TOKEN_HEADER} header",
                target.sandbox_id
            ),
        );
    }
    let Some(info) = running(&proxy.app.manager, info).await else {
        return not_found(&target.sandbox_id);
    };
    let Some(envd_addr) = info.envd_addr else {
        return not_found(&target.sandbox_id);
    };
    let Some(addr) = guest_port_addr(envd_addr, target.port) else {
        return port_not_open(&target.sandbox_id, target.port);
    };
    if target.port == ENVD_PORT && is_init_path(request.uri().path()) {
        return error(
            StatusCode::FORBIDDEN,
            "/init is reserved for the host agent",
        );
    }
    let (mut parts, body) = request.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_string();
    parts.uri = match Uri::builder()
        .scheme("http")
        .authority(addr.to_string())
        .path_and_query(path_and_query)
        .build()
    {
        Ok(uri) => uri,
        Err(err) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("invalid request URI: {err}"),
            );
        }
    };
    parts.version = http::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(SANDBOX_ID_HEADER);
    parts.headers.remove(SANDBOX_PORT_HEADER);
    // The guest's servers never see the token.
    parts.headers.remove(TRAFFIC_TOKEN_HEADER);
    // The Host header stays as the client sent it (apps in the guest may
    // check it), or is the sandbox's `maskRequestHost`; hyper sets the
    // upstream address only when there is none.
    if target.port != ENVD_PORT
        && let Some(mask) = &info.host_mask
        && let Ok(host) = http::HeaderValue::from_str(&masked_host(mask, target.port))
    {
        parts.headers.insert(header::HOST, host);
    }
    let upstream = Request::from_parts(parts, body);
    match proxy.client.request(upstream).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            let body = until_gone(proxy.app.manager.clone(), target.sandbox_id, body);
            Response::from_parts(parts, body)
        }
        Err(err) => {
            if target.port == ENVD_PORT {
                tracing::warn!(sandbox = %target.sandbox_id, %addr, error = %err, "e2b proxy: envd unreachable");
            } else {
                tracing::debug!(sandbox = %target.sandbox_id, %addr, error = %err, "e2b proxy: guest port unreachable");
            }
            // It may have been paused or killed since the lookup.
            match proxy.app.manager.get(&target.sandbox_id) {
                Ok(info) if info.state == Phase::Running => {
                    port_not_open(&target.sandbox_id, target.port)
                }
                _ => not_found(&target.sandbox_id),
            }
        }
    }
}

/// A sandbox's `maskRequestHost` for guest `port`: `${PORT}` replaced.
pub(super) fn masked_host(mask: &str, port: u16) -> String {
    mask.replace("${PORT}", &port.to_string())
}

/// `body`, ended with an error once sandbox `id`'s VM is gone.
fn until_gone(manager: sandbox_core::Manager, id: String, body: hyper::body::Incoming) -> Body {
    use futures::StreamExt as _;
    let frames = http_body_util::BodyStream::new(body);
    let frames = crate::gone::until_gone(manager, id.clone(), frames).map(move |item| {
        let Ok(frame) = item else {
            tracing::info!(sandbox = %id, "e2b proxy: the sandbox went away; its response is cut off");
            return Err(axum::Error::new(std::io::Error::other(format!(
                "sandbox {id} was not found (it went away while the response streamed)"
            ))));
        };
        frame.map_err(axum::Error::new)
    });
    Body::new(http_body_util::StreamBody::new(frames))
}

/// Where guest `port` answers from the host, if it does. In a sandbox with
/// its own network namespace, `envd_addr` is the sandbox's non-loopback
/// address on envd's port and every guest port is forwarded to that
/// address; QEMU's user-mode network forwards only envd's port, from a
/// loopback port of its own.
fn guest_port_addr(envd_addr: SocketAddr, port: u16) -> Option<SocketAddr> {
    if port == ENVD_PORT {
        return Some(envd_addr);
    }
    let whole_guest = !envd_addr.ip().is_loopback() && envd_addr.port() == ENVD_PORT;
    whole_guest.then(|| SocketAddr::new(envd_addr.ip(), port))
}

/// Whether `path` is envd's host-only `/init`, however spelled
/// (`//init`, `/init/`, `/%69nit`).
fn is_init_path(path: &str) -> bool {
    super::query::percent_decode(path, false).trim_matches('/') == "init"
}

fn has_query_param(uri: &Uri, name: &str) -> bool {
    uri.query()
        .map(super::query::form_pairs)
        .is_some_and(|pairs| pairs.iter().any(|(k, _)| k == name))
}

#[cfg(test)]
mod tests {
    use http::header::HeaderValue;

    use super::*;

    #[test]
    fn routes_by_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(from_headers(&headers).unwrap(), None);
        headers.insert(SANDBOX_ID_HEADER, HeaderValue::from_static("abc"));
        assert_eq!(
            from_headers(&headers).unwrap(),
            Some(Target {
                sandbox_id: "abc".into(),
                port: ENVD_PORT
            })
        );
        headers.insert(SANDBOX_PORT_HEADER, HeaderValue::from_static("8080"));
        assert_eq!(from_headers(&headers).unwrap().unwrap().port, 8080);
        headers.insert(SANDBOX_PORT_HEADER, HeaderValue::from_static("http"));
        assert!(from_headers(&headers).is_err());
    }

    #[test]
    fn routes_by_host_names() {
        assert_eq!(
            from_host("49983-0123abcd.e2b.app"),
            Some(Target {
                sandbox_id: "0123abcd".into(),
                port: 49983
            })
        );
        assert_eq!(
            from_host("3000-sbx.localhost:8081"),
            Some(Target {
                sandbox_id: "sbx".into(),
                port: 3000
            })
        );
        assert_eq!(from_host("127.0.0.1:8081"), None);
        assert_eq!(from_host("localhost:8081"), None);
        assert_eq!(from_host("abc-def.example"), None);
        assert_eq!(from_host("70000-x.example"), None);
    }

    #[test]
    fn reaches_other_ports_only_with_a_whole_guest_address() {
        let netns: SocketAddr = "10.11.0.2:49983".parse().unwrap();
        let user: SocketAddr = "127.0.0.1:40123".parse().unwrap();
        assert_eq!(guest_port_addr(netns, ENVD_PORT), Some(netns));
        assert_eq!(
            guest_port_addr(netns, 8000),
            Some("10.11.0.2:8000".parse().unwrap())
        );
        assert_eq!(guest_port_addr(user, ENVD_PORT), Some(user));
        assert_eq!(guest_port_addr(user, 8000), None);
    }

    #[test]
    fn recognises_init_however_spelled() {
        for path in ["/init", "//init", "/init/", "/%69nit"] {
            assert!(is_init_path(path), "{path}");
        }
        for path in ["/initx", "/files", "/process.Process/Start"] {
            assert!(!is_init_path(path), "{path}");
        }
    }

    #[test]
    fn strips_hop_by_hop_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert("x-access-token", HeaderValue::from_static("t"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-access-token"));
    }
}
