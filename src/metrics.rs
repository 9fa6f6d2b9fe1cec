//! Metric names (the contract of SPEC section 10) and pre-resolved handles.
//!
//! Each proxy instance owns its own Prometheus recorder rather than a global
//! one, so several proxies can run in one test process. Handles are
//! registered when a routing table is built — once per tenant and pool — so
//! the request path only bumps atomics: it never formats a label or hashes a
//! label set.

mod dns;

pub use dns::DNS_FAILURES_TOTAL;

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::config::Pool;

mod connections;
mod describe;
pub use connections::{CLIENT_CONNECTIONS, ConnectionGauges};
use describe::describe;
mod store;
pub use store::{STORE_REVISION, STORE_UP, StoreGauges};

/// `turnout_requests_total` (counter; `tenant, pool, code`): proxied requests
/// by status class `1xx`..`5xx`, counted when the response has ended.
pub const REQUESTS_TOTAL: &str = "turnout_requests_total";
/// `turnout_request_duration_seconds` (histogram in seconds; `tenant, pool`):
/// request to the response's last byte.
pub const REQUEST_DURATION_SECONDS: &str = "turnout_request_duration_seconds";
/// `turnout_upstream_errors_total` (counter; `tenant, pool, kind`): failed
/// upstream exchanges by [`UpstreamError`].
pub const UPSTREAM_ERRORS_TOTAL: &str = "turnout_upstream_errors_total";
/// `turnout_pool_share` (gauge, percent 0-100; `tenant, pool`): the share
/// the current weights give the pool; set when a table is built.
pub const POOL_SHARE: &str = "turnout_pool_share";
/// `turnout_endpoint_healthy` (gauge 0/1; `tenant, pool, endpoint`): the
/// health checker's verdict, set at scrape time.
pub const ENDPOINT_HEALTHY: &str = "turnout_endpoint_healthy";
/// `turnout_failovers_total` (counter; `tenant, from`): requests handed to
/// the other pool because `from` had no healthy endpoint (SPEC section 4.4).
pub const FAILOVERS_TOTAL: &str = "turnout_failovers_total";
/// `turnout_inflight_requests` (gauge; `tenant`): the tenant's requests in
/// flight, set at scrape time.
pub const INFLIGHT_REQUESTS: &str = "turnout_inflight_requests";
/// `turnout_rejected_total` (counter; `tenant, reason`): requests a tenant
/// turned away, by [`Rejected`].
pub const REJECTED_TOTAL: &str = "turnout_rejected_total";
/// `turnout_unrouted_total` (counter; `reason`): requests that reached no
/// tenant, by [`Unrouted`].
pub const UNROUTED_TOTAL: &str = "turnout_unrouted_total";
/// `turnout_config_reloads_total` (counter; `result` = `ok` or `error`):
/// reads of the control file (start-up, watcher, SIGHUP, admin reload).
pub const CONFIG_RELOADS_TOTAL: &str = "turnout_config_reloads_total";
/// `turnout_config_generation` (gauge, no labels): the generation of the
/// routing table being served.
pub const CONFIG_GENERATION: &str = "turnout_config_generation";
/// `turnout_slo_error_rate` (gauge, fraction 0-1; `tenant, pool`): the error
/// rate over the pool's SLO window, set at scrape time.
pub const SLO_ERROR_RATE: &str = "turnout_slo_error_rate";
/// `turnout_reverts_total` (counter; `tenant`): automatic reverts of the
/// candidate for breaking its SLO.
pub const REVERTS_TOTAL: &str = "turnout_reverts_total";
/// `turnout_notify_failures_total` (counter, no labels): webhook events
/// not delivered after their retries.
pub const NOTIFY_FAILURES_TOTAL: &str = "turnout_notify_failures_total";
/// `turnout_outlier_ejections_total` (counter; `tenant, pool, endpoint`):
/// /// passive outlier ejections of the endpoint (SPEC section 15).
pub const OUTLIER_EJECTIONS_TOTAL: &str = "turnout_outlier_ejections_total";
/// `turnout_local_errors_total` (counter; `reason`): failures of the proxy
/// itself, by [`LocalError`], answered 503.
pub const LOCAL_ERRORS_TOTAL: &str = "turnout_local_errors_total";

/// Histogram buckets for request durations, in seconds: fine below 100 ms
/// where healthy services live, coarse up to the default request timeout.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Why a request never reached a tenant (`reason` of
/// `turnout_unrouted_total`).
#[derive(Debug, Clone, Copy)]
pub enum Unrouted {
    /// No host in the request.
    NoHost = 0,
    /// No tenant owns the host.
    UnknownHost = 1,
    /// Over TLS, the host belongs to another tenant than the SNI name.
    Misdirected = 2,
    /// Two hosts, an invalid one, `CONNECT`, or a target that is not
    /// forwarded (asterisk, authority form).
    InvalidRequest = 3,
}

/// Why a tenant turned a request away before choosing an endpoint.
#[derive(Debug, Clone, Copy)]
///
/// The `reason` of `turnout_rejected_total`; never an error of a pool.
pub enum Rejected {
    /// Over the tenant's `max_inflight`: 503 with `Retry-After: 1`.
    MaxInflight = 0,
    /// A preview request without the right `X-Turnout-Preview` token: 403.
    PreviewToken = 1,
    /// Over the tenant's `rate_limit`: 429 (SPEC section 16).
    RateLimit = 2,
    /// Over the client's `client_rate_limit`: 429.
    ClientRateLimit = 3,
}

impl Rejected {
    /// The `reason` labels, indexed by the enum's value.
    const LABELS: [&'static str; 4] = [
        "max_inflight",
        "preview_token",
        "rate_limit",
        "client_rate_limit",
    ];
}

/// What went wrong talking to an upstream (`kind` of
/// `turnout_upstream_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// No connection could be opened (refused, reset, `connect_timeout`).
    Connect = 0,
    /// No response head within `request_timeout`.
    Timeout = 1,
    /// The upstream broke HTTP before its response head.
    Protocol = 2,
    /// The response failed after its head: a reset, a short or cut body, a
    /// body still coming at `request_timeout` (SPEC section 6).
    Body = 3,
    /// A gRPC call answered with a `grpc-status` that is the server's
    /// failure (UNAVAILABLE, INTERNAL, …; SPEC section 15), whatever its
    /// HTTP status.
    Grpc = 4,
}

/// A failure of the proxy itself rather than of a client or an upstream
/// (`reason` of `turnout_local_errors_total`, SPEC sections 6 and 10):
/// answered 503, never counted against a pool, never an endpoint's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalError {
    /// Out of file descriptors (`EMFILE`, `ENFILE`).
    FdExhausted = 0,
    /// The kernel had no memory or buffers for a socket (`ENOMEM`, `ENOBUFS`).
    OutOfMemory = 1,
    /// No local port left to connect from (`EADDRNOTAVAIL`).
    EphemeralPorts = 2,
}

impl LocalError {
    const LABELS: [&'static str; 3] = ["fd_exhausted", "out_of_memory", "ephemeral_ports"];

    /// The local cause of an I/O error, if it is one (Linux errno values).
    pub fn of(e: &std::io::Error) -> Option<LocalError> {
        match e.raw_os_error()? {
            libc::EMFILE | libc::ENFILE => Some(LocalError::FdExhausted),
            libc::ENOMEM | libc::ENOBUFS => Some(LocalError::OutOfMemory),
            libc::EADDRNOTAVAIL => Some(LocalError::EphemeralPorts),
            _ => None,
        }
    }

    /// Its metric label.
    pub fn as_str(self) -> &'static str {
        Self::LABELS[self as usize]
    }
}

/// The process-wide registry and the handles that are not per tenant.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    unrouted: [Counter; 4],
    /// `turnout_config_reloads_total{result="ok"}`: bumped by start-up and
    /// the control task for each control file read that applied.
    pub reloads_ok: Counter,
    /// `turnout_config_reloads_total{result="error"}`: a file that did not
    /// parse or validate (the last good state keeps serving).
    pub reloads_error: Counter,
    /// `turnout_config_generation`: set by `route` each time a table is built.
    pub generation: Gauge,
    /// `turnout_notify_failures_total`: bumped by `notify` for each event
    /// given up on.
    pub notify_failures: Counter,
    local_errors: [Counter; 3],
}

impl Metrics {
    /// A fresh recorder of this process's own (not installed globally),
    /// with the metrics described, duration buckets set, and the
    /// process-wide handles registered.
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
        let unrouted = ["no_host", "unknown_host", "misdirected", "invalid_request"]
            .map(|r| counter(UNROUTED_TOTAL, &[("reason", r)]));
        let reloads_ok = counter(CONFIG_RELOADS_TOTAL, &[("result", "ok")]);
        let reloads_error = counter(CONFIG_RELOADS_TOTAL, &[("result", "error")]);
        let generation = recorder.register_gauge(&key(CONFIG_GENERATION, &[]), &META);
        let notify_failures = counter(NOTIFY_FAILURES_TOTAL, &[]);
        let local_errors =
            LocalError::LABELS.map(|r| counter(LOCAL_ERRORS_TOTAL, &[("reason", r)]));
        Arc::new(Metrics {
            recorder,
            handle,
            unrouted,
            reloads_ok,
            reloads_error,
            generation,
            notify_failures,
            local_errors,
        })
    }

    /// Counts a failure of the proxy's own making.
    pub fn local_error(&self, reason: LocalError) {
        self.local_errors[reason as usize].increment(1);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// The exposition without the series of tenants and endpoints that have
    /// left the control state (SPEC section 10: an alert on a removed
    /// endpoint must not fire forever). `live(tenant, endpoint)` says whether
    /// a series' `tenant` label — and `endpoint` label, with its pool, when
    /// the series has one — is still configured. The exporter cannot forget
    /// a series, so they are left out here; a tenant that comes back
    /// continues its counters.
    pub fn render_live(&self, live: impl Fn(&str, Option<(&str, &str)>) -> bool) -> String {
        let text = self.handle.render();
        let mut out = String::with_capacity(text.len());
        for line in text.lines() {
            if line.starts_with('#') || series_is_live(line, &live) {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Drains histogram samples into their buckets; the exporter leaves this
    /// to its owner when it does not run its own HTTP listener.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Counts a request that reached no tenant.
    pub fn unrouted(&self, reason: Unrouted) {
        self.unrouted[reason as usize].increment(1);
    }

    /// Registers (or finds again: the same labels give the same series) the
    /// handles of `tenant` and its two pools. Called when a routing table
    /// is built, never per request.
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
            rejected: Rejected::LABELS.map(|r| {
                self.recorder
                    .register_counter(&with(REJECTED_TOTAL, Some(("reason", r))), &META)
            }),
            failovers: Pool::ALL.map(|c| {
                self.recorder
                    .register_counter(&with(FAILOVERS_TOTAL, Some(("from", c.as_str()))), &META)
            }),
            pools: Pool::ALL.map(|c| self.pool(tenant, c)),
        }
    }

    fn pool(&self, tenant: &str, pool: Pool) -> PoolMetrics {
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
            upstream_errors: ["connect", "timeout", "protocol", "body", "grpc"].map(|kind| {
                self.recorder
                    .register_counter(&with(UPSTREAM_ERRORS_TOTAL, Some(("kind", kind))), &META)
            }),
            share: self.recorder.register_gauge(&with(POOL_SHARE, None), &META),
            slo_error_rate: self
                .recorder
                .register_gauge(&with(SLO_ERROR_RATE, None), &META),
        }
    }

    /// The `turnout_outlier_ejections_total` counter of `endpoint` in
    /// `tenant`'s `pool` (SPEC section 15); registered when a table is
    /// built for a tenant with outlier ejection on.
    pub fn outlier_ejections(&self, tenant: &str, pool: Pool, endpoint: &str) -> Counter {
        let labels = vec![
            Label::new("tenant", tenant.to_owned()),
            Label::new("pool", pool.as_str()),
            Label::new("endpoint", endpoint.to_owned()),
        ];
        self.recorder
            .register_counter(&Key::from_parts(OUTLIER_EJECTIONS_TOTAL, labels), &META)
    }

    /// The `turnout_endpoint_healthy` gauge of `endpoint` (`host:port`) in
    /// `tenant`'s `pool`; the admin listener sets it at scrape time.
    pub fn endpoint_healthy(&self, tenant: &str, pool: Pool, endpoint: &str) -> Gauge {
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
    /// `turnout_inflight_requests`; set from the tenant's in-flight count
    /// at scrape time (the request path counts in an atomic of its own).
    pub inflight: Gauge,
    /// `turnout_reverts_total`; bumped by the control task when it applies
    /// an SLO revert.
    pub reverts: Counter,
    rejected: [Counter; 4],
    failovers: [Counter; 2],
    /// The handles of each pool, indexed by `Pool::index`.
    pub pools: [PoolMetrics; 2],
}

impl TenantMetrics {
    /// Counts a request the tenant turned away.
    pub fn rejected(&self, reason: Rejected) {
        self.rejected[reason as usize].increment(1);
    }

    /// Counts a request handed from pool `from` to the other one.
    pub fn failover(&self, from: Pool) {
        self.failovers[from.index()].increment(1);
    }

    /// The handles of `pool`.
    pub fn pool(&self, pool: Pool) -> &PoolMetrics {
        &self.pools[pool.index()]
    }
}

/// Handles for one tenant's pool.
pub struct PoolMetrics {
    requests: [Counter; 5],
    duration: Histogram,
    upstream_errors: [Counter; 5],
    /// `turnout_pool_share` in percent (0-100); set when a table is built.
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

    /// Counts a failed upstream exchange of this pool.
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

/// Whether a series line's `tenant` (and `pool`/`endpoint`) labels are live.
/// Label values here are tenant names and endpoint addresses, which hold
/// no quote or backslash, so the first `"` ends each value.
fn series_is_live(line: &str, live: &impl Fn(&str, Option<(&str, &str)>) -> bool) -> bool {
    // `name` is the label with its `="`, found after `{` or `,`.
    let label = |name: &str| {
        let at = line
            .match_indices(name)
            .find(|(i, _)| *i > 0 && matches!(line.as_bytes()[i - 1], b'{' | b','))?
            .0;
        let start = at + name.len();
        let len = line[start..].find('"')?;
        Some(&line[start..start + len])
    };
    let Some(tenant) = label("tenant=\"") else {
        return true;
    };
    let endpoint = label("pool=\"").zip(label("endpoint=\""));
    live(tenant, endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_of_removed_tenants_and_endpoints_are_left_out() {
        let live = |t: &str, e: Option<(&str, &str)>| {
            t == "shop" && e.is_none_or(|(pool, addr)| pool == "blue" && addr == "10.0.0.1:80")
        };
        let keep = |line: &str| series_is_live(line, &live);
        assert!(keep("turnout_config_generation 3"));
        assert!(keep(r#"turnout_unrouted_total{reason="no_host"} 1"#));
        assert!(keep(
            r#"turnout_requests_total{tenant="shop",pool="blue",code="2xx"} 5"#
        ));
        assert!(!keep(
            r#"turnout_requests_total{tenant="gone",pool="blue",code="2xx"} 5"#
        ));
        assert!(keep(
            r#"turnout_endpoint_healthy{tenant="shop",pool="blue",endpoint="10.0.0.1:80"} 1"#
        ));
        assert!(!keep(
            r#"turnout_endpoint_healthy{tenant="shop",pool="blue",endpoint="10.0.0.9:80"} 0"#
        ));
        assert!(!keep(
            r#"turnout_endpoint_healthy{tenant="shop",pool="green",endpoint="10.0.0.1:80"} 0"#
        ));
    }

    #[test]
    fn local_causes_are_recognised() {
        let e = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert_eq!(LocalError::of(&e), Some(LocalError::FdExhausted));
        let refused = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(LocalError::of(&refused), None);
    }
}
