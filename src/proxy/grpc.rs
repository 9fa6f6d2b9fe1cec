//! A gRPC call's outcome, judged by its `grpc-status` (SPEC sections 6 and
//! 15) rather than only its HTTP status: gRPC answers most failures with
//! HTTP 200 and the real status in the trailers — or, for a call that
//! fails before any message, in the response head ("trailers-only").
//!
//! The statuses that are the server's doing count as errors of the pool:
//! UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE and DATA_LOSS — the
//! ones Envoy's and Istio's retry and outlier policies treat as the
//! server's failures. The others (NOT_FOUND, INVALID_ARGUMENT,
//! PERMISSION_DENIED, …) say the caller asked for something it may not
//! have, as a 4xx does, and never revert a release.

use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode};

use super::body::ProxyBody;

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// `grpc-status` codes that are errors of the pool (gRPC's
/// `statuscodes.md`): UNKNOWN 2, DEADLINE_EXCEEDED 4, INTERNAL 13,
/// UNAVAILABLE 14, DATA_LOSS 15.
pub const POOL_ERRORS: [u32; 5] = [2, 4, 13, 14, 15];

/// Whether `headers` (a response head or its trailers) carry a
/// `grpc-status` that is an error of the pool.
pub fn failed(headers: &HeaderMap) -> bool {
    headers
        .get(&GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u32>().ok())
        .is_some_and(|code| POOL_ERRORS.contains(&code))
}

/// Whether a request is a gRPC call: its `content-type` is
/// `application/grpc` or one of its `+format` variants (gRPC's
/// `PROTOCOL-HTTP2.md`; Envoy's `isGrpcRequestHeaders`).
pub fn is_request(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16
            && v[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(v.get(16), None | Some(b'+' | b';'))
    })
}

/// The gRPC status for an HTTP status turnout answers itself, by gRPC's
/// `http-grpc-status-mapping.md` (as Envoy maps its local replies): 400
/// INTERNAL, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 404
/// UNIMPLEMENTED, 429/502/503/504 UNAVAILABLE, anything else UNKNOWN.
pub fn status_for(http: StatusCode) -> u32 {
    match http.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// A gRPC "trailers-only" answer for a call turnout could not forward:
/// HTTP 200, `content-type: application/grpc`, `grpc-status` from
/// [`status_for`]`(http)` and `message` as `grpc-message`
/// (percent-encoded as gRPC's `PROTOCOL-HTTP2.md` asks), no body — what a
/// gRPC client reads as that status rather than as a malformed response.
pub fn local_reply(http: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(bytes::Bytes::new()));
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(&GRPC_STATUS, HeaderValue::from(status_for(http)));
    if let Ok(v) = HeaderValue::from_str(&percent_encoded(message.trim_end())) {
        headers.insert(HeaderName::from_static("grpc-message"), v);
    }
    resp
}

/// `grpc-message` encoding: bytes outside printable ASCII, and `%`, as
/// `%XX`.
fn percent_encoded(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_servers_failures_count() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-status", v.parse().unwrap());
            h
        };
        for code in ["2", "4", "13", "14", "15"] {
            assert!(failed(&with(code)), "{code}");
        }
        for code in ["0", "1", "3", "5", "7", "12", "16", "x", ""] {
            assert!(!failed(&with(code)), "{code}");
        }
        assert!(!failed(&HeaderMap::new()));
    }

    #[test]
    fn grpc_requests_and_local_replies() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
            h
        };
        assert!(is_request(&with("application/grpc")));
        assert!(is_request(&with("application/grpc+proto")));
        assert!(is_request(&with("Application/GRPC; charset=utf-8")));
        assert!(!is_request(&with("application/grpcx")));
        assert!(!is_request(&with("application/json")));
        assert!(!is_request(&HeaderMap::new()));
        assert_eq!(status_for(StatusCode::SERVICE_UNAVAILABLE), 14);
        assert_eq!(status_for(StatusCode::TOO_MANY_REQUESTS), 14);
        assert_eq!(status_for(StatusCode::FORBIDDEN), 7);
        assert_eq!(status_for(StatusCode::MISDIRECTED_REQUEST), 2);
        let resp = local_reply(StatusCode::BAD_GATEWAY, "no answer: 100% lost\n");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert_eq!(resp.headers()["grpc-message"], "no answer: 100%25 lost");
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/grpc");
    }
}
