//! Template endpoints of E2B's control plane.
//!
//! | request | does |
//! |---|---|
//! | `GET /templates/aliases/{alias}` | 200 `{templateID, public}` for a template or snapshot of that name, 404 otherwise (E2B's `Template.exists`) |
//!
//! A name is what `POST /v2/sandboxes` accepts as `templateID`: a
//! registered template or a snapshot. Petrel has no public templates.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use sandbox_core::ManagerError;

use super::Control;
use super::error::ApiError;
use super::models::TemplateAlias;

pub(super) fn routes() -> Router<Control> {
    Router::new().route("/templates/aliases/{alias}", get(alias))
}

/// `GET /templates/aliases/{alias}`.
async fn alias(
    State(control): State<Control>,
    Path(alias): Path<String>,
) -> Result<Json<TemplateAlias>, ApiError> {
    let manager = &control.app.manager;
    let found = match manager.template(&alias) {
        Ok(template) => Some(template.name),
        Err(ManagerError::TemplateNotFound(_)) => manager
            .snapshots()?
            .into_iter()
            .find(|s| s.name == alias)
            .map(|s| s.name),
        Err(err) => return Err(err.into()),
    };
    found
        .map(|name| {
            Json(TemplateAlias {
                template_id: name,
                public: false,
            })
        })
        .ok_or_else(|| ApiError::not_found(format!("template alias '{alias}' not found")))
}
