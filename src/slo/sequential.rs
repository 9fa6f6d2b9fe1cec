//! The verdict as anytime-valid confidence sequences (SPEC section 6): the
//! candidate is in breach only when its error rate is *confidently* above
//! the limit, ok only when confidently below, inconclusive otherwise — and
//! "confidently" stays true however long the split lasts and however often
//! it is judged.
//!
//! Why: a raw ratio judged at every failed request is a new chance to cross
//! by luck at every look; with `min_requests = 20` a candidate failing at
//! half its limit was reverted one release in three. A confidence sequence
//! is a confidence interval valid at every sample size at once, so looking
//! after every request costs nothing. The method is that of Lindon, Sanden
//! and Shirikian, "Rapid Regression Detection in Software Deployments
//! through Sequential Testing" (KDD 2022, arXiv 2205.14762), Netflix's
//! canary analysis, built from Howard, Ramdas, McAuliffe and Sekhon,
//! "Time-uniform, nonparametric, nonasymptotic confidence sequences"
//! (Ann. Statist. 49(2), 2021).
//!
//! **The bounds** ([`bound`]): a beta-binomial mixture of likelihood ratios,
//! inverted at the threshold `1/α + 1` (Ville's inequality). Chosen over a
//! normal mixture or a betting sequence because errors are exactly
//! Bernoulli, the mixture is closed form (`ln B` from `statrs`), one
//! evaluation is three `ln Γ`, and its ends are one-sided bounds valid even
//! when the rate moves within the null (`bound`'s doc has the argument).
//! The prior, Beta(1, b) with mean twice the limit, only sets how fast the
//! bounds move: the defaults revert a candidate at 10× its limit in about
//! 21 requests, at 2× in a few hundred (benches/RESULTS.md, "judgement").
//!
//! **Long splits and late regressions.** One sequence over the whole
//! exposure would need tens of thousands of bad requests to outweigh an
//! hour of good ones. So each measure runs tests over *epochs* of its
//! candidate requests: test 1 over the whole exposure (it never ends: it
//! gives "ok" to a candidate close to its limit, which needs many
//! requests), and test `j ≥ 2` over the `j`-th epoch alone, starting afresh
//! at the first judgement after `epoch_requests` more requests (a stopping
//! time, so the test stays valid). Test `j` runs at `α·6/(π² j²)`, and these
//! sum to `α = 1 - confidence`: the chance that a candidate within its SLO
//! is *ever* reverted stays below `α` for any length of split, while a
//! regression is judged on at most one epoch of stale requests. The cost is
//! a threshold growing like `2 ln j`: after an hour at 100 requests per
//! second, a candidate turning 4× bad is caught in a few hundred requests.
//! An epoch holds `100 / limit` requests (2 000 at 0.05): enough errors at
//! the limit that a regression to twice the limit shows within one epoch.
//!
//! **The measures.** The error rate against `max_error_rate`; with
//! `baseline = "stable"`, the difference of rates, bounded by union:
//! `lower = L_candidate − U_stable`, `upper = U_candidate − L_stable`, each
//! side at `α/2`; with `max_p99`, the fraction of candidate requests slower
//! than it against 1 %. With both, each gets `α/2`. Breach when a lower
//! bound of any test is above its limit, ok when every measure has a test
//! whose upper bound is below, inconclusive otherwise and always below
//! `min_requests`.
//!
//! **Cost.** Recording is [`Tallies::record`]: one atomic add per request,
//! one more per failure or slow request. [`Guard::breach`] runs when a
//! candidate request fails or is slow: a comparison of the rate with the
//! limit or with a cached breach threshold in the common case, one
//! closed-form evaluation otherwise, never a lock or an allocation (the
//! caches are preallocated and filled in place; see `epoch`); 35–80 ns per
//! call in the benchmark. [`Guard::judge`] also searches for the bounds
//! themselves (a few µs), for the tenant view and the ramp.
//!
//! Outcomes are judged in completion order; the tests treat the requests
//! completed so far as the sample.

pub mod bound;
mod epoch;
mod report;

use std::f64::consts::PI;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::{Baseline, SloSettings};
use bound::{Level, Prior};
use epoch::{Base, Epoch, EpochCell, Floor, FloorTable};
pub use report::{Breach, Estimate, Judgement, Measure, Standing};

/// The latency SLO: at most 1 % of candidate requests slower than `max_p99`.
pub const SLOW_LIMIT: f64 = 0.01;

/// Counts of one pool since its exposure began; monotone until a reset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Finished requests (abandoned ones excluded, as in the window).
    pub requests: u64,
    /// Requests that were errors of the pool (SPEC section 6).
    pub errors: u64,
    /// Requests slower than `max_p99` (counted only when it is set).
    pub slow: u64,
}

/// The recorder of a pool's [`Tally`]: atomic adds, no lock.
#[derive(Debug, Default)]
pub struct Tallies {
    requests: AtomicU64,
    errors: AtomicU64,
    slow: AtomicU64,
}

impl Tallies {
    /// Counts one finished request.
    pub fn record(&self, error: bool, slow: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        // Release: whoever sees this error also sees its request.
        if error {
            self.errors.fetch_add(1, Ordering::Release);
        }
        if slow {
            self.slow.fetch_add(1, Ordering::Release);
        }
    }

    /// The counts so far (errors and slow never exceed requests).
    pub fn load(&self) -> Tally {
        let errors = self.errors.load(Ordering::Acquire);
        let slow = self.slow.load(Ordering::Acquire);
        Tally {
            requests: self.requests.load(Ordering::Relaxed),
            errors,
            slow,
        }
    }

    /// Back to zero, with [`Guard::reset`], when a new exposure starts.
    pub fn clear(&self) {
        for counter in [&self.requests, &self.errors, &self.slow] {
            counter.store(0, Ordering::Relaxed);
        }
    }
}

/// Which measure a test judges.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    ErrorRate,
    Difference,
    Slow(Duration),
}

/// The fixed part of one measure's tests.
#[derive(Debug, Clone, Copy, PartialEq)]
struct TrackPlan {
    kind: Kind,
    limit: f64,
    /// This measure's share of `1 - confidence`.
    alpha: f64,
    prior: Prior,
    epoch_requests: u64,
}

impl TrackPlan {
    fn new(kind: Kind, limit: f64, alpha: f64) -> TrackPlan {
        TrackPlan {
            kind,
            limit,
            alpha,
            prior: Prior::for_limit(limit),
            epoch_requests: epoch_requests(limit),
        }
    }

    /// The level of test `epoch` (of each side, for a difference).
    fn level(&self, epoch: u64) -> Level {
        let sides = if self.kind == Kind::Difference {
            2.0
        } else {
            1.0
        };
        let j = epoch as f64;
        Level::new(self.alpha * 6.0 / (PI * PI * j * j) / sides)
    }
}

/// Requests per epoch for a limit: 100 errors' worth at the limit, within
/// [100, 10⁷].
pub fn epoch_requests(limit: f64) -> u64 {
    if limit > 0.0 {
        (100.0 / limit).ceil().clamp(100.0, 1e7) as u64
    } else {
        10_000_000
    }
}

/// A tenant's SLO compiled for judging: limits, levels, priors, epochs.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    confidence: f64,
    min_requests: u64,
    errors: TrackPlan,
    slow: Option<TrackPlan>,
}

impl Plan {
    /// From validated settings (`confidence` in [0.5, 1)).
    pub fn new(slo: &SloSettings) -> Plan {
        let alpha = (1.0 - slo.confidence).clamp(1e-12, 0.5);
        let share = if slo.max_p99.is_some() {
            alpha / 2.0
        } else {
            alpha
        };
        let kind = match slo.baseline {
            Baseline::Stable => Kind::Difference,
            Baseline::Absolute => Kind::ErrorRate,
        };
        Plan {
            confidence: slo.confidence,
            min_requests: u64::from(slo.min_requests),
            errors: TrackPlan::new(kind, slo.max_error_rate, share),
            slow: slo
                .max_p99
                .map(|max| TrackPlan::new(Kind::Slow(max), SLOW_LIMIT, share)),
        }
    }

    /// `slo.confidence`.
    pub fn confidence(&self) -> f64 {
        self.confidence
    }

    /// Candidate requests per epoch of the error-rate tests.
    pub fn epoch_requests(&self) -> u64 {
        self.errors.epoch_requests
    }

    /// Whether a request of this latency counts as slow (above `max_p99`).
    pub fn is_slow(&self, latency: Duration) -> bool {
        matches!(self.slow, Some(TrackPlan { kind: Kind::Slow(max), .. }) if latency > max)
    }
}

/// The counts one test judges: candidate requests and events (errors or
/// slow requests) and, for a difference, stable's requests and errors.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Span {
    n: u64,
    k: u64,
    stable_n: u64,
    stable_k: u64,
    epoch: u64,
}

impl Span {
    fn between(now: Base, base: Base, epoch: u64) -> Span {
        let d = |i: usize| now[i].saturating_sub(base[i]);
        Span {
            n: d(0),
            k: d(1).min(d(0)),
            stable_n: d(2),
            stable_k: d(3).min(d(2)),
            epoch,
        }
    }
}

/// One measure's tests and their shared state.
#[derive(Debug)]
struct Track {
    plan: TrackPlan,
    epoch: EpochCell,
    /// Breach thresholds of test 1 (the whole exposure).
    exposure_floor: Floor,
    /// Breach thresholds at test 2's level: below every later epoch's.
    epoch_floors: FloorTable,
}

impl Track {
    fn new(plan: TrackPlan) -> Track {
        Track {
            plan,
            epoch: EpochCell::default(),
            exposure_floor: Floor::default(),
            epoch_floors: FloorTable::new(plan.epoch_requests),
        }
    }

    fn counts(&self, candidate: Tally, stable: Tally) -> Base {
        let events = match self.plan.kind {
            Kind::Slow(_) => candidate.slow,
            Kind::ErrorRate | Kind::Difference => candidate.errors,
        };
        [candidate.requests, events, stable.requests, stable.errors]
    }

    /// The whole exposure's span and the current epoch's (from epoch 2 on),
    /// moving to the next epoch once this one is full. `None` for the epoch
    /// while another task is moving it: that test sits out one judgement.
    fn spans(&self, now: Base) -> (Span, Option<Span>) {
        let exposure = Span::between(now, [0; 4], 1);
        let Some((seq, epoch)) = self.epoch.read() else {
            return (exposure, None);
        };
        if now.iter().zip(epoch.base).any(|(n, b)| *n < b) {
            // The tallies restarted without a reset: a new exposure.
            self.epoch.replace(
                seq,
                Epoch {
                    index: 1,
                    base: [0; 4],
                },
            );
            return (exposure, None);
        }
        let current = (epoch.index >= 2).then(|| Span::between(now, epoch.base, epoch.index));
        if now[0] - epoch.base[0] >= self.plan.epoch_requests {
            let next = Epoch {
                index: epoch.index + 1,
                base: now,
            };
            self.epoch.replace(seq, next);
        }
        (exposure, current)
    }

    /// Whether `span` breaches, through the caches where they answer.
    fn breaches(&self, span: &Span, min_requests: u64) -> bool {
        let p = &self.plan;
        if span.n < min_requests || span.k as f64 <= span.n as f64 * p.limit {
            return false;
        }
        if p.kind == Kind::Difference {
            return self.difference_breaches(span, min_requests);
        }
        let (n, k) = (span.n, span.k);
        let floor = if span.epoch == 1 {
            self.exposure_floor.get(n)
        } else {
            Some(match self.epoch_floors.get(n) {
                Ok(floor) => floor,
                Err(at) => {
                    let t = bound::threshold(&p.prior, p.level(2), at, p.limit);
                    self.epoch_floors.put(at, t);
                    t
                }
            })
        };
        if floor.is_some_and(|floor| k < floor) {
            return false;
        }
        let level = p.level(span.epoch);
        if bound::exceeds(&p.prior, level, n as f64, k as f64, p.limit) {
            return true;
        }
        if span.epoch == 1 {
            let t = bound::threshold(&p.prior, level, n, p.limit);
            self.exposure_floor.put(n, t);
        }
        false
    }

    fn difference_breaches(&self, span: &Span, min_requests: u64) -> bool {
        let p = &self.plan;
        if span.stable_n < min_requests {
            return false;
        }
        let (n, k) = (span.n as f64, span.k as f64);
        let (sn, sk) = (span.stable_n as f64, span.stable_k as f64);
        // The bounds sit either side of the rates: no breach without this.
        if k / n <= sk / sn + p.limit {
            return false;
        }
        let level = p.level(span.epoch);
        // Stable's upper bound is at least its rate: one evaluation rules
        // most judgements out before the search for that bound.
        if !bound::exceeds(&p.prior, level, n, k, sk / sn + p.limit) {
            return false;
        }
        let p0 = bound::upper(&p.prior, level, sn, sk) + p.limit;
        p0 < 1.0 && bound::exceeds(&p.prior, level, n, k, p0)
    }

    /// Whether `span` is confidently within the limit.
    fn ok(&self, span: &Span, min_requests: u64) -> bool {
        let p = &self.plan;
        if span.n < min_requests {
            return false;
        }
        let level = p.level(span.epoch);
        let (n, k) = (span.n as f64, span.k as f64);
        if p.kind != Kind::Difference {
            return bound::below(&p.prior, level, n, k, p.limit);
        }
        if span.stable_n < min_requests {
            return false;
        }
        let (sn, sk) = (span.stable_n as f64, span.stable_k as f64);
        let p0 = bound::lower(&p.prior, level, sn, sk) + p.limit;
        p0 > 1.0 || bound::below(&p.prior, level, n, k, p0.min(1.0))
    }
}

/// The SLO guard of one tenant's candidate: a pure state machine over the
/// counts it is given, shared by every request task (atomics only).
#[derive(Debug)]
pub struct Guard {
    plan: Plan,
    errors: Track,
    slow: Option<Track>,
}

impl Guard {
    /// A guard at the start of an exposure.
    pub fn new(plan: Plan) -> Guard {
        Guard {
            errors: Track::new(plan.errors),
            slow: plan.slow.map(Track::new),
            plan,
        }
    }

    /// The plan judged by.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    fn tracks(&self) -> impl Iterator<Item = &Track> {
        std::iter::once(&self.errors).chain(&self.slow)
    }

    /// The request-path check, for when a candidate request fails or is
    /// slow: `Some` when a test is in breach. `candidate` and `stable` are
    /// the pools' counts since the exposure began (`stable` matters only
    /// with `baseline = "stable"`). O(1) amortised, no lock, no allocation;
    /// the bounds shown in the returned figures are searched for only on a
    /// breach.
    pub fn breach(&self, candidate: Tally, stable: Tally) -> Option<Breach> {
        let min = self.plan.min_requests;
        if candidate.requests < min {
            return None;
        }
        for track in self.tracks() {
            let (exposure, current) = track.spans(track.counts(candidate, stable));
            for span in std::iter::once(exposure).chain(current) {
                if track.breaches(&span, min) {
                    return Some(Breach {
                        estimate: report::estimate(&track.plan, &span),
                        confidence: self.plan.confidence,
                    });
                }
            }
        }
        None
    }

    /// The full verdict with its bounds, for the tenant view, the ramp and
    /// `promote`: breach, ok (every measure confidently within its limit)
    /// or inconclusive, and roughly how many more candidate requests an
    /// inconclusive candidate needs for ok if its rates hold.
    pub fn judge(&self, candidate: Tally, stable: Tally) -> Judgement {
        let min = self.plan.min_requests;
        let mut judgement = Judgement {
            standing: Standing::Inconclusive,
            errors: None,
            slow: None,
            breach: None,
            requests: candidate.requests,
            more_requests: Some(0),
        };
        let mut all_ok = true;
        for track in self.tracks() {
            let (exposure, current) = track.spans(track.counts(candidate, stable));
            let judged = report::judge_track(track, exposure, current, min);
            if let Some(estimate) = judged.breach
                && judgement.breach.is_none()
            {
                judgement.breach = Some(Breach {
                    estimate,
                    confidence: self.plan.confidence,
                });
            }
            all_ok &= judged.ok;
            judgement.more_requests = match (judgement.more_requests, judged.more_requests) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
            match track.plan.kind {
                Kind::Slow(_) => judgement.slow = judged.shown,
                Kind::ErrorRate | Kind::Difference => judgement.errors = judged.shown,
            }
        }
        judgement.standing = if judgement.breach.is_some() {
            judgement.more_requests = None;
            Standing::Breach
        } else if all_ok && candidate.requests >= min {
            judgement.more_requests = Some(0);
            Standing::Ok
        } else {
            Standing::Inconclusive
        };
        judgement
    }

    /// Back to the first epoch: a new exposure (clear the tallies too).
    pub fn reset(&self) {
        for track in self.tracks() {
            track.epoch.reset();
        }
    }
}

#[cfg(test)]
mod tests;
