//! The guard driven by counts: verdicts, reasons, epochs, caches, config.

use super::*;
use crate::slo::Verdict;

/// The SPEC's default SLO (0.05, 20 requests, 0.99) with a baseline and
/// latency limit of the test's choosing.
fn settings(baseline: Baseline, max_p99: Option<Duration>) -> SloSettings {
    SloSettings {
        max_p99,
        baseline,
        ..crate::config::Settings::default().slo
    }
}

fn guard() -> Guard {
    Guard::new(Plan::new(&settings(Baseline::Absolute, None)))
}

fn tally(requests: u64, errors: u64) -> Tally {
    Tally {
        requests,
        errors,
        slow: 0,
    }
}

const NONE: Tally = Tally {
    requests: 0,
    errors: 0,
    slow: 0,
};

/// Feeds `requests` outcomes failing with probability `rate` (seeded),
/// judging at each failure like the request path; the request count at
/// the first breach, if any.
fn run(
    guard: &Guard,
    tallies: &Tallies,
    rng: &mut fastrand::Rng,
    rate: f64,
    requests: u64,
) -> Option<(u64, Breach)> {
    for _ in 0..requests {
        let error = rng.f64() < rate;
        tallies.record(error, false);
        if error && let Some(breach) = guard.breach(tallies.load(), NONE) {
            return Some((tallies.load().requests, breach));
        }
    }
    None
}

#[test]
fn too_few_requests_are_inconclusive_never_a_pass() {
    let g = guard();
    assert_eq!(g.breach(tally(19, 19), NONE), None);
    let j = g.judge(tally(19, 0), NONE);
    assert_eq!(j.standing, Standing::Inconclusive);
    assert_eq!(j.errors, None);
    assert_eq!(j.verdict(), Verdict::Inconclusive);
    // With no failures, an ok needs roughly 150 requests at these settings.
    let more = j.more_requests.expect("reachable");
    assert!((100..300).contains(&more), "{more}");
    assert_eq!(g.judge(tally(19 + more, 0), NONE).standing, Standing::Ok);
    assert_eq!(
        g.judge(tally(19 + more / 2, 0), NONE).standing,
        Standing::Inconclusive
    );
}

#[test]
fn the_reason_shows_the_bound() {
    let g = guard();
    let breach = g.breach(tally(57, 24), NONE).expect("24 of 57 is a breach");
    let level = g.plan.errors.level(1);
    let lower = bound::lower(&Prior::for_limit(0.05), level, 57.0, 24.0);
    assert_eq!(breach.estimate.lower, lower);
    assert!(lower > 0.05 && lower < 24.0 / 57.0);
    assert_eq!(
        breach.to_string(),
        format!("error rate 0.42 (at least {lower:.2} at 99 %) > 0.05 over 57 requests")
    );
    let j = g.judge(tally(57, 24), NONE);
    assert_eq!(j.standing, Standing::Breach);
    assert_eq!(j.more_requests, None);
    assert_eq!(j.verdict(), Verdict::Breach(breach.to_string()));
    // Half the limit over the same requests is no evidence either way.
    assert_eq!(g.breach(tally(57, 1), NONE), None);
    assert_eq!(g.judge(tally(57, 1), NONE).standing, Standing::Inconclusive);
}

#[test]
fn fifty_percent_errors_are_reverted_in_a_few_dozen_requests() {
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..50 {
        let (g, t) = (guard(), Tallies::default());
        let (at, _) = run(&g, &t, &mut rng, 0.5, 200).expect("caught");
        assert!(at <= 40, "caught after {at}");
    }
}

#[test]
fn a_healthy_candidate_at_80_percent_is_never_reverted_and_becomes_ok() {
    let mut rng = fastrand::Rng::with_seed(8);
    for _ in 0..10 {
        let (g, t) = (guard(), Tallies::default());
        assert_eq!(run(&g, &t, &mut rng, 0.04, 30_000), None);
    }
    // Close to its limit, ok takes the long view: the whole exposure.
    let (g, t) = (guard(), Tallies::default());
    assert_eq!(run(&g, &t, &mut rng, 0.02, 3_000), None);
    let j = g.judge(t.load(), NONE);
    assert_eq!(j.standing, Standing::Ok, "{j:?}");
    assert!(j.errors.expect("estimate").upper < 0.05);
}

#[test]
fn a_late_regression_is_caught_in_its_epoch() {
    let mut rng = fastrand::Rng::with_seed(9);
    let (g, t) = (guard(), Tallies::default());
    assert_eq!(run(&g, &t, &mut rng, 0.025, 100_000), None);
    let (at, breach) = run(&g, &t, &mut rng, 0.2, 10_000).expect("caught");
    let delay = at - 100_000;
    assert!(
        delay < 2 * g.plan().epoch_requests(),
        "caught after {delay}"
    );
    assert!(breach.estimate.epoch > 40, "{breach:?}");
    assert!(breach.to_string().contains("over the last"), "{breach}");
    // After a revert the exposure starts afresh.
    g.reset();
    t.clear();
    assert_eq!(g.judge(t.load(), NONE).standing, Standing::Inconclusive);
    assert_eq!(run(&g, &t, &mut rng, 0.025, 5_000), None);
}

/// The request path's cached decision equals the closed form evaluated
/// from scratch at every failure, epochs included.
#[test]
fn cached_breach_thresholds_never_change_a_decision() {
    let s = SloSettings {
        min_requests: 5,
        ..settings(Baseline::Absolute, None)
    };
    let plan = Plan::new(&s);
    let p = plan.errors;
    for seed in 0..6 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let (g, t) = (Guard::new(plan.clone()), Tallies::default());
        let (mut epoch, mut base) = (1u64, (0u64, 0u64));
        for i in 0..12_000u64 {
            // Around the limit, so thresholds are met and missed.
            let rate = if (i / 1_500) % 2 == 0 { 0.06 } else { 0.09 };
            let error = rng.f64() < rate;
            t.record(error, false);
            if !error {
                continue;
            }
            let now = t.load();
            let exact = |n: u64, k: u64, j: u64| {
                n >= 5 && bound::exceeds(&p.prior, p.level(j), n as f64, k as f64, p.limit)
            };
            let mut expected = exact(now.requests, now.errors, 1);
            if epoch >= 2 {
                expected |= exact(now.requests - base.0, now.errors - base.1, epoch);
            }
            if now.requests - base.0 >= p.epoch_requests {
                (epoch, base) = (epoch + 1, (now.requests, now.errors));
            }
            assert_eq!(
                g.breach(now, NONE).is_some(),
                expected,
                "seed {seed}, request {i}"
            );
        }
    }
}

#[test]
fn against_stable_a_shared_failure_is_not_the_candidates() {
    let g = Guard::new(Plan::new(&settings(Baseline::Stable, None)));
    // Both pools failing alike, however much: no breach, and ok.
    for n in [100, 1_000, 10_000, 100_000] {
        assert_eq!(g.breach(tally(n, n * 3 / 10), tally(n, n * 3 / 10)), None);
    }
    assert_eq!(
        g.judge(tally(20_000, 6_000), tally(20_000, 6_000)).standing,
        Standing::Ok
    );
    // Stable too small to compare with: no verdict.
    assert_eq!(
        g.judge(tally(500, 250), tally(10, 0)).standing,
        Standing::Inconclusive
    );
    let breach = g
        .breach(tally(300, 90), tally(300, 15))
        .expect("30 % against 5 %");
    let e = breach.estimate;
    assert!(matches!(
        e.measure,
        Measure::Difference {
            stable_requests: 300,
            ..
        }
    ));
    assert!(e.lower > 0.05 && e.lower < e.rate && (e.rate - 0.25).abs() < 1e-12);
    // 200 requests each are not yet enough for the same rates (union bound).
    assert_eq!(g.breach(tally(200, 60), tally(200, 10)), None);
    let reason = breach.to_string();
    assert!(
        reason.starts_with("error rate 0.30 exceeds stable's 0.050 by 0.25 (at least ")
            && reason.ends_with(" at 99 %) > 0.05 over 300 requests"),
        "{reason}"
    );
}

#[test]
fn slow_requests_are_judged_against_one_percent() {
    let max = Duration::from_millis(500);
    let plan = Plan::new(&settings(Baseline::Absolute, Some(max)));
    assert!(plan.is_slow(Duration::from_millis(501)) && !plan.is_slow(max));
    let g = Guard::new(plan);
    let slow = |requests, slow| Tally {
        requests,
        errors: 0,
        slow,
    };
    let breach = g.breach(slow(400, 32), NONE).expect("8 % slow");
    let reason = breach.to_string();
    assert!(
        reason.starts_with("share of requests slower than 500ms 0.080 (at least 0.0")
            && reason.ends_with(" at 99 %) > 0.01 over 400 requests"),
        "{reason}"
    );
    assert_eq!(g.breach(slow(400, 4), NONE), None);
    // Ok needs both measures within their limits.
    let j = g.judge(slow(5_000, 5), NONE);
    assert_eq!(j.standing, Standing::Ok, "{j:?}");
    assert!(j.slow.expect("slow").upper < 0.01 && j.errors.expect("errors").upper < 0.05);
    let j = g.judge(
        Tally {
            errors: 230,
            ..slow(5_000, 5)
        },
        NONE,
    );
    assert_eq!(j.standing, Standing::Inconclusive);
}

#[test]
fn the_guard_is_shared_by_tasks_without_a_lock() {
    let g = std::sync::Arc::new(guard());
    let t = std::sync::Arc::new(Tallies::default());
    let workers: Vec<_> = (0..4)
        .map(|seed| {
            let (g, t) = (g.clone(), t.clone());
            std::thread::spawn(move || {
                run(&g, &t, &mut fastrand::Rng::with_seed(seed), 0.02, 20_000)
            })
        })
        .collect();
    for w in workers {
        assert_eq!(w.join().expect("worker"), None);
    }
    assert_eq!(t.load().requests, 80_000);
    assert_eq!(g.judge(t.load(), NONE).standing, Standing::Ok);
}

#[test]
fn confidence_is_read_from_the_control_file_and_checked() {
    let tenant = "[tenants.t]\nhosts = [\"t\"]\nstable = \"blue\"\nweights = { blue = 90, green = 10 }\npools.blue = [\"a:1\"]\npools.green = [\"b:1\"]\n";
    let parse = |text: &str| crate::config::parse(text, std::path::Path::new("t.toml"), &|_| None);
    let config = parse(&format!("[defaults.slo]\nconfidence = 0.95\n\n{tenant}")).expect("valid");
    let slo = &config.tenant("t").expect("tenant").settings.slo;
    assert_eq!(Plan::new(slo).confidence(), 0.95);
    let defaults = parse(tenant).expect("valid");
    assert_eq!(
        defaults
            .tenant("t")
            .expect("tenant")
            .settings
            .slo
            .confidence,
        0.99
    );
    for bad in ["1.0", "0.3", "nan"] {
        let err = parse(&format!("[defaults.slo]\nconfidence = {bad}\n\n{tenant}")).expect_err(bad);
        let text = err.to_string();
        assert!(
            text.contains(":2:")
                && text.contains("defaults.slo.confidence: must be at least 0.5 and below 1"),
            "{text}"
        );
    }
}
