//! Everything the proxy answers itself, and the one place it becomes a
//! status, a body and a metric.
//!
//! Why an enum with one home: the same failure must give the same status,
//! body and blame wherever it is found, and whether it counts against a
//! pool (SPEC section 6: not when the client or the proxy caused it) is a
//! decision that must not drift between call sites.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};

use super::authority::Refusal;
use super::body::ProxyBody;
use crate::config::Pool;
use crate::metrics::{LocalError, Metrics, Rejected, TenantMetrics, Unrouted, UpstreamError};
use crate::route::limit::{self, Limited};

/// Why the proxy answered a request itself.
#[derive(Debug)]
pub enum ProxyError {
    /// No host, two hosts, an invalid one, or a target turnout does not
    /// forward (`proxy::authority`).
    Refused(Refusal),
    /// No tenant owns the host.
    UnknownHost(String),
    /// Over TLS, the host belongs to another tenant than the SNI name.
    Misdirected,
    /// The tenant is at `max_inflight`.
    Overloaded,
    /// A preview request without the preview token.
    PreviewForbidden,
    /// Over the client's or the tenant's rate limit (SPEC section 16).
    RateLimited(limit::Refusal),
    /// Neither pool (or, for preview, the candidate) has a healthy endpoint.
    NoHealthyEndpoint,
    /// The upstream could not be reached, or broke the exchange.
    Upstream(UpstreamError),
    /// The proxy itself failed (out of file descriptors, memory, ports).
    Local(LocalError),
    /// The client's request body was malformed or cut short.
    ClientBody,
    /// The client stopped sending its request body within `request_timeout`.
    ClientTimeout,
}

impl ProxyError {
    /// Counts the error where SPEC section 10 says — the one place that
    /// maps an error to its metric: unrouted requests by reason (process
    /// `metrics`), rejections by reason (the `tenant`'s), upstream errors by
    /// kind (the tenant's `pool`), local errors by reason. An error without
    /// a counter of its own (no healthy endpoint, the client's faults) is
    /// counted only in `turnout_requests_total` with its status. A counter
    /// whose owner is not given is left alone.
    pub fn count(
        &self,
        metrics: Option<&Metrics>,
        tenant: Option<&TenantMetrics>,
        pool: Option<Pool>,
    ) {
        match self {
            ProxyError::Refused(Refusal::NoHost) => {
                metrics.inspect(|m| m.unrouted(Unrouted::NoHost));
            }
            ProxyError::Refused(_) => {
                metrics.inspect(|m| m.unrouted(Unrouted::InvalidRequest));
            }
            ProxyError::UnknownHost(_) => {
                metrics.inspect(|m| m.unrouted(Unrouted::UnknownHost));
            }
            ProxyError::Misdirected => {
                metrics.inspect(|m| m.unrouted(Unrouted::Misdirected));
            }
            ProxyError::Overloaded => {
                tenant.inspect(|t| t.rejected(Rejected::MaxInflight));
            }
            ProxyError::PreviewForbidden => {
                tenant.inspect(|t| t.rejected(Rejected::PreviewToken));
            }
            ProxyError::RateLimited(refusal) => {
                let reason = match refusal.by {
                    Limited::Client => Rejected::ClientRateLimit,
                    Limited::Tenant => Rejected::RateLimit,
                };
                tenant.inspect(|t| t.rejected(reason));
            }
            ProxyError::Upstream(kind) => {
                if let (Some(t), Some(pool)) = (tenant, pool) {
                    t.pool(pool).upstream_error(*kind);
                }
            }
            ProxyError::Local(reason) => {
                metrics.inspect(|m| m.local_error(*reason));
            }
            ProxyError::NoHealthyEndpoint | ProxyError::ClientBody | ProxyError::ClientTimeout => {}
        }
    }

    /// Whether the outcome is evidence about the pool that was tried (SPEC
    /// section 6): not when the client or the proxy itself caused it.
    pub fn blames_pool(&self) -> bool {
        !matches!(
            self,
            ProxyError::Local(_) | ProxyError::ClientBody | ProxyError::ClientTimeout
        )
    }

    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Refused(Refusal::Connect) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Refused(_) => StatusCode::BAD_REQUEST,
            ProxyError::UnknownHost(_) => StatusCode::NOT_FOUND,
            ProxyError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::Overloaded | ProxyError::NoHealthyEndpoint | ProxyError::Local(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::PreviewForbidden => StatusCode::FORBIDDEN,
            ProxyError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::ClientBody => StatusCode::BAD_REQUEST,
            ProxyError::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Upstream(UpstreamError::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
        }
    }

    fn message(&self) -> Bytes {
        let text: &'static str = match self {
            ProxyError::Refused(Refusal::NoHost | Refusal::InvalidHost) => {
                "missing, repeated or invalid Host header\n"
            }
            ProxyError::Refused(Refusal::Connect) => "CONNECT is not served by this proxy\n",
            ProxyError::Refused(Refusal::InvalidTarget) => "invalid request target\n",
            ProxyError::Local(_) => "the proxy is out of resources, retry shortly\n",
            ProxyError::ClientBody => "the request body was malformed or cut short\n",
            ProxyError::ClientTimeout => "the request body did not arrive within request_timeout\n",
            ProxyError::Misdirected => "this host is not served on this TLS connection\n",
            ProxyError::UnknownHost(host) => {
                return Bytes::from(format!("no tenant serves host {host}\n"));
            }
            ProxyError::Overloaded => "tenant is at its in-flight request limit, retry shortly\n",
            ProxyError::PreviewForbidden => "preview requires a valid X-Turnout-Preview token\n",
            ProxyError::RateLimited(limit::Refusal {
                by: Limited::Client,
                ..
            }) => "too many requests from this client, retry later\n",
            ProxyError::RateLimited(limit::Refusal {
                by: Limited::Tenant,
                ..
            }) => "too many requests for this site, retry later\n",
            ProxyError::NoHealthyEndpoint => "no healthy upstream endpoint\n",
            ProxyError::Upstream(UpstreamError::Connect) => "upstream connection failed\n",
            ProxyError::Upstream(UpstreamError::Timeout) => {
                "upstream did not answer within request_timeout\n"
            }
            ProxyError::Upstream(
                UpstreamError::Protocol | UpstreamError::Body | UpstreamError::Grpc,
            ) => "upstream broke the HTTP exchange\n",
        };
        Bytes::from_static(text.as_bytes())
    }

    /// The answer for this error: to a gRPC call (`grpc`), a trailers-only
    /// answer carrying the matching `grpc-status` (`proxy::grpc`, as Envoy
    /// answers its local replies); to anything else, the short plain-text
    /// response.
    pub fn answer(self, grpc: bool) -> Response<ProxyBody> {
        if grpc {
            let message = self.message();
            return super::grpc::local_reply(self.status(), &String::from_utf8_lossy(&message));
        }
        self.into_response()
    }

    /// The short plain-text response for this error.
    pub fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        let mut resp = Response::new(ProxyBody::full(self.message()));
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        match self {
            ProxyError::Overloaded | ProxyError::Local(_) => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ProxyError::RateLimited(refusal) => {
                headers.insert(RETRY_AFTER, HeaderValue::from(refusal.retry_after_s));
            }
            _ => {}
        }
        resp
    }
}
