//! The request path, in the order of SPEC section 4:
//! host → tenant → admission → rate limits → pool → endpoint → forward →
//! record.
//!
//! `Proxy::handle` reads top to bottom as those steps. It loads the routing
//! table once, keeps only its tenant's `Arc`, and takes no lock but, with a
//! `client_rate_limit`, one shard of its client table (`route::limit`).

pub mod authority;
pub mod body;
pub mod conn;
pub mod deadlines;
pub mod error;
pub mod forward;
pub mod grpc;
pub mod timer;
pub mod upgrade;
pub mod wake;

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{HeaderName, HeaderValue, SET_COOKIE};
use http::{Request, Response, Version};
use hyper::body::Incoming;

use crate::config::{Pool, StickyKey};
use crate::metrics::Metrics;
use crate::route::pool::PoolChoice;
use crate::route::{Endpoint, RoutingTable, Tenant, endpoint, host, pool};
use authority::Refusal;
use body::{AccessLog, Accounting, ProxyBody};
use conn::{ConnInfo, Tunnels};
use error::ProxyError;
use timer::Deadline;

/// `X-Turnout-Pool: blue|green`, set on every proxied response (and a
/// `101`): the pool that answered, so a tester can prove which release
/// served them (SPEC section 4.5). After a failover it names the other pool.
pub static X_TURNOUT_POOL: HeaderName = HeaderName::from_static("x-turnout-pool");

/// The data plane: the current routing table and the metrics it feeds.
pub struct Proxy {
    /// The current routing table. Each request loads it once; only the
    /// control task stores a new one.
    pub table: Arc<ArcSwap<RoutingTable>>,
    /// The process's metrics (the unrouted and local-error counters are
    /// bumped here; per-tenant ones through the table's tenants).
    pub metrics: Arc<Metrics>,
    /// WebSocket and other upgraded connections still open.
    pub tunnels: Arc<Tunnels>,
}

impl Proxy {
    /// A proxy serving `table` (generation 1 at start-up), with no tunnels.
    pub fn new(table: RoutingTable, metrics: Arc<Metrics>) -> Proxy {
        Proxy {
            table: Arc::new(ArcSwap::from_pointee(table)),
            metrics,
            tunnels: Arc::default(),
        }
    }

    /// Serves one request. Never fails: every problem becomes a response.
    /// Takes its arguments owned so the server needs no wrapping `async`
    /// block (each one would add a copy of this future to move per request).
    pub async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Response<ProxyBody> {
        let conn = &conn;
        let started = Instant::now();
        let (tenant, preview, host) = match self.tenant_for(&req, conn) {
            Ok(found) => found,
            Err(err) => {
                err.count(Some(&self.metrics), None, None);
                return err.answer(grpc::is_request(req.headers()));
            }
        };
        let access_log = tenant.config.settings.access_log.then(|| AccessLog {
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            client: conn.peer.ip(),
        });
        // Turned away before a pool is chosen: in the access log and
        // `turnout_rejected_total` only (SPEC sections 2 and 10).
        let turned_away = |err: ProxyError| {
            err.count(None, Some(tenant.metrics()), None);
            let status = err.status().as_u16();
            let resp = err.answer(grpc::is_request(req.headers()));
            if let Some(log) = &access_log {
                log.write(&tenant, None, None, status, started.elapsed(), 0);
            }
            resp
        };
        let Some(admission) = tenant.admit() else {
            return turned_away(ProxyError::Overloaded);
        };
        // Rate limits: the client's bucket, then the tenant's (SPEC 16).
        if let Err(refusal) = tenant.limits.check(req.headers(), conn.peer.ip()) {
            return turned_away(ProxyError::RateLimited(refusal));
        }
        let mut cohort = false;
        let (pool, preview, new_cookie) = match pool::choose(&tenant, preview, req.headers()) {
            PoolChoice::Pool { pool, preview } => (pool, preview, None),
            PoolChoice::NewCookie { pool, key } => (pool, false, Some(key)),
            // The insiders' cohort never fails over, and is judged.
            PoolChoice::Cohort { pool } => {
                cohort = true;
                (pool, true, None)
            }
            PoolChoice::PreviewForbidden => {
                return turned_away(ProxyError::PreviewForbidden);
            }
        };
        let (pool, endpoint) = pick_endpoint(&tenant, pool, preview);
        let deadline = started + tenant.config.settings.request_timeout;
        let mut exchange = Accounting {
            tenant: Arc::clone(&tenant),
            pool,
            started,
            status: 0,
            bytes_out: 0,
            endpoint: None,
            tried: None,
            judged: true,
            cohort,
            body_failed: false,
            grpc_failed: false,
            access_log,
            _admission: admission,
            _deadline: Some(conn.state.deadline(tenant.config.settings.request_timeout)),
        };
        let Some(endpoint) = endpoint else {
            let grpc = grpc::is_request(req.headers());
            return self.fail(ProxyError::NoHealthyEndpoint, exchange, grpc);
        };

        // An upgrade (WebSocket) keeps its `Upgrade` header; the client's
        // side of the tunnel is taken before the request moves on.
        let upgrade = upgrade::requested(&req);
        let client_side = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let http2 = req.version() == Version::HTTP_2;
        // gRPC is HTTP/2 only: an HTTP/1.1 request pays no lookup.
        let grpc = http2 && grpc::is_request(req.headers());
        let (mut parts, body) = req.into_parts();
        let body_length = http_body::Body::size_hint(&body).exact();
        forward::prepare(&mut parts, conn, host, upgrade.clone(), body_length);
        let deadline = tokio::time::Instant::from_std(deadline);
        // An HTTP/2 client can reset a stream and carry on: its abandoned
        // exchanges finish in the background (`upstream::Rescuable`).
        // An HTTP/1.1 connection's requests share one timer (`timer`).
        let wait = Deadline::new(deadline, (!http2).then_some(&conn.state.timer));
        let sent = forward::send(&tenant, pool, endpoint, parts, body, wait, http2).await;
        let mut answer = match sent {
            Ok(answer) => answer,
            Err(failure) => {
                exchange.tried = Some(failure.tried);
                return self.fail(failure.error, exchange, grpc);
            }
        };
        if answer.response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            let agreed = upgrade
                .as_ref()
                .is_some_and(|asked| upgrade::agreed(asked, &answer.response));
            exchange.endpoint = Some(answer.endpoint);
            let (Some(client_side), true) = (client_side, agreed) else {
                // A switch the client did not ask for: never passed on.
                let err = ProxyError::Upstream(crate::metrics::UpstreamError::Protocol);
                return self.fail(err, exchange, false);
            };
            exchange.status = 101;
            conn.state.upgraded();
            let upstream_side = hyper::upgrade::on(&mut answer.response);
            let response = upgrade::switching_response(&answer.response, pool);
            upgrade::spawn_tunnel(client_side, upstream_side, exchange, self.tunnels.open());
            return response;
        }

        let (mut head, body) = answer.response.into_parts();
        // gRPC runs over HTTP/2 upstreams only: a trailers-only answer
        // carries its status in the head (SPEC section 15).
        if head.version == Version::HTTP_2 && grpc::failed(&head.headers) {
            exchange.grpc_failed();
        }
        forward::prepare_response(&mut head.headers, &body);
        head.headers
            .insert(X_TURNOUT_POOL.clone(), pool_header(pool));
        if let (Some(key), Some(StickyKey::Cookie(name))) = (new_cookie, &tenant.config.sticky) {
            let cookie = format!("{name}={key}; Path=/; HttpOnly; SameSite=Lax");
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                head.headers.append(SET_COOKIE, v);
            }
        }
        exchange.endpoint = Some(answer.endpoint);
        settle(
            Response::from_parts(head, ProxyBody::upstream(body, deadline, answer.lease)),
            exchange,
        )
    }

    /// Answers a request the proxy could not forward with `err`: counted
    /// where it belongs (`ProxyError::count`), judged only when it is the
    /// pool's doing (SPEC section 6), settled with its accounting under the
    /// error's HTTP status — also when a gRPC call (`grpc`) is answered
    /// with HTTP 200 and a `grpc-status`.
    fn fail(&self, err: ProxyError, mut exchange: Accounting, grpc: bool) -> Response<ProxyBody> {
        let tenant = &exchange.tenant;
        err.count(
            Some(&self.metrics),
            Some(tenant.metrics()),
            Some(exchange.pool),
        );
        exchange.judged = err.blames_pool();
        exchange.status = err.status().as_u16();
        err.answer(grpc).map(|body| body.with_accounting(exchange))
    }

    /// Host → tenant, with the authoritative host (`authority::of`) to
    /// forward as `Host` and `X-Forwarded-Host`.
    #[allow(clippy::type_complexity)]
    fn tenant_for(
        &self,
        req: &Request<Incoming>,
        conn: &ConnInfo,
    ) -> Result<(Arc<Tenant>, bool, HeaderValue), ProxyError> {
        let raw = authority::of(req).map_err(ProxyError::Refused)?;
        let no_host = || ProxyError::Refused(Refusal::NoHost);
        let raw_str = raw.to_str().map_err(|_| no_host())?;
        let mut buf = String::new();
        let host = host::normalize(raw_str, &mut buf).ok_or_else(no_host)?;
        let table = self.table.load();
        let misdirected = || ProxyError::Misdirected;
        match table.route(host) {
            Some((tenant, preview)) => {
                // Over TLS, the certificate was chosen by SNI: the host must
                // belong to the same tenant (SPEC 4.1).
                if let Some(sni) = &conn.sni {
                    let mut sni_buf = String::new();
                    let by_sni = host::normalize(sni, &mut sni_buf).and_then(|s| table.route(s));
                    if !by_sni.is_some_and(|(t, _)| Arc::ptr_eq(t, tenant)) {
                        return Err(misdirected());
                    }
                }
                Ok((Arc::clone(tenant), preview, raw))
            }
            None => Err(ProxyError::UnknownHost(host.to_owned())),
        }
    }
}

/// The endpoint for a request: from its pool, or — when that pool has no
/// healthy endpoint and the request is not a preview — from the other pool.
fn pick_endpoint(tenant: &Tenant, pool: Pool, preview: bool) -> (Pool, Option<Arc<Endpoint>>) {
    if let Some(ep) = endpoint::choose(tenant.endpoints(pool), None) {
        return (pool, Some(ep));
    }
    if preview {
        return (pool, None);
    }
    let other = pool.other();
    match endpoint::choose(tenant.endpoints(other), None) {
        Some(ep) => {
            tenant.metrics().failover(pool);
            (other, Some(ep))
        }
        None => (pool, None),
    }
}

fn pool_header(pool: Pool) -> HeaderValue {
    HeaderValue::from_static(pool.as_str())
}

/// Ties the exchange to the response so it settles when the body ends.
fn settle(resp: Response<ProxyBody>, mut exchange: Accounting) -> Response<ProxyBody> {
    exchange.status = resp.status().as_u16();
    resp.map(|body| body.with_accounting(exchange))
}
