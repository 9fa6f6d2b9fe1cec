//! WebSocket and other `Upgrade` requests: forwarded with their `Upgrade`
//! header, and when the upstream agrees (101), the two connections are
//! joined and bytes copied both ways until either side closes.
//!
//! The request's exchange — its tenant slot, endpoint in-flight count and
//! metrics — lives as long as the tunnel, so an open WebSocket counts
//! against `max_inflight`, and the drain waits for it.

use http::header::{self, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::X_TURNOUT_POOL;
use super::body::{Exchange, ProxyBody};
use crate::config::Color;
use crate::server::TunnelGuard;

/// The protocol an HTTP/1.1 request asks to switch to, if it does.
pub fn requested<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11
        || !super::forward::connection_tokens(req.headers())
            .any(|token| token.eq_ignore_ascii_case("upgrade"))
    {
        return None;
    }
    req.headers().get(header::UPGRADE).cloned()
}

/// Puts back the two headers hop-by-hop removal took from an upgrade.
pub fn restore(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::UPGRADE, protocol);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

/// The 101 sent to the client: the upstream's, minus its other hop-by-hop
/// headers, naming the pool.
pub fn switching_response<B>(upstream: &Response<B>, pool: Color) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(bytes::Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let mut headers = upstream.headers().clone();
    let protocol = headers.get(header::UPGRADE).cloned();
    super::forward::remove_hop_by_hop(&mut headers);
    if let Some(p) = protocol {
        restore(&mut headers, p);
    }
    headers.insert(
        X_TURNOUT_POOL.clone(),
        HeaderValue::from_static(pool.as_str()),
    );
    *resp.headers_mut() = headers;
    resp
}

/// Joins the client's and the upstream's upgraded connections.
pub fn spawn_tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    exchange: Exchange,
    guard: TunnelGuard,
) {
    tokio::spawn(async move {
        match tokio::try_join!(client, upstream) {
            Ok((client, upstream)) => {
                let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    tracing::debug!(tenant = exchange.tenant.name(), error = %e, "tunnel closed with an error");
                }
            }
            Err(e) => {
                tracing::debug!(tenant = exchange.tenant.name(), error = %e, "upgrade failed")
            }
        }
        drop(exchange);
        drop(guard);
    });
}
