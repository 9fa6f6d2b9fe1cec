//! Judgement: how often each verdict rule reverts a healthy candidate, and
//! how fast it reverts a bad one (issue 12). A seeded Monte-Carlo, not a
//! timed test.
//!
//! The candidate gets 100 requests per second; each request fails (or is
//! slow) independently with the scenario's probability. Events are drawn as
//! geometric gaps, which is exact for such a stream and skips the requests
//! in between. Both rules judge where the proxy does: at each failed or slow
//! candidate request.
//!
//! - **old**: the rule of `turnout::slo::judge` (called as is) on the 30 s
//!   window as `slo::Window` holds it: ten buckets of 3 s (300 requests),
//!   the current one partial. Its p99 is taken from the same counts
//!   (above `max_p99` exactly when fewer than 99 % of the window's requests
//!   are fast), ignoring the histogram's resolution.
//! - **new**: `turnout::slo::sequential::Guard::breach` on the counts since
//!   the split began.
//!
//! Defaults throughout: `max_error_rate = 0.05`, `min_requests = 20`,
//! `confidence = 0.99`. With `baseline = "stable"` stable gets the same
//! traffic. Prints Markdown tables for benches/RESULTS.md.
//!
//! Run: `cargo bench --bench judgement`

use std::time::{Duration, Instant};

use turnout::config::{Baseline, SloSettings};
use turnout::slo::sequential::{Guard, Plan, Standing, Tally};
use turnout::slo::{self, Snapshot, Verdict};

const PER_SECOND: u64 = 100;
const HOUR: u64 = 3_600 * PER_SECOND;
const BUCKET: u64 = 3 * PER_SECOND;
const BUCKETS: u64 = 10;
const WINDOW: Duration = Duration::from_secs(30);
const MAX_P99: Duration = Duration::from_millis(500);
const NEVER: u64 = u64::MAX;

fn settings(baseline: Baseline, max_p99: Option<Duration>) -> SloSettings {
    SloSettings {
        max_error_rate: 0.05,
        window: WINDOW,
        min_requests: 20,
        max_p99,
        baseline,
        confidence: 0.99,
    }
}

/// Positions (1-based request numbers) of the events of a Bernoulli
/// stream whose rate changes from `before` to `after` past request `turn`.
struct Events {
    rng: fastrand::Rng,
    before: f64,
    after: f64,
    turn: u64,
    last: u64,
}

impl Events {
    fn new(seed: u64, before: f64, after: f64, turn: u64) -> Events {
        Events {
            rng: fastrand::Rng::with_seed(seed),
            before,
            after,
            turn,
            last: 0,
        }
    }

    fn gap(&mut self, rate: f64) -> u64 {
        if rate <= 0.0 {
            return NEVER / 2;
        }
        if rate >= 1.0 {
            return 1;
        }
        1 + ((1.0 - self.rng.f64()).ln() / (-rate).ln_1p()).floor() as u64
    }

    fn next(&mut self) -> u64 {
        let rate = if self.last < self.turn {
            self.before
        } else {
            self.after
        };
        let mut at = self.last.saturating_add(self.gap(rate));
        if self.last < self.turn && at > self.turn {
            // Memoryless: no event up to the turn, then the new rate.
            at = self.turn.saturating_add(self.gap(self.after));
        }
        self.last = at;
        at
    }
}

/// The sliding window of `slo::Window` at 100 requests per second, indexed
/// by request number: buckets of 300 requests, the last ten live.
#[derive(Default)]
struct OldWindow {
    bucket: u64,
    counts: [(u64, u64); BUCKETS as usize],
}

impl OldWindow {
    fn advance(&mut self, request: u64) {
        let b = (request - 1) / BUCKET;
        for stale in (self.bucket + 1..=b).take(BUCKETS as usize) {
            self.counts[(stale % BUCKETS) as usize] = (0, 0);
        }
        self.bucket = self.bucket.max(b);
    }

    fn add(&mut self, request: u64, error: bool, slow: bool) {
        self.advance(request);
        let c = &mut self.counts[(self.bucket % BUCKETS) as usize];
        c.0 += u64::from(error);
        c.1 += u64::from(slow);
    }

    fn snapshot(&mut self, request: u64) -> Snapshot {
        self.advance(request);
        let first = (self.bucket + 1).saturating_sub(BUCKETS) * BUCKET;
        let requests = request - first;
        let (errors, slow) = self
            .counts
            .iter()
            .fold((0, 0), |(e, s), c| (e + c.0, s + c.1));
        let fast = requests - slow.min(requests);
        let p99 = if fast < (requests as f64 * 0.99).ceil() as u64 {
            MAX_P99 + Duration::from_millis(1)
        } else {
            MAX_P99 - Duration::from_millis(1)
        };
        Snapshot {
            requests,
            errors,
            p99: Some(p99),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Rule {
    Old,
    New,
}

/// One scenario: candidate error and slow rates (before, after the turn),
/// stable's error rate, the settings, and how long the split lasts.
#[derive(Clone, Copy)]
struct Scenario {
    errors: (f64, f64),
    slow: (f64, f64),
    stable: f64,
    turn: u64,
    horizon: u64,
    baseline: Baseline,
    max_p99: Option<Duration>,
}

impl Scenario {
    fn errors(rate: f64) -> Scenario {
        Scenario {
            errors: (rate, rate),
            slow: (0.0, 0.0),
            stable: 0.0,
            turn: NEVER,
            horizon: HOUR,
            baseline: Baseline::Absolute,
            max_p99: None,
        }
    }
}

/// The request number at which `rule` reverts, if within the horizon.
fn trial(rule: Rule, s: &Scenario, seed: u64) -> Option<u64> {
    let slo = settings(s.baseline, s.max_p99);
    let guard = Guard::new(Plan::new(&slo));
    let mut errors = Events::new(seed * 3 + 1, s.errors.0, s.errors.1, s.turn);
    let mut slow = Events::new(seed * 3 + 2, s.slow.0, s.slow.1, s.turn);
    let mut stable = Events::new(seed * 3 + 3, s.stable, s.stable, NEVER);
    let (mut window, mut stable_window) = (OldWindow::default(), OldWindow::default());
    let mut tally = Tally::default();
    let mut stable_tally = Tally::default();
    let (mut next_error, mut next_slow, mut next_stable) =
        (errors.next(), slow.next(), stable.next());
    loop {
        let at = next_error.min(next_slow);
        if at > s.horizon {
            return None;
        }
        let (error, is_slow) = (next_error == at, next_slow == at);
        if error {
            next_error = errors.next();
        }
        if is_slow {
            next_slow = slow.next();
        }
        // Stable's errors up to the same request number (same traffic).
        while next_stable <= at {
            stable_tally.errors += 1;
            stable_window.add(next_stable, true, false);
            next_stable = stable.next();
        }
        stable_tally.requests = at;
        tally.requests = at;
        tally.errors += u64::from(error);
        tally.slow += u64::from(is_slow);
        window.add(at, error, is_slow);
        let reverted = match rule {
            Rule::New => guard.breach(tally, stable_tally).is_some(),
            Rule::Old => {
                let snap = window.snapshot(at);
                let base = (s.baseline == Baseline::Stable).then(|| stable_window.snapshot(at));
                matches!(
                    slo::judge(&slo, WINDOW, &snap, base.as_ref()),
                    Verdict::Breach(_)
                )
            }
        };
        if reverted {
            return Some(at);
        }
    }
}

/// Reverts within the horizon, and the requests until each.
fn run(rule: Rule, s: &Scenario, trials: u64, seed: u64) -> Vec<Option<u64>> {
    (0..trials)
        .map(|t| trial(rule, s, seed * 1_000_003 + t))
        .collect()
}

/// The counts at each judgement of one hour of a scenario, for timing.
fn judgements(s: &Scenario, seed: u64) -> Vec<(Tally, Tally)> {
    let mut errors = Events::new(seed, s.errors.0, s.errors.1, s.turn);
    let mut slow = Events::new(seed + 1, s.slow.0, s.slow.1, s.turn);
    let mut stable = Events::new(seed + 2, s.stable, s.stable, NEVER);
    let (mut tally, mut stable_tally) = (Tally::default(), Tally::default());
    let (mut next_error, mut next_slow, mut next_stable) =
        (errors.next(), slow.next(), stable.next());
    let mut out = Vec::new();
    loop {
        let at = next_error.min(next_slow);
        if at > s.horizon {
            return out;
        }
        tally.requests = at;
        if next_error == at {
            tally.errors += 1;
            next_error = errors.next();
        }
        if next_slow == at {
            tally.slow += 1;
            next_slow = slow.next();
        }
        while next_stable <= at {
            stable_tally.errors += 1;
            next_stable = stable.next();
        }
        stable_tally.requests = at;
        out.push((tally, stable_tally));
    }
}

/// Nanoseconds per `Guard::breach` call over a recorded hour of judgements
/// (the best of three passes, each with a fresh guard).
fn cost(s: &Scenario) -> (usize, f64) {
    let calls = judgements(s, 77);
    let slo = settings(s.baseline, s.max_p99);
    let best = (0..3)
        .map(|_| {
            let guard = Guard::new(Plan::new(&slo));
            let started = Instant::now();
            for (candidate, stable) in &calls {
                std::hint::black_box(guard.breach(*candidate, *stable));
            }
            started.elapsed().as_nanos() as f64 / calls.len() as f64
        })
        .fold(f64::INFINITY, f64::min);
    (calls.len(), best)
}

fn reverted_share(outcomes: &[Option<u64>]) -> String {
    let n = outcomes.len();
    let r = outcomes.iter().filter(|o| o.is_some()).count();
    format!("{:.1} % ({r}/{n})", 100.0 * r as f64 / n as f64)
}

/// Median and 95th percentile (nearest rank) of the requests until revert
/// counted from `from`, over the trials that reverted after it.
fn delays(outcomes: &[Option<u64>], from: u64) -> String {
    let mut d: Vec<u64> = outcomes
        .iter()
        .flatten()
        .filter(|at| **at > from)
        .map(|at| at - from)
        .collect();
    if d.is_empty() {
        return "none reverted".into();
    }
    d.sort_unstable();
    let rank = |q: f64| d[((q * d.len() as f64).ceil() as usize).clamp(1, d.len()) - 1];
    let missed = outcomes.len() - d.len();
    let tail = if missed > 0 {
        format!(" ({missed} of {} not after the turn)", outcomes.len())
    } else {
        String::new()
    };
    format!("{} ({}){tail}", rank(0.5), rank(0.95))
}

fn main() {
    let started = Instant::now();
    const HEALTHY: u64 = 2_000;
    const BAD: u64 = 2_000;
    const LATE: u64 = 1_000;

    println!("## Healthy candidates over one hour (360 000 requests): false reverts\n");
    println!("| scenario | old rule | new rule |\n|---|---|---|");
    let healthy = [
        (
            "error rate 0.025 (50 % of the limit)",
            Scenario::errors(0.025),
        ),
        (
            "error rate 0.04 (80 % of the limit)",
            Scenario::errors(0.04),
        ),
        (
            "stable 0.02, candidate 0.045 (difference at 50 %)",
            Scenario {
                stable: 0.02,
                baseline: Baseline::Stable,
                ..Scenario::errors(0.045)
            },
        ),
        (
            "both pools failing at 0.30, `baseline = \"stable\"`",
            Scenario {
                stable: 0.3,
                baseline: Baseline::Stable,
                ..Scenario::errors(0.3)
            },
        ),
        (
            "`max_p99`: 0.8 % of requests slow, errors 0.01",
            Scenario {
                slow: (0.008, 0.008),
                max_p99: Some(MAX_P99),
                ..Scenario::errors(0.01)
            },
        ),
    ];
    for (i, (name, s)) in healthy.iter().enumerate() {
        let old = run(Rule::Old, s, HEALTHY, 10 + i as u64);
        let new = run(Rule::New, s, HEALTHY, 10 + i as u64);
        println!(
            "| {name} | {} | {} |",
            reverted_share(&old),
            reverted_share(&new)
        );
    }

    println!("\n## Bad candidates: requests until revert, median (95th percentile)\n");
    println!("| scenario | old rule | new rule |\n|---|---|---|");
    let bad = [
        ("error rate 0.10 (2×)", Scenario::errors(0.1)),
        ("error rate 0.20 (4×)", Scenario::errors(0.2)),
        ("error rate 0.50 (10×)", Scenario::errors(0.5)),
        (
            "stable 0.02, candidate 0.17 (difference 3×)",
            Scenario {
                stable: 0.02,
                baseline: Baseline::Stable,
                ..Scenario::errors(0.17)
            },
        ),
        (
            "stable 0.02, candidate 0.52 (difference 10×)",
            Scenario {
                stable: 0.02,
                baseline: Baseline::Stable,
                ..Scenario::errors(0.52)
            },
        ),
        (
            "`max_p99`: 3 % of requests slow",
            Scenario {
                slow: (0.03, 0.03),
                max_p99: Some(MAX_P99),
                ..Scenario::errors(0.0)
            },
        ),
        (
            "`max_p99`: 10 % of requests slow",
            Scenario {
                slow: (0.1, 0.1),
                max_p99: Some(MAX_P99),
                ..Scenario::errors(0.0)
            },
        ),
    ];
    for (i, (name, s)) in bad.iter().enumerate() {
        let old = run(Rule::Old, s, BAD, 100 + i as u64);
        let new = run(Rule::New, s, BAD, 100 + i as u64);
        println!("| {name} | {} | {} |", delays(&old, 0), delays(&new, 0));
    }

    println!(
        "\n## Late regressions: good (0.025) for an hour, then bad; requests from the turn until revert\n"
    );
    println!(
        "| after the turn | new rule | old rule, among the trials it had not reverted before the turn |\n|---|---|---|"
    );
    for (i, after) in [0.1, 0.2, 0.5].into_iter().enumerate() {
        let s = Scenario {
            errors: (0.025, after),
            turn: HOUR,
            horizon: 2 * HOUR,
            ..Scenario::errors(0.025)
        };
        let new = run(Rule::New, &s, LATE, 200 + i as u64);
        // The old rule forgets after 30 s: start it a window before the turn.
        let warm = Scenario {
            turn: 2 * BUCKETS * BUCKET,
            horizon: 2 * BUCKETS * BUCKET + HOUR,
            ..s
        };
        let old = run(Rule::Old, &warm, LATE, 200 + i as u64);
        println!(
            "| {after} ({}×) | {} | {} |",
            after / 0.05,
            delays(&new, HOUR),
            delays(&old, warm.turn)
        );
    }

    println!(
        "\n## Healthy candidates: requests until the verdict is ok (judged every 50 requests)\n"
    );
    println!("| error rate | median (95th percentile) |\n|---|---|");
    for (i, rate) in [0.0, 0.01, 0.025, 0.04].into_iter().enumerate() {
        let mut until = Vec::new();
        for t in 0..200u64 {
            let guard = Guard::new(Plan::new(&settings(Baseline::Absolute, None)));
            let mut events = Events::new(300 + i as u64 * 1_000 + t, rate, rate, NEVER);
            let (mut next, mut errors) = (events.next(), 0);
            let mut n = 50;
            let ok = loop {
                while next <= n {
                    errors += 1;
                    next = events.next();
                }
                let tally = Tally {
                    requests: n,
                    errors,
                    slow: 0,
                };
                if guard.judge(tally, Tally::default()).standing == Standing::Ok {
                    break Some(n);
                }
                n += 50;
                if n > HOUR {
                    break None;
                }
            };
            until.push(ok);
        }
        println!("| {rate} | {} |", delays(&until, 0));
    }

    println!(
        "\n## Cost of the request-path check (`Guard::breach`), over an hour of a healthy candidate's judgements\n"
    );
    println!("| scenario | judgements | ns per judgement |\n|---|---|---|");
    for (name, s) in &healthy {
        let (calls, ns) = cost(s);
        println!("| {name} | {calls} | {ns:.0} |");
    }
    println!("\nTotal run {:.0} s.", started.elapsed().as_secs_f64());
}
