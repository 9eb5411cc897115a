//! `PUT|GET /v1/sandboxes/{id}/files?path=…[&user=…]` (raw bytes) and
//! `GET /v1/sandboxes/{id}/files/list?path=…[&depth=N][&user=…]` (JSON).
//!
//! Paths are guest paths (a relative one is relative to the user's home);
//! envd in the guest reads and writes them as `user` (envd's default user,
//! `user`, when absent), so guest permissions apply.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use envd_client::{FileEntry, FileKind};
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
            modified_at: entry
                .modified
                .map(|t| DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Millis, true)),
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

/// Writes the body to `path`, creating parent directories: 204.
pub async fn write(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<FileQuery>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let body = body?;
    require_path(&query.path)?;
    let envd = state.app.manager.envd(&id).await?;
    let len = body.len();
    envd.write_file(&query.path, query.user.as_deref(), body)
        .await
        .map_err(|err| ApiError::from_file_error(&query.path, err))?;
    tracing::debug!(sandbox = %id, path = %query.path, len, "file written");
    Ok(StatusCode::NO_CONTENT)
}

/// The contents of `path` as `application/octet-stream`.
pub async fn read(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<FileQuery>,
) -> Result<Response, ApiError> {
    require_path(&query.path)?;
    let envd = state.app.manager.envd(&id).await?;
    let data = envd
        .read_file(&query.path, query.user.as_deref())
        .await
        .map_err(|err| ApiError::from_file_error(&query.path, err))?;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Bytes::from(data),
    )
        .into_response())
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
