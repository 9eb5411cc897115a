//! The test UI at `GET /test`: one self-contained page (inline CSS and
//! vanilla JS, no build step, no external URLs) that drives the REST API
//! under `/v1` from a browser: create, pause, resume, destroy, exec, and
//! create/list/delete snapshots, with each sandbox's state and timings.
//!
//! The page is `index.html` beside this file, compiled in. Elements the
//! browser test (`tests/ui.rs`) relies on carry `data-testid` attributes.
//!
//! Like every route, `/test` needs an API key: a browser opening it gets a
//! Basic-auth challenge and asks for one (any user name, the key as the
//! password). The page is then served with that key in a
//! `<meta name="petrel-api-key">` tag, never cached, and its script sends
//! the key as `X-API-KEY` on every call.

use axum::Router;
use axum::http::{HeaderMap, header};
use axum::response::{Html, IntoResponse};
use axum::routing::get;

use crate::state::AppState;

/// The page, compiled into the binary.
pub const INDEX_HTML: &str = include_str!("index.html");

/// `GET /test`.
pub fn router(state: AppState) -> Router {
    Router::new().route("/test", get(page)).with_state(state)
}

/// The page as `text/html; charset=utf-8` with the caller's key (checked
/// by the listener's guard) in it; never cached.
async fn page(headers: HeaderMap) -> impl IntoResponse {
    let key = crate::auth::credential(&headers).unwrap_or_default();
    ([(header::CACHE_CONTROL, "no-store")], Html(with_key(&key)))
}

/// [`INDEX_HTML`] with `key` in its `petrel-api-key` meta tag.
fn with_key(key: &str) -> String {
    let escaped: String = key
        .chars()
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&#39;".to_string(),
            c => c.to_string(),
        })
        .collect();
    INDEX_HTML.replacen(
        "<head>",
        &format!("<head>\n<meta name=\"petrel-api-key\" content=\"{escaped}\">"),
        1,
    )
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
        let response = page(HeaderMap::new()).await.into_response();

        // Assert
        assert_eq!(response.status(), axum::http::StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers[header::CONTENT_TYPE], expected_type);
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    }

    #[test]
    fn key_is_escaped_into_the_meta_tag() {
        let page = with_key("e2b_\"><script>");

        assert!(
            page.contains(
                "<meta name=\"petrel-api-key\" content=\"e2b_&quot;&gt;&lt;script&gt;\">"
            )
        );
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
