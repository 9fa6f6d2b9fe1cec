//! The JSON views of the admin API (SPEC section 8).
//!
//! The views are their own serde types, built from the routing table on
//! each call, rather than `Serialize` on the model: the JSON is a contract
//! (scripts, `ctl`, the console read it), so its field names stay put when
//! the internals are renamed. Nothing here is on the request path.

use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use serde::Serialize;

mod limits;
pub use limits::{ClientRateLimitView, RateLimitView};

use crate::config::{Pool, Weights};
use crate::route::{RoutingTable, Tenant};

/// `GET /v1/tenants/{name}` (and each element of `GET /v1/tenants`): one
/// tenant as an operator sees it.
#[derive(Serialize)]
pub struct TenantView<'a> {
    /// The tenant's name.
    pub name: &'a str,
    /// Host patterns as written (`acme.com`, `*.acme.com`), lower-cased.
    pub hosts: Vec<String>,
    /// Preview host patterns, likewise.
    pub preview_hosts: Vec<String>,
    /// `"blue"` or `"green"`: the pool known to be good.
    pub stable: Pool,
    /// The other pool.
    pub candidate: Pool,
    /// `{"blue": B, "green": G}` as configured now.
    pub weights: Weights,
    /// `steady, split, ramping, baking, reverted`.
    pub status: &'static str,
    /// Share and endpoints of each pool.
    pub pools: PerPool<PoolView>,
    /// The SLO window of each pool.
    pub slo: PerPool<WindowView>,
    /// The candidate's verdict: `ok, inconclusive, breach`.
    pub verdict: &'static str,
    /// Why, when in breach.
    pub breach: Option<String>,
    /// The bounds the verdict stands on (SPEC section 6).
    pub judgement: JudgementView,
    /// The insiders' cohort rules (`candidate_match`, SPEC section 4.3),
    /// as the control file writes them: `{header|cookie, value}`.
    pub candidate_match: Vec<serde_json::Value>,
    /// The ramp or promote bake in progress; `null` when none runs.
    pub rollout: Option<RolloutView>,
    /// The tenant's requests in flight now (admitted under `max_inflight`).
    pub inflight: u32,
    /// The tenant's `rate_limit` and its bucket; `null` when unset.
    pub rate_limit: Option<RateLimitView>,
    /// The `client_rate_limit` and the client keys held; `null` when unset.
    pub client_rate_limit: Option<ClientRateLimitView>,
    /// The generation of the routing table the view was read from.
    pub generation: u64,
}

/// One value per pool, serialized as `{"blue": ..., "green": ...}`.
#[derive(Serialize)]
pub struct PerPool<T> {
    /// The blue pool's value.
    pub blue: T,
    /// The green pool's value.
    pub green: T,
}

/// One pool of a tenant.
#[derive(Serialize)]
pub struct PoolView {
    /// Share of the tenant's traffic, in percent.
    pub share: f64,
    /// The pool's endpoints, in file order.
    pub endpoints: Vec<EndpointView>,
}

/// One endpoint of a pool.
#[derive(Serialize)]
pub struct EndpointView {
    /// `host:port` as the control file lists it; `name:port/ip` for one
    /// address of a name (SPEC section 13).
    pub address: String,
    /// For one address of a name: the pool entry (`name:port`) it came
    /// from; absent for an IP literal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The active health checker's current verdict (SPEC section 5).
    pub healthy: bool,
    /// Requests in flight to it now, across every tenant that lists it.
    pub inflight: u32,
    /// Ejected by passive outlier ejection (SPEC section 15): no traffic
    /// until `ejected_until` and a passing health probe.
    pub ejected: bool,
    /// When the ejection ends (RFC 3339); `null` when not ejected.
    pub ejected_until: Option<String>,
}

/// A pool's sliding SLO window (`slo.window` long), as counted now.
#[derive(Serialize)]
pub struct WindowView {
    /// Finished requests in the window (abandoned ones excluded).
    pub requests: u64,
    /// Of those, errors of the pool (SPEC section 6).
    pub errors: u64,
    /// `errors / requests`, in `[0, 1]`; 0 with no requests.
    pub error_rate: f64,
    /// The 99th percentile latency in milliseconds, from the window's
    /// histogram: never below the true value, at most 25 % above. `null`
    /// with no requests.
    pub p99_ms: Option<f64>,
    /// Requests whose client went away before the response head since the
    /// process started (499): not in `requests`, no evidence either way.
    pub abandoned: u64,
}

/// The candidate's sequential verdict: the counts of its exposure, and each
/// measure's confidence bounds at `slo.confidence`.
#[derive(Serialize)]
pub struct JudgementView {
    /// `ok, inconclusive, breach`.
    pub standing: &'static str,
    /// Candidate requests since its exposure began (evidence only).
    pub requests: u64,
    /// While inconclusive, roughly how many more candidate requests an
    /// `ok` needs if the rates hold; absent when they never give one.
    pub more_requests: Option<u64>,
    /// The error rate (or, with `baseline = "stable"`, the difference to
    /// stable's) against `max_error_rate`.
    pub error_rate: Option<BoundsView>,
    /// The fraction of requests slower than `max_p99`, against 1 %.
    pub slow_fraction: Option<BoundsView>,
}

/// One measure: observed value, confidence bounds, limit; `requests` and
/// `epoch` say which span the bounds are over (epoch 1: the whole
/// exposure; later epochs: the latest requests only).
#[derive(Serialize)]
pub struct BoundsView {
    /// The observed rate over the span (a difference for
    /// `baseline = "stable"`, in `[-1, 1]`; otherwise in `[0, 1]`).
    pub value: f64,
    /// The lower confidence bound; above `limit` is a breach.
    pub lower: f64,
    /// The upper confidence bound; below `limit` (for every measure) is ok.
    pub upper: f64,
    /// The limit judged against: `max_error_rate`, or 0.01 for slowness.
    pub limit: f64,
    /// Candidate requests in the span.
    pub requests: u64,
    /// 1: the whole exposure; `j >= 2`: the `j`-th epoch (latest requests).
    pub epoch: u64,
}

impl From<&crate::slo::sequential::Judgement> for JudgementView {
    fn from(j: &crate::slo::sequential::Judgement) -> JudgementView {
        let bounds = |e: &crate::slo::sequential::Estimate| BoundsView {
            value: e.rate,
            lower: e.lower,
            upper: e.upper,
            limit: e.limit,
            requests: e.requests,
            epoch: e.epoch,
        };
        JudgementView {
            standing: j.standing.as_str(),
            requests: j.requests,
            more_requests: j.more_requests,
            error_rate: j.errors.as_ref().map(bounds),
            slow_fraction: j.slow.as_ref().map(bounds),
        }
    }
}

/// A ramp (`rollout.progress`) or a promote bake in progress.
#[derive(Serialize)]
pub struct RolloutView {
    /// 1-based step number; `None` for a promote bake without a rollout table.
    pub step: Option<usize>,
    /// The ramp's steps in percent; `[100]` for a promote bake.
    pub steps: Vec<u32>,
    /// The candidate's share now, in percent.
    pub share: u32,
    /// `"ramping"` below 100, `"baking"` at 100.
    pub phase: &'static str,
    /// When the current step (or the bake) began, RFC 3339 to the second.
    pub since: String,
}

impl Serialize for Pool {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The view of one tenant; `bake` is the start of a promote bake held by the
/// control task (tenants without a rollout table).
pub fn tenant_view<'a>(
    table: &RoutingTable,
    tenant: &'a Tenant,
    bake: Option<SystemTime>,
) -> TenantView<'a> {
    let c = &tenant.config;
    let now = Instant::now();
    let pool = |color: Pool| PoolView {
        share: f64::from(c.weights.share_bp(color)) / 100.0,
        endpoints: tenant
            .endpoints(color)
            .iter()
            .map(|e| EndpointView {
                address: e.address.to_string(),
                name: e.name.as_deref().map(str::to_owned),
                healthy: e.is_healthy(),
                inflight: e.inflight(),
                ejected: e.outlier.is_ejected(),
                ejected_until: e
                    .outlier
                    .ejected_until()
                    .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            })
            .collect(),
    };
    let window = |color: Pool| {
        let s = tenant.state.slo.window(color, now);
        WindowView {
            requests: s.requests,
            errors: s.errors,
            error_rate: s.error_rate(),
            p99_ms: s.p99.map(|d| d.as_secs_f64() * 1000.0),
            abandoned: tenant.state.abandoned_count(color),
        }
    };
    let judgement = tenant.state.slo.judge(c.stable);
    let verdict = judgement.verdict();
    let candidate_share = c.weights.share_bp(c.candidate()) / 100;
    let rollout = match (c.rollout.as_ref(), bake) {
        (Some(r), _) if r.progress.is_some() => r.progress.as_ref().map(|p| RolloutView {
            step: Some(p.step + 1),
            steps: r.steps.clone(),
            share: candidate_share,
            phase: if r.steps.get(p.step) == Some(&100) {
                "baking"
            } else {
                "ramping"
            },
            since: humantime::format_rfc3339_seconds(p.since).to_string(),
        }),
        (_, Some(since)) => Some(RolloutView {
            step: None,
            steps: vec![100],
            share: candidate_share,
            phase: "baking",
            since: humantime::format_rfc3339_seconds(since).to_string(),
        }),
        _ => None,
    };
    let (rate_limit, client_rate_limit) = limits::views(tenant);
    let status = if tenant.state.reverted.load(Ordering::Relaxed) {
        "reverted"
    } else if let Some(r) = &rollout {
        r.phase
    } else if c.weights.of(c.candidate()) == 0 {
        "steady"
    } else {
        "split"
    };
    TenantView {
        name: tenant.name(),
        hosts: c.hosts.iter().map(ToString::to_string).collect(),
        preview_hosts: c.preview_hosts.iter().map(ToString::to_string).collect(),
        stable: c.stable,
        candidate: c.candidate(),
        weights: c.weights,
        status,
        pools: PerPool {
            blue: pool(Pool::Blue),
            green: pool(Pool::Green),
        },
        slo: PerPool {
            blue: window(Pool::Blue),
            green: window(Pool::Green),
        },
        verdict: verdict.as_str(),
        breach: match verdict {
            crate::slo::Verdict::Breach(reason) => Some(reason),
            _ => None,
        },
        judgement: JudgementView::from(&judgement),
        candidate_match: c
            .settings
            .candidate_match
            .iter()
            .map(|rule| match rule {
                crate::config::MatchRule::Header { name, value } => {
                    serde_json::json!({ "header": name.as_str(), "value": value })
                }
                crate::config::MatchRule::Cookie { name, value } => {
                    serde_json::json!({ "cookie": name, "value": value })
                }
            })
            .collect(),
        rollout,
        inflight: tenant.state.inflight(),
        rate_limit,
        client_rate_limit,
        generation: table.generation,
    }
}
