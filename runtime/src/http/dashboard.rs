//! The dashboard: one page and its script and style, embedded in the binary and served at `/`
//! and `/ui/…`, with no build step (plain JavaScript modules, `dashboard/`). The page holds no
//! data: it reads the API like any client, with the token the person enters, so these routes
//! need none themselves. `docs/dashboard.md` describes what it shows.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const APP_CSS: &str = include_str!("dashboard/app.css");

/// The page's policy: its own script and style only, and the API of the same origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn with_type(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// `GET /`: the page.
pub(super) async fn index() -> Response {
    let mut r = with_type("text/html; charset=utf-8", INDEX);
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    r
}

/// `GET /ui/{file}`: the script and the style.
pub(super) async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => with_type("text/javascript; charset=utf-8", APP_JS),
        "app.css" => with_type("text/css; charset=utf-8", APP_CSS),
        _ => super::error::ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no dashboard file {file:?}"),
        )
        .into_response(),
    }
}
