//! Probes in the endpoint's own protocol (SPEC section 15): `GET path`
//! over `h2c://` or `https://` (with the tenant's upstream TLS), and the
//! gRPC health checking protocol, `grpc.health.v1.Health/Check`, when
//! `health.grpc = true` — what a gRPC-only server answers, as Envoy's and
//! Traefik's gRPC health checks send.
//!
//! Each probe opens a connection of its own (`upstream::probe`), as
//! HAProxy's `check-ssl` does, so a probe never waits behind requests on
//! the shared HTTP/2 connection and a broken handshake shows at once.

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full};

use crate::config::HealthSettings;
use crate::route::Endpoint;

/// `grpc.health.v1.HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u64 = 1;

/// A `Check` request for the whole server: the empty `HealthCheckRequest`
/// (`service = ""`) in one uncompressed gRPC frame (a zero flag byte and
/// a zero length).
const CHECK_ALL: &[u8] = &[0, 0, 0, 0, 0];

/// Why a probe failed: the endpoint's failure as text, or an error whose
/// cause may be the proxy's own (the caller tells which).
pub(super) enum ProbeError {
    /// The endpoint answered, but not well.
    Answer(String),
    /// No answer: connecting or the exchange failed.
    Exchange(Box<dyn std::error::Error + Send + Sync>),
}

/// One probe of `endpoint` in its protocol: `GET path` passing on 2xx or
/// 3xx, or with `grpc`, `Health/Check` passing on `SERVING`.
pub(super) async fn probe(
    endpoint: &Endpoint,
    settings: &HealthSettings,
    connect_timeout: std::time::Duration,
) -> Result<(), ProbeError> {
    // The name an address of a name came from, as plain HTTP/1.1 probes
    // send it (SPEC section 13); else the address dialled.
    let authority = endpoint.name.as_deref().unwrap_or(endpoint.dial());
    let builder = Request::builder()
        .header(header::HOST, authority)
        .header(header::USER_AGENT, "turnout-health");
    let request = if settings.grpc {
        builder
            .method(Method::POST)
            .uri("/grpc.health.v1.Health/Check")
            .header(header::CONTENT_TYPE, "application/grpc")
            .header(header::TE, "trailers")
            .body(Full::new(Bytes::from_static(CHECK_ALL)))
    } else {
        builder
            .method(Method::GET)
            .uri(settings.path.as_str())
            .body(Full::new(Bytes::new()))
    }
    .map_err(|e| ProbeError::Answer(e.to_string()))?;
    let response = crate::upstream::probe(&endpoint.connections, connect_timeout, request)
        .await
        .map_err(ProbeError::Exchange)?;
    let status = response.status();
    let (head, body) = response.into_parts();
    let collected = body
        .collect()
        .await
        .map_err(|e| ProbeError::Exchange(Box::new(e)))?;
    if !settings.grpc {
        return if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(ProbeError::Answer(format!("status {status}")))
        };
    }
    if !status.is_success() {
        return Err(ProbeError::Answer(format!(
            "gRPC check: HTTP status {status}"
        )));
    }
    // The status is in the trailers, or in the head of a trailers-only
    // answer.
    let grpc_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| head.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if grpc_status.as_deref() != Some("0") {
        return Err(ProbeError::Answer(format!(
            "gRPC check: grpc-status {}",
            grpc_status.as_deref().unwrap_or("missing")
        )));
    }
    match serving_status(&collected.to_bytes()) {
        Some(SERVING) => Ok(()),
        Some(other) => Err(ProbeError::Answer(format!(
            "gRPC check: serving status {other}, not SERVING"
        ))),
        None => Err(ProbeError::Answer(
            "gRPC check: no HealthCheckResponse".to_owned(),
        )),
    }
}

/// The `status` (field 1, a varint enum) of the one
/// `HealthCheckResponse` in a gRPC message body; 0 (UNKNOWN) when the
/// field is absent, as protobuf's default. `None` when the body is not one
/// uncompressed gRPC message.
fn serving_status(body: &[u8]) -> Option<u64> {
    let (&[flag, a, b, c, d], message) = body.split_first_chunk::<5>()?;
    let length = u32::from_be_bytes([a, b, c, d]) as usize;
    if flag != 0 || message.len() != length {
        return None;
    }
    let mut rest = message;
    let mut status = 0;
    while let Some((key, after)) = varint(rest) {
        let (field, wire) = (key >> 3, key & 7);
        rest = match wire {
            0 => {
                let (value, after) = varint(after)?;
                if field == 1 {
                    status = value;
                }
                after
            }
            2 => {
                let (len, after) = varint(after)?;
                after.get(usize::try_from(len).ok()?..)?
            }
            1 => after.get(8..)?,
            5 => after.get(4..)?,
            _ => return None,
        };
    }
    rest.is_empty().then_some(status)
}

/// A protobuf varint and the bytes after it.
fn varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_serving_status() {
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(1));
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 2]), Some(2));
        assert_eq!(serving_status(&[0, 0, 0, 0, 0]), Some(0));
        // An unknown length-delimited field is skipped.
        assert_eq!(
            serving_status(&[0, 0, 0, 0, 5, 0x12, 1, b'x', 0x08, 1]),
            Some(1)
        );
        assert_eq!(
            serving_status(&[1, 0, 0, 0, 2, 0x08, 1]),
            None,
            "compressed"
        );
        assert_eq!(serving_status(&[0, 0, 0, 0, 3, 0x08, 1]), None, "short");
        assert_eq!(serving_status(&[0, 0]), None);
    }
}
