//! The admin listener: probes, Prometheus metrics and the `/v1` JSON API.
//!
//! Small enough to route by hand: a match on method and path segments reads
//! more plainly here than a router framework would. Reads come from the
//! routing table and the control plane's shared status; every write is a
//! `control::Change` sent to the control task, the same path file edits take.
//! The operator console (`ui`) is a page over this same API, and the event
//! stream (`stream`) the event log live.

pub mod api;
pub mod auth;
pub mod input;
pub mod stream;
pub mod ui;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use serde::Serialize;

use crate::config::Pool;
use crate::control::{Change, ChangeError, Control, Origin, Outcome, Source};
use crate::proxy::Proxy;
use auth::{AuthError, Caller};
pub use input::{MAX_BODY_BYTES, MAX_REASON_BYTES, ReasonBody, WeightsBody, decode};
use input::{checked_reason, if_match, query_flag, query_value, read_json};

/// What the admin API reads and writes through.
pub struct Admin {
    /// The proxy whose routing table the views and `/metrics` read (the
    /// tokens too: they are part of the table's config).
    pub proxy: Arc<Proxy>,
    /// The handle to the control task: every `/v1` write is sent there as
    /// a `Change`, and the shared status (`/v1/config`, bakes, events) is
    /// read from it.
    pub control: Control,
    /// True once every listener is bound; false again while draining.
    pub ready: AtomicBool,
    /// The `GET /v1/events/stream` streams open now.
    pub streams: stream::Streams,
}

/// The body of an admin answer: a whole JSON or text document, or the
/// event stream.
pub type AdminBody = Either<Full<Bytes>, stream::EventStream>;

/// An admin API failure: a status and a message, sent as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    /// 400 bad body or query, 401/403 auth, 404 unknown tenant or path, 405
    /// wrong method, 409 conflict, 412 `If-Match` mismatch, 413 body too
    /// large, 422 the control file does not parse or validate (a reload),
    /// 503 the control task has stopped.
    pub status: StatusCode,
    /// One line of plain English, the `error` field of the body.
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, what)
    }
}

impl From<ChangeError> for ApiError {
    fn from(e: ChangeError) -> Self {
        let status = match &e {
            ChangeError::UnknownTenant(_) => StatusCode::NOT_FOUND,
            ChangeError::GenerationMismatch { .. } => StatusCode::PRECONDITION_FAILED,
            ChangeError::Conflict(_) => StatusCode::CONFLICT,
            ChangeError::File(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ChangeError::Store(_) | ChangeError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.to_string())
    }
}

type ApiResponse = Response<Full<Bytes>>;

/// The answer to `rollout` and `promote`: the change, and the tenant's
/// status and rollout after it. Both calls are idempotent: while a rollout
/// (or a promotion's bake) runs, the same call changes nothing and answers
/// `changed: false` with the running rollout, its progress untouched.
#[derive(Serialize)]
struct RampAnswer {
    #[serde(flatten)]
    change: ChangeView,
    /// True when the call found its rollout (or bake) running and left it.
    already_running: bool,
    status: &'static str,
    rollout: Option<api::RolloutView>,
}

#[derive(Serialize)]
struct ChangeView {
    generation: u64,
    changed: bool,
    persisted: bool,
}

impl From<Outcome> for ChangeView {
    fn from(o: Outcome) -> Self {
        ChangeView {
            generation: o.generation,
            changed: o.changed,
            persisted: o.persisted,
        }
    }
}

impl Admin {
    /// Answers one request to the admin listener: `/healthz`, `/readyz`,
    /// `/metrics`, the console (`/ui`, SPEC section 14), and the `/v1`
    /// calls of SPEC section 8 (authenticated when tokens are configured),
    /// `/v1/events/stream` among them, the one answer that is a stream. Never fails: an [`ApiError`] becomes
    /// its status with `{"error": "..."}`, and a 401 carries
    /// `WWW-Authenticate: Bearer realm="turnout"` (RFC 9110 §11.6.1).
    pub async fn handle(&self, req: Request<Incoming>) -> Response<AdminBody> {
        let stream_path = req.uri().path().trim_end_matches('/') == "/v1/events/stream";
        let answer = if req.method() == Method::GET && stream_path {
            match self.stream(&req) {
                Ok(resp) => return resp.map(Either::Right),
                Err(e) => Err(e),
            }
        } else {
            self.route(req).await
        };
        answer.unwrap_or_else(error_response).map(Either::Left)
    }

    /// `GET /v1/events/stream?tenant=`: the reader role of `GET /v1/events`.
    fn stream(&self, req: &Request<Incoming>) -> Result<Response<stream::EventStream>, ApiError> {
        let caller = self.caller(req.headers())?;
        let tenant = query_value(req.uri().query(), "tenant").filter(|t| !t.is_empty());
        if let Some(t) = tenant {
            scope(&caller, t)?;
        }
        let resume = stream::last_event_id(req.headers())?;
        let request = stream::StreamRequest {
            tenant: tenant.map(str::to_owned),
            authorization: req
                .headers()
                .get(AUTHORIZATION)
                .map(|v| v.as_bytes().to_vec()),
        };
        stream::open(
            &self.control.published,
            &self.proxy.table,
            &self.streams,
            request,
            resume,
        )
    }

    async fn route(&self, req: Request<Incoming>) -> Result<ApiResponse, ApiError> {
        let path = req.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let method = req.method().clone();
        match (&method, segments.as_slice()) {
            (&Method::GET, ["healthz"]) => Ok(text(StatusCode::OK, "ok\n")),
            (&Method::GET, ["readyz"]) => Ok(
                if self.ready.load(Ordering::Relaxed) && self.control.published.store_ready() {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                },
            ),
            (&Method::GET, ["metrics"]) => Ok(self.metrics()),
            (&Method::GET, ["ui", rest @ ..]) => ui::asset(rest),
            (_, ["v1", rest @ ..]) => {
                ui::refuse_cross_site(&method, req.headers())?;
                let caller = self.caller(req.headers())?;
                self.v1(&method, rest, &caller, req).await
            }
            _ => Err(ApiError::not_found(format!(
                "no such endpoint: {method} {path}"
            ))),
        }
    }

    fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let table = self.proxy.table.load();
        let header = headers.get(AUTHORIZATION).map(HeaderValue::as_bytes);
        auth::authenticate(&table.config.tokens, header).map_err(|AuthError::Unauthenticated| {
            ApiError::new(StatusCode::UNAUTHORIZED, "missing or unknown bearer token")
        })
    }

    async fn v1(
        &self,
        method: &Method,
        segments: &[&str],
        caller: &Caller,
        req: Request<Incoming>,
    ) -> Result<ApiResponse, ApiError> {
        match (method, segments) {
            (&Method::GET, ["tenants"]) => {
                let table = self.proxy.table.load();
                let views: Vec<_> = table
                    .tenants()
                    .iter()
                    .filter(|t| caller.may_touch(t.name()))
                    .map(|t| {
                        api::tenant_view(&table, t, self.control.published.bake_started(t.name()))
                    })
                    .collect();
                Ok(json(StatusCode::OK, &views))
            }
            (&Method::GET, ["tenants", name]) => {
                scope(caller, name)?;
                let table = self.proxy.table.load();
                let tenant = table
                    .tenant(name)
                    .ok_or_else(|| ApiError::not_found(format!("no tenant named {name}")))?;
                let bake = self.control.published.bake_started(name);
                Ok(json(
                    StatusCode::OK,
                    &api::tenant_view(&table, tenant, bake),
                ))
            }
            (&Method::PUT, ["tenants", name, "weights"]) => {
                scope(caller, name)?;
                let if_match = if_match(req.headers())?;
                let force = query_flag(req.uri().query(), "force");
                let body: WeightsBody = read_json(req).await?.ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "a body {\"blue\": B, \"green\": G} is required",
                    )
                })?;
                let weights = crate::config::Weights::new(body.blue, body.green)
                    .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
                let change = Change::SetWeights {
                    tenant: (*name).to_owned(),
                    weights,
                    if_match,
                    force,
                };
                self.change(change, caller, body.reason).await
            }
            (&Method::POST, ["tenants", name, "rollback"]) => {
                scope(caller, name)?;
                let if_match = if_match(req.headers())?;
                let body: ReasonBody = read_json(req).await?.unwrap_or_default();
                let change = Change::Rollback {
                    tenant: (*name).to_owned(),
                    if_match,
                };
                self.change(change, caller, body.reason).await
            }
            (&Method::POST, ["tenants", name, action @ ("rollout" | "promote")]) => {
                scope(caller, name)?;
                let force = query_flag(req.uri().query(), "force");
                let body: ReasonBody = read_json(req).await?.unwrap_or_default();
                let tenant = (*name).to_owned();
                let change = if *action == "rollout" {
                    Change::StartRollout { tenant, force }
                } else {
                    Change::Promote { tenant, force }
                };
                let running_before = self.rollout_running(name);
                let outcome = self.submit(change, caller, body.reason).await?;
                let table = self.proxy.table.load();
                let view = table.tenant(name).map(|t| {
                    api::tenant_view(&table, t, self.control.published.bake_started(name))
                });
                Ok(json(
                    StatusCode::OK,
                    &RampAnswer {
                        already_running: running_before && !outcome.changed,
                        change: ChangeView::from(outcome),
                        status: view.as_ref().map_or("steady", |v| v.status),
                        rollout: view.and_then(|v| v.rollout),
                    },
                ))
            }
            (&Method::GET, ["events"]) => {
                let query = req.uri().query();
                let tenant = query_value(query, "tenant").filter(|t| !t.is_empty());
                if let Some(t) = tenant {
                    scope(caller, t)?;
                }
                let limit = match query_value(query, "limit") {
                    None | Some("") => 100,
                    Some(l) => l.parse::<usize>().map_err(|_| {
                        ApiError::new(StatusCode::BAD_REQUEST, "limit must be a whole number")
                    })?,
                };
                let mut events = self.control.published.events().recent(tenant, usize::MAX);
                // A scoped token sees only its tenants' events.
                events.retain(|e| e.tenant.as_deref().is_none_or(|t| caller.may_touch(t)));
                let skip = events.len().saturating_sub(limit);
                Ok(json(StatusCode::OK, &events[skip..]))
            }
            (&Method::GET, ["config"]) => {
                let status = self.control.published.status().clone();
                let view = serde_json::json!({
                    "path": status.path.display().to_string(),
                    "generation": status.generation,
                    "last_reload": status.last_reload.map(|t| humantime::format_rfc3339_millis(t).to_string()),
                    "last_error": status.last_error,
                    "persisted": status.persisted,
                    "store": self.control.published.store().map_or_else(
                        || serde_json::json!({"kind": "file"}),
                        |s| {
                            // How it is reached: TLS files and user, never
                            // the password.
                            let access = self.proxy.table.load().config.store.as_ref().map(
                                crate::config::store::StoreConfig::access,
                            ).unwrap_or_default();
                            serde_json::json!({
                                "kind": s.kind,
                                "endpoints": s.endpoints,
                                "connected": s.connected(),
                                "error": s.error(),
                                "revision": s.revision(),
                                "tls": access["tls"],
                                "auth": access["auth"],
                            })
                        },
                    ),
                });
                Ok(json(StatusCode::OK, &view))
            }
            (&Method::POST, ["config", "reload"]) => {
                let origin = Origin {
                    source: Source::File,
                    actor: caller.actor.clone(),
                    reason: None,
                };
                let outcome = self
                    .control
                    .submit(Change::Reload { forced: true }, origin)
                    .await?;
                Ok(json(StatusCode::OK, &ChangeView::from(outcome)))
            }
            (
                _,
                ["tenants"]
                | ["tenants", _]
                | ["tenants", _, "weights" | "rollback" | "rollout" | "promote"]
                | ["events"]
                | ["events", "stream"]
                | ["config"]
                | ["config", "reload"],
            ) => Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed here"),
            )),
            _ => Err(ApiError::not_found("no such endpoint")),
        }
    }

    async fn change(
        &self,
        change: Change,
        caller: &Caller,
        reason: Option<String>,
    ) -> Result<ApiResponse, ApiError> {
        let outcome = self.submit(change, caller, reason).await?;
        Ok(json(StatusCode::OK, &ChangeView::from(outcome)))
    }

    /// Whether a ramp or a promotion's bake runs on `tenant` now.
    fn rollout_running(&self, tenant: &str) -> bool {
        let table = self.proxy.table.load();
        let bake = self.control.published.bake_started(tenant);
        table.tenant(tenant).is_some_and(|t| {
            bake.is_some()
                || t.config
                    .rollout
                    .as_ref()
                    .is_some_and(|r| r.progress.is_some())
        })
    }

    /// Sends an admin change to the control task, after checking its reason.
    async fn submit(
        &self,
        change: Change,
        caller: &Caller,
        reason: Option<String>,
    ) -> Result<Outcome, ApiError> {
        let origin = Origin {
            source: Source::Admin,
            actor: caller.actor.clone(),
            reason: checked_reason(reason)?,
        };
        Ok(self.control.submit(change, origin).await?)
    }

    /// Refreshes the gauges that are cheaper to read at scrape time than to
    /// keep current per request, then renders.
    fn metrics(&self) -> ApiResponse {
        let table = self.proxy.table.load();
        let metrics = &self.proxy.metrics;
        let now = std::time::Instant::now();
        for tenant in table.tenants() {
            tenant
                .metrics()
                .inflight
                .set(f64::from(tenant.state.inflight()));
            for color in Pool::ALL {
                let rate = tenant.state.slo.window(color, now).error_rate();
                tenant.metrics().pool(color).slo_error_rate.set(rate);
            }
            for color in Pool::ALL {
                for ep in tenant.endpoints(color) {
                    let healthy = if ep.is_healthy() { 1.0 } else { 0.0 };
                    metrics
                        .endpoint_healthy(tenant.name(), color, &ep.address)
                        .set(healthy);
                }
            }
        }
        metrics.run_upkeep();
        // Series of tenants and endpoints no longer configured are left out.
        let text = metrics.render_live(|tenant, endpoint| {
            let Some(t) = table.tenant(tenant) else {
                return false;
            };
            endpoint.is_none_or(|(pool, address)| {
                Pool::parse(pool)
                    .is_some_and(|c| t.endpoints(c).iter().any(|e| &*e.address == address))
            })
        });
        let mut resp = Response::new(Full::new(Bytes::from(text)));
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        resp
    }
}

fn scope(caller: &Caller, tenant: &str) -> Result<(), ApiError> {
    if caller.may_touch(tenant) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("this token may not act on tenant {tenant}"),
        ))
    }
}

/// `{"error": "..."}` with the error's status; a 401 carries
/// `WWW-Authenticate: Bearer realm="turnout"` (RFC 9110 §11.6.1).
fn error_response(e: ApiError) -> ApiResponse {
    let mut resp = json(e.status, &serde_json::json!({ "error": e.message }));
    if e.status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"turnout\""),
        );
    }
    resp
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
