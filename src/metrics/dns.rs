//! `turnout_dns_failures_total{name}` (SPEC sections 10 and 13): failed
//! resolutions of endpoint names. Its label values are the names the pools
//! list, so they are bounded by the control file.

use metrics::{Counter, Key, Label, Recorder};
use metrics_exporter_prometheus::PrometheusRecorder;

use super::{META, Metrics};

/// `turnout_dns_failures_total` (counter; `name`): resolutions of an
/// endpoint name that failed (no answer, an error, no address); the name
/// keeps its last addresses.
pub const DNS_FAILURES_TOTAL: &str = "turnout_dns_failures_total";

impl Metrics {
    /// The failure counter of endpoint name `name`; registered by the
    /// name's resolution task when it starts, never per request.
    pub fn dns_failures(&self, name: &str) -> Counter {
        let key = Key::from_parts(
            DNS_FAILURES_TOTAL,
            vec![Label::new("name", name.to_owned())],
        );
        self.recorder.register_counter(&key, &META)
    }
}

pub(super) fn describe(r: &PrometheusRecorder) {
    r.describe_counter(
        DNS_FAILURES_TOTAL.into(),
        None,
        "Failed resolutions of endpoint names (the last addresses are kept).".into(),
    );
}
