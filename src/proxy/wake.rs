//! A lock-free wake-up for one connection's timer task.
//!
//! tokio's `Notify` keeps its waiters in a list behind a mutex, taken on
//! every poll of a waiting `notified()` future; the connection's driver
//! (`server::conn::drive`) polls its wake-up each time hyper's connection
//! makes progress, several times a request. Only that one task ever waits
//! here, so a single-waiter slot (`AtomicWaker`, a few atomic
//! operations; the `atomic-waker` crate h2 also uses) and a flag are enough.

use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;

/// A wake-up with one waiter: [`Wake::wake`] from any thread, awaited by
/// [`Wake::poll_woken`]. Like `Notify::notify_one`, a wake with nobody
/// waiting is kept for the next poll (one permit, not a count).
#[derive(Default)]
pub struct Wake {
    woken: AtomicBool,
    waker: AtomicWaker,
}

impl Wake {
    /// Wakes the waiting task, or leaves a permit for its next poll.
    pub fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// `Ready` once per [`Wake::wake`] (several wakes before a poll count
    /// as one); otherwise registers `cx`'s waker and is `Pending`.
    pub fn poll_woken(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.take() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A wake between the check and the registration found no waker.
        if self.take() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn take(&self) -> bool {
        self.woken.load(Ordering::Acquire) && self.woken.swap(false, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_wake_before_the_wait_is_kept_and_counts_once() {
        let wake = Wake::default();
        wake.wake();
        wake.wake();
        std::future::poll_fn(|cx| wake.poll_woken(cx)).await;
        let again = std::future::poll_fn(|cx| Poll::Ready(wake.poll_woken(cx))).await;
        assert!(again.is_pending(), "two wakes before a poll are one");
    }

    #[tokio::test]
    async fn a_wake_from_another_task_ends_the_wait() {
        let wake = Arc::new(Wake::default());
        let waiter = {
            let wake = Arc::clone(&wake);
            tokio::spawn(async move { std::future::poll_fn(|cx| wake.poll_woken(cx)).await })
        };
        tokio::task::yield_now().await;
        wake.wake();
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}
