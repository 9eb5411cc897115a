//! Snapshot endpoints of E2B's control plane.
//!
//! | request | does |
//! |---|---|
//! | `POST /sandboxes/{id}/snapshots` | snapshot a running sandbox (201 `SnapshotInfo`) |
//! | `GET /snapshots` | list, newest first, `sandboxID`/`name` filters, `x-next-token` pages |
//! | `DELETE /templates/{id}` | delete a snapshot (204; 404 unknown; 409, naming them, while sandboxes or snapshots stand on it) |
//!
//! A snapshot's `snapshotID` is its name, which `POST /v2/sandboxes` accepts
//! as `templateID`. Unnamed snapshots are called `snap-<16 hex digits>`.
//! `DELETE /templates/{id}` deletes snapshots only, never a template.

use std::io::Read;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use sandbox_core::ManagerError;

use super::error::ApiError;
use super::models::{SnapshotInfo, SnapshotRequest};
use super::query::{Cursor, paginate};
use super::{Control, parse_body};

const MAX_PAGE: usize = 100;

pub(super) fn routes() -> Router<Control> {
    Router::new()
        .route("/sandboxes/{id}/snapshots", post(create))
        .route("/snapshots", axum::routing::get(list))
        .route("/templates/{id}", delete(remove))
}

fn info_of(snapshot: &sandbox_core::SnapshotInfo) -> SnapshotInfo {
    SnapshotInfo {
        snapshot_id: snapshot.name.clone(),
        names: vec![snapshot.name.clone()],
    }
}

/// `snap-` and 16 random hex digits.
fn generated_name() -> Result<String, ApiError> {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|err| ApiError::internal(format!("reading /dev/urandom: {err}")))?;
    Ok(format!(
        "snap-{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

/// `POST /sandboxes/{id}/snapshots`: the sandbox keeps running.
async fn create(
    State(control): State<Control>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: SnapshotRequest = parse_body(&body)?;
    if request.memory == Some(false) {
        return Err(ApiError::bad_request(
            super::sandboxes::FILESYSTEM_ONLY_SNAPSHOT,
        ));
    }
    let name = match request.name.filter(|n| !n.is_empty()) {
        Some(name) => name,
        None => generated_name()?,
    };
    let manager = &control.app.manager;
    let state = manager
        .get(&id)
        .map_err(|_| ApiError::sandbox_not_found(&id))?
        .state;
    if super::sandboxes::e2b_state(state).is_none() {
        return Err(ApiError::sandbox_not_found(&id));
    }
    let snapshot = manager.snapshot(&id, &name).await?;
    tracing::info!(sandbox = %id, snapshot = %snapshot.name, "e2b: snapshot created");
    Ok((StatusCode::CREATED, Json(info_of(&snapshot))).into_response())
}

/// Query of `GET /snapshots`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct ListQuery {
    #[serde(rename = "sandboxID")]
    sandbox_id: Option<String>,
    name: Option<String>,
    limit: Option<String>,
    #[serde(rename = "nextToken")]
    next_token: Option<String>,
}

/// `GET /snapshots`: newest first.
async fn list(
    State(control): State<Control>,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let limit = match query.limit.as_deref() {
        None | Some("") => MAX_PAGE,
        Some(text) => text
            .parse()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| ApiError::bad_request(format!("limit must be 1..={MAX_PAGE}")))?,
    };
    let after = match query.next_token.as_deref() {
        None | Some("") => None,
        Some(token) => {
            Some(Cursor::parse(token).ok_or_else(|| ApiError::bad_request("invalid nextToken"))?)
        }
    };
    let mut snapshots: Vec<sandbox_core::SnapshotInfo> = control
        .app
        .manager
        .snapshots()?
        .into_iter()
        .filter(|s| {
            query
                .sandbox_id
                .as_deref()
                .is_none_or(|id| id.is_empty() || s.sandbox_id == id)
        })
        .filter(|s| {
            query
                .name
                .as_deref()
                .is_none_or(|name| name.is_empty() || s.name == name)
        })
        .collect();
    let key = |s: &sandbox_core::SnapshotInfo| Cursor::new(s.created_at, &s.name);
    snapshots.sort_by_key(|s| std::cmp::Reverse(key(s)));
    let (page, next) = paginate(snapshots, key, true, after.as_ref(), limit);
    let body: Vec<SnapshotInfo> = page.iter().map(info_of).collect();
    let mut response = Json(body).into_response();
    if let Some(token) = next.and_then(|t| HeaderValue::from_str(&t).ok()) {
        response.headers_mut().insert("x-next-token", token);
    }
    Ok(response)
}

/// `DELETE /templates/{id}`: deletes the snapshot `id`.
async fn remove(
    State(control): State<Control>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    match control.app.manager.delete_snapshot(&id) {
        Ok(()) => {
            tracing::info!(snapshot = %id, "e2b: snapshot deleted");
            Ok(StatusCode::NO_CONTENT)
        }
        Err(ManagerError::SnapshotNotFound(_) | ManagerError::InvalidName(_)) => {
            Err(ApiError::not_found(format!("snapshot {id} not found")))
        }
        Err(err) => Err(err.into()),
    }
}
