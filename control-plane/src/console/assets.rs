//! The page's files, built by `npm run build` in `control-plane/console/`
//! (the test command rebuilds them and fails when the committed build is
//! stale) and compiled into the binary: nothing is read from disk or the
//! network at run time.

use axum::{
    extract::Path,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

const INDEX_HTML: &[u8] = include_bytes!("../../console/dist/index.html");
const APP_JS: &[u8] = include_bytes!("../../console/dist/app.js");
const APP_CSS: &[u8] = include_bytes!("../../console/dist/app.css");

fn asset(body: &'static [u8], content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // Small files; always revalidated so a new binary's page is
            // never mixed with an old script.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// `GET /`
pub async fn index() -> Response {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}

/// `GET /assets/{file}`
pub async fn file(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => asset(APP_JS, "text/javascript; charset=utf-8"),
        "app.css" => asset(APP_CSS, "text/css; charset=utf-8"),
        _ => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}
