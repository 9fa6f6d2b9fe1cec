//! A sliding window of request outcomes: a ring of ten buckets of atomics.
//!
//! Why buckets of exact counts rather than an exponentially decaying rate:
//! the SLO is stated over a window ("5 % over 30 s, on at least 20
//! requests"), and an operator reading a revert reason wants those exact
//! figures. Ten buckets bound the error of the sliding edge to a tenth of the
//! window. Recording is a handful of relaxed atomic adds and never blocks;
//! the buckets are allocated on the first request, so idle tenants cost a
//! few words.
//!
//! Each bucket also holds a log-linear latency histogram (four sub-buckets
//! per power of two, from 0.5 ms to about 70 s), enough for a p99 within 25 %.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Buckets per window.
pub const BUCKETS: u64 = 10;
/// Latencies below 2^MIN_EXP µs share the first slot.
const MIN_EXP: u32 = 9;
const SUB_BITS: u32 = 2;
const SUBS: usize = 1 << SUB_BITS;
/// 1 + 18 powers of two × 4 sub-buckets: up to 2^27 µs ≈ 134 s.
const SLOTS: usize = 1 + 18 * SUBS;

struct Bucket {
    /// Which tick of the clock this bucket currently counts.
    epoch: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU32; SLOTS],
}

impl Bucket {
    fn new() -> Bucket {
        Bucket {
            epoch: AtomicU64::new(u64::MAX),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }

    fn reset(&self) {
        self.requests.store(0, Relaxed);
        self.errors.store(0, Relaxed);
        for slot in &self.latency {
            slot.store(0, Relaxed);
        }
    }
}

/// Sums over the live part of a window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Snapshot {
    /// Requests recorded in the last `BUCKETS` ticks (the window's length).
    pub requests: u64,
    /// Of those, the ones recorded as errors of the pool.
    pub errors: u64,
    /// `None` with no requests.
    pub p99: Option<Duration>,
}

impl Snapshot {
    /// `errors / requests` in `[0, 1]`; 0 when there are no requests.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// One pool's sliding window: [`BUCKETS`] buckets of `length / BUCKETS`
/// each, counting requests, errors and a latency histogram. Shared by
/// reference across threads; every method takes `&self`.
pub struct Window {
    length: Duration,
    width_us: u64,
    origin: Instant,
    buckets: OnceLock<Box<[Bucket]>>,
}

impl Window {
    /// A window of `length` (at least 1 µs per bucket), empty; its clock
    /// starts now. Allocates its buckets only on the first record.
    pub fn new(length: Duration) -> Window {
        let width_us = (length.as_micros() as u64 / BUCKETS).max(1);
        Window {
            length,
            width_us,
            origin: Instant::now(),
            buckets: OnceLock::new(),
        }
    }

    /// The length it was made with (the tenant's `slo.window`).
    pub fn length(&self) -> Duration {
        self.length
    }

    fn tick(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_micros() as u64 / self.width_us
    }

    /// Counts one finished request.
    pub fn record(&self, now: Instant, error: bool, latency: Duration) {
        let buckets = self
            .buckets
            .get_or_init(|| (0..BUCKETS).map(|_| Bucket::new()).collect());
        let tick = self.tick(now);
        let bucket = &buckets[(tick % BUCKETS) as usize];
        let seen = bucket.epoch.load(Relaxed);
        if seen != tick
            && bucket
                .epoch
                .compare_exchange(seen, tick, Relaxed, Relaxed)
                .is_ok()
        {
            // First request of a new tick in this slot: forget the old one. A
            // request racing with the reset may be lost; the window is a
            // statistic, not a ledger.
            bucket.reset();
        }
        bucket.requests.fetch_add(1, Relaxed);
        if error {
            bucket.errors.fetch_add(1, Relaxed);
        }
        bucket.latency[slot_of(latency)].fetch_add(1, Relaxed);
    }

    /// Sums the buckets of the last `BUCKETS` ticks.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let Some(buckets) = self.buckets.get() else {
            return Snapshot::default();
        };
        let tick = self.tick(now);
        let mut s = Snapshot::default();
        let mut latency = [0u64; SLOTS];
        for b in buckets.iter() {
            let epoch = b.epoch.load(Relaxed);
            if epoch == u64::MAX || epoch > tick || epoch + BUCKETS <= tick {
                continue;
            }
            s.requests += b.requests.load(Relaxed);
            s.errors += b.errors.load(Relaxed);
            for (sum, slot) in latency.iter_mut().zip(&b.latency) {
                *sum += u64::from(slot.load(Relaxed));
            }
        }
        s.p99 = percentile(&latency, 0.99);
        s
    }

    /// Forgets everything (after a revert: the candidate starts afresh).
    pub fn clear(&self) {
        if let Some(buckets) = self.buckets.get() {
            for b in buckets.iter() {
                b.epoch.store(u64::MAX, Relaxed);
                b.reset();
            }
        }
    }
}

fn slot_of(latency: Duration) -> usize {
    let us = latency.as_micros().min(u128::from(u64::MAX)) as u64;
    if us < 1 << MIN_EXP {
        return 0;
    }
    let exp = 63 - us.leading_zeros();
    let sub = ((us >> (exp - SUB_BITS)) as usize) & (SUBS - 1);
    (1 + (exp - MIN_EXP) as usize * SUBS + sub).min(SLOTS - 1)
}

/// The upper edge of a slot: percentiles are reported conservatively.
fn slot_upper(slot: usize) -> Duration {
    if slot == 0 {
        return Duration::from_micros(1 << MIN_EXP);
    }
    let exp = MIN_EXP + ((slot - 1) / SUBS) as u32;
    let sub = ((slot - 1) % SUBS) as u64;
    Duration::from_micros((1u64 << exp) + (sub + 1) * (1u64 << (exp - SUB_BITS)))
}

fn percentile(counts: &[u64; SLOTS], q: f64) -> Option<Duration> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let target = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (slot, n) in counts.iter().enumerate() {
        seen += n;
        if seen >= target {
            return Some(slot_upper(slot));
        }
    }
    Some(slot_upper(SLOTS - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn counts_within_the_window_and_forgets_after() {
        let w = Window::new(Duration::from_secs(10));
        let t0 = w.origin;
        for i in 0..100 {
            w.record(t0 + Duration::from_millis(i * 50), i % 10 == 0, MS);
        }
        let s = w.snapshot(t0 + Duration::from_secs(5));
        assert_eq!((s.requests, s.errors), (100, 10));
        assert!((s.error_rate() - 0.1).abs() < 1e-9);
        // 9.9 s later the first second's buckets (ticks 0–4) have left.
        let s = w.snapshot(t0 + Duration::from_millis(14_900));
        assert_eq!(s.requests, 0);
        assert_eq!(
            w.snapshot(t0 + Duration::from_secs(60)),
            Snapshot::default()
        );
    }

    #[test]
    fn slides_bucket_by_bucket() {
        let w = Window::new(Duration::from_secs(10));
        let t0 = w.origin;
        for sec in 0..10 {
            w.record(t0 + Duration::from_secs(sec), sec < 5, MS);
        }
        assert_eq!(w.snapshot(t0 + Duration::from_secs(9)).requests, 10);
        // Reusing slot 0 for tick 10 resets it.
        w.record(t0 + Duration::from_secs(10), false, MS);
        let s = w.snapshot(t0 + Duration::from_secs(10));
        assert_eq!((s.requests, s.errors), (10, 4));
    }

    #[test]
    fn p99_is_within_a_quarter_and_never_below() {
        let w = Window::new(Duration::from_secs(10));
        let t0 = w.origin;
        for i in 0..990 {
            w.record(t0, false, Duration::from_micros(2_000 + i));
        }
        for _ in 0..10 {
            w.record(t0, false, Duration::from_millis(800));
        }
        let p99 = w.snapshot(t0).p99.unwrap();
        assert!(
            p99 >= Duration::from_micros(2_990) && p99 <= Duration::from_micros(3_750),
            "{p99:?}"
        );
        for _ in 0..20 {
            w.record(t0, false, Duration::from_millis(800));
        }
        let p99 = w.snapshot(t0).p99.unwrap();
        assert!(
            p99 >= Duration::from_millis(800) && p99 <= Duration::from_millis(1000),
            "{p99:?}"
        );
    }

    #[test]
    fn slots_are_ordered_and_cover_their_values() {
        for us in [
            0u64,
            511,
            512,
            700,
            1000,
            65_535,
            1_000_000,
            60_000_000,
            u64::MAX / 2,
        ] {
            let d = Duration::from_micros(us);
            let slot = slot_of(d);
            assert!(slot < SLOTS);
            if slot < SLOTS - 1 {
                assert!(d < slot_upper(slot), "{us} µs above its slot's edge");
            }
            if slot > 0 {
                assert!(d >= slot_upper(slot - 1), "{us} µs below the previous edge");
            }
        }
    }

    #[test]
    fn clear_forgets() {
        let w = Window::new(Duration::from_secs(1));
        w.record(w.origin, true, MS);
        w.clear();
        assert_eq!(w.snapshot(w.origin).requests, 0);
    }
}
