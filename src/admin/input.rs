//! What the admin API takes from a request: JSON bodies (bounded), query
//! flags, `If-Match`, and the free text (`reason`) that ends up in events
//! and log lines. Every refusal is an `ApiError` with status 400 or 413.

use http::header::IF_MATCH;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;

use super::ApiError;

/// The largest admin request body accepted (SPEC section 11).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The longest `reason` accepted, in bytes: a sentence, not a document.
/// Each of the thousand events kept in memory holds one.
pub const MAX_REASON_BYTES: usize = 1024;

/// `PUT /v1/tenants/{name}/weights`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightsBody {
    /// The blue weight; checked by `Weights::new` (at most `Weights::MAX`,
    /// not both 0), a 400 otherwise.
    pub blue: u32,
    /// The green weight, likewise.
    pub green: u32,
    /// Free text recorded in the event; log-safe, at most
    /// [`MAX_REASON_BYTES`].
    pub reason: Option<String>,
}

/// The optional body of the POST calls.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    /// As [`WeightsBody::reason`].
    pub reason: Option<String>,
}

/// A `reason` goes into events, log lines, webhooks and `ctl events`
/// output, so it is refused (400) when it could forge or hide a line there
/// (SPEC §11): control characters such as CR and LF, Unicode line
/// separators and bidirectional overrides. Refusing rather than escaping
/// keeps the reason an operator reads the reason that was sent.
pub(super) fn checked_reason(reason: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(reason) = reason else {
        return Ok(None);
    };
    if let Some((at, c)) = crate::config::validate::log_unsafe_char(&reason) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "reason must not contain control characters or line breaks: U+{:04X} at character {}",
                u32::from(c),
                at + 1
            ),
        ));
    }
    if reason.len() > MAX_REASON_BYTES {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("reason must be at most {MAX_REASON_BYTES} bytes"),
        ));
    }
    Ok(Some(reason))
}

/// `If-Match: "<generation>"` (quotes optional).
pub(super) fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get(IF_MATCH) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .map(|s| s.trim().trim_start_matches("W/").trim_matches('"'))
        .and_then(|s| s.parse().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "If-Match must be a generation number, such as \"12\"",
            )
        })
}

pub(super) fn query_value<'q>(query: Option<&'q str>, key: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        pair.split_once('=')
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .or((pair == key).then_some(""))
    })
}

pub(super) fn query_flag(query: Option<&str>, key: &str) -> bool {
    matches!(query_value(query, key), Some("" | "true" | "1"))
}

/// Reads a JSON body of at most `MAX_BODY_BYTES`; `None` for an empty body.
pub(super) async fn read_json<T: DeserializeOwned>(
    req: Request<Incoming>,
) -> Result<Option<T>, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body over {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(too_large());
    }
    let body = Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, format!("cannot read body: {e}"))
            }
        })?
        .to_bytes();
    decode(&body)
}

/// Decodes an admin request body; `None` for an empty one. Public for the
/// fuzz targets: no byte string may make it panic.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<Option<T>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn reads_query_values() {
        assert_eq!(query_value(Some("tenant=a&limit=5"), "limit"), Some("5"));
        assert_eq!(query_value(Some("force"), "force"), Some(""));
        assert_eq!(query_value(Some("forced=1"), "force"), None);
        assert!(query_flag(Some("force=true"), "force"));
        assert!(!query_flag(Some("force=false"), "force"));
        assert!(!query_flag(None, "force"));
    }

    #[test]
    fn parses_if_match() {
        let mut h = HeaderMap::new();
        assert_eq!(if_match(&h).unwrap(), None);
        h.insert(IF_MATCH, HeaderValue::from_static("\"12\""));
        assert_eq!(if_match(&h).unwrap(), Some(12));
        h.insert(IF_MATCH, HeaderValue::from_static("7"));
        assert_eq!(if_match(&h).unwrap(), Some(7));
        h.insert(IF_MATCH, HeaderValue::from_static("\"x\""));
        assert_eq!(if_match(&h).unwrap_err().status, StatusCode::BAD_REQUEST);
    }
}
