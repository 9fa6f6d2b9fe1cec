//! The guard's shared state, without a lock: which epoch a test is in (a
//! sequence lock whose readers never wait) and the caches of breach
//! thresholds.
//!
//! Judging runs on the request path of many tasks at once, so the state is
//! atomics. The epoch and its base counts change together once per epoch:
//! a writer claims the sequence number (odd while writing), a reader that
//! sees a write in progress or a changed sequence skips the epoch test for
//! that one judgement (the cumulative test still runs; skipping a test never
//! costs validity). The threshold caches hold values of a pure function of
//! the request count, so any value any thread stored is right for everyone.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

/// The counts an epoch starts from: candidate requests and events, stable
/// requests and errors (the last two only for a two-sample test).
pub type Base = [u64; 4];

/// One epoch: its index (1 = the exposure from the start) and base counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch {
    pub index: u64,
    pub base: Base,
}

/// The current epoch of one test, shared by every judging task.
#[derive(Debug)]
pub struct EpochCell {
    seq: AtomicU64,
    index: AtomicU64,
    base: [AtomicU64; 4],
}

impl Default for EpochCell {
    fn default() -> Self {
        EpochCell {
            seq: AtomicU64::new(0),
            index: AtomicU64::new(1),
            base: Default::default(),
        }
    }
}

impl EpochCell {
    /// The current epoch, or `None` while another task is moving it on.
    pub fn read(&self) -> Option<(u64, Epoch)> {
        let seq = self.seq.load(Ordering::Acquire);
        if seq & 1 == 1 {
            return None;
        }
        let index = self.index.load(Ordering::Relaxed);
        let base = std::array::from_fn(|i| self.base[i].load(Ordering::Relaxed));
        fence(Ordering::Acquire);
        (self.seq.load(Ordering::Relaxed) == seq).then_some((seq, Epoch { index, base }))
    }

    /// Moves from the epoch read at `seq` to `next`; false (and nothing
    /// changed) when another task got there first.
    pub fn replace(&self, seq: u64, next: Epoch) -> bool {
        if self
            .seq
            .compare_exchange(seq, seq + 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        fence(Ordering::Release);
        self.index.store(next.index, Ordering::Relaxed);
        for (cell, value) in self.base.iter().zip(next.base) {
            cell.store(value, Ordering::Relaxed);
        }
        self.seq.store(seq + 2, Ordering::Release);
        true
    }

    /// Back to the first epoch from zero counts (a new exposure). Retries
    /// while another task is writing: reset is called from the control
    /// path, never while judging.
    pub fn reset(&self) {
        loop {
            let seq = self.seq.load(Ordering::Acquire);
            if seq & 1 == 0
                && self.replace(
                    seq,
                    Epoch {
                        index: 1,
                        base: [0; 4],
                    },
                )
            {
                return;
            }
            std::hint::spin_loop();
        }
    }
}

/// The breach threshold last found for a growing count: `(n, k*)` packed in
/// one word, so a reader always sees a matching pair. Thresholds never fall
/// as `n` grows, so `k*` found at `n` bounds every later threshold from
/// below; the largest `n` wins.
#[derive(Debug, Default)]
pub struct Floor(AtomicU64);

impl Floor {
    /// A lower bound on the threshold at `n`, if one is known.
    pub fn get(&self, n: u64) -> Option<u64> {
        let packed = self.0.load(Ordering::Relaxed);
        (packed != 0 && n >= packed >> 32).then_some(packed & u64::from(u32::MAX))
    }

    /// Records the threshold `k` at `n` (ignored past 2³² requests).
    pub fn put(&self, n: u64, k: u64) {
        if let (Ok(n), Ok(k)) = (u32::try_from(n), u32::try_from(k)) {
            self.0
                .fetch_max(u64::from(n) << 32 | u64::from(k), Ordering::Relaxed);
        }
    }
}

/// Breach thresholds at request counts 0, `step`, `2 step`, ... up to one
/// epoch, filled lazily (0 = not yet known; a real threshold is at least 1).
/// The entry at or below `n` bounds the threshold at `n` from below.
#[derive(Debug)]
pub struct FloorTable {
    step: u64,
    slots: Box<[AtomicU32]>,
}

/// Slots per table: 2 KiB per test, however long the epoch.
const SLOTS: u64 = 512;

impl FloorTable {
    /// A table covering counts up to `span`.
    pub fn new(span: u64) -> FloorTable {
        let step = span.div_ceil(SLOTS).max(1);
        let len = (span / step + 1) as usize;
        FloorTable {
            step,
            slots: (0..len).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// The request count whose threshold bounds `n`'s, and that bound if
    /// known (`Err(slot count)` when it must be computed and stored).
    pub fn get(&self, n: u64) -> Result<u64, u64> {
        let i = (n / self.step).min(self.slots.len() as u64 - 1);
        match self.slots[i as usize].load(Ordering::Relaxed) {
            0 => Err(i * self.step),
            k => Ok(u64::from(k)),
        }
    }

    /// Stores the threshold found at the slot's own count `at`.
    pub fn put(&self, at: u64, k: u64) {
        let i = at / self.step;
        if at.is_multiple_of(self.step)
            && let (Some(slot), Ok(k)) = (self.slots.get(i as usize), u32::try_from(k))
        {
            slot.store(k, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_moves_once_and_resets() {
        let cell = EpochCell::default();
        let (seq, first) = cell.read().expect("no writer");
        assert_eq!(
            first,
            Epoch {
                index: 1,
                base: [0; 4]
            }
        );
        let next = Epoch {
            index: 2,
            base: [2000, 90, 0, 0],
        };
        assert!(cell.replace(seq, next));
        // A second task that read the same epoch loses the race.
        assert!(!cell.replace(
            seq,
            Epoch {
                index: 2,
                base: [2001, 91, 0, 0]
            }
        ));
        assert_eq!(cell.read().map(|(_, e)| e), Some(next));
        cell.reset();
        assert_eq!(cell.read().map(|(_, e)| e), Some(first));
    }

    #[test]
    fn readers_never_see_a_torn_epoch() {
        let cell = std::sync::Arc::new(EpochCell::default());
        let writer = {
            let cell = cell.clone();
            std::thread::spawn(move || {
                for i in 2..20_000u64 {
                    let (seq, _) = loop {
                        if let Some(read) = cell.read() {
                            break read;
                        }
                    };
                    cell.replace(
                        seq,
                        Epoch {
                            index: i,
                            base: [i; 4],
                        },
                    );
                }
            })
        };
        let mut seen = 0;
        while !writer.is_finished() {
            if let Some((_, e)) = cell.read()
                && e.index > 1
            {
                assert_eq!(e.base, [e.index; 4]);
                seen += 1;
            }
        }
        writer.join().expect("writer");
        assert!(seen > 0 || cell.read().is_some());
    }

    #[test]
    fn floors_keep_a_matching_pair() {
        let floor = Floor::default();
        assert_eq!(floor.get(10), None);
        floor.put(100, 12);
        floor.put(50, 7);
        assert_eq!(floor.get(99), None);
        assert_eq!(floor.get(100), Some(12));
        assert_eq!(floor.get(5_000), Some(12));
        floor.put(u64::from(u32::MAX) + 1, 1);
        assert_eq!(floor.get(100), Some(12));
    }

    #[test]
    fn a_table_answers_from_the_slot_at_or_below() {
        let table = FloorTable::new(2_000);
        assert_eq!(table.step, 4);
        assert_eq!(table.get(10), Err(8));
        table.put(8, 3);
        table.put(9, 99); // not a slot's own count: ignored
        assert_eq!(table.get(10), Ok(3));
        assert_eq!(table.get(11), Ok(3));
        assert_eq!(table.get(12), Err(12));
        // Past the epoch's end the last slot answers.
        assert_eq!(table.get(1_000_000), Err(2_000));
    }
}
