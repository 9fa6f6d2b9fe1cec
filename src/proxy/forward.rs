//! Forwarding one request upstream: header hygiene, the upstream URI, the
//! timeout and the single retry.

use std::sync::Arc;

use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::{PathAndQuery, Scheme, Uri};
use http::{HeaderMap, Request, Response, Version};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;

use super::ConnInfo;
use crate::config::Color;
use crate::metrics::UpstreamError;
use crate::route::Tenant;
use crate::route::endpoint::{self, Endpoint, InflightGuard};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): those named in
/// `Connection`, and the fixed list, `Upgrade` included (an upgrade puts it
/// back: `upgrade::restore`).
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    for name in [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// Rewrites the client's request head for the upstream.
pub fn prepare(
    parts: &mut Parts,
    conn: &ConnInfo,
    host: HeaderValue,
    upgrade: Option<HeaderValue>,
) {
    let headers = &mut parts.headers;
    remove_hop_by_hop(headers);
    if let Some(protocol) = upgrade {
        super::upgrade::restore(headers, protocol);
    }
    // HTTP/2 carries the host in `:authority`; upstreams speak HTTP/1.1 and
    // need it as `Host`.
    if !headers.contains_key(header::HOST) {
        headers.insert(header::HOST, host.clone());
    }
    let forwarded_for = if headers.contains_key(&X_FORWARDED_FOR) {
        // Every earlier hop, however many header lines they came in.
        let mut v = Vec::new();
        for prev in headers.get_all(&X_FORWARDED_FOR) {
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
        }
        v.extend_from_slice(conn.client_ip.as_bytes());
        HeaderValue::from_bytes(&v).unwrap_or_else(|_| conn.client_ip.clone())
    } else {
        conn.client_ip.clone()
    };
    headers.insert(X_FORWARDED_FOR.clone(), forwarded_for);
    headers.insert(X_FORWARDED_PROTO.clone(), conn.proto.clone());
    headers.insert(X_FORWARDED_HOST.clone(), host);
    parts.version = Version::HTTP_11;
}

fn upstream_uri(endpoint: &Endpoint, original: &Uri) -> Option<Uri> {
    let path = original
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(endpoint.authority.clone())
        .path_and_query(path)
        .build()
        .ok()
}

/// What came back from upstream, with the endpoint that answered.
pub struct Answer {
    pub response: Response<Incoming>,
    pub endpoint: InflightGuard,
}

/// Sends the request to `first`, retrying once on another endpoint of the
/// same pool when the connection failed and the request has no body.
pub async fn send(
    tenant: &Arc<Tenant>,
    pool: Color,
    first: Arc<Endpoint>,
    mut parts: Parts,
    body: Incoming,
    deadline: tokio::time::Instant,
) -> Result<Answer, UpstreamError> {
    use http_body::Body as _;
    let bodiless = body.is_end_stream();
    let metrics = tenant.metrics().pool(pool);
    let original_uri = std::mem::take(&mut parts.uri);
    let mut body = Some(body);
    let mut endpoint = first;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let Some(uri) = upstream_uri(&endpoint, &original_uri) else {
            metrics.upstream_error(UpstreamError::Protocol);
            return Err(UpstreamError::Protocol);
        };
        // A bodiless request can be sent again, so keep its head for a retry
        // (only when there is another endpoint to retry on).
        let can_retry = bodiless && attempt == 1 && tenant.endpoints(pool).len() > 1;
        let spare = can_retry.then(|| parts.clone());
        let mut request_parts = parts;
        request_parts.uri = uri;
        let upstream_body = match body.take() {
            Some(b) if !bodiless => Either::Left(b),
            _ => Either::Right(Empty::new()),
        };
        let request = Request::from_parts(request_parts, upstream_body);
        let guard = endpoint.start();
        let result = tokio::time::timeout_at(deadline, tenant.client.request(request)).await;
        match result {
            Ok(Ok(response)) => {
                return Ok(Answer {
                    response,
                    endpoint: guard,
                });
            }
            Ok(Err(e)) if e.is_connect() => {
                metrics.upstream_error(UpstreamError::Connect);
                tracing::debug!(tenant = tenant.name(), endpoint = %endpoint.address, error = %e, "upstream connect failed");
                let next = spare.and_then(|p| {
                    endpoint::choose(tenant.endpoints(pool), Some(&endpoint)).map(|n| (p, n))
                });
                match next {
                    Some((p, n)) => {
                        parts = p;
                        endpoint = n;
                    }
                    None => return Err(UpstreamError::Connect),
                }
            }
            Ok(Err(e)) => {
                metrics.upstream_error(UpstreamError::Protocol);
                tracing::debug!(tenant = tenant.name(), endpoint = %endpoint.address, error = %e, "upstream exchange failed");
                return Err(UpstreamError::Protocol);
            }
            Err(_elapsed) => {
                metrics.upstream_error(UpstreamError::Timeout);
                return Err(UpstreamError::Timeout);
            }
        }
    }
}
