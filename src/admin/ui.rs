//! `GET /ui`: the operator console (SPEC section 14), a page over the admin
//! API served from the binary.
//!
//! Three files under `src/admin/ui/`, compiled in with `include_str!`: the
//! page, its style sheet and its script — plain HTML, CSS and JavaScript,
//! no build step, no CDN, no framework. The page holds no secret: it calls
//! `/v1` like any client, asks for a bearer token when the API answers 401,
//! and keeps it in the tab's `sessionStorage` only.
//!
//! Every answer here carries a restrictive Content-Security-Policy (no
//! inline script or style, nothing from elsewhere, no framing), so a
//! tenant name or a reason shown on the page can never run as code; the
//! script is its own route for that reason. Writes to `/v1` that a browser
//! marks as coming from another site (`Sec-Fetch-Site`) are refused: with
//! no tokens configured, the API would otherwise act on a form any web page
//! can post to a loopback address.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;

use super::ApiError;

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/console.js");
const STYLE: &str = include_str!("ui/console.css");

/// The page's policy: its own script, style and API, nothing else.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// `GET /ui` and its assets (`segments` after `ui`): the page, `console.js`,
/// `console.css`; 404 for anything else.
pub fn asset(segments: &[&str]) -> Result<Response<Full<Bytes>>, ApiError> {
    let (body, content_type) = match segments {
        [] | [""] | ["index.html"] => (INDEX, "text/html; charset=utf-8"),
        ["console.js"] => (SCRIPT, "text/javascript; charset=utf-8"),
        ["console.css"] => (STYLE, "text/css; charset=utf-8"),
        _ => return Err(ApiError::not_found("no such console file")),
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    // The files change with the binary: a browser asks again each time.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

/// 403 for a `/v1` write a browser says another site made
/// (`Sec-Fetch-Site: cross-site` or `same-site`, Fetch Metadata): the
/// console is same-origin, `curl` and `turnout ctl` send no such header.
pub fn refuse_cross_site(method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    match headers.get("sec-fetch-site").map(HeaderValue::as_bytes) {
        Some(b"cross-site" | b"same-site") => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "a write from another web site is refused (Sec-Fetch-Site)",
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_the_three_files_and_nothing_else() {
        for (path, kind) in [
            (&[][..], "text/html"),
            (&["console.js"][..], "text/javascript"),
            (&["console.css"][..], "text/css"),
        ] {
            let resp = asset(path).unwrap();
            let ct = resp.headers()[CONTENT_TYPE].to_str().unwrap();
            assert!(ct.starts_with(kind), "{path:?}: {ct}");
            assert!(resp.headers().contains_key("content-security-policy"));
        }
        assert_eq!(
            asset(&["secret"]).unwrap_err().status,
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        assert!(!INDEX.contains("<script>") && !INDEX.contains("style="));
        assert!(INDEX.contains("src=\"/ui/console.js\""));
    }

    #[test]
    fn cross_site_writes_are_refused_reads_are_not() {
        let mut h = HeaderMap::new();
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(refuse_cross_site(&Method::POST, &h).is_err());
        assert!(refuse_cross_site(&Method::GET, &h).is_ok());
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(refuse_cross_site(&Method::PUT, &h).is_ok());
        assert!(refuse_cross_site(&Method::POST, &HeaderMap::new()).is_ok());
    }
}
