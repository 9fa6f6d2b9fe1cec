//! Lock-free wake-ups for one connection's timer task.
//!
//! tokio's `Notify` keeps its waiters in a list behind a mutex, taken on
//! every poll of a waiting `notified()` future (and a `watch` receiver's
//! `wait_for` waits on one); the connection's driver
//! (`server::conn::drive`) is polled each time hyper's connection makes
//! progress, several times a request, and used to poll both each time.
//! [`Wake`]: only that one task ever waits, so a single-waiter slot
//! (`AtomicWaker`, a few atomic operations; the `atomic-waker` crate h2
//! also uses) and a flag are enough. [`OnWake`]: a future that must stay
//! on a shared `Notify` (the listener's stop signal) is polled only when
//! its own waker was woken, not on every wake of the task.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

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

/// `future` (a `Pin<&mut F>` or any `Unpin` future), polled on the first
/// poll and then only after its own waker was woken; other polls of the
/// task cost a waker registration and a flag check.
pub struct OnWake<F> {
    future: F,
    woken: Arc<Woken>,
    first: bool,
}

/// The waker [`OnWake`] gives its future: marks it and wakes the task.
#[derive(Default)]
struct Woken {
    wake: Wake,
}

impl std::task::Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake.wake();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake.wake();
    }
}

impl<F: Future + Unpin> OnWake<F> {
    /// Wraps `future`.
    pub fn new(future: F) -> OnWake<F> {
        OnWake {
            future,
            woken: Arc::default(),
            first: true,
        }
    }
}

impl<F: Future + Unpin> Future for OnWake<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        // Registered on every poll: a wake of the future's own waker
        // (any time after this) must reach the task.
        this.woken.wake.waker.register(cx.waker());
        let woken = this.woken.wake.take();
        if !(std::mem::take(&mut this.first) || woken) {
            return Poll::Pending;
        }
        let waker = Waker::from(Arc::clone(&this.woken));
        Pin::new(&mut this.future).poll(&mut Context::from_waker(&waker))
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

    #[tokio::test]
    async fn on_wake_polls_its_future_only_when_that_future_was_woken() {
        let polls = std::sync::atomic::AtomicUsize::new(0);
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        let inner = std::pin::pin!(async {
            polls.fetch_add(1, Ordering::Relaxed);
            let _ = rx.wait_for(|s| *s).await;
        });
        let mut wrapped = std::pin::pin!(OnWake::new(inner));
        // Polled many times with nothing sent: the inner future only once.
        for _ in 0..10 {
            let pending = std::future::poll_fn(|cx| Poll::Ready(wrapped.as_mut().poll(cx))).await;
            assert!(pending.is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        tx.send(true).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), wrapped)
            .await
            .expect("the stop reaches the wrapped future");
    }
}
