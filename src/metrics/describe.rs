//! The `# HELP` text of every metric: what an operator reads beside the
//! series in Prometheus, kept apart from the handles' plumbing.

use metrics::Recorder;
use metrics_exporter_prometheus::PrometheusRecorder;

use super::*;

/// Describes every metric on `r`.
pub(super) fn describe(r: &PrometheusRecorder) {
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
            "Requests a tenant turned away (max_inflight, preview_token, rate_limit, client_rate_limit).",
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
        (
            OUTLIER_EJECTIONS_TOTAL,
            "Endpoints ejected for failing requests in a row (passive outlier ejection).",
        ),
        (
            LOCAL_ERRORS_TOTAL,
            "Failures of the proxy itself (out of file descriptors, memory or ports), answered 503.",
        ),
    ];
    for (name, help) in counters {
        r.describe_counter(name.into(), None, help.into());
    }
    super::dns::describe(r);
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
    connections::describe(r);
    r.describe_histogram(
        REQUEST_DURATION_SECONDS.into(),
        Some(Unit::Seconds),
        "Time from request to the last byte of the response.".into(),
    );
}
