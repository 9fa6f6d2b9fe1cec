//! Metric names (the contract of SPEC section 10) and pre-resolved handles.
//!
//! Each proxy instance owns its own Prometheus recorder rather than a global
//! one, so several proxies can run in one test process. Handles are
//! registered when a routing table is built — once per tenant and pool — so
//! the request path only bumps atomics: it never formats a label or hashes a
//! label set.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::config::Color;

pub const REQUESTS_TOTAL: &str = "turnout_requests_total";
pub const REQUEST_DURATION_SECONDS: &str = "turnout_request_duration_seconds";
pub const UPSTREAM_ERRORS_TOTAL: &str = "turnout_upstream_errors_total";
pub const POOL_SHARE: &str = "turnout_pool_share";
pub const ENDPOINT_HEALTHY: &str = "turnout_endpoint_healthy";
pub const FAILOVERS_TOTAL: &str = "turnout_failovers_total";
pub const INFLIGHT_REQUESTS: &str = "turnout_inflight_requests";
pub const REJECTED_TOTAL: &str = "turnout_rejected_total";
pub const UNROUTED_TOTAL: &str = "turnout_unrouted_total";
pub const CONFIG_RELOADS_TOTAL: &str = "turnout_config_reloads_total";
pub const CONFIG_GENERATION: &str = "turnout_config_generation";
pub const SLO_ERROR_RATE: &str = "turnout_slo_error_rate";
pub const REVERTS_TOTAL: &str = "turnout_reverts_total";
pub const NOTIFY_FAILURES_TOTAL: &str = "turnout_notify_failures_total";

/// Histogram buckets for request durations, in seconds: fine below 100 ms
/// where healthy services live, coarse up to the default request timeout.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Why a request never reached a tenant.
#[derive(Debug, Clone, Copy)]
pub enum Unrouted {
    NoHost = 0,
    UnknownHost = 1,
    Misdirected = 2,
}

/// Why a tenant turned a request away before choosing an endpoint.
#[derive(Debug, Clone, Copy)]
pub enum Rejected {
    MaxInflight = 0,
    PreviewToken = 1,
}

/// What went wrong talking to an upstream.
#[derive(Debug, Clone, Copy)]
pub enum UpstreamError {
    Connect = 0,
    Timeout = 1,
    Protocol = 2,
}

/// The process-wide registry and the handles that are not per tenant.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    unrouted: [Counter; 3],
    pub reloads_ok: Counter,
    pub reloads_error: Counter,
    pub generation: Gauge,
    pub notify_failures: Counter,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(REQUEST_DURATION_SECONDS.to_owned()),
                DURATION_BUCKETS,
            )
            .expect("the bucket list is a non-empty constant")
            .build_recorder();
        describe(&recorder);
        let handle = recorder.handle();
        let counter = |name: &'static str, labels: &[(&'static str, &'static str)]| {
            recorder.register_counter(&key(name, labels), &META)
        };
        let unrouted = ["no_host", "unknown_host", "misdirected"]
            .map(|r| counter(UNROUTED_TOTAL, &[("reason", r)]));
        let reloads_ok = counter(CONFIG_RELOADS_TOTAL, &[("result", "ok")]);
        let reloads_error = counter(CONFIG_RELOADS_TOTAL, &[("result", "error")]);
        let generation = recorder.register_gauge(&key(CONFIG_GENERATION, &[]), &META);
        let notify_failures = counter(NOTIFY_FAILURES_TOTAL, &[]);
        Arc::new(Metrics {
            recorder,
            handle,
            unrouted,
            reloads_ok,
            reloads_error,
            generation,
            notify_failures,
        })
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Drains histogram samples into their buckets; the exporter leaves this
    /// to its owner when it does not run its own HTTP listener.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    pub fn unrouted(&self, reason: Unrouted) {
        self.unrouted[reason as usize].increment(1);
    }

    pub fn tenant(&self, tenant: &str) -> TenantMetrics {
        let t = Label::new("tenant", tenant.to_owned());
        let with = |name: &'static str, extra: Option<(&'static str, &'static str)>| {
            let mut labels = vec![t.clone()];
            labels.extend(extra.map(|(k, v)| Label::new(k, v)));
            Key::from_parts(name, labels)
        };
        TenantMetrics {
            inflight: self
                .recorder
                .register_gauge(&with(INFLIGHT_REQUESTS, None), &META),
            reverts: self
                .recorder
                .register_counter(&with(REVERTS_TOTAL, None), &META),
            rejected: ["max_inflight", "preview_token"].map(|r| {
                self.recorder
                    .register_counter(&with(REJECTED_TOTAL, Some(("reason", r))), &META)
            }),
            failovers: Color::ALL.map(|c| {
                self.recorder
                    .register_counter(&with(FAILOVERS_TOTAL, Some(("from", c.as_str()))), &META)
            }),
            pools: Color::ALL.map(|c| self.pool(tenant, c)),
        }
    }

    fn pool(&self, tenant: &str, pool: Color) -> PoolMetrics {
        let with = |name: &'static str, extra: Option<(&'static str, &'static str)>| {
            let mut labels = vec![
                Label::new("tenant", tenant.to_owned()),
                Label::new("pool", pool.as_str()),
            ];
            labels.extend(extra.map(|(k, v)| Label::new(k, v)));
            Key::from_parts(name, labels)
        };
        PoolMetrics {
            requests: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|code| {
                self.recorder
                    .register_counter(&with(REQUESTS_TOTAL, Some(("code", code))), &META)
            }),
            duration: self
                .recorder
                .register_histogram(&with(REQUEST_DURATION_SECONDS, None), &META),
            upstream_errors: ["connect", "timeout", "protocol"].map(|kind| {
                self.recorder
                    .register_counter(&with(UPSTREAM_ERRORS_TOTAL, Some(("kind", kind))), &META)
            }),
            share: self.recorder.register_gauge(&with(POOL_SHARE, None), &META),
            slo_error_rate: self
                .recorder
                .register_gauge(&with(SLO_ERROR_RATE, None), &META),
        }
    }

    pub fn endpoint_healthy(&self, tenant: &str, pool: Color, endpoint: &str) -> Gauge {
        let labels = vec![
            Label::new("tenant", tenant.to_owned()),
            Label::new("pool", pool.as_str()),
            Label::new("endpoint", endpoint.to_owned()),
        ];
        self.recorder
            .register_gauge(&Key::from_parts(ENDPOINT_HEALTHY, labels), &META)
    }
}

/// Handles for one tenant, registered when its routing entry is built.
pub struct TenantMetrics {
    pub inflight: Gauge,
    pub reverts: Counter,
    rejected: [Counter; 2],
    failovers: [Counter; 2],
    pub pools: [PoolMetrics; 2],
}

impl TenantMetrics {
    pub fn rejected(&self, reason: Rejected) {
        self.rejected[reason as usize].increment(1);
    }

    pub fn failover(&self, from: Color) {
        self.failovers[from.index()].increment(1);
    }

    pub fn pool(&self, pool: Color) -> &PoolMetrics {
        &self.pools[pool.index()]
    }
}

/// Handles for one tenant's pool.
pub struct PoolMetrics {
    requests: [Counter; 5],
    duration: Histogram,
    upstream_errors: [Counter; 3],
    pub share: Gauge,
    /// Set from the SLO window when metrics are scraped.
    pub slo_error_rate: Gauge,
}

impl PoolMetrics {
    /// Counts a finished request by status class and records its duration.
    pub fn record(&self, status: u16, elapsed: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests[class].increment(1);
        self.duration.record(elapsed.as_secs_f64());
    }

    pub fn upstream_error(&self, kind: UpstreamError) {
        self.upstream_errors[kind as usize].increment(1);
    }
}

static META: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
    let labels: Vec<Label> = labels.iter().map(|(k, v)| Label::new(*k, *v)).collect();
    Key::from_parts(name, labels)
}

fn describe(r: &PrometheusRecorder) {
    let counters = [
        (
            REQUESTS_TOTAL,
            "Proxied requests by tenant, pool and status class.",
        ),
        (UPSTREAM_ERRORS_TOTAL, "Failed upstream exchanges by kind."),
        (
            FAILOVERS_TOTAL,
            "Requests handed to the other pool because theirs had no healthy endpoint.",
        ),
        (
            REJECTED_TOTAL,
            "Requests a tenant turned away (max_inflight, preview_token).",
        ),
        (UNROUTED_TOTAL, "Requests that matched no tenant."),
        (CONFIG_RELOADS_TOTAL, "Control file reloads by result."),
        (
            REVERTS_TOTAL,
            "Automatic reverts of the candidate for breaking its SLO.",
        ),
        (
            NOTIFY_FAILURES_TOTAL,
            "Webhook notifications that could not be delivered.",
        ),
    ];
    for (name, help) in counters {
        r.describe_counter(name.into(), None, help.into());
    }
    let gauges = [
        (
            SLO_ERROR_RATE,
            "Error rate of the pool over its SLO window.",
        ),
        (
            POOL_SHARE,
            "Share of the tenant's traffic the pool is given, in percent.",
        ),
        (
            ENDPOINT_HEALTHY,
            "1 while the endpoint passes its health checks.",
        ),
        (INFLIGHT_REQUESTS, "Requests of the tenant in flight."),
        (
            CONFIG_GENERATION,
            "Generation of the control state being served.",
        ),
    ];
    for (name, help) in gauges {
        r.describe_gauge(name.into(), None, help.into());
    }
    r.describe_histogram(
        REQUEST_DURATION_SECONDS.into(),
        Some(Unit::Seconds),
        "Time from request to the last byte of the response.".into(),
    );
}
