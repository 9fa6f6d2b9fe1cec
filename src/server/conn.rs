//! One client connection's life: what it may hold, and for how long.
//!
//! hyper bounds a request head once it has started to arrive, but not a
//! connection that sends nothing, an idle keep-alive connection, or a
//! response the client has stopped reading (hyper then stops polling the
//! body, so no timer inside the body can fire). SPEC section 11 bounds all
//! of them, so every connection is driven together with one timer of its
//! own, re-armed only when it fires (never per request), which closes it:
//!
//! - when no request head has arrived within 10 s of opening (a silent
//!   connection, half a TLS or HTTP/2 preface);
//! - when it has had no request in flight for `[listen] idle_timeout`
//!   (nginx's `keepalive_timeout`, Envoy's `idle_timeout`; HTTP/2 gets a
//!   `GOAWAY`);
//! - when a request on it outlives its `request_timeout` by more than a
//!   second, the response still unread (each request registers its
//!   deadline in a small lock-free ring, `Deadlines`);
//! - when an HTTP/2 client resets most of the streams it opens (Envoy's
//!   premature-reset rule, the "rapid reset" of CVE-2023-44487 paced one
//!   stream at a time so that hyper's own limit never trips).
//!
//! On a kept-alive HTTP/1.1 connection a head must be complete within 10 s
//! of its first byte: `watched::Watched`, the connection's I/O, starts that
//! clock only when a head did not arrive whole in one read, so the usual
//! request arms no timer at all.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;

use super::deadlines::Deadlines;

/// A request head must arrive whole within this time: of a new connection's
/// opening, or of the first byte of a kept-alive connection's next request
/// (SPEC section 11). A TLS handshake too.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How far past its `request_timeout` a request may be before its
/// connection is closed under it (the ring counts whole seconds).
const DEADLINE_GRACE_MS: u64 = 1000;
/// A draining connection that has not sent its first request yet gets this
/// long (from opening) to do so before it is closed.
pub const ACCEPT_LINGER: Duration = Duration::from_millis(500);
/// Envoy's premature-reset rule: once an HTTP/2 connection has opened this
/// many streams, it is closed when more than half were reset by the client
/// before their response completed.
const RESET_CHECK_AFTER: u64 = 100;

/// Milliseconds since a process-wide origin: the unit of every timestamp a
/// connection keeps in its atomics.
fn now_ms() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    Instant::now().saturating_duration_since(origin).as_millis() as u64 + 1
}

/// Milliseconds-since-origin of `at` (0 when it is before the origin).
fn ms_of(at: Instant) -> u64 {
    let now = Instant::now();
    let current = now_ms();
    if at >= now {
        current + at.duration_since(now).as_millis() as u64
    } else {
        current.saturating_sub(now.duration_since(at).as_millis() as u64)
    }
}

/// What one connection's requests and its timer share.
pub struct ConnState {
    opened_ms: u64,
    /// Requests whose head arrived.
    pub(super) started: AtomicU64,
    pub(super) inflight: AtomicU32,
    /// When the last request in flight finished (ms since origin).
    idle_since_ms: AtomicU64,
    /// Streams the client reset before their response completed (HTTP/2).
    premature: AtomicU64,
    pub(super) http2: AtomicBool,
    deadlines: Deadlines,
    /// When the connection's timer fires next (ms since origin).
    timer_ms: AtomicU64,
    /// `[listen] idle_timeout`, for requests to know when idleness ends.
    idle_timeout_ms: AtomicU64,
    /// The connection was upgraded (a tunnel): no longer HTTP, not timed.
    upgraded: AtomicBool,
    /// Wakes the timer early: a deadline before its next firing, or the
    /// client crossing the reset rule.
    wake: Notify,
}

impl ConnState {
    /// The state of a connection opened now.
    pub fn new() -> Arc<ConnState> {
        let now = now_ms();
        Arc::new(ConnState {
            opened_ms: now,
            started: AtomicU64::new(0),
            inflight: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(now),
            premature: AtomicU64::new(0),
            http2: AtomicBool::new(false),
            deadlines: Deadlines::default(),
            timer_ms: AtomicU64::new(now + HEAD_TIMEOUT.as_millis() as u64),
            idle_timeout_ms: AtomicU64::new(u64::MAX / 4),
            upgraded: AtomicBool::new(false),
            wake: Notify::new(),
        })
    }

    /// Counts a request whose head arrived, until the guard (carried by its
    /// response body) drops.
    pub fn request(self: &Arc<Self>, http2: bool) -> RequestGuard {
        if http2 && !self.http2.load(Relaxed) {
            self.http2.store(true, Relaxed);
        }
        self.started.fetch_add(1, Relaxed);
        self.inflight.fetch_add(1, Relaxed);
        RequestGuard {
            state: Arc::clone(self),
            done: false,
        }
    }

    /// Registers the instant by which a request must be over; the
    /// connection is closed if it is still in flight a second after.
    pub fn deadline(self: &Arc<Self>, deadline: Instant) -> DeadlineGuard {
        let at = ms_of(deadline);
        let slot = self.deadlines.add(at);
        if at + DEADLINE_GRACE_MS < self.timer_ms.load(Relaxed) {
            // Rare: the timer is set for later (a fresh or idle connection).
            self.wake.notify_one();
        }
        DeadlineGuard {
            state: Arc::clone(self),
            slot,
        }
    }

    /// Requests whose head arrived on this connection so far.
    pub fn requests(&self) -> u64 {
        self.started.load(Relaxed)
    }

    /// Marks the connection as handed to a tunnel (an upgrade): its bytes
    /// are no longer requests, so no head is timed on it.
    pub fn upgraded(&self) {
        self.upgraded.store(true, Relaxed);
    }

    /// Whether the connection was handed to a tunnel.
    pub fn is_upgraded(&self) -> bool {
        self.upgraded.load(Relaxed)
    }

    fn finished(&self, completed: bool) {
        if self.inflight.fetch_sub(1, Relaxed) == 1 {
            let now = now_ms();
            self.idle_since_ms.store(now, Relaxed);
            let idle_ends = now.saturating_add(self.idle_timeout_ms.load(Relaxed));
            if idle_ends < self.timer_ms.load(Relaxed) {
                // An idle_timeout shorter than what the timer waits for.
                self.wake.notify_one();
            }
        }
        if !completed && self.http2.load(Relaxed) {
            let premature = self.premature.fetch_add(1, Relaxed) + 1;
            if self.abusive(premature) {
                self.wake.notify_one();
            }
        }
    }

    fn abusive(&self, premature: u64) -> bool {
        let started = self.started.load(Relaxed);
        started >= RESET_CHECK_AFTER && premature * 2 > started
    }

    /// What the connection's timer should do at `now` (ms since origin).
    fn judge(&self, now: u64, idle_timeout: Duration) -> Judgement {
        if self.started.load(Relaxed) == 0 {
            // A fresh connection is idle too: the shorter limit applies.
            let limit = self.opened_ms + HEAD_TIMEOUT.min(idle_timeout).as_millis() as u64;
            return if now >= limit {
                Judgement::Close("no request head within 10 s of opening")
            } else {
                Judgement::WaitUntil(limit)
            };
        }
        if self.abusive(self.premature.load(Relaxed)) {
            return Judgement::Close("the client reset most of the streams it opened");
        }
        let mut wake = now + idle_timeout.as_millis().max(1) as u64;
        if let Some(deadline) = self.deadlines.earliest() {
            let limit = deadline + DEADLINE_GRACE_MS;
            if now >= limit {
                return Judgement::Close("a response outlived its request_timeout unread");
            }
            wake = wake.min(limit);
        }
        if self.inflight.load(Relaxed) == 0 {
            let limit = self.idle_since_ms.load(Relaxed) + idle_timeout.as_millis() as u64;
            if now >= limit {
                return Judgement::Idle;
            }
            wake = wake.min(limit);
        }
        Judgement::WaitUntil(wake)
    }
}

enum Judgement {
    /// Close the connection now.
    Close(&'static str),
    /// No request in flight for `idle_timeout`: close it gracefully.
    Idle,
    /// Nothing to do before this instant (ms since origin).
    WaitUntil(u64),
}

/// One request in flight on a connection.
pub struct RequestGuard {
    state: Arc<ConnState>,
    /// The response went out whole.
    done: bool,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.state.finished(self.done);
    }
}

/// A request's registered deadline; freed on drop.
pub struct DeadlineGuard {
    state: Arc<ConnState>,
    slot: usize,
}

impl Drop for DeadlineGuard {
    fn drop(&mut self) {
        self.state.deadlines.remove(self.slot);
    }
}

pin_project_lite::pin_project! {
    /// A handler's future as the `Result` hyper's services return, counting
    /// the request on its connection. Not an `async` block: that would hold
    /// the handler's future twice (as captured value and as awaitee), and
    /// hyper moves the whole future once per request.
    pub struct Counted<F> {
        #[pin]
        inner: F,
        guard: Option<RequestGuard>,
    }
}

impl<F> Counted<F> {
    /// Counts `inner`'s request on its connection.
    pub fn new(inner: F, guard: RequestGuard) -> Counted<F> {
        Counted {
            inner,
            guard: Some(guard),
        }
    }
}

impl<F, B> Future for Counted<F>
where
    F: Future<Output = http::Response<B>>,
    B: Body,
{
    type Output = Result<http::Response<CountedBody<B>>, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx));
        let guard = this.guard.take();
        Poll::Ready(Ok(response.map(|body| CountedBody { body, guard })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends its request's count on the connection
    /// when it is over, or dropped.
    pub struct CountedBody<B: Body> {
        #[pin]
        body: B,
        guard: Option<RequestGuard>,
    }

    impl<B: Body> PinnedDrop for CountedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // hyper stops polling a body that says it is over: it is whole.
            if let Some(guard) = this.guard.as_mut()
                && this.body.is_end_stream()
            {
                guard.done = true;
            }
        }
    }
}

impl<B: Body<Data = Bytes>> Body for CountedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        if let Poll::Ready(None) = polled
            && let Some(guard) = this.guard.as_mut()
        {
            guard.done = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Errors a connection ends with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Drives `conn` until it ends, closing it as the module doc says; on
/// `stop`, shuts it down gracefully with `shutdown_gracefully` (hyper's
/// `graceful_shutdown`: finish the requests in flight, HTTP/2 `GOAWAY`); a
/// connection that has not sent its first request yet gets until
/// `ACCEPT_LINGER` after opening to do so.
pub async fn drive<C, S>(
    conn: C,
    mut shutdown_gracefully: S,
    state: &ConnState,
    idle_timeout: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), BoxError>
where
    C: Future<Output = Result<(), BoxError>>,
    S: FnMut(Pin<&mut C>),
{
    let mut conn = std::pin::pin!(conn);
    state
        .idle_timeout_ms
        .store(idle_timeout.as_millis() as u64, Relaxed);
    // Every arming of the timer is published, so a request whose deadline
    // (or an idle limit) comes sooner knows to wake it.
    let at = |ms: u64| {
        state.timer_ms.store(ms, Relaxed);
        tokio::time::Instant::now() + Duration::from_millis(ms.saturating_sub(now_ms()))
    };
    let timer = tokio::time::sleep_until(at(state.opened_ms + HEAD_TIMEOUT.as_millis() as u64));
    let mut timer = std::pin::pin!(timer);
    let mut draining = false;
    let mut graceful = false;
    loop {
        tokio::select! {
            biased;
            ended = conn.as_mut() => return ended,
            _ = timer.as_mut() => {
                let now = now_ms();
                if draining && state.requests() == 0 {
                    // Its half second to send a first request is over (hyper
                    // would not close a connection mid-way through one).
                    return Ok(());
                }
                if draining && !graceful {
                    graceful = true;
                    shutdown_gracefully(conn.as_mut());
                }
                match state.judge(now, idle_timeout) {
                    Judgement::Close(why) => {
                        tracing::debug!(reason = why, "closing client connection");
                        return Ok(());
                    }
                    Judgement::Idle if graceful => return Ok(()),
                    Judgement::Idle => {
                        graceful = true;
                        shutdown_gracefully(conn.as_mut());
                        // A peer that does not close after GOAWAY is cut off.
                        timer.as_mut().reset(tokio::time::Instant::now() + ACCEPT_LINGER);
                    }
                    Judgement::WaitUntil(ms) => timer.as_mut().reset(at(ms)),
                }
            }
            _ = state.wake.notified() => {
                // Judged at once: the timer fires now.
                timer.as_mut().reset(tokio::time::Instant::now());
            }
            _ = super::stopped(&mut stop), if !draining => {
                draining = true;
                let linger_until = state.opened_ms + ACCEPT_LINGER.as_millis() as u64;
                if state.requests() > 0 {
                    graceful = true;
                    shutdown_gracefully(conn.as_mut());
                } else if now_ms() >= linger_until {
                    return Ok(());
                } else {
                    timer.as_mut().reset(at(linger_until));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_silence_idleness_and_overdue_requests() {
        let idle = Duration::from_secs(60);
        let state = ConnState::new();
        let t0 = state.opened_ms;
        assert!(matches!(state.judge(t0 + 1, idle), Judgement::WaitUntil(t) if t == t0 + 10_000));
        assert!(matches!(
            state.judge(t0 + 10_000, idle),
            Judgement::Close(_)
        ));

        let guard = state.request(false);
        let deadline = state.deadline(Instant::now() + Duration::from_secs(5));
        assert!(matches!(
            state.judge(now_ms(), idle),
            Judgement::WaitUntil(_)
        ));
        assert!(matches!(
            state.judge(now_ms() + 7_000, idle),
            Judgement::Close(_)
        ));
        drop(deadline);
        drop(guard);
        let since = state.idle_since_ms.load(Relaxed);
        assert!(
            matches!(state.judge(since + 1, idle), Judgement::WaitUntil(t) if t == since + 60_000)
        );
        assert!(matches!(state.judge(since + 60_000, idle), Judgement::Idle));
    }

    #[test]
    fn most_streams_reset_is_abuse_a_few_are_not() {
        let state = ConnState::new();
        for i in 0..200 {
            let mut guard = state.request(true);
            guard.done = i % 4 != 0; // a quarter reset: browsers do that
        }
        assert!(!state.abusive(state.premature.load(Relaxed)));
        for _ in 0..200 {
            drop(state.request(true)); // reset before any answer
        }
        assert!(state.abusive(state.premature.load(Relaxed)));
    }
}
