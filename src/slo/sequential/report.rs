//! What a judgement shows: the bounds of each measure, the verdict, the
//! revert reason (`error rate 0.42 (at least 0.19 at 99 %) > 0.05 over 57
//! requests`) and, while inconclusive, roughly how many more requests an
//! ok needs. Computed for the view and on a breach, never per request.

use std::fmt;
use std::time::Duration;

use super::bound::{self, Level};
use super::{Kind, Span, Track, TrackPlan};
use crate::slo::Verdict;

/// The three verdicts of SPEC section 6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Every measure's upper bound is below its limit.
    Ok,
    /// Neither: too few requests, or bounds either side of a limit. Never a
    /// pass.
    Inconclusive,
    /// A lower bound is above its limit.
    Breach,
}

impl Standing {
    /// The name used in the tenant view and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Standing::Ok => "ok",
            Standing::Inconclusive => "inconclusive",
            Standing::Breach => "breach",
        }
    }
}

/// What an estimate measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Measure {
    /// The candidate's error rate, against `max_error_rate`.
    ErrorRate,
    /// The candidate's error rate minus stable's (`baseline = "stable"`),
    /// against `max_error_rate`; the rates are over the same span.
    Difference {
        /// The candidate's observed error rate over the span, in `[0, 1]`.
        candidate: f64,
        /// Stable's observed error rate over the same span, in `[0, 1]`.
        stable: f64,
        /// Stable's requests in the span.
        stable_requests: u64,
    },
    /// The share of candidate requests slower than `max_p99`, against 1 %.
    Slow {
        /// The tenant's `slo.max_p99`.
        max_p99: Duration,
    },
}

/// A measure over one test's span: observed rate and confidence bounds
/// (rates in [0, 1]; a difference in [-1, 1]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// What is measured, with the figures a revert reason shows.
    pub measure: Measure,
    /// The observed value: errors (or slow requests) over requests, or the
    /// difference of the two pools' rates.
    pub rate: f64,
    /// The lower confidence bound at the test's level; above `limit` is a
    /// breach.
    pub lower: f64,
    /// The upper confidence bound; below `limit` counts towards ok.
    pub upper: f64,
    /// `max_error_rate`, or [`super::SLOW_LIMIT`] for slowness.
    pub limit: f64,
    /// Candidate requests in the span.
    pub requests: u64,
    /// 1: the whole exposure; `j ≥ 2`: the `j`-th epoch, the latest
    /// requests only.
    pub epoch: u64,
}

/// A breach with the figures that show it; `Display` is the revert reason.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Breach {
    /// The estimate whose lower bound crossed its limit.
    pub estimate: Estimate,
    /// `slo.confidence`, shown as the bound's level.
    pub confidence: f64,
}

/// The full verdict of [`super::Guard::judge`].
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// Ok, inconclusive or breach.
    pub standing: Standing,
    /// The error-rate (or difference) estimate that decides, or the
    /// narrower one; `None` below `min_requests`.
    pub errors: Option<Estimate>,
    /// The same for slow requests, with `max_p99` set.
    pub slow: Option<Estimate>,
    /// The breach with its figures, when `standing` is `Breach`.
    pub breach: Option<Breach>,
    /// Candidate requests over the whole exposure.
    pub requests: u64,
    /// While inconclusive: roughly how many more candidate requests an ok
    /// needs if the observed rates hold; `None` if they never give one (a
    /// rate at or above its limit) or on a breach; 0 when ok.
    pub more_requests: Option<u64>,
}

impl Judgement {
    /// As the guard's [`Verdict`], with the reason for a breach.
    pub fn verdict(&self) -> Verdict {
        match (self.standing, &self.breach) {
            (Standing::Breach, Some(breach)) => Verdict::Breach(breach.to_string()),
            (Standing::Ok, _) => Verdict::Ok,
            _ => Verdict::Inconclusive,
        }
    }
}

/// The bounds of one test's span.
pub(super) fn estimate(plan: &TrackPlan, span: &Span) -> Estimate {
    let level = plan.level(span.epoch);
    let (n, k) = (span.n as f64, span.k as f64);
    let rate = if span.n == 0 { 0.0 } else { k / n };
    let (lower, upper) = (
        bound::lower(&plan.prior, level, n, k),
        bound::upper(&plan.prior, level, n, k),
    );
    let (measure, rate, lower, upper) = match plan.kind {
        Kind::ErrorRate => (Measure::ErrorRate, rate, lower, upper),
        Kind::Slow(max_p99) => (Measure::Slow { max_p99 }, rate, lower, upper),
        Kind::Difference => {
            let (sn, sk) = (span.stable_n as f64, span.stable_k as f64);
            let stable = if span.stable_n == 0 { 0.0 } else { sk / sn };
            let measure = Measure::Difference {
                candidate: rate,
                stable,
                stable_requests: span.stable_n,
            };
            let stable_lower = bound::lower(&plan.prior, level, sn, sk);
            let stable_upper = bound::upper(&plan.prior, level, sn, sk);
            (
                measure,
                rate - stable,
                lower - stable_upper,
                upper - stable_lower,
            )
        }
    };
    Estimate {
        measure,
        rate,
        lower,
        upper,
        limit: plan.limit,
        requests: span.n,
        epoch: span.epoch,
    }
}

/// One measure's part of a judgement.
pub(super) struct TrackJudgement {
    pub breach: Option<Estimate>,
    pub ok: bool,
    pub shown: Option<Estimate>,
    pub more_requests: Option<u64>,
}

/// Judges the exposure's and the current epoch's spans of one measure.
pub(super) fn judge_track(
    track: &Track,
    exposure: Span,
    current: Option<Span>,
    min: u64,
) -> TrackJudgement {
    let mut judged = TrackJudgement {
        breach: None,
        ok: false,
        shown: None,
        more_requests: None,
    };
    let enough =
        |s: &Span| s.n >= min && (track.plan.kind != Kind::Difference || s.stable_n >= min);
    for span in std::iter::once(exposure).chain(current).filter(enough) {
        let estimate = estimate(&track.plan, &span);
        if track.breaches(&span, min) {
            judged.breach.get_or_insert(estimate);
        } else if track.ok(&span, min) && !judged.ok {
            judged.ok = true;
            judged.shown = Some(estimate);
        } else if !judged.ok
            && judged
                .shown
                .is_none_or(|shown| estimate.upper - estimate.lower < shown.upper - shown.lower)
        {
            judged.shown = Some(estimate);
        }
    }
    if let Some(breach) = judged.breach {
        judged.shown = Some(breach);
        judged.ok = false;
    } else if judged.ok {
        judged.more_requests = Some(0);
    } else {
        judged.more_requests = requests_for_ok(&track.plan, &exposure, min);
    }
    judged
}

/// Roughly how many more requests the whole-exposure test needs for ok if
/// the observed rates hold (and stable keeps its share of traffic).
fn requests_for_ok(plan: &TrackPlan, exposure: &Span, min: u64) -> Option<u64> {
    let (n, k) = (exposure.n as f64, exposure.k as f64);
    let (sn, sk) = (exposure.stable_n as f64, exposure.stable_k as f64);
    let rate = if n > 0.0 { k / n } else { 0.0 };
    let stable = if sn > 0.0 { sk / sn } else { 0.0 };
    let share = if n > 0.0 { sn / n } else { 1.0 };
    let difference = plan.kind == Kind::Difference;
    let margin = if difference { rate - stable } else { rate };
    if margin >= plan.limit {
        return None;
    }
    let level: Level = plan.level(1);
    let min = min as f64;
    let ok_after = |m: f64| -> bool {
        let (n, k) = (n + m, k + rate * m);
        if n < min {
            return false;
        }
        if !difference {
            return bound::below(&plan.prior, level, n, k, plan.limit);
        }
        let (sn, sk) = (sn + share * m, sk + stable * share * m);
        let p0 = bound::lower(&plan.prior, level, sn, sk) + plan.limit;
        sn >= min && (p0 > 1.0 || bound::below(&plan.prior, level, n, k, p0.min(1.0)))
    };
    if ok_after(0.0) {
        return Some(0);
    }
    let mut hi = 1.0;
    while !ok_after(hi) {
        hi *= 2.0;
        if hi > 1e12 {
            return None;
        }
    }
    // Within 1 %: it is an estimate.
    let mut lo = hi / 2.0;
    while hi - lo > (hi / 100.0).max(1.0) {
        let mid = ((lo + hi) / 2.0).round();
        if ok_after(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi.ceil() as u64)
}

/// A rate with two significant digits and at least two decimals.
struct Rate(f64);

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = self.0.abs();
        let decimals = if a >= 0.1 || a == 0.0 {
            2
        } else {
            ((1.0 - a.log10().floor()) as usize).clamp(2, 6)
        };
        write!(f, "{:.*}", decimals, self.0)
    }
}

/// A confidence as a percentage: 0.99 → `99 %`, 0.995 → `99.5 %`.
struct Percent(f64);

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} %", (self.0 * 1e8).round() / 1e6)
    }
}

impl fmt::Display for Breach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.estimate;
        let at = Percent(self.confidence);
        let over = if e.epoch >= 2 {
            "over the last"
        } else {
            "over"
        };
        let tail = format_args!(
            "(at least {} at {at}) > {} {over} {} requests",
            Rate(e.lower),
            e.limit,
            e.requests
        );
        match e.measure {
            Measure::ErrorRate => write!(f, "error rate {} {tail}", Rate(e.rate)),
            Measure::Difference {
                candidate, stable, ..
            } => write!(
                f,
                "error rate {} exceeds stable's {} by {} {tail}",
                Rate(candidate),
                Rate(stable),
                Rate(e.rate)
            ),
            Measure::Slow { max_p99 } => write!(
                f,
                "share of requests slower than {} {} {tail}",
                humantime::format_duration(max_p99),
                Rate(e.rate)
            ),
        }
    }
}
