//! The SLO guard of SPEC section 6: windows per tenant and pool
//! (`window`), the anytime-valid verdict on the candidate (`sequential`),
//! and the per-tenant guard that holds both (`guard`).
//!
//! Recording and judging happen on the request path as each request
//! completes (`proxy::body`), so a revert lands within milliseconds of the
//! breach rather than at the next timer tick. The revert itself is a
//! `Change` applied by the control task, like every other change. `judge`
//! below is the plain window rule, kept for the stable pool's log line.

pub mod guard;
pub mod sequential;
pub mod window;

use std::time::Duration;

use crate::config::{Baseline, SloSettings};
pub use window::{Snapshot, Window};

/// The candidate's standing against its SLO.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Within the SLO: for the sequential test, every upper bound is below
    /// its limit; for [`judge`], the window's figures are. Ramp steps and
    /// promotion need it.
    Ok,
    /// Fewer than `min_requests` in the window, or (sequential test)
    /// bounds either side of a limit: no judgement, never a pass.
    Inconclusive,
    /// In breach, with the figures that show it.
    Breach(String),
}

impl Verdict {
    /// `"ok"`, `"inconclusive"` or `"breach"`: the tenant view's `verdict`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Inconclusive => "inconclusive",
            Verdict::Breach(_) => "breach",
        }
    }
}

/// Judges a pool's window; `baseline` is the stable pool's window when the
/// tenant compares against it.
pub fn judge(
    slo: &SloSettings,
    window: Duration,
    pool: &Snapshot,
    stable: Option<&Snapshot>,
) -> Verdict {
    if pool.requests < u64::from(slo.min_requests) {
        return Verdict::Inconclusive;
    }
    // Only formatted for a breach: judging is on the request path.
    let over = || {
        format!(
            "over {} requests in {}",
            pool.requests,
            humantime::format_duration(window)
        )
    };
    let rate = pool.error_rate();
    match (slo.baseline, stable) {
        (Baseline::Stable, Some(stable)) => {
            // Against a baseline with too few requests of its own there is
            // nothing to compare: no verdict.
            if stable.requests < u64::from(slo.min_requests) {
                return Verdict::Inconclusive;
            }
            let base = stable.error_rate();
            if rate - base > slo.max_error_rate {
                return Verdict::Breach(format!(
                    "error rate {rate:.2} exceeds stable's {base:.2} by more than {} {}",
                    slo.max_error_rate,
                    over()
                ));
            }
        }
        _ => {
            if rate > slo.max_error_rate {
                return Verdict::Breach(format!(
                    "error rate {rate:.2} > {} {}",
                    slo.max_error_rate,
                    over()
                ));
            }
        }
    }
    if let (Some(max), Some(p99)) = (slo.max_p99, pool.p99)
        && p99 > max
    {
        return Verdict::Breach(format!(
            "p99 {}ms > {}ms {}",
            p99.as_millis(),
            max.as_millis(),
            over()
        ));
    }
    Verdict::Ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slo(baseline: Baseline, max_p99: Option<Duration>) -> SloSettings {
        SloSettings {
            max_p99,
            baseline,
            ..crate::config::Settings::default().slo
        }
    }

    fn snap(requests: u64, errors: u64, p99_ms: u64) -> Snapshot {
        Snapshot {
            requests,
            errors,
            p99: Some(Duration::from_millis(p99_ms)),
        }
    }

    const W: Duration = Duration::from_secs(30);

    #[test]
    fn absolute_rate() {
        let s = slo(Baseline::Absolute, None);
        assert_eq!(judge(&s, W, &snap(19, 19, 1), None), Verdict::Inconclusive);
        assert_eq!(judge(&s, W, &snap(100, 5, 1), None), Verdict::Ok);
        assert_eq!(
            judge(&s, W, &snap(57, 24, 1), None),
            Verdict::Breach("error rate 0.42 > 0.05 over 57 requests in 30s".into())
        );
    }

    #[test]
    fn against_stable() {
        let s = slo(Baseline::Stable, None);
        // Both pools failing alike is not the candidate's fault.
        assert_eq!(
            judge(&s, W, &snap(100, 50, 1), Some(&snap(100, 48, 1))),
            Verdict::Ok
        );
        assert!(matches!(
            judge(&s, W, &snap(100, 50, 1), Some(&snap(100, 10, 1))),
            Verdict::Breach(_)
        ));
    }

    #[test]
    fn latency() {
        let s = slo(Baseline::Absolute, Some(Duration::from_millis(500)));
        assert_eq!(judge(&s, W, &snap(100, 0, 400), None), Verdict::Ok);
        assert_eq!(
            judge(&s, W, &snap(100, 0, 812), None),
            Verdict::Breach("p99 812ms > 500ms over 100 requests in 30s".into())
        );
    }
}
