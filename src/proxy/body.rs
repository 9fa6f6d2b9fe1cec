//! The response body the proxy streams back, and the bookkeeping that ends
//! with it.
//!
//! A request is not finished when the upstream's headers arrive but when the
//! last byte of the body has gone out (or the client went away), so the
//! `Accounting` — tenant slot, endpoint in-flight count, metrics, access log —
//! rides inside the body and settles on drop. The body also enforces what is
//! left of `request_timeout` while it streams.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::time::Sleep;

use super::conn::DeadlineGuard;
use crate::config::Pool;
use crate::metrics::UpstreamError;
use crate::route::endpoint::{Endpoint, InflightGuard};
use crate::route::{Admission, Tenant};
use crate::upstream::Lease;

/// The error type of every body the proxy sends.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What to log per request when the tenant has `access_log = true`.
pub struct AccessLog {
    /// The request's method.
    pub method: http::Method,
    /// The request's path, without the query (which may carry secrets);
    /// escaped when written, so it cannot forge a log line.
    pub path: String,
    /// The client's IP (the connection's peer, not `X-Forwarded-For`).
    pub client: std::net::IpAddr,
}

impl AccessLog {
    /// Writes the request's line (SPEC section 2: one line per request,
    /// whatever its outcome). `pool` and `endpoint` are `-` when the
    /// request never got that far.
    pub fn write(
        &self,
        tenant: &Tenant,
        pool: Option<Pool>,
        endpoint: Option<&Endpoint>,
        status: u16,
        elapsed: std::time::Duration,
        bytes_out: u64,
    ) {
        tracing::info!(
            target: "turnout::access",
            time = %humantime::format_rfc3339_millis(std::time::SystemTime::now()),
            tenant = tenant.name(),
            pool = pool.map_or("-", Pool::as_str),
            endpoint = endpoint.map_or("-", |e| &*e.address),
            method = %self.method,
            path = %self.path.escape_debug(),
            status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            bytes_out,
            client = %self.client,
            "request"
        );
    }
}

/// One request's claim on tenant and endpoint, settled when it drops.
pub struct Accounting {
    /// The tenant the request was routed to.
    pub tenant: Arc<Tenant>,
    /// The pool that served it (after any failover): the `pool` label, the
    /// SLO window recorded into.
    pub pool: Pool,
    /// When the request was received; durations are measured from here.
    pub started: Instant,
    /// The status sent to the client; 0 until a response head exists, and
    /// 0 at drop means the client left first (recorded as 499).
    pub status: u16,
    /// Response body bytes sent to the client so far.
    pub bytes_out: u64,
    /// The in-flight slot of the endpoint that answered; `None` when none
    /// did.
    pub endpoint: Option<InflightGuard>,
    /// The endpoint last tried when none answered.
    pub tried: Option<Arc<Endpoint>>,
    /// Whether the outcome is evidence about the pool: false for the
    /// proxy's own failures (SPEC section 6).
    pub judged: bool,
    /// An insiders' cohort request (`candidate_match`): evidence about the
    /// candidate even at weight 0 (SPEC section 6).
    pub cohort: bool,
    /// The upstream failed after the response head (`kind="body"`).
    pub body_failed: bool,
    /// A gRPC call answered with a `grpc-status` that is the pool's error
    /// (`proxy::grpc`), in the head or the trailers.
    pub grpc_failed: bool,
    /// What to log when the tenant has `access_log = true`.
    pub access_log: Option<AccessLog>,
    /// The tenant's `max_inflight` slot, freed when the exchange drops.
    pub _admission: Admission,
    /// The request's deadline, registered with its client connection.
    pub _deadline: Option<DeadlineGuard>,
}

impl Accounting {
    /// The call's `grpc-status` is an error of the pool (`proxy::grpc`):
    /// judged as one, and counted (`kind="grpc"`).
    pub fn grpc_failed(&mut self) {
        if !self.grpc_failed {
            self.grpc_failed = true;
            let err = super::error::ProxyError::Upstream(UpstreamError::Grpc);
            err.count(None, Some(self.tenant.metrics()), Some(self.pool));
        }
    }
}

impl Drop for Accounting {
    fn drop(&mut self) {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.started);
        if self.status == 0 {
            // The client went away before the response head: nginx's 499,
            // neither a success nor an error of the pool (SPEC section 6).
            self.status = 499;
            self.judged = false;
            self.tenant.state.abandoned(self.pool);
        }
        self.tenant
            .metrics()
            .pool(self.pool)
            .record(self.status, elapsed);
        if self.judged {
            // Evidence about the pool (SPEC section 6). A body cut short is
            // the pool's failure, whatever the status.
            let t = &self.tenant;
            let error = self.body_failed || self.grpc_failed || self.status >= 500;
            t.state.completed_one(self.pool);
            let exposed = t.candidate_share_bp() > 0 || self.cohort;
            let slo = &t.config.settings.slo;
            let state = &t.state;
            if let Some(breach) = state.slo.record(
                t.name(),
                slo,
                self.pool,
                t.stable(),
                exposed,
                error,
                elapsed,
                now,
            ) {
                state.signal_breach(t.name(), breach.to_string());
            }
            // The endpoint's own record, after the pool's: an ejection
            // never comes before the error that caused it is counted.
            let endpoint = match (&self.endpoint, &self.tried) {
                (Some(g), _) => Some(g.endpoint()),
                (None, tried) => tried.as_ref(),
            };
            if let Some(endpoint) = endpoint {
                crate::route::outlier::record(t, self.pool, endpoint, error);
            }
        }
        if let Some(log) = &self.access_log {
            let endpoint = match (&self.endpoint, &self.tried) {
                (Some(g), _) => Some(&**g.endpoint()),
                (None, tried) => tried.as_deref(),
            };
            log.write(
                &self.tenant,
                Some(self.pool),
                endpoint,
                self.status,
                elapsed,
                self.bytes_out,
            );
        }
    }
}

pin_project_lite::pin_project! {
    /// Every response the proxy sends: an upstream's streamed body or a
    /// proxy-made one. Dropped before its end (the client went away) with a
    /// rescuable lease, the rest of the upstream body is read off in the
    /// background so the connection can serve again (`upstream::rescue`).
    pub struct ProxyBody {
        inner: Either<Incoming, Full<Bytes>>,
        // Made at the body's first wait: most bodies never wait, and a timer
        // costs a runtime-handle lookup to make and a wheel entry to arm.
        #[pin]
        deadline: Option<Sleep>,
        until: Option<tokio::time::Instant>,
        exchange: Option<Accounting>,
        // The upstream connection, back to its pool once the body is read.
        lease: Option<Lease>,
    }

    impl PinnedDrop for ProxyBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(lease) = this.lease.take() {
                let rest = std::mem::replace(this.inner, Either::Right(Full::new(Bytes::new())));
                if let Either::Left(body) = rest {
                    lease.rescue(body);
                }
            }
        }
    }
}

impl ProxyBody {
    /// A body made by the proxy (an error text, say), sent whole; no
    /// deadline, no upstream connection.
    pub fn full(bytes: Bytes) -> ProxyBody {
        ProxyBody {
            inner: Either::Right(Full::new(bytes)),
            deadline: None,
            until: None,
            exchange: None,
            lease: None,
        }
    }

    /// Streams an upstream body, failing it if `deadline` passes first; the
    /// connection returns to its pool when the body has been read.
    pub fn upstream(body: Incoming, deadline: tokio::time::Instant, lease: Lease) -> ProxyBody {
        // hyper does not poll a body that says it is already over (HEAD,
        // 204, 304, `Content-Length: 0`).
        let lease = if body.is_end_stream() {
            lease.finished();
            None
        } else {
            Some(lease)
        };
        ProxyBody {
            inner: Either::Left(body),
            deadline: None,
            until: Some(deadline),
            exchange: None,
            lease,
        }
    }

    /// Attaches the bookkeeping that settles when the body is done.
    pub fn with_accounting(mut self, accounting: Accounting) -> ProxyBody {
        self.exchange = Some(accounting);
        self
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match Pin::new(&mut *this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(ex)) = (frame.data_ref(), this.exchange.as_mut()) {
                    ex.bytes_out += data.len() as u64;
                }
                if let (Some(trailers), Some(ex)) = (frame.trailers_ref(), this.exchange.as_mut())
                    && super::grpc::failed(trailers)
                {
                    ex.grpc_failed();
                }
                // hyper stops polling once the body says it is over, and
                // after trailers, which are always the last frame.
                if frame.is_trailers() || this.inner.is_end_stream() {
                    release(this.lease);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                body_failed(this.exchange);
                // A connection whose response broke is not reused.
                this.lease.take();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                release(this.lease);
                // Settle now rather than when hyper gets round to dropping us.
                this.exchange.take();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let Some(until) = this.until.take() {
                    this.deadline.set(Some(tokio::time::sleep_until(until)));
                }
                if let Some(deadline) = this.deadline.as_pin_mut()
                    && deadline.poll(cx).is_ready()
                {
                    body_failed(this.exchange);
                    this.lease.take();
                    return Poll::Ready(Some(Err("upstream body exceeded request_timeout".into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The upstream failed after the response head: the pool's error
/// (`turnout_upstream_errors_total{kind="body"}`, SPEC section 6).
fn body_failed(exchange: &mut Option<Accounting>) {
    if let Some(ex) = exchange.as_mut() {
        ex.body_failed = true;
        let err = super::error::ProxyError::Upstream(UpstreamError::Body);
        err.count(None, Some(ex.tenant.metrics()), Some(ex.pool));
    }
}

/// Hands the upstream connection back to its pool; the first call does.
fn release(lease: &mut Option<Lease>) {
    if let Some(lease) = lease.take() {
        lease.finished();
    }
}
