//! The confidence sequence for one Bernoulli rate: a beta-binomial mixture
//! of likelihood ratios, inverted at a Ville threshold.
//!
//! For a hypothesised rate `p0`, after `n` outcomes with `k` failures,
//!
//! ```text
//! M(p0) = ∫ (p/p0)^k ((1-p)/(1-p0))^(n-k) Beta(p; a, b) dp
//!       = B(a+k, b+n-k) / B(a, b) / (p0^k (1-p0)^(n-k))
//! ```
//!
//! Under a true rate `p0`, `M` is a martingale of mean 1 (Robbins' method of
//! mixtures; Howard, Ramdas, McAuliffe and Sekhon, "Time-uniform,
//! nonparametric, nonasymptotic confidence sequences", Ann. Statist. 49(2),
//! 2021, conjugate mixtures), so by Ville's inequality it ever reaches `1/α`
//! with probability at most `α`. The set of `p0` where it stays below the
//! threshold is an interval around `k/n`, because `ln M` is convex in `p0`
//! with its minimum (at most 0) at `k/n`.
//!
//! The threshold is `1/α + 1` rather than `1/α`, which makes each end of the
//! interval a *one-sided* bound valid for any rate that moves over time
//! within the null. Split the mixture at `p0`: `M = M⁺ + M⁻`, over the
//! prior's mass above and below `p0`. For `p0 < k/n` the likelihood is
//! increasing below `p0`, so `M⁻(p0) ≤ P(p < p0) ≤ 1`; hence `M ≥ 1/α + 1`
//! implies `M⁺ ≥ 1/α`. And `M⁺` is a supermartingale (started at most 1)
//! whenever every outcome fails with probability at most `p0`, whatever the
//! rate of each: a factor `(p/p0)^x ((1-p)/(1-p0))^(1-x)` with `p > p0` has
//! expectation `1 + (q - p0)(p - p0)/(p0 (1 - p0)) ≤ 1` for `q ≤ p0`. So
//! `P(the lower bound ever exceeds p0) ≤ α` for every process whose rate
//! stays at or below `p0`, and the same for the upper bound from above.
//! The cost of the `+ 1` is `ln(1 + α)` in the log threshold: nothing.
//!
//! Everything is closed form with `ln B` from `statrs`; `n` and `k` are
//! `f64` so a projection can use a fractional count of errors.

use statrs::function::beta::checked_ln_beta;

/// A Beta(a, b) prior over the rate: where the mixture looks for
/// alternatives. It changes how fast a bound moves, never its validity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prior {
    a: f64,
    b: f64,
    ln_beta_ab: f64,
}

impl Prior {
    /// Beta(1, b) with mean `min(2 × limit, 1/2)`: most of its mass at
    /// rates around twice the limit (a regression worth catching fast) and
    /// its mode at 0 (a healthy pool), `b` clamped to [1, 10⁶]. With
    /// `b ≤ 1/limit`, breach and ok are monotone in the counts (see
    /// [`threshold`]).
    pub fn for_limit(limit: f64) -> Prior {
        let b = if limit > 0.0 {
            (0.5 / limit - 1.0).clamp(1.0, 1e6)
        } else {
            1e6
        };
        Prior::beta(1.0, b)
    }

    /// Beta(a, b); `a` and `b` must be positive and finite.
    pub fn beta(a: f64, b: f64) -> Prior {
        let ln_beta_ab = checked_ln_beta(a, b).unwrap_or(f64::NAN);
        Prior { a, b, ln_beta_ab }
    }
}

/// The log threshold `ln(1/α + 1)` of one test at level `α`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Level(f64);

impl Level {
    /// A test with false-alarm probability at most `alpha` (in (0, 1)).
    pub fn new(alpha: f64) -> Level {
        Level((1.0 / alpha).ln_1p())
    }

    /// The log threshold itself.
    pub fn ln_threshold(self) -> f64 {
        self.0
    }
}

/// `x · ln(y)` with `0 · ln(0) = 0`.
fn x_ln(x: f64, ln_y: f64) -> f64 {
    if x == 0.0 { 0.0 } else { x * ln_y }
}

/// `ln M(p0)` after `n` outcomes with `k` failures (`0 ≤ k ≤ n`, clamped),
/// `p0` in [0, 1]. `+∞` where the data rule `p0` out outright (a failure
/// at `p0 = 0`), NaN only for a NaN input.
pub fn ln_mixture(prior: &Prior, n: f64, k: f64, p0: f64) -> f64 {
    Sample::new(prior, n, k).ln_mixture(p0)
}

/// Counts with the part of `ln M` that does not depend on `p0`, so a
/// search over `p0` costs two logarithms a step.
#[derive(Debug, Clone, Copy)]
struct Sample {
    n: f64,
    k: f64,
    /// `ln B(a+k, b+n-k) - ln B(a, b)`.
    ln_marginal: f64,
}

impl Sample {
    fn new(prior: &Prior, n: f64, k: f64) -> Sample {
        let n = n.max(0.0);
        let k = k.clamp(0.0, n);
        let ln_marginal = checked_ln_beta(prior.a + k, prior.b + n - k)
            .map_or(f64::NAN, |ln_b| ln_b - prior.ln_beta_ab);
        Sample { n, k, ln_marginal }
    }

    fn ln_mixture(&self, p0: f64) -> f64 {
        self.ln_marginal - x_ln(self.k, p0.ln()) - x_ln(self.n - self.k, (-p0).ln_1p())
    }

    fn exceeds(&self, level: Level, p0: f64) -> bool {
        self.k > p0 * self.n && self.ln_mixture(p0) >= level.0
    }

    fn below(&self, level: Level, p0: f64) -> bool {
        self.k < p0 * self.n && self.ln_mixture(p0) >= level.0
    }
}

/// Whether the data put the rate above `p0` at this level: `p0` is below
/// the lower bound.
pub fn exceeds(prior: &Prior, level: Level, n: f64, k: f64, p0: f64) -> bool {
    k > p0 * n && Sample::new(prior, n, k).exceeds(level, p0)
}

/// Whether the data put the rate below `p0` at this level: `p0` is above
/// the upper bound.
pub fn below(prior: &Prior, level: Level, n: f64, k: f64, p0: f64) -> bool {
    k < p0 * n && Sample::new(prior, n, k).below(level, p0)
}

/// Bisects for the edge between `inside` (kept) and `outside` (rejected),
/// returning the last rejected point: the bound errs on the safe side.
fn edge(mut inside: f64, mut outside: f64, rejected: impl Fn(f64) -> bool) -> f64 {
    for _ in 0..200 {
        let mid = 0.5 * (inside + outside);
        if mid == inside || mid == outside {
            break;
        }
        if rejected(mid) {
            outside = mid;
        } else {
            inside = mid;
        }
    }
    outside
}

/// The lower confidence bound of the rate: the largest `p0` the data rule
/// out from above (0 when none is).
pub fn lower(prior: &Prior, level: Level, n: f64, k: f64) -> f64 {
    if n <= 0.0 || k <= 0.0 {
        return 0.0;
    }
    let sample = Sample::new(prior, n, k);
    edge(sample.k / sample.n, 0.0, |p0| sample.exceeds(level, p0))
}

/// The upper confidence bound of the rate: the smallest `p0` the data rule
/// out from below (1 when none is).
pub fn upper(prior: &Prior, level: Level, n: f64, k: f64) -> f64 {
    if n <= 0.0 || k >= n {
        return 1.0;
    }
    let sample = Sample::new(prior, n, k);
    edge(sample.k / sample.n, 1.0, |p0| sample.below(level, p0))
}

/// The least error count at which `n` outcomes rule out `limit` from above
/// (`n + 1` when none does). [`exceeds`] is monotone in both counts for a
/// [`Prior::for_limit`] prior: one more failure raises `ln M` once `k > n p0`
/// (`ln((a+k)/(b+n-k-1)) > logit(p0)`), one more success lowers it
/// (`ln((b+n-k)/(a+b+n)) < ln(1-p0)` once `k > p0 (a+b+n) - a`, implied
/// by `k > p0 (n+1)` when `p0 b ≤ 1`). So this threshold never decreases
/// with `n`, which makes it a cache key: a threshold found at `n` is a
/// lower bound for every later `n`.
pub fn threshold(prior: &Prior, level: Level, n: u64, limit: f64) -> u64 {
    let nf = n as f64;
    // The least k above n × limit, then bisect on (lo, hi]: hi breaches or is n + 1.
    let mut lo = (nf * limit).floor() as u64;
    let mut hi = n + 1;
    if lo >= n {
        return n + 1;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if exceeds(prior, level, nf, mid as f64, limit) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values, computed independently of this file's closed form
    /// with mpmath 1.3 (50 digits): the mixture by adaptive quadrature
    /// (`mp.quad` of the likelihood ratio against the Beta density), the
    /// bounds by `mp.findroot` on `ln M(p0) = ln(1/α + 1)` either side of
    /// `k/n`. The script:
    ///
    /// ```text
    /// from mpmath import mp, quad, beta, log, findroot, mpf
    /// mp.dps = 50
    /// def M(n, k, p0, a, b):
    ///     f = lambda p: (p/p0)**k * ((1-p)/(1-p0))**(n-k) * p**(a-1) * (1-p)**(b-1) / beta(a, b)
    ///     return quad(f, [0, mpf(k)/n, 1])
    /// c = log(1/alpha + 1)
    /// lower = findroot(lambda x: log(M(n, k, x, a, b)) - c, (tiny, k/n), solver="anderson")
    /// ```
    const CASES: &[(f64, f64, f64, f64, f64, f64, f64)] = &[
        // (n, k, a, b, alpha, lower, upper)
        (
            57.0,
            24.0,
            1.0,
            9.0,
            0.01,
            0.186319581654348,
            0.683994641370016,
        ),
        (
            20.0,
            10.0,
            1.0,
            9.0,
            0.01,
            0.124340754853684,
            0.875659245146316,
        ),
        (
            1000.0,
            25.0,
            1.0,
            9.0,
            0.01,
            0.01070182998112,
            0.0480986024728378,
        ),
        (200.0, 0.0, 1.0, 9.0, 0.01, 0.0, 0.0380580286303261),
        (50.0, 50.0, 1.0, 1.0, 0.05, 0.869769572675125, 1.0),
        (
            3.0,
            1.0,
            0.5,
            0.5,
            0.1,
            0.00574770042069358,
            0.921476144002482,
        ),
        (
            1e5,
            4000.0,
            1.0,
            9.0,
            0.001,
            0.0370977276198399,
            0.0430433892279844,
        ),
        (
            1e7,
            5e5,
            1.0,
            9.0,
            0.01,
            0.0496702763925249,
            0.0503311026297134,
        ),
        (
            1e7,
            1.0,
            1.0,
            9.0,
            0.01,
            8.9108760200171e-16,
            2.16090859770381e-06,
        ),
        (1e7, 1e7, 1.0, 49.0, 0.0001, 0.999934558990775, 1.0),
    ];

    fn close(x: f64, reference: f64) -> bool {
        (x - reference).abs() <= 1e-9 * reference.abs().max(1e-300)
    }

    #[test]
    fn bounds_match_independent_quadrature() {
        for &(n, k, a, b, alpha, lo, hi) in CASES {
            let prior = Prior::beta(a, b);
            let level = Level::new(alpha);
            let l = lower(&prior, level, n, k);
            let u = upper(&prior, level, n, k);
            assert!(close(l, lo), "lower({n}, {k}) = {l}, reference {lo}");
            assert!(close(u, hi), "upper({n}, {k}) = {u}, reference {hi}");
            // The bounds sit on the safe side of the threshold.
            if lo > 0.0 {
                assert!(exceeds(&prior, level, n, k, l));
            }
            if hi < 1.0 {
                assert!(below(&prior, level, n, k, u));
            }
        }
    }

    /// The closed form against a brute-force Simpson integral of the
    /// mixture's definition (no `ln B` involved: B(a, b) for integer
    /// parameters is (a-1)!(b-1)!/(a+b-1)!).
    #[test]
    fn closed_form_is_the_mixture_integral() {
        let fact = |m: u32| (1..=m).map(f64::from).product::<f64>();
        for &(a, b) in &[(1u32, 9u32), (2, 3)] {
            let beta_ab = fact(a - 1) * fact(b - 1) / fact(a + b - 1);
            let prior = Prior::beta(f64::from(a), f64::from(b));
            for &(n, k, p0) in &[(57.0, 24.0, 0.05), (300.0, 4.0, 0.03), (40.0, 0.0, 0.2)] {
                // c · ln(x), with 0 · ln(0) = 0 at the ends.
                let term = |c: f64, x: f64| if c == 0.0 { 0.0 } else { c * x.ln() };
                let f = |p: f64| -> f64 {
                    let ln = term(k, p / p0)
                        + term(n - k, (1.0 - p) / (1.0 - p0))
                        + term(f64::from(a - 1), p)
                        + term(f64::from(b - 1), 1.0 - p);
                    ln.exp() / beta_ab
                };
                let steps = 200_000;
                let h = 1.0 / steps as f64;
                let mut sum = f(0.0) + f(1.0);
                for i in 1..steps {
                    sum += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
                }
                let integral = sum * h / 3.0;
                let closed = ln_mixture(&prior, n, k, p0);
                assert!(
                    (integral.ln() - closed).abs() < 1e-6,
                    "Beta({a}, {b}), n {n}, k {k}, p0 {p0}: {} vs {closed}",
                    integral.ln()
                );
            }
        }
    }

    #[test]
    fn bounds_are_monotone_and_bracket_the_rate() {
        let prior = Prior::for_limit(0.05);
        let level = Level::new(0.01);
        let strict = Level::new(0.0001);
        let n = 500.0;
        let (mut last_lower, mut last_upper) = (-1.0, -1.0);
        for k in 0..=500 {
            let k = f64::from(k);
            let (l, u) = (lower(&prior, level, n, k), upper(&prior, level, n, k));
            assert!(l <= k / n && k / n <= u, "k {k}: [{l}, {u}]");
            assert!(l >= last_lower && u >= last_upper, "k {k} not monotone");
            assert!(lower(&prior, strict, n, k) <= l && upper(&prior, strict, n, k) >= u);
            (last_lower, last_upper) = (l, u);
        }
        // More evidence at the same rate narrows the interval.
        let mut width = 1.0;
        for n in [100.0, 1_000.0, 10_000.0, 100_000.0, 1e6, 1e7] {
            let w = upper(&prior, level, n, n * 0.03) - lower(&prior, level, n, n * 0.03);
            assert!(w < width, "n {n}: width {w}");
            width = w;
        }
    }

    #[test]
    fn edge_counts_and_limits_never_panic() {
        let level = Level::new(0.01);
        for limit in [0.0, 1e-9, 0.05, 0.5, 1.0] {
            let prior = Prior::for_limit(limit);
            for &(n, k) in &[
                (0.0, 0.0),
                (1.0, 0.0),
                (1.0, 1.0),
                (1e7, 0.0),
                (1e7, 1e7),
                (5.0, 9.0),
            ] {
                let (l, u) = (lower(&prior, level, n, k), upper(&prior, level, n, k));
                assert!((0.0..=1.0).contains(&l) && (0.0..=1.0).contains(&u) && l <= u);
                assert!(!exceeds(&prior, level, n, k, 1.0));
                assert!(!below(&prior, level, n, k, 0.0));
            }
        }
        // A limit of 0: the first failure is proof.
        let prior = Prior::for_limit(0.0);
        assert!(exceeds(&prior, level, 1.0, 1.0, 0.0));
        assert_eq!(threshold(&prior, level, 30, 0.0), 1);
        // A limit of 1 is never exceeded.
        assert_eq!(threshold(&Prior::for_limit(1.0), level, 30, 1.0), 31);
    }

    #[test]
    fn threshold_is_the_least_breaching_count_and_never_falls() {
        let limit = 0.05;
        let prior = Prior::for_limit(limit);
        for alpha in [0.01, 0.01 * 6.0 / (std::f64::consts::PI.powi(2) * 400.0)] {
            let level = Level::new(alpha);
            let mut last = 0;
            for n in 1..=3_000u64 {
                let t = threshold(&prior, level, n, limit);
                assert!(t >= last, "threshold fell at n {n}: {t} < {last}");
                last = t;
                let nf = n as f64;
                if t <= n {
                    assert!(exceeds(&prior, level, nf, t as f64, limit));
                }
                assert!(!exceeds(&prior, level, nf, t as f64 - 1.0, limit));
                if n % 97 == 0 {
                    // Monotone in k: every count from the threshold up breaches.
                    for k in t..=n {
                        assert!(exceeds(&prior, level, nf, k as f64, limit), "n {n} k {k}");
                    }
                }
            }
        }
        // The defaults: 10 failures in the first 20 requests are a breach
        // at 99 %, 3 are not.
        let level = Level::new(0.01 * 6.0 / std::f64::consts::PI.powi(2));
        assert!(threshold(&prior, level, 20, limit) <= 10);
        assert!(threshold(&prior, level, 20, limit) > 3);
    }

    /// Seeded simulation: over 400 runs of 2 000 outcomes, the interval at
    /// α = 0.1 ever misses a fixed rate in at most 10 % of runs, and a
    /// lower bound ever exceeds 0.05 in at most 10 % of runs of a rate that
    /// wanders below 0.05. Deterministic (fixed seed), so it cannot flake;
    /// the margins are the guarantee itself, not a tuned figure.
    #[test]
    fn coverage_holds_under_continuous_monitoring() {
        let alpha = 0.1;
        let level = Level::new(alpha);
        let prior = Prior::for_limit(0.05);
        let mut rng = fastrand::Rng::with_seed(12);
        let runs: u32 = 400;
        let (mut missed, mut wandering_breached, mut caught) = (0, 0, 0);
        for _ in 0..runs {
            let (mut k_fixed, mut k_wander, mut k_bad) = (0.0, 0.0, 0.0);
            let (mut miss, mut breach, mut catch) = (false, false, false);
            for n in 1..=2_000 {
                let nf = f64::from(n);
                let wander = if (n / 100) % 2 == 0 { 0.05 } else { 0.01 };
                k_fixed += f64::from(u8::from(rng.f64() < 0.05));
                k_wander += f64::from(u8::from(rng.f64() < wander));
                k_bad += f64::from(u8::from(rng.f64() < 0.15));
                miss |= exceeds(&prior, level, nf, k_fixed, 0.05)
                    || below(&prior, level, nf, k_fixed, 0.05);
                breach |= exceeds(&prior, level, nf, k_wander, 0.05);
                catch |= exceeds(&prior, level, nf, k_bad, 0.05);
            }
            missed += usize::from(miss);
            wandering_breached += usize::from(breach);
            caught += usize::from(catch);
        }
        let bound = (alpha * f64::from(runs)) as usize;
        assert!(missed <= bound, "{missed} of {runs} runs missed the rate");
        assert!(
            wandering_breached <= bound,
            "{wandering_breached} of {runs}"
        );
        // And it is not vacuous: three times the limit is caught in 2 000.
        assert!(
            caught >= runs as usize * 99 / 100,
            "only {caught} of {runs} caught"
        );
    }
}
