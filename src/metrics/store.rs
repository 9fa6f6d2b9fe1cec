//! The fleet store's metrics (SPEC sections 10 and 12): whether etcd
//! answers, and the revision of the state last read or committed — so an
//! alert can fire on a replica cut off from the fleet's state, and a
//! dashboard can show replicas that lag behind.

use metrics::{Gauge, Recorder};

use super::{META, Metrics, key};

/// `turnout_store_up` (gauge 0/1): 1 while etcd answers.
pub const STORE_UP: &str = "turnout_store_up";
/// `turnout_store_revision` (gauge): the etcd revision of the state last
/// read or committed.
pub const STORE_REVISION: &str = "turnout_store_revision";

/// The store's gauges, registered only when `[store]` is configured.
pub struct StoreGauges {
    /// `turnout_store_up`.
    pub up: Gauge,
    /// `turnout_store_revision`.
    pub revision: Gauge,
}

impl Metrics {
    /// Registers (or finds again) the store's gauges.
    pub fn store_gauges(&self) -> StoreGauges {
        self.recorder.describe_gauge(
            STORE_UP.into(),
            None,
            "1 while the fleet's store (etcd) answers, else 0.".into(),
        );
        self.recorder.describe_gauge(
            STORE_REVISION.into(),
            None,
            "Store revision of the control state last read or committed.".into(),
        );
        StoreGauges {
            up: self.recorder.register_gauge(&key(STORE_UP, &[]), &META),
            revision: self
                .recorder
                .register_gauge(&key(STORE_REVISION, &[]), &META),
        }
    }
}
