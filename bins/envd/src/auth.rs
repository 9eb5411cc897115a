//! Access control: the `X-Access-Token` gate, the `Authorization: Basic`
//! user selector of RPCs and the v1 URL signatures of `/files`.

use crate::error::EnvdError;
use crate::state::SharedState;
use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use sha2::{Digest, Sha256};

/// Header carrying the envd access token.
pub const ACCESS_TOKEN_HEADER: &str = "x-access-token";

/// Which `/files` operation a signature grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `GET /files`.
    Read,
    /// `POST /files`.
    Write,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

/// Whether a request may skip the token check: `GET /health`, `/files`
/// (which checks token or signature itself) and `POST /init`.
fn is_excluded(method: &Method, path: &str) -> bool {
    (method == Method::GET && path == "/health")
        || path == "/files"
        || (method == Method::POST && path == "/init")
}

/// Whether `path` is a Connect RPC route.
fn is_rpc_path(path: &str) -> bool {
    path.starts_with("/process.Process/") || path.starts_with("/filesystem.Filesystem/")
}

/// Compares two secrets without an early exit on the first differing byte.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `headers` carry the expected access token.
pub fn has_valid_token(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(ACCESS_TOKEN_HEADER)
        .is_some_and(|v| constant_time_eq(v.as_bytes(), expected.as_bytes()))
}

/// Middleware: once a token is set, protected requests need `X-Access-Token`.
pub async fn require_access_token(
    State(state): State<SharedState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = state.access_token() else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    if is_excluded(request.method(), path) || has_valid_token(request.headers(), &token) {
        return next.run(request).await;
    }
    let message = "unauthorized access, please provide a valid access token";
    tracing::debug!(%path, "rejected request without a valid access token");
    if is_rpc_path(path) {
        let body = serde_json::json!({ "code": "unauthenticated", "message": message });
        (StatusCode::UNAUTHORIZED, Json(body)).into_response()
    } else {
        EnvdError::Unauthenticated(message.to_owned()).into_response()
    }
}

/// The user named by `Authorization: Basic base64("<user>:")`, if any.
pub fn basic_auth_user(headers: &HeaderMap) -> Result<Option<String>, EnvdError> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let invalid = || EnvdError::Unauthenticated("invalid Authorization header".to_owned());
    let value = value.to_str().map_err(|_| invalid())?;
    let Some(encoded) = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
    else {
        return Err(invalid());
    };
    let decoded = STANDARD
        .decode(encoded.trim())
        .or_else(|_| STANDARD_NO_PAD.decode(encoded.trim()))
        .map_err(|_| invalid())?;
    let decoded = String::from_utf8(decoded).map_err(|_| invalid())?;
    let user = decoded.split_once(':').map_or(decoded.as_str(), |(u, _)| u);
    Ok(Some(user.to_owned()).filter(|u| !u.is_empty()))
}

/// The v1 signature of a `/files` URL:
/// `"v1_" + base64(sha256("{path}:{op}:{user}:{token}[:{expiration}]"))`,
/// standard alphabet, padding stripped.
pub fn signature(
    path: &str,
    operation: Operation,
    username: &str,
    token: &str,
    expiration: Option<i64>,
) -> String {
    let raw = match expiration {
        Some(exp) => format!("{path}:{}:{username}:{token}:{exp}", operation.as_str()),
        None => format!("{path}:{}:{username}:{token}", operation.as_str()),
    };
    format!(
        "v1_{}",
        STANDARD_NO_PAD.encode(Sha256::digest(raw.as_bytes()))
    )
}

/// The credentials a `/files` request may carry in its query.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileCredentials<'a> {
    /// `path` query parameter, exactly as sent.
    pub path: &'a str,
    /// `username` query parameter (empty when absent).
    pub username: &'a str,
    /// `signature` query parameter.
    pub signature: Option<&'a str>,
    /// `signature_expiration` query parameter (unix seconds).
    pub expiration: Option<i64>,
}

/// Checks a `/files` request: allowed when no token is set, or with the
/// token in `X-Access-Token`, or with a valid, unexpired signature.
pub fn check_files_access(
    state: &SharedState,
    headers: &HeaderMap,
    operation: Operation,
    creds: FileCredentials<'_>,
    now_unix: i64,
) -> Result<(), EnvdError> {
    let Some(token) = state.access_token() else {
        return Ok(());
    };
    if has_valid_token(headers, &token) {
        return Ok(());
    }
    let Some(given) = creds.signature else {
        return Err(EnvdError::Unauthenticated(
            "missing access token or signature".to_owned(),
        ));
    };
    let expected = signature(
        creds.path,
        operation,
        creds.username,
        &token,
        creds.expiration,
    );
    if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        return Err(EnvdError::Unauthenticated("invalid signature".to_owned()));
    }
    if creds.expiration.is_some_and(|exp| exp < now_unix) {
        return Err(EnvdError::Unauthenticated(
            "signature is already expired".to_owned(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn basic_auth_header_names_the_user() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Basic cm9vdDo="),
        );

        let user = basic_auth_user(&headers).unwrap();

        assert_eq!(user.as_deref(), Some("root"));
    }

    #[test]
    fn missing_authorization_means_default_user() {
        let headers = HeaderMap::new();

        let user = basic_auth_user(&headers).unwrap();

        assert_eq!(user, None);
    }

    #[test]
    fn signature_matches_the_sdk_algorithm() {
        // python: "v1_" + base64(sha256(b"/a:read::tok")).rstrip("=")
        let expected = format!(
            "v1_{}",
            STANDARD_NO_PAD.encode(Sha256::digest(b"/a:read::tok"))
        );

        let sig = signature("/a", Operation::Read, "", "tok", None);

        assert_eq!(sig, expected);
        assert!(!sig.ends_with('='));
    }

    #[test]
    fn health_files_and_init_skip_the_token_check() {
        let cases = [
            (Method::GET, "/health", true),
            (Method::GET, "/files", true),
            (Method::POST, "/files", true),
            (Method::POST, "/init", true),
            (Method::GET, "/envs", false),
            (Method::POST, "/process.Process/List", false),
        ];

        let results: Vec<bool> = cases.iter().map(|(m, p, _)| is_excluded(m, p)).collect();

        let expected: Vec<bool> = cases.iter().map(|(_, _, e)| *e).collect();
        assert_eq!(results, expected);
    }
}
