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

use http::HeaderMap;
use http::header::HeaderName;

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
}
