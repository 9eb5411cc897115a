//! The test UI at `GET /test`: one self-contained page (inline CSS and
//! vanilla JS, no build step, no external URLs) that drives the REST API
//! under `/v1` from a browser: create, pause, resume, destroy, exec, and
//! create/list/delete snapshots, with each sandbox's state and timings.
//!
//! The page is `index.html` beside this file, compiled in. Elements the
//! browser test (`tests/ui.rs`) relies on carry `data-testid` attributes.

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;

use crate::state::AppState;

/// The page, compiled into the binary.
pub const INDEX_HTML: &str = include_str!("index.html");

/// `GET /test`.
pub fn router(state: AppState) -> Router {
    Router::new().route("/test", get(page)).with_state(state)
}

/// The page as `text/html; charset=utf-8`; never cached, so a new agent's
/// page is what a reload shows.
async fn page() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], Html(INDEX_HTML))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn page_is_served_as_utf8_html_without_caching() {
        // Arrange
        let expected_type = "text/html; charset=utf-8";

        // Act
        let response = page().await.into_response();

        // Assert
        assert_eq!(response.status(), axum::http::StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers[header::CONTENT_TYPE], expected_type);
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    }

    #[test]
    fn page_is_self_contained() {
        // Arrange
        let page = INDEX_HTML;

        // Act
        let external = ["http://", "https://", "//cdn", "src=\"/", "href=\"/"]
            .iter()
            .filter(|needle| page.contains(*needle))
            .collect::<Vec<_>>();

        // Assert
        assert!(page.starts_with("<!doctype html>"));
        assert!(external.is_empty(), "external references: {external:?}");
        for id in [
            "create-form",
            "sandboxes",
            "exec-form",
            "exec-stdout",
            "snapshots",
            "error",
        ] {
            assert!(page.contains(&format!("data-testid=\"{id}\"")), "{id}");
        }
    }
}
