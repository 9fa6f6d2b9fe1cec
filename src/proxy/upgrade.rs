//! WebSocket and other `Upgrade` requests: forwarded with their `Upgrade`
//! header, and when the upstream agrees (101), the two connections are
//! joined and bytes copied both ways until either side closes.
//!
//! The request's exchange — its tenant slot, endpoint in-flight count and
//! metrics — lives as long as the tunnel, so an open WebSocket counts
//! against `max_inflight`, and the drain waits for it.
//!
//! `h2c` is never an upgrade through turnout (SPEC section 4.5): a tunnel
//! would carry HTTP/2 streams past routing and accounting, so the token is
//! dropped (with `HTTP2-Settings`) and the request proxied as a plain one.
//! An upstream `101` is accepted only for a protocol the client asked for;
//! any other is the upstream breaking the exchange (502).

use http::header::{self, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::X_TURNOUT_POOL;
use super::body::{Accounting, ProxyBody};
use super::conn::TunnelGuard;
use crate::config::Pool;

/// The protocols an HTTP/1.1 request asks to switch to, if it does, with
/// `h2c` left out.
pub fn requested<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11
        || !super::forward::connection_tokens(req.headers())
            .any(|token| token.eq_ignore_ascii_case("upgrade"))
    {
        return None;
    }
    let mut upgrades = req.headers().get_all(header::UPGRADE).iter();
    let value = upgrades.next()?;
    if upgrades.next().is_some() {
        // One `Upgrade` line is what clients send; several are refused
        // rather than guessed at.
        return None;
    }
    let text = value.to_str().ok()?;
    if !tokens(text).any(is_h2c) {
        return Some(value.clone());
    }
    let rest: Vec<&str> = tokens(text).filter(|t| !is_h2c(t)).collect();
    if rest.is_empty() {
        return None;
    }
    HeaderValue::from_str(&rest.join(", ")).ok()
}

/// Whether an upstream's `101` switches to a protocol the client asked for
/// (`requested`'s value); the protocol names compare without their
/// versions' case (RFC 9110 §7.8).
pub fn agreed<B>(requested: &HeaderValue, response: &Response<B>) -> bool {
    let Some(chosen) = response
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Ok(asked) = requested.to_str() else {
        return false;
    };
    tokens(chosen).next().is_some()
        && tokens(chosen).all(|c| tokens(asked).any(|a| a.eq_ignore_ascii_case(c)))
}

fn tokens(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|t| !t.is_empty())
}

fn is_h2c(token: &str) -> bool {
    token.eq_ignore_ascii_case("h2c")
}

/// Puts back the two headers hop-by-hop removal took from an upgrade.
pub fn restore(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::UPGRADE, protocol);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

/// The 101 sent to the client: the upstream's, minus its other hop-by-hop
/// headers, naming the pool.
pub fn switching_response<B>(upstream: &Response<B>, pool: Pool) -> Response<ProxyBody> {
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
    exchange: Accounting,
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
