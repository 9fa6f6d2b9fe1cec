//! The admin listener: probes, Prometheus metrics and the `/v1` JSON API.
//!
//! Small enough to route by hand: a match on method and path segments reads
//! more plainly here than a router framework would.

pub mod api;
pub mod auth;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Serialize;

use crate::config::Color;
use crate::proxy::Proxy;
use auth::{AuthError, Caller};

/// What the admin API reads.
pub struct Admin {
    pub proxy: Arc<Proxy>,
    /// True once every listener is bound; false again while draining.
    pub ready: AtomicBool,
}

/// An admin API failure: a status and a message, sent as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

type ApiResponse = Response<Full<Bytes>>;

impl Admin {
    pub async fn handle(&self, req: Request<Incoming>) -> ApiResponse {
        match self.route(&req) {
            Ok(resp) => resp,
            Err(e) => json(e.status, &serde_json::json!({ "error": e.message })),
        }
    }

    fn route(&self, req: &Request<Incoming>) -> Result<ApiResponse, ApiError> {
        let path = req.uri().path();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let method = req.method();
        match (method, segments.as_slice()) {
            (&Method::GET, ["healthz"]) => Ok(text(StatusCode::OK, "ok\n")),
            (&Method::GET, ["readyz"]) => Ok(if self.ready.load(Ordering::Relaxed) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }),
            (&Method::GET, ["metrics"]) => Ok(self.metrics()),
            (_, ["v1", ..]) => {
                let caller = self.caller(req)?;
                self.v1(method, &segments[1..], &caller)
            }
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no such endpoint: {method} {path}"),
            )),
        }
    }

    fn caller(&self, req: &Request<Incoming>) -> Result<Caller, ApiError> {
        let table = self.proxy.table.load();
        let header = req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes);
        auth::authenticate(&table.config.tokens, header).map_err(|AuthError::Unauthenticated| {
            ApiError::new(StatusCode::UNAUTHORIZED, "missing or unknown bearer token")
        })
    }

    fn v1(
        &self,
        method: &Method,
        segments: &[&str],
        caller: &Caller,
    ) -> Result<ApiResponse, ApiError> {
        let table = self.proxy.table.load();
        match (method, segments) {
            (&Method::GET, ["tenants"]) => {
                let views: Vec<_> = table
                    .tenants()
                    .iter()
                    .filter(|t| caller.may_touch(t.name()))
                    .map(|t| api::tenant_view(&table, t))
                    .collect();
                Ok(json(StatusCode::OK, &views))
            }
            (&Method::GET, ["tenants", name]) => {
                let tenant = table.tenant(name).ok_or_else(|| {
                    ApiError::new(StatusCode::NOT_FOUND, format!("no tenant named {name}"))
                })?;
                if !caller.may_touch(name) {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        format!("token may not access tenant {name}"),
                    ));
                }
                Ok(json(StatusCode::OK, &api::tenant_view(&table, tenant)))
            }
            (_, ["tenants"] | ["tenants", _]) => Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
            )),
            _ => Err(ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")),
        }
    }

    /// Refreshes the gauges that are cheaper to read at scrape time than to
    /// keep current per request, then renders.
    fn metrics(&self) -> ApiResponse {
        let table = self.proxy.table.load();
        let metrics = &self.proxy.metrics;
        for tenant in table.tenants() {
            tenant
                .metrics()
                .inflight
                .set(f64::from(tenant.state.inflight()));
            for color in Color::ALL {
                for ep in tenant.endpoints(color) {
                    let healthy = if ep.is_healthy() { 1.0 } else { 0.0 };
                    metrics
                        .endpoint_healthy(tenant.name(), color, &ep.address)
                        .set(healthy);
                }
            }
        }
        metrics.run_upkeep();
        let mut resp = Response::new(Full::new(Bytes::from(metrics.render())));
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        resp
    }
}

fn text(status: StatusCode, body: &'static str) -> ApiResponse {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> ApiResponse {
    let body = serde_json::to_vec_pretty(value)
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}").into_bytes());
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
