//! The deadlines of the requests in flight on one connection, for the
//! connection's timer to find the earliest (`conn`). Lock-free: requests
//! add and remove theirs with one compare-and-swap each, on any worker.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Slots of the deadline ring. More distinct deadline-seconds than this in
/// flight at once on one connection (HTTP/2 only, with long timeouts) share
/// slots: a request is then found overdue late, never early.
const RING: usize = 16;

/// The deadlines of the requests in flight on one connection, by whole
/// second: each slot packs `second << 32 | count`. Adding and removing are
/// one compare-and-swap; finding the earliest scans the ring, and only the
/// connection's timer does that.
pub struct Deadlines {
    slots: [AtomicU64; RING],
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Deadlines {
    /// Registers a deadline (ms since origin); returns the slot to free.
    pub fn add(&self, deadline_ms: u64) -> usize {
        let second = deadline_ms.div_ceil(1000).clamp(1, u64::from(u32::MAX));
        let home = second as usize % RING;
        for i in 0..RING {
            let index = (home + i) % RING;
            let slot = &self.slots[index];
            let mut current = slot.load(Relaxed);
            loop {
                let (s, count) = (current >> 32, current & 0xffff_ffff);
                if count != 0 && s != second {
                    break;
                }
                let next = (second << 32) | (count + 1);
                match slot.compare_exchange_weak(current, next, Relaxed, Relaxed) {
                    Ok(_) => return index,
                    Err(seen) => current = seen,
                }
            }
        }
        // Every slot holds another second: join the earliest one at or
        // after ours (we are found late, never early); with none, the
        // latest slot moves on to our second (its requests are found late).
        let second_of = |i: usize| self.slots[i].load(Relaxed) >> 32;
        let index = (0..RING)
            .filter(|&i| second_of(i) >= second)
            .min_by_key(|&i| second_of(i))
            .or_else(|| (0..RING).max_by_key(|&i| second_of(i)))
            .unwrap_or(0);
        let slot = &self.slots[index];
        let mut current = slot.load(Relaxed);
        loop {
            let (s, count) = (current >> 32, current & 0xffff_ffff);
            let next = (s.max(second) << 32) | (count + 1);
            match slot.compare_exchange_weak(current, next, Relaxed, Relaxed) {
                Ok(_) => return index,
                Err(seen) => current = seen,
            }
        }
    }

    /// Frees a slot `add` returned.
    pub fn remove(&self, index: usize) {
        self.slots[index].fetch_sub(1, Relaxed);
    }

    /// The earliest deadline in flight, in ms since origin.
    pub fn earliest(&self) -> Option<u64> {
        self.slots
            .iter()
            .map(|s| s.load(Relaxed))
            .filter(|v| v & 0xffff_ffff != 0)
            .map(|v| (v >> 32) * 1000)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_ring_finds_the_earliest_and_frees_slots() {
        let ring = Deadlines::default();
        assert_eq!(ring.earliest(), None);
        let a = ring.add(5_500);
        let b = ring.add(3_200);
        let c = ring.add(3_900);
        assert_eq!(b, c, "the same second shares a slot");
        assert_eq!(ring.earliest(), Some(4_000));
        ring.remove(b);
        assert_eq!(
            ring.earliest(),
            Some(4_000),
            "one request of that second is left"
        );
        ring.remove(c);
        assert_eq!(ring.earliest(), Some(6_000));
        ring.remove(a);
        assert_eq!(ring.earliest(), None);
    }

    #[test]
    fn a_full_ring_finds_deadlines_late_never_early() {
        let ring = Deadlines::default();
        // Seconds 1, 3, 5, … fill every slot.
        let slots: Vec<usize> = (0..RING as u64).map(|s| ring.add(s * 2000 + 1)).collect();
        let last = (RING as u64 - 1) * 2 + 1;
        // Second 4 joins second 5; a second after them all moves the last.
        let between = ring.add(3_500);
        assert_eq!(ring.slots[between].load(Relaxed) >> 32, 5);
        let after = ring.add((last + 10) * 1000);
        assert_eq!(ring.slots[after].load(Relaxed) >> 32, last + 10);
        assert_eq!(ring.earliest(), Some(1000));
        for s in slots.into_iter().chain([between, after]) {
            ring.remove(s);
        }
        assert_eq!(ring.earliest(), None);
    }
}
