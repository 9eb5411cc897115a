//! Snapshots: `POST /v1/sandboxes/{id}/snapshots` `{name}` (201),
//! `GET /v1/snapshots`, `GET|DELETE /v1/snapshots/{name}`.
//!
//! A snapshot name is a [`SafeName`], checked here before the manager sees
//! it (and again by the manager). A sandbox starts from a snapshot by
//! passing its name as `template` to `POST /v1/sandboxes`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use safename::SafeName;
use sandbox_core::SnapshotInfo;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::extract::{ApiPath, JsonBody};
use super::{ApiState, rfc3339};

/// `{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    name: String,
}

/// A snapshot as the API shows it.
#[derive(Debug, Serialize)]
pub struct SnapshotView {
    name: String,
    sandbox_id: String,
    template: String,
    created_at: String,
    size_bytes: u64,
}

impl From<SnapshotInfo> for SnapshotView {
    fn from(info: SnapshotInfo) -> Self {
        Self {
            name: info.name,
            sandbox_id: info.sandbox_id,
            template: info.template,
            created_at: rfc3339(info.created_at),
            size_bytes: info.size_bytes,
        }
    }
}

pub async fn create(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<Response, ApiError> {
    let name = SafeName::new(&body.name)?;
    let info = state.app.manager.snapshot(&id, name.as_str()).await?;
    tracing::info!(sandbox = %id, snapshot = %info.name, "snapshot created over the API");
    Ok((StatusCode::CREATED, Json(SnapshotView::from(info))).into_response())
}

pub async fn list(State(state): State<ApiState>) -> Result<Json<Vec<SnapshotView>>, ApiError> {
    let mut snapshots = state.app.manager.snapshots()?;
    snapshots.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.name.cmp(&b.name)));
    Ok(Json(
        snapshots.into_iter().map(SnapshotView::from).collect(),
    ))
}

pub async fn get(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<SnapshotView>, ApiError> {
    let name = SafeName::new(&name)?;
    state
        .app
        .manager
        .snapshots()?
        .into_iter()
        .find(|s| s.name == name.as_str())
        .map(|s| Json(s.into()))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "snapshot_not_found",
                format!("snapshot {name} not found"),
            )
        })
}

pub async fn delete(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let name = SafeName::new(&name)?;
    state.app.manager.delete_snapshot(name.as_str())?;
    tracing::info!(snapshot = %name, "snapshot deleted over the API");
    Ok(StatusCode::NO_CONTENT)
}
