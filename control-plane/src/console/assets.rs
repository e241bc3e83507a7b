//! The page's files, built by `npm run build` in `control-plane/console/`
//! (the test command rebuilds them and fails when the committed build is
//! stale) and compiled into the binary: nothing is read from disk or the
//! network at run time.

use axum::{
    extract::Path,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

const INDEX_HTML: &[u8] = include_bytes!("../../console/dist/index.html");
const APP_JS: &[u8] = include_bytes!("../../console/dist/app.js");
const APP_JS_GZ: &[u8] = include_bytes!("../../console/dist/app.js.gz");
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

/// Whether the request says it takes gzip.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or_default().trim();
            let refused = parts.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            name.eq_ignore_ascii_case("gzip") && !refused
        })
}

/// `GET /assets/{file}`
pub async fn file(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match file.as_str() {
        "app.js" if accepts_gzip(&headers) => {
            let mut response = asset(APP_JS_GZ, "text/javascript; charset=utf-8");
            let h = response.headers_mut();
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
            response
        }
        "app.js" => {
            let mut response = asset(APP_JS, "text/javascript; charset=utf-8");
            response
                .headers_mut()
                .insert(header::VARY, HeaderValue::from_static("accept-encoding"));
            response
        }
        "app.css" => asset(APP_CSS, "text/css; charset=utf-8"),
        _ => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepting(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(value).unwrap(),
        );
        headers
    }

    #[test]
    fn gzip_is_sent_only_to_those_who_take_it() {
        assert!(accepts_gzip(&accepting("gzip, deflate, br, zstd")));
        assert!(accepts_gzip(&accepting("br;q=1.0, GZIP;q=0.5")));
        assert!(!accepts_gzip(&accepting("gzip;q=0")));
        assert!(!accepts_gzip(&accepting("identity")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn the_embedded_gzip_is_the_embedded_script() {
        use std::io::Read;
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(APP_JS_GZ)
            .read_to_end(&mut unzipped)
            .expect("gunzip");
        assert!(unzipped == APP_JS, "dist/app.js.gz is dist/app.js");
        assert!(APP_JS_GZ.len() * 2 < APP_JS.len(), "worth sending");
    }
}
