//! `PUT|GET /v1/sandboxes/{id}/files?path=…[&user=…]` (raw bytes) and
//! `GET /v1/sandboxes/{id}/files/list?path=…[&depth=N][&user=…]` (JSON).
//!
//! Paths are guest paths (a relative one is relative to the user's home);
//! envd in the guest reads and writes them as `user` (envd's default user,
//! `user`, when absent), so guest permissions apply.

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use envd_client::{BoxError, FileEntry, FileKind};
use futures::TryStreamExt as _;
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery};

/// The deepest listing `files/list` gives.
pub const MAX_LIST_DEPTH: u32 = 10;

/// `?path=…&user=…`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileQuery {
    path: String,
    user: Option<String>,
}

/// `?path=…&depth=…&user=…`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    path: String,
    depth: Option<u32>,
    user: Option<String>,
}

/// One entry of a directory listing.
#[derive(Debug, Serialize)]
pub struct EntryView {
    name: String,
    path: String,
    /// `file`, `directory`, `symlink` or `unknown`.
    #[serde(rename = "type")]
    kind: &'static str,
    size: u64,
    mode: u32,
    permissions: String,
    owner: String,
    group: String,
    /// RFC 3339, when known.
    modified_at: Option<String>,
    symlink_target: Option<String>,
}

impl From<FileEntry> for EntryView {
    fn from(entry: FileEntry) -> Self {
        Self {
            name: entry.name,
            path: entry.path,
            kind: match entry.kind {
                FileKind::File => "file",
                FileKind::Directory => "directory",
                FileKind::Symlink => "symlink",
                _ => "unknown",
            },
            size: entry.size,
            mode: entry.mode,
            permissions: entry.permissions,
            owner: entry.owner,
            group: entry.group,
            // The guest sets mtimes: one RFC 3339 cannot hold is left out.
            modified_at: entry.modified.and_then(super::checked_rfc3339),
            symlink_target: entry.symlink_target,
        }
    }
}

fn require_path(path: &str) -> Result<(), ApiError> {
    if path.is_empty() {
        Err(ApiError::invalid_request("path must not be empty"))
    } else {
        Ok(())
    }
}

/// Writes the body to `path`, creating parent directories: 204. The body
/// streams to envd as it arrives (at most [`super::FILE_BODY_LIMIT`]
/// bytes, 413 beyond); at most `max_concurrent_uploads` run at once (429
/// `too_many_uploads` beyond).
pub async fn write(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<FileQuery>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    require_path(&query.path)?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > super::FILE_BODY_LIMIT as u64) {
        return Err(too_large_error());
    }
    let _permit = state.app.policy.upload_permit()?;
    let envd = state.app.manager.envd(&id).await?;
    // Past the cap the stream fails; the error is kept to answer 413
    // rather than envd's complaint about a cut-off body.
    let body = Body::new(http_body_util::Limited::new(body, super::FILE_BODY_LIMIT));
    let overrun = std::sync::Arc::new(std::sync::Mutex::new(None::<ApiError>));
    let seen = overrun.clone();
    let data = body.into_data_stream().map_err(move |err| {
        let api = body_error(&err);
        let message = api.message.clone();
        *seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(api);
        BoxError::from(message)
    });
    let written = envd
        .write_file_stream(&query.path, query.user.as_deref(), data)
        .await;
    if let Some(err) = overrun
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
    {
        return Err(err);
    }
    written.map_err(|err| ApiError::from_file_error(&query.path, err))?;
    tracing::debug!(sandbox = %id, path = %query.path, "file written");
    Ok(StatusCode::NO_CONTENT)
}

fn too_large_error() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the file is larger than {} bytes", super::FILE_BODY_LIMIT),
    )
}

/// A failure reading the request body: 413 past the limit, 400 otherwise.
fn body_error(err: &axum::Error) -> ApiError {
    let too_large = std::error::Error::source(&err)
        .is_some_and(<dyn std::error::Error + 'static>::is::<http_body_util::LengthLimitError>)
        || err.to_string().contains("length limit");
    if too_large {
        too_large_error()
    } else {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("reading the request body failed: {err}"),
        )
    }
}

/// The contents of `path` as `application/octet-stream`, streamed from
/// envd as the caller reads them (nothing is collected: a slow reader
/// slows envd down).
pub async fn read(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<FileQuery>,
) -> Result<Response, ApiError> {
    require_path(&query.path)?;
    let envd = state.app.manager.envd(&id).await?;
    let download = envd
        .read_file_stream(&query.path, query.user.as_deref())
        .await
        .map_err(|err| ApiError::from_file_error(&query.path, err))?;
    let mut response = Body::from_stream(download.body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(len) = download.len {
        headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
    }
    Ok(response)
}

/// The entries under directory `path`, `depth` levels deep (default 1).
pub async fn list(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<axum::Json<Vec<EntryView>>, ApiError> {
    require_path(&query.path)?;
    let depth = query.depth.unwrap_or(1);
    if !(1..=MAX_LIST_DEPTH).contains(&depth) {
        return Err(ApiError::invalid_request(format!(
            "depth must be 1..={MAX_LIST_DEPTH}, got {depth}"
        )));
    }
    let envd = state.app.manager.envd(&id).await?;
    let entries = envd
        .list_dir(&query.path, depth, query.user.as_deref())
        .await
        .map_err(|err| ApiError::from_file_error(&query.path, err))?;
    Ok(axum::Json(
        entries.into_iter().map(EntryView::from).collect(),
    ))
}
