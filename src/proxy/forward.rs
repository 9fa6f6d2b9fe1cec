//! Forwarding one request upstream: header hygiene both ways, the upstream
//! URI, message framing, the timeout and the single retry.
//!
//! Why one module: what crosses the proxy — hop-by-hop headers (RFC 9110
//! §7.6.1), framing (RFC 9112 §6), `X-Forwarded-*`, HTTP/2 cookies (RFC
//! 9113 §8.2.3) — decides what an upstream can be tricked into, so the
//! rules for both directions sit together, out of `Proxy::handle`'s
//! straight line. The retry on another endpoint lives here, where the pool
//! is known; `upstream::send` only replaces a stale kept-alive connection to
//! the same endpoint.

use std::pin::pin;
use std::sync::Arc;

use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::{PathAndQuery, Uri};
use http::{HeaderMap, Request, Response, Version};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;

use super::conn::ConnInfo;
use super::error::ProxyError;
use super::timer::Deadline;
use crate::config::Pool;
use crate::metrics::{LocalError, UpstreamError};
use crate::route::Tenant;
use crate::route::endpoint::{self, Endpoint, InflightGuard};
use crate::upstream::{self, Lease, Rescuable, SendError, Upload};

/// `X-Forwarded-For`: the client's IP is appended to the earlier hops'
/// list (all its fields joined into one, comma-separated), as nginx's
/// `$proxy_add_x_forwarded_for` does.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`: set (replacing the client's) to `http` or `https`,
/// the scheme the client used to reach turnout.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`: set (replacing the client's) to the authoritative
/// host the request was routed by, port included as the client sent it.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// The hop-by-hop headers of RFC 9110 §7.6.1 (and RFC 7540 §3.2's
/// `HTTP2-Settings`) that are always removed. `Trailer` is not one: it
/// names the trailer fields end to end, and hyper sends an HTTP/1.1
/// client only the trailers it lists (SPEC section 4.5).
static HOP_BY_HOP: [&HeaderName; 7] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TE,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &HTTP2_SETTINGS,
];

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): those named in
/// `Connection`, and the fixed list, `Upgrade` included (an upgrade puts it
/// back: `upgrade::restore`). One walk over the names finds which of the
/// fixed list are there, so only those are looked up again; the usual
/// `Connection: keep-alive` costs one removal and no allocation.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    remove_hop_by_hop_but(headers, false);
}

/// [`remove_hop_by_hop`], keeping `TE: trailers` when `keep_trailers` and
/// the request's `TE` lists it (SPEC 4.5: gRPC needs it). `TE` is looked at
/// only when the one walk over the names found it.
fn remove_hop_by_hop_but(headers: &mut HeaderMap, keep_trailers: bool) {
    let mut present = 0u8;
    // The names `Connection` lists, beyond the fixed list and the `close`
    // option, go too: read from its lines during the same walk.
    let mut named = Vec::new();
    for (name, value) in headers.iter() {
        let Some(i) = hop_by_hop_index(name) else {
            continue;
        };
        present |= 1 << i;
        if i == 0 {
            let options = value.to_str().ok().into_iter().flat_map(|v| v.split(','));
            for token in options.map(str::trim) {
                if !is_close_or_fixed(token)
                    && let Ok(name) = HeaderName::from_bytes(token.as_bytes())
                {
                    named.push(name);
                }
            }
        }
    }
    if present == 0 {
        return;
    }
    for name in named {
        headers.remove(name);
    }
    // `TE` is HOP_BY_HOP[3].
    let trailers = keep_trailers && present & (1 << 3) != 0 && wants_trailers(headers);
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Whether a `Connection` option is `close` or names a header of the fixed
/// list (removed anyway), any case; by length first, as
/// [`hop_by_hop_index`] does.
fn is_close_or_fixed(token: &str) -> bool {
    let is = |name: &str| token.eq_ignore_ascii_case(name);
    match token.len() {
        2 => is("te"),
        5 => is("close"),
        7 => is("upgrade"),
        10 => is("connection") || is("keep-alive"),
        14 => is("http2-settings"),
        16 => is("proxy-connection"),
        17 => is("transfer-encoding"),
        _ => false,
    }
}

/// The index in [`HOP_BY_HOP`] of `name`, if it is one of them. A match on
/// the name's text (compiled to a switch on its length, then one compare)
/// rather than seven `HeaderName` comparisons per field: this runs for
/// every field of every request and response head.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    match name.as_str() {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "proxy-connection" => Some(2),
        "te" => Some(3),
        "transfer-encoding" => Some(4),
        "upgrade" => Some(5),
        "http2-settings" => Some(6),
        _ => None,
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

/// Whether the request's `TE` lists `trailers` (RFC 9110 §10.1.4).
fn wants_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
}

/// Rewrites the client's request head for the upstream: hop-by-hop
/// headers out (`TE: trailers` kept, as gRPC needs), the authoritative
/// `host` as `Host` (`proxy::authority`), an HTTP/2 request's `cookie`
/// fields joined into one (RFC 9113 §8.2.3), a `Content-Length` that does
/// not frame the body dropped, `X-Forwarded-*` set.
pub fn prepare(
    parts: &mut Parts,
    conn: &ConnInfo,
    host: HeaderValue,
    upgrade: Option<HeaderValue>,
    body_length: Option<u64>,
) {
    let headers = &mut parts.headers;
    remove_hop_by_hop_but(headers, true);
    if let Some(protocol) = upgrade {
        super::upgrade::restore(headers, protocol);
    }
    if parts.version == Version::HTTP_2 {
        join_cookies(headers);
    }
    // A chunked upload (a length beside it or not, RFC 9112 §6.1) has no
    // exact size: its length goes.
    fix_length(headers, body_length);
    headers.insert(header::HOST, host.clone());
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

/// HTTP/2 sends each cookie as a field of its own; HTTP/1.1 allows one
/// `Cookie` line, the pairs joined by `"; "` (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (cookies.next(), cookies.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for more in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(more.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// Keeps `Content-Length` only when it is the body's real length: a body
/// framed otherwise (chunked, or an HTTP/2 stream) must not reach an
/// HTTP/1.1 peer with a length that does not match it (RFC 9112 §6.3).
/// `exact` is the body's exact length when its framing gives one — for a
/// body hyper read, that is `Content-Length` itself: hyper's HTTP/1 parser
/// frames a body by that field only when no `Transfer-Encoding` overrides
/// it and all its values agree (else it refuses the message), and the h2
/// crate holds an HTTP/2 stream to the field it declares. Both accept a
/// list of agreeing values (`10, 10`) or the field repeated, which a
/// sender must not pass on (RFC 9110 §8.6: `1*DIGIT`; nginx answers a
/// repeated field 400, an h2 peer resets a list): those become one plain
/// value. A single plain value — nearly every message — is left as it is.
pub fn fix_length(headers: &mut HeaderMap, exact: Option<u64>) {
    let Some(n) = exact else {
        headers.remove(header::CONTENT_LENGTH);
        return;
    };
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let plain = match (values.next(), values.next()) {
        (None, _) => return,
        (Some(one), None) => !one.is_empty() && one.as_bytes().iter().all(u8::is_ascii_digit),
        (Some(_), Some(_)) => false,
    };
    if !plain {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
}

/// Rewrites the upstream's response head for the client: hop-by-hop
/// headers out, and a `Content-Length` that does not frame the body (an
/// upstream that sent it beside chunked framing) dropped — chunked framing
/// wins (RFC 9112 §6.3). `body` is the upstream body, whose framing hyper
/// read; a bodiless answer (HEAD, 204, 304) keeps its length as sent.
pub fn prepare_response<B: http_body::Body>(headers: &mut HeaderMap, body: &B) {
    // A chunked body (with or without a length beside it) has no exact
    // size: `fix_length` drops the length.
    if !body.is_end_stream() {
        fix_length(headers, body.size_hint().exact());
    }
    remove_hop_by_hop(headers);
}

/// What an abandoned exchange holds while it finishes in the background
/// (`upstream::Rescuable`): a slot of the tenant's `max_inflight` and the
/// endpoint's in-flight count.
fn slots(tenant: &Tenant, endpoint: &Arc<Endpoint>) -> upstream::Holder {
    let (state, endpoint) = (Arc::clone(&tenant.state), Arc::clone(endpoint));
    Box::new(move || Box::new((state.hold(), endpoint.start())))
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
pub struct UpstreamResponse {
    /// The upstream's response, head read, body still streaming.
    pub response: Response<Incoming>,
    /// The in-flight slot of the endpoint that answered; held until the
    /// exchange settles.
    pub endpoint: InflightGuard,
    /// The connection the response came on.
    pub lease: Lease,
}

/// Why no answer came back, and the endpoint last tried (for the access
/// log).
pub struct Failure {
    /// What failed; it owns the status the client gets.
    pub error: ProxyError,
    /// The endpoint of the last attempt.
    pub tried: Arc<Endpoint>,
}

/// Sends the request to `first` — the one retry loop: once on another
/// endpoint of the same pool when no connection could be opened and the
/// request has no body (SPEC §4, item 6), once on a new connection when a
/// reused one turned out stale (`upstream::send`). The error of the answer
/// is counted by the caller (`ProxyError::count`).
/// A connection the proxy could not open for a reason of its own (out of
/// file descriptors, ports) is a local failure: not the endpoint's, not
/// retried. `deadline`: the request's `request_timeout`, for every attempt
/// together (its end is a 504, or a 408 when the client's body stalled).
/// `rescuable`: the exchange may finish in the background when the client
/// abandons it (`upstream::Rescuable`).
pub async fn send(
    tenant: &Arc<Tenant>,
    pool: Pool,
    first: Arc<Endpoint>,
    mut parts: Parts,
    body: Incoming,
    mut deadline: Deadline<'_>,
    rescuable: bool,
) -> Result<UpstreamResponse, Failure> {
    use http_body::Body as _;
    let bodiless = body.is_end_stream();
    // An HTTP/2 upstream stream is cancelled by a reset, with no
    // connection to save: nothing to rescue.
    let rescuable = rescuable && bodiless && first.protocol != crate::config::Protocol::H2c;
    parts.uri = origin_form(std::mem::take(&mut parts.uri));
    let (upstream_body, upload) = if bodiless {
        (Either::Right(Empty::new()), None)
    } else {
        let (upload, sent) = Upload::new(body);
        (Either::Left(upload), Some(sent))
    };
    let mut request = Request::from_parts(parts, upstream_body);
    let mut endpoint = first;
    // The retry policy, all of it: one more endpoint after a failed
    // connect (bodiless requests), one new connection after a stale one.
    let (mut retried, mut reuse) = (false, true);
    let connect_timeout = tenant.config.settings.connect_timeout;
    loop {
        let guard = endpoint.start();
        let conns = Arc::clone(&endpoint.connections);
        // Made where it is polled (`pin!`): the exchange is a large future,
        // and each move of it is a copy.
        let answered = if rescuable {
            let holder = slots(tenant, &endpoint);
            let sent = upstream::send(conns, connect_timeout, request, reuse);
            let sent = Rescuable::new(sent, Arc::clone(&endpoint.connections), holder);
            deadline.within(pin!(sent)).await
        } else {
            let sent = pin!(upstream::send(conns, connect_timeout, request, reuse));
            deadline.within(sent).await
        };
        let kind = match answered {
            Some(Ok((response, sender))) => {
                return Ok(UpstreamResponse {
                    response,
                    lease: Lease::new(
                        sender,
                        Arc::clone(&endpoint.connections),
                        upload,
                        rescuable.then(|| slots(tenant, &endpoint)),
                    ),
                    endpoint: guard,
                });
            }
            Some(Err(SendError::Stale(unsent))) if reuse => {
                request = *unsent;
                reuse = false;
                continue;
            }
            Some(Err(SendError::Stale(_))) => UpstreamError::Protocol,
            Some(Err(SendError::Connect(e, unsent))) => {
                if let Some(local) = LocalError::of(&e) {
                    tracing::debug!(tenant = tenant.name(), endpoint = %endpoint.address, error = %e, "no upstream connection: the proxy is out of resources");
                    return Err(Failure {
                        error: ProxyError::Local(local),
                        tried: endpoint,
                    });
                }
                tracing::debug!(tenant = tenant.name(), endpoint = %endpoint.address, error = %e, "upstream connect failed");
                let next = (bodiless && !retried)
                    .then(|| endpoint::choose(tenant.endpoints(pool), Some(&endpoint)))
                    .flatten();
                match next {
                    Some(n) => {
                        // A failed attempt that is not the answer: counted
                        // here; the answer's error is counted by the caller.
                        let failed = ProxyError::Upstream(UpstreamError::Connect);
                        failed.count(None, Some(tenant.metrics()), Some(pool));
                        crate::route::outlier::record(tenant, pool, &endpoint, true);
                        request = *unsent;
                        endpoint = n;
                        (retried, reuse) = (true, true);
                        continue;
                    }
                    None => UpstreamError::Connect,
                }
            }
            Some(Err(SendError::Exchange(e)))
                if upload.as_ref().is_some_and(|u| u.client_failed()) =>
            {
                // The client's body broke, not the upstream (SPEC section 6).
                tracing::debug!(tenant = tenant.name(), error = %e, "request body malformed or cut short by the client");
                return Err(Failure {
                    error: ProxyError::ClientBody,
                    tried: endpoint,
                });
            }
            Some(Err(SendError::Exchange(e))) => {
                tracing::debug!(tenant = tenant.name(), endpoint = %endpoint.address, error = %e, "upstream exchange failed");
                UpstreamError::Protocol
            }
            None if upload
                .as_ref()
                .is_some_and(|u| !u.sent() && u.waiting_on_client()) =>
            {
                // The client stopped sending its body: its fault (408).
                return Err(Failure {
                    error: ProxyError::ClientTimeout,
                    tried: endpoint,
                });
            }
            None => UpstreamError::Timeout,
        };
        return Err(Failure {
            error: ProxyError::Upstream(kind),
            tried: endpoint,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_index_names_exactly_the_fixed_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        for other in [
            header::HOST,
            header::CONTENT_LENGTH,
            header::TRAILER,
            header::CONTENT_TYPE,
            HeaderName::from_static("connectionx"),
            HeaderName::from_static("t"),
            HeaderName::from_static("x-upgrade"),
        ] {
            assert_eq!(hop_by_hop_index(&other), None, "{other}");
        }
    }

    #[test]
    fn connection_options_close_and_the_fixed_list_are_known_in_any_case() {
        for name in HOP_BY_HOP.iter().map(|h| h.as_str()).chain(["close"]) {
            assert!(is_close_or_fixed(name), "{name}");
            assert!(is_close_or_fixed(&name.to_ascii_uppercase()), "{name}");
        }
        for other in ["", "closed", "x-te", "upgrades", "keep_alive", "x-private"] {
            assert!(!is_close_or_fixed(other), "{other}");
        }
    }

    #[test]
    fn a_length_stays_only_beside_length_framing() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        fix_length(&mut headers, Some(10));
        assert_eq!(headers[header::CONTENT_LENGTH], "10");
        fix_length(&mut headers, None);
        assert!(!headers.contains_key(header::CONTENT_LENGTH));
        // A list of agreeing values, or the field repeated: one value.
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10, 10"));
        fix_length(&mut headers, Some(10));
        assert_eq!(headers.get_all(header::CONTENT_LENGTH).iter().count(), 1);
        assert_eq!(headers[header::CONTENT_LENGTH], "10");
        headers.append(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        fix_length(&mut headers, Some(10));
        assert_eq!(headers.get_all(header::CONTENT_LENGTH).iter().count(), 1);
        assert_eq!(headers[header::CONTENT_LENGTH], "10");
        // No field: none is added.
        headers.remove(header::CONTENT_LENGTH);
        fix_length(&mut headers, Some(10));
        assert!(!headers.contains_key(header::CONTENT_LENGTH));
    }

    #[test]
    fn removes_the_fixed_list_and_what_connection_names() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("host", "a.test"),
            ("connection", "keep-alive, X-Private, close"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
            ("x-kept", "yes"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        remove_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["host", "x-kept"]);
    }
}
