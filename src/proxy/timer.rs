//! The upstream answer's deadline on a timer that outlives the request.
//!
//! A request waits for its upstream's answer until `request_timeout`
//! (SPEC section 11). A fresh `tokio::time::timeout_at` per request puts an
//! entry into tokio's timer wheel on its first poll and takes it out again
//! when it drops, each under the wheel's lock; with the copy of the
//! exchange into its wrapper, about 1 100 of the ~34 300 user-space
//! instructions of a proxied keep-alive request (`benches/instructions.sh`;
//! `benches/RESULTS.md`, seventh session). An HTTP/1.1
//! connection serves one request at a time, so its requests share one
//! timer: each moves the timer's deadline later, which tokio does with one
//! atomic compare-and-swap while the entry stays in the wheel
//! (`TimerEntry::reset` → `extend_expiration`); the wheel is touched again
//! only when a deadline moves earlier (a tenant with a shorter
//! `request_timeout`) or after the timer fired.
//!
//! HTTP/2 requests keep a timer of their own: each stream runs on a task of
//! its own, and a timer kept on the connection would hold the last such
//! task's waker (and with it the task's memory) for as long as it sleeps.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use crossbeam_utils::atomic::AtomicCell;
use tokio::time::{Instant, Sleep};

/// The timer an HTTP/1.1 connection's requests share, kept between them.
/// Lock-free: `Option<Pin<Box<Sleep>>>` is one pointer, so the cell is an
/// atomic word (crossbeam's `AtomicCell`).
#[derive(Default)]
pub struct TimerSlot {
    kept: AtomicCell<Option<Pin<Box<Sleep>>>>,
}

impl TimerSlot {
    /// Lets go of the kept timer (its wheel entry goes with it): for a
    /// connection that will idle for long, such as one being parked.
    pub fn release(&self) {
        drop(self.kept.take());
    }
}

/// A deadline for one request's upstream wait: the connection's kept timer
/// when it has one (`slot`), else a timer of its own. Hands the timer back
/// to the slot when dropped.
pub struct Deadline<'a> {
    sleep: Option<Pin<Box<Sleep>>>,
    at: Instant,
    slot: Option<&'a TimerSlot>,
}

impl<'a> Deadline<'a> {
    /// A deadline at `at`. With `slot` (an HTTP/1.1 connection's), the
    /// timer is borrowed from it and given back on drop; without (HTTP/2),
    /// a timer is made on first use and dropped with the deadline.
    pub fn new(at: Instant, slot: Option<&'a TimerSlot>) -> Deadline<'a> {
        Deadline {
            sleep: slot.and_then(|s| s.kept.take()),
            at,
            slot,
        }
    }

    /// Polls `work` until it ends (`Some` of its output) or the deadline
    /// passes (`None`). Like `tokio::time::timeout_at`, `work` is polled
    /// first, so an answer ready at the deadline wins. `work` is pinned by
    /// the caller and polled where it is: the upstream exchange is a large
    /// future, and moving it into a wrapper costs a copy per request.
    pub fn within<'s, F: Future>(
        &'s mut self,
        mut work: Pin<&'s mut F>,
    ) -> impl Future<Output = Option<F::Output>> + 's {
        let at = self.at;
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                // Later than the timer's last deadline, tokio extends its
                // entry in place (one compare-and-swap); earlier, it moves
                // the entry in the wheel.
                if sleep.deadline() != at {
                    sleep.as_mut().reset(at);
                }
                sleep
            }
            none => none.insert(Box::pin(tokio::time::sleep_until(at))),
        };
        std::future::poll_fn(move |cx| {
            if let Poll::Ready(output) = work.as_mut().poll(cx) {
                return Poll::Ready(Some(output));
            }
            sleep.as_mut().poll(cx).map(|()| None)
        })
    }
}

impl Drop for Deadline<'_> {
    fn drop(&mut self) {
        if let (Some(slot), Some(sleep)) = (self.slot, self.sleep.take()) {
            // A timer another request left meanwhile is dropped.
            drop(slot.kept.swap(Some(sleep)));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::time::Duration;

    use super::*;

    /// Generous: only a deadline missed by far fails (a loaded machine
    /// delays a timer by milliseconds, not seconds).
    const LATE: Duration = Duration::from_secs(10);

    #[test]
    fn the_slot_is_one_atomic_word() {
        assert!(AtomicCell::<Option<Pin<Box<Sleep>>>>::is_lock_free());
    }

    #[tokio::test]
    async fn a_kept_timer_ends_the_wait_at_each_new_deadline() {
        let slot = TimerSlot::default();
        let start = Instant::now();
        let mut first = Deadline::new(start + Duration::from_millis(50), Some(&slot));
        assert_eq!(first.within(pin!(std::future::pending::<()>())).await, None);
        assert!(start.elapsed() >= Duration::from_millis(50));
        drop(first);
        // The fired timer, kept, serves the next request at its deadline.
        let again = Instant::now();
        let mut second = Deadline::new(again + Duration::from_millis(80), Some(&slot));
        assert!(second.sleep.is_some(), "the kept timer is reused");
        assert_eq!(
            second.within(pin!(std::future::pending::<()>())).await,
            None
        );
        let waited = again.elapsed();
        assert!(
            waited >= Duration::from_millis(80) && waited < LATE,
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn an_earlier_deadline_than_the_kept_one_is_honoured() {
        let slot = TimerSlot::default();
        let start = Instant::now();
        let mut long = Deadline::new(start + Duration::from_secs(600), Some(&slot));
        assert_eq!(long.within(pin!(async { 7 })).await, Some(7));
        drop(long);
        let mut short = Deadline::new(start + Duration::from_millis(50), Some(&slot));
        assert!(short.sleep.is_some(), "the kept timer is reused");
        assert_eq!(short.within(pin!(std::future::pending::<()>())).await, None);
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(50) && waited < LATE,
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn work_ready_at_the_deadline_wins_and_an_own_timer_is_not_kept() {
        let slot = TimerSlot::default();
        let mut own = Deadline::new(Instant::now(), None);
        assert_eq!(own.within(pin!(async { "answer" })).await, Some("answer"));
        drop(own);
        assert!(slot.kept.take().is_none());
        let mut kept = Deadline::new(Instant::now() + Duration::from_millis(20), Some(&slot));
        let slower = tokio::time::sleep(LATE);
        assert_eq!(kept.within(pin!(slower)).await, None);
        drop(kept);
        assert!(slot.kept.take().is_some(), "given back to the slot");
    }
}
