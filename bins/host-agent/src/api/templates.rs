//! Templates: `GET /v1/templates`, `GET|DELETE /v1/templates/{name}`.
//!
//! Deleting a template removes its record, not its images; it is refused
//! (409) while a sandbox or snapshot uses it.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use safename::SafeName;
use sandbox_core::TemplateInfo;
use serde::Serialize;

use super::error::ApiError;
use super::extract::ApiPath;
use super::{ApiState, rfc3339};

/// A template as the API shows it.
#[derive(Debug, Serialize)]
pub struct TemplateView {
    name: String,
    /// Host paths of the guest kernel and the read-only base root image.
    kernel: String,
    rootfs: String,
    created_at: String,
    size_bytes: u64,
    /// Where it came from (e.g. `images/build.sh`).
    source: String,
    /// Whether creates restore its warm snapshot (false: they cold-boot,
    /// e.g. while the agent is still warming it up).
    warm: bool,
}

impl From<TemplateInfo> for TemplateView {
    fn from(info: TemplateInfo) -> Self {
        Self {
            name: info.name,
            kernel: info.kernel.display().to_string(),
            rootfs: info.rootfs.display().to_string(),
            created_at: rfc3339(info.created_at),
            size_bytes: info.size_bytes,
            warm: info.warm_snapshot.is_some(),
            source: info.source,
        }
    }
}

pub async fn list(State(state): State<ApiState>) -> Result<Json<Vec<TemplateView>>, ApiError> {
    let mut templates = state.app.manager.templates()?;
    templates.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(
        templates.into_iter().map(TemplateView::from).collect(),
    ))
}

pub async fn get(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<TemplateView>, ApiError> {
    let name = SafeName::new(&name)?;
    Ok(Json(state.app.manager.template(name.as_str())?.into()))
}

pub async fn delete(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let name = SafeName::new(&name)?;
    state.app.manager.delete_template(name.as_str())?;
    tracing::info!(template = %name, "template deleted over the API");
    Ok(StatusCode::NO_CONTENT)
}
