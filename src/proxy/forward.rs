//! Forwarding one request upstream: header hygiene, the upstream URI, the
//! timeout and the single retry.

use std::sync::Arc;

use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::{PathAndQuery, Uri};
use http::{HeaderMap, Request, Response, Version};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;

use super::ConnInfo;
use crate::config::Color;
use crate::metrics::UpstreamError;
use crate::route::Tenant;
use crate::route::endpoint::{self, Endpoint, InflightGuard};
use crate::upstream::{self, Lease, SendError, Upload};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The hop-by-hop headers of RFC 9110 §7.6.1 that are always removed.
static HOP_BY_HOP: [&HeaderName; 7] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
];

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): those named in
/// `Connection`, and the fixed list, `Upgrade` included (an upgrade puts it
/// back: `upgrade::restore`). One walk over the names finds which of the
/// fixed list are there, so only those are looked up again; the usual
/// `Connection: keep-alive` costs one removal and no allocation.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| *h == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // `Connection` is HOP_BY_HOP[0]; the names it lists, beyond the fixed
    // list and the `close` option, go too.
    if present & 1 != 0 {
        let mut named = Vec::new();
        for token in connection_tokens(headers) {
            if token.eq_ignore_ascii_case("close")
                || HOP_BY_HOP
                    .iter()
                    .any(|h| token.eq_ignore_ascii_case(h.as_str()))
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                named.push(name);
            }
        }
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
}

/// The options of every `Connection` header line, trimmed.
pub fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
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

/// The request target for the upstream: origin-form (`/path?query`), as
/// HTTP/1.1 origin servers expect. An HTTP/2 request (or a proxy-style
/// absolute-form one) carries scheme and authority in its URI; `Host`
/// already names the authority.
fn origin_form(uri: Uri) -> Uri {
    if uri.scheme().is_none() && uri.authority().is_none() {
        return uri;
    }
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::from(path)
}

/// What came back from upstream, with the endpoint that answered and the
/// connection, to be returned to its pool when the body has been read.
pub struct Answer {
    pub response: Response<Incoming>,
    pub endpoint: InflightGuard,
    pub lease: Lease,
}

/// Sends the request to `first`, retrying once on another endpoint of the
/// same pool when no connection could be opened and the request has no
/// body (SPEC §4, item 6; retries on the same endpoint are `upstream::send`'s).
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
    parts.uri = origin_form(std::mem::take(&mut parts.uri));
    let (upstream_body, upload) = if bodiless {
        (Either::Right(Empty::new()), None)
    } else {
        let (upload, sent) = Upload::new(body);
        (Either::Left(upload), Some(sent))
    };
    let mut request = Request::from_parts(parts, upstream_body);
    let mut endpoint = first;
    let mut retried = false;
    let connect_timeout = tenant.config.settings.connect_timeout;
    loop {
        let guard = endpoint.start();
        let sent = upstream::send(
            &endpoint.connections,
            &endpoint.address,
            connect_timeout,
            request,
        );
        match tokio::time::timeout_at(deadline, sent).await {
            Ok(Ok((response, sender))) => {
                return Ok(Answer {
                    response,
                    lease: Lease::new(sender, Arc::clone(&endpoint), upload),
                    endpoint: guard,
                });
            }
            Ok(Err(SendError::Connect(e, unsent))) => {
                metrics.upstream_error(UpstreamError::Connect);
                tracing::debug!(tenant = tenant.name(), endpoint = %endpoint.address, error = %e, "upstream connect failed");
                let next = (bodiless && !retried)
                    .then(|| endpoint::choose(tenant.endpoints(pool), Some(&endpoint)))
                    .flatten();
                match next {
                    Some(n) => {
                        request = *unsent;
                        endpoint = n;
                        retried = true;
                    }
                    None => return Err(UpstreamError::Connect),
                }
            }
            Ok(Err(SendError::Exchange(e))) => {
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
