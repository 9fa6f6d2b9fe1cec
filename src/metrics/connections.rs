//! Client connections by state: what nginx's `stub_status` calls active and
//! waiting, so an operator sees how many clients are open and how many of
//! them idle parked (costing a socket and little else, `server::served`).

use metrics::{Gauge, Recorder};

use super::{META, Metrics, key};

/// `turnout_client_connections` (gauge; `state`): client connections of the
/// proxy's listeners, `state="open"` all of them, `state="parked"` those
/// idle HTTP/1.1 connections whose buffers were given back.
pub const CLIENT_CONNECTIONS: &str = "turnout_client_connections";

/// The two `turnout_client_connections` gauges.
#[derive(Clone)]
pub struct ConnectionGauges {
    /// `state="open"`.
    pub open: Gauge,
    /// `state="parked"`.
    pub parked: Gauge,
}

impl Metrics {
    /// The client connection gauges (the same handles on every call).
    pub fn client_connections(&self) -> ConnectionGauges {
        let gauge = |state| {
            self.recorder
                .register_gauge(&key(CLIENT_CONNECTIONS, &[("state", state)]), &META)
        };
        ConnectionGauges {
            open: gauge("open"),
            parked: gauge("parked"),
        }
    }
}

/// Describes the gauge (its `# HELP` line).
pub(super) fn describe(r: &impl Recorder) {
    r.describe_gauge(
        CLIENT_CONNECTIONS.into(),
        None,
        "Client connections of the proxy's listeners: open, and parked (idle, buffers given back)."
            .into(),
    );
}
