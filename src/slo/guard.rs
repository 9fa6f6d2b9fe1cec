//! One tenant's SLO guard: what routing used to carry (windows, the breach
//! latch) and the anytime-valid verdict (`sequential`), behind three calls —
//! `record` an outcome (returns a breach if this outcome made one), `judge`
//! for the view and the ramp, `restart` when a new exposure begins.
//!
//! Why two kinds of counts: the SPEC's window (`slo.window`, ten buckets)
//! is what operators read — error rate and p99 over the last 30 s, the
//! `turnout_slo_error_rate` gauge — while the verdict is a sequential test
//! over the candidate's whole exposure in epochs (see `sequential`), which
//! is what keeps a good release from being reverted by a lucky streak. Both
//! are a few relaxed atomic adds per request; the test itself runs only
//! when a candidate request fails or is slow.
//!
//! The guard is kept across routing tables by tenant name (the registry),
//! so a reload that does not change the tenant's SLO settings changes
//! nothing here; one that does starts the test afresh (a new plan, a new α
//! budget), as a new release would.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::sequential::{Breach, Guard, Judgement, Plan, Tallies, Tally};
use super::window::{Snapshot, Window};
use super::{Verdict, judge};
use crate::config::{Pool, SloSettings};

/// The SLO state of one tenant (both pools).
pub struct TenantGuard {
    /// Windows per pool; replaced whole when the window length changes.
    windows: ArcSwap<[Window; 2]>,
    /// Counts per pool since the current exposure began.
    tallies: [Tallies; 2],
    /// The candidate's sequential test, rebuilt when the settings change.
    test: ArcSwap<Guard>,
    /// A breach was returned and not yet handled: one revert per breach.
    breach_pending: AtomicBool,
    stable_breach_logged: AtomicBool,
}

impl TenantGuard {
    /// A guard for a tenant with these settings, at the start of an
    /// exposure.
    pub fn new(slo: &SloSettings) -> TenantGuard {
        TenantGuard {
            windows: ArcSwap::from_pointee([Window::new(slo.window), Window::new(slo.window)]),
            tallies: [Tallies::default(), Tallies::default()],
            test: ArcSwap::from_pointee(Guard::new(Plan::new(slo))),
            breach_pending: AtomicBool::new(false),
            stable_breach_logged: AtomicBool::new(false),
        }
    }

    /// Follows a change of the tenant's settings (on the control path):
    /// a new window length starts new windows, a new SLO plan a new test.
    pub fn configure(&self, slo: &SloSettings) {
        if self.windows.load()[0].length() != slo.window {
            self.windows
                .store(Arc::new([Window::new(slo.window), Window::new(slo.window)]));
        }
        let plan = Plan::new(slo);
        if *self.test.load().plan() != plan {
            self.test.store(Arc::new(Guard::new(plan)));
            self.clear_tallies();
        }
    }

    /// Records one finished request of `pool` that is evidence about it
    /// (SPEC section 6: not a 499, a client's fault or a local failure).
    /// `error` is whether it was the pool's error. Returns a breach when
    /// this outcome put the exposed candidate in breach — once: later
    /// calls return `None` until [`TenantGuard::breach_handled`].
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        name: &str,
        slo: &SloSettings,
        pool: Pool,
        stable: Pool,
        candidate_exposed: bool,
        error: bool,
        elapsed: Duration,
        now: Instant,
    ) -> Option<Breach> {
        let windows = self.windows.load();
        windows[pool.index()].record(now, error, elapsed);
        let test = self.test.load();
        let slow = test.plan().is_slow(elapsed);
        self.tallies[pool.index()].record(error, slow);
        if !(error || slow) {
            return None;
        }
        if pool != stable {
            if !candidate_exposed || self.breach_pending.load(Ordering::Acquire) {
                return None;
            }
            let breach = test.breach(
                self.tallies[pool.index()].load(),
                self.tallies[stable.index()].load(),
            )?;
            return (!self.breach_pending.swap(true, Ordering::AcqRel)).then_some(breach);
        }
        // The stable pool: logged and exported, nothing more (SPEC 6); the
        // log line comes once per episode of its window over the limit.
        let snap = windows[pool.index()].snapshot(now);
        match judge(slo, slo.window, &snap, None) {
            Verdict::Breach(reason) => {
                if !self.stable_breach_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(tenant = name, pool = pool.as_str(), %reason, "the stable pool is breaking its SLO");
                }
            }
            _ => self.stable_breach_logged.store(false, Ordering::Relaxed),
        }
        None
    }

    /// The candidate's verdict now, with its bounds (for the tenant view,
    /// the ramp and promotion).
    pub fn judge(&self, stable: Pool) -> Judgement {
        let candidate = stable.other();
        self.test.load().judge(
            self.tallies[candidate.index()].load(),
            self.tallies[stable.index()].load(),
        )
    }

    /// The candidate's and the stable pool's counts since the exposure
    /// began, as this process saw them (a fleet pools them: SPEC 12).
    pub fn tallies(&self, stable: Pool) -> (Tally, Tally) {
        (
            self.tallies[stable.other().index()].load(),
            self.tallies[stable.index()].load(),
        )
    }

    /// The verdict on counts pooled across a fleet's replicas: the same
    /// test as [`TenantGuard::judge`], on the whole exposure (a fresh test,
    /// so the pooled counts never disturb this process's own epochs).
    pub fn judge_pooled(&self, candidate: Tally, stable: Tally) -> Judgement {
        let plan = self.test.load().plan().clone();
        Guard::new(plan).judge(candidate, stable)
    }

    /// A pool's window now.
    pub fn window(&self, pool: Pool, now: Instant) -> Snapshot {
        self.windows.load()[pool.index()].snapshot(now)
    }

    /// A new exposure of `candidate` begins (it starts getting traffic, it
    /// is a new candidate after a promotion, or it was reverted): its
    /// window is cleared and the test starts afresh on both pools' counts
    /// from now on.
    pub fn restart(&self, candidate: Pool) {
        self.windows.load()[candidate.index()].clear();
        self.clear_tallies();
        self.test.load().reset();
    }

    fn clear_tallies(&self) {
        for t in &self.tallies {
            t.clear();
        }
    }

    /// Called by the control task once it has handled a breach.
    pub fn breach_handled(&self) {
        self.breach_pending.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SPEC's default SLO: 0.05, 30 s, 20 requests, 0.99.
    fn slo() -> SloSettings {
        crate::config::Settings::default().slo
    }

    #[test]
    fn a_failing_exposed_candidate_breaches_once_and_restarts_clean() {
        let (s, g) = (slo(), TenantGuard::new(&slo()));
        let now = Instant::now();
        let ms = Duration::from_millis(1);
        let mut breaches = 0;
        for i in 0..60 {
            let error = i % 2 == 0;
            if g.record("t", &s, Pool::Green, Pool::Blue, true, error, ms, now)
                .is_some()
            {
                breaches += 1;
            }
        }
        assert_eq!(breaches, 1, "one breach until it is handled");
        assert_eq!(g.judge(Pool::Blue).standing.as_str(), "breach");
        g.restart(Pool::Green);
        g.breach_handled();
        assert_eq!(g.judge(Pool::Blue).standing.as_str(), "inconclusive");
        assert_eq!(g.window(Pool::Green, now).requests, 0);
    }

    #[test]
    fn an_unexposed_candidate_is_never_in_breach_on_the_request_path() {
        let (s, g) = (slo(), TenantGuard::new(&slo()));
        let now = Instant::now();
        for _ in 0..50 {
            let b = g.record(
                "t",
                &s,
                Pool::Green,
                Pool::Blue,
                false,
                true,
                Duration::ZERO,
                now,
            );
            assert!(b.is_none());
        }
    }
}
