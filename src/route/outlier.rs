//! Passive outlier ejection (SPEC section 15): an endpoint failing
//! `consecutive_errors` requests in a row gets no traffic for `ejection`
//! (doubled on each repeat) and until its next health probe passes —
//! Envoy's consecutive-5xx outlier detection, HAProxy's `observe layer7`.
//!
//! Why atomics on the endpoint: every request's outcome is recorded, so
//! the common case — a success on an endpoint with no error streak — is
//! one relaxed load; an error is one `fetch_add`. Only reaching the
//! threshold (rare) walks the pool to honour `max_ejected`. The ejection
//! ends in the endpoint's probe loop (`health`), never on the request path.
//!
//! Ejection changes routing only: the requests that failed were already
//! recorded as the pool's errors, so the SLO guard sees them (a release
//! that is bad everywhere is reverted; one bad pod just loses the pod), and
//! `max_ejected` keeps part of every pool serving.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Endpoint, Tenant};
use crate::config::Pool;

/// One endpoint's outlier state, shared by every tenant that lists it.
#[derive(Debug, Default)]
pub struct Outlier {
    /// Errors in a row since its last success.
    streak: AtomicU32,
    /// Ejected: no traffic until the ejection ends and a probe passes.
    ejected: AtomicBool,
    /// When the current (or last) ejection ends, in ms since the Unix epoch.
    until_ms: AtomicU64,
    /// Ejections in a row that came back soon after the previous one ended
    /// (the doubling exponent).
    repeats: AtomicU32,
    /// The length of the last ejection, in ms.
    last_ms: AtomicU64,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Outlier {
    /// Whether the endpoint is ejected now (it gets no traffic).
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// When the ejection ends (after which the next passing probe brings
    /// the endpoint back); `None` when it is not ejected.
    pub fn ejected_until(&self) -> Option<SystemTime> {
        self.is_ejected()
            .then(|| UNIX_EPOCH + Duration::from_millis(self.until_ms.load(Ordering::Relaxed)))
    }

    /// A health probe of the endpoint passed at `now`: ends an ejection
    /// whose time is over. True when it did.
    pub fn probe_passed(&self, now: SystemTime) -> bool {
        if !self.is_ejected() || unix_ms(now) < self.until_ms.load(Ordering::Relaxed) {
            return false;
        }
        self.streak.store(0, Ordering::Relaxed);
        self.ejected.swap(false, Ordering::AcqRel)
    }

    /// Ejects the endpoint at `now` for its base `ejection` doubled per
    /// recent repeat; `None` when another request ejected it first. The
    /// repeat count starts over once the endpoint stayed in for as long as
    /// its last ejection lasted.
    fn eject(
        &self,
        now: SystemTime,
        settings: &crate::config::OutlierSettings,
    ) -> Option<Duration> {
        if self.ejected.swap(true, Ordering::AcqRel) {
            return None;
        }
        let now_ms = unix_ms(now);
        let back_for = now_ms.saturating_sub(self.until_ms.load(Ordering::Relaxed));
        let repeats = if self.until_ms.load(Ordering::Relaxed) == 0
            || back_for > self.last_ms.load(Ordering::Relaxed)
        {
            0
        } else {
            self.repeats.load(Ordering::Relaxed).saturating_add(1)
        };
        let length = settings.ejection_after(repeats);
        self.repeats.store(repeats, Ordering::Relaxed);
        self.last_ms
            .store(length.as_millis() as u64, Ordering::Relaxed);
        self.until_ms.store(
            now_ms.saturating_add(length.as_millis() as u64),
            Ordering::Relaxed,
        );
        self.streak.store(0, Ordering::Relaxed);
        Some(length)
    }
}

/// Records the outcome of one request of `tenant` on `endpoint` (of
/// `pool`): a success ends its error streak; an error that completes
/// `consecutive_errors` in a row ejects it, unless `max_ejected` of the
/// pool already are. Does nothing when the tenant has ejection off.
pub fn record(tenant: &Tenant, pool: Pool, endpoint: &Arc<Endpoint>, error: bool) {
    let Some(settings) = &tenant.config.settings.outlier else {
        return;
    };
    let outlier = &endpoint.outlier;
    if !error {
        if outlier.streak.load(Ordering::Relaxed) != 0 {
            outlier.streak.store(0, Ordering::Relaxed);
        }
        return;
    }
    let streak = outlier.streak.fetch_add(1, Ordering::Relaxed) + 1;
    if streak < settings.consecutive_errors || outlier.is_ejected() {
        return;
    }
    let endpoints = tenant.endpoints(pool);
    let ejected = endpoints.iter().filter(|e| e.outlier.is_ejected()).count();
    let allowed = settings.max_ejected_of(endpoints.len());
    if ejected >= allowed {
        tracing::debug!(tenant = tenant.name(), %pool, endpoint = %endpoint.address, streak, allowed, "outlier not ejected: max_ejected of the pool already are");
        return;
    }
    let Some(length) = outlier.eject(SystemTime::now(), settings) else {
        return;
    };
    // Another endpoint of the pool may have been ejected at the same
    // moment: counted again, the limit wins (both may step back; neither
    // ever goes over it).
    if endpoints.iter().filter(|e| e.outlier.is_ejected()).count() > allowed {
        outlier.ejected.store(false, Ordering::Release);
        return;
    }
    if let Some(i) = endpoints.iter().position(|e| Arc::ptr_eq(e, endpoint)) {
        tenant.count_ejection(pool, i);
    }
    tracing::warn!(
        tenant = tenant.name(),
        %pool,
        endpoint = %endpoint.address,
        errors = streak,
        ejection = %humantime::format_duration(length),
        "endpoint ejected: no traffic until the ejection ends and a health probe passes"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OutlierSettings;

    #[test]
    fn an_ejection_ends_only_after_its_time_and_a_passing_probe() {
        let o = Outlier::default();
        let s = OutlierSettings::default();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(o.eject(t0, &s), Some(Duration::from_secs(30)));
        assert!(o.is_ejected());
        assert_eq!(o.eject(t0, &s), None, "ejected once");
        assert!(!o.probe_passed(t0 + Duration::from_secs(29)));
        assert!(o.is_ejected());
        assert!(o.probe_passed(t0 + Duration::from_secs(30)));
        assert!(!o.is_ejected() && o.ejected_until().is_none());
        // Ejected again soon after: twice as long.
        let t1 = t0 + Duration::from_secs(40);
        assert_eq!(o.eject(t1, &s), Some(Duration::from_secs(60)));
        assert!(o.probe_passed(t1 + Duration::from_secs(60)));
        // In for longer than the last ejection lasted: back to the base.
        let t2 = t1 + Duration::from_secs(60 + 61);
        assert_eq!(o.eject(t2, &s), Some(Duration::from_secs(30)));
    }
}
