//! What one client connection's requests share with the connection's
//! timer (`server::conn::drive`): how many requests started and are in
//! flight, since when it idles, the deadlines of the requests in flight,
//! whether the client keeps resetting streams, whether it became a tunnel.
//!
//! It lives below the server, beside the request path, because requests
//! register themselves here (`ConnState::request`, `ConnState::deadline`)
//! with a few relaxed atomics each; the server's timer reads it only when
//! it fires. Why a connection is closed, and when, is `judge` below and
//! SPEC section 11: no request head within 10 s of opening, no request in
//! flight for `[listen] idle_timeout`, a request a second past its
//! `request_timeout` (its response unread), or Envoy's premature-reset
//! rule for HTTP/2 ("rapid reset", CVE-2023-44487, however paced).
//!
//! [`ConnInfo`] is what a request knows of its connection: peer, TLS, SNI
//! and this state. [`OpenCount`] counts open connections and tunnels for
//! the drain.

use std::net::SocketAddr;
use std::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering, Ordering::Relaxed,
};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::HeaderValue;
use tokio::sync::Notify;

use super::deadlines::Deadlines;
use super::timer::TimerSlot;
use super::wake::Wake;

/// What a connection knows about its client, computed once per connection.
#[derive(Clone)]
pub struct ConnInfo {
    /// The client's address as the listener accepted it.
    pub peer: SocketAddr,
    /// The client IP, ready for `X-Forwarded-For`.
    pub client_ip: HeaderValue,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub proto: HeaderValue,
    /// The TLS server name the client asked for.
    pub sni: Option<Arc<str>>,
    /// What the connection's requests share with its timer (`server::conn`).
    pub state: Arc<ConnState>,
}

impl ConnInfo {
    /// The facts of a connection from `peer`; `sni` over TLS.
    pub fn new(
        peer: SocketAddr,
        tls: bool,
        sni: Option<Arc<str>>,
        state: Arc<ConnState>,
    ) -> ConnInfo {
        let ip = peer.ip().to_string();
        ConnInfo {
            peer,
            client_ip: HeaderValue::from_str(&ip).expect("an IP address is a valid header value"),
            proto: HeaderValue::from_static(if tls { "https" } else { "http" }),
            sni,
            state,
        }
    }
}

/// Things still open — connections, or upgraded tunnels — for the drain to
/// wait on.
#[derive(Default)]
pub struct OpenCount {
    open: AtomicUsize,
    closed: Notify,
}

/// Upgraded connections (WebSocket) still open.
pub type Tunnels = OpenCount;

impl OpenCount {
    /// Counts one open until the guard drops.
    pub fn open(self: &Arc<Self>) -> OpenGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        OpenGuard(Arc::clone(self))
    }

    /// How many are open now.
    pub fn count(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Resolves when none is open.
    pub async fn all_closed(&self) {
        loop {
            let notified = self.closed.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One open connection or tunnel.
pub struct OpenGuard(Arc<OpenCount>);

/// The guard of an open tunnel.
pub type TunnelGuard = OpenGuard;

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

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
pub(crate) fn now_ms() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    Instant::now().saturating_duration_since(origin).as_millis() as u64 + 1
}

/// What one connection's requests and its timer share.
pub struct ConnState {
    pub(crate) opened_ms: u64,
    /// Requests whose head arrived.
    pub(crate) started: AtomicU64,
    pub(crate) inflight: AtomicU32,
    /// When the last request in flight finished (ms since origin).
    idle_since_ms: AtomicU64,
    /// Streams the client reset before their response completed (HTTP/2).
    premature: AtomicU64,
    pub(crate) http2: AtomicBool,
    deadlines: Deadlines,
    /// When the connection's timer fires next (ms since origin).
    pub(crate) timer_ms: AtomicU64,
    /// `[listen] idle_timeout`, for requests to know when idleness ends.
    pub(crate) idle_timeout_ms: AtomicU64,
    /// The connection was upgraded (a tunnel): no longer HTTP, not timed.
    upgraded: AtomicBool,
    /// hyper's HTTP/1.1 connection is being ended to park the socket: its
    /// I/O must not shut the socket down (`server::served`).
    pub parking: AtomicBool,
    /// The socket is parked: no hyper connection, waiting for bytes.
    pub parked: AtomicBool,
    /// Wakes the timer early: a deadline before its next firing, or the
    /// client crossing the reset rule.
    pub(crate) wake: Wake,
    /// The upstream-answer timer its HTTP/1.1 requests share
    /// (`proxy::timer`).
    pub timer: TimerSlot,
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
            parking: AtomicBool::new(false),
            parked: AtomicBool::new(false),
            wake: Wake::default(),
            timer: TimerSlot::default(),
        })
    }

    /// Counts a request whose head arrived, until the guard (carried by its
    /// response body) drops.
    pub fn request(self: &Arc<Self>, http2: bool) -> RequestGuard {
        if http2 && !self.http2.load(Relaxed) {
            self.http2.store(true, Relaxed);
        }
        if self.started.fetch_add(1, Relaxed) == 0 {
            // The timer waits for a first head (10 s); from now on it
            // judges idleness and parking instead. Once per connection.
            self.wake.wake();
        }
        self.inflight.fetch_add(1, Relaxed);
        RequestGuard {
            state: Arc::clone(self),
            done: false,
        }
    }

    /// Registers a request that must be over within `timeout` (its
    /// `request_timeout`) from now; the connection is closed if it is still
    /// in flight a second after. One clock read.
    pub fn deadline(self: &Arc<Self>, timeout: Duration) -> DeadlineGuard {
        let at = now_ms() + timeout.as_millis() as u64;
        let slot = self.deadlines.add(at);
        if at + DEADLINE_GRACE_MS < self.timer_ms.load(Relaxed) {
            // Rare: the timer is set for later (a fresh or idle connection).
            self.wake.wake();
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

    /// The parked socket has bytes (or an end) again and hyper serves it:
    /// its idleness starts over, and the timer looks at it now.
    pub fn unparked(&self) {
        self.parked.store(false, Relaxed);
        self.idle_since_ms.store(now_ms(), Relaxed);
        self.wake.wake();
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
                self.wake.wake();
            }
        }
        if !completed && self.http2.load(Relaxed) {
            let premature = self.premature.fetch_add(1, Relaxed) + 1;
            if self.abusive(premature) {
                self.wake.wake();
            }
        }
    }

    fn abusive(&self, premature: u64) -> bool {
        let started = self.started.load(Relaxed);
        started >= RESET_CHECK_AFTER && premature * 2 > started
    }

    /// What the connection's timer should do at `now` (ms since origin);
    /// `park_after`: how long an HTTP/1.1 connection idles before it is
    /// parked (`None`: never).
    pub(crate) fn judge(
        &self,
        now: u64,
        idle_timeout: Duration,
        park_after: Option<Duration>,
    ) -> Judgement {
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
        let parkable = park_after.filter(|_| {
            !self.http2.load(Relaxed) && !self.is_upgraded() && !self.parked.load(Relaxed)
        });
        if self.inflight.load(Relaxed) == 0 {
            let idle_since = self.idle_since_ms.load(Relaxed);
            let limit = idle_since + idle_timeout.as_millis() as u64;
            if now >= limit {
                return Judgement::Idle;
            }
            wake = wake.min(limit);
            if let Some(after) = parkable {
                let park_at = idle_since + after.as_millis() as u64;
                if now >= park_at {
                    return Judgement::Park(wake);
                }
                wake = wake.min(park_at);
            }
        } else if let Some(after) = parkable {
            // Busy now; looked at again a `park_after` from now, so a
            // connection that then idles is parked within twice that.
            wake = wake.min(now + after.as_millis() as u64);
        }
        Judgement::WaitUntil(wake)
    }
}

pub(crate) enum Judgement {
    /// Close the connection now.
    Close(&'static str),
    /// No request in flight for `idle_timeout`: close it gracefully.
    Idle,
    /// An HTTP/1.1 connection idle for its `park_after`: park it, then
    /// look again at this instant (ms since origin).
    Park(u64),
    /// Nothing to do before this instant (ms since origin).
    WaitUntil(u64),
}

/// One request in flight on a connection.
pub struct RequestGuard {
    state: Arc<ConnState>,
    /// The response went out whole.
    done: bool,
}

impl RequestGuard {
    /// The response went out whole: not a reset when the guard drops.
    pub fn complete(&mut self) {
        self.done = true;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_silence_idleness_and_overdue_requests() {
        let idle = Duration::from_secs(60);
        let state = ConnState::new();
        let t0 = state.opened_ms;
        assert!(
            matches!(state.judge(t0 + 1, idle, None), Judgement::WaitUntil(t) if t == t0 + 10_000)
        );
        assert!(matches!(
            state.judge(t0 + 10_000, idle, None),
            Judgement::Close(_)
        ));

        let guard = state.request(false);
        let deadline = state.deadline(Duration::from_secs(5));
        assert!(matches!(
            state.judge(now_ms(), idle, None),
            Judgement::WaitUntil(_)
        ));
        assert!(matches!(
            state.judge(now_ms() + 7_000, idle, None),
            Judgement::Close(_)
        ));
        drop(deadline);
        drop(guard);
        let since = state.idle_since_ms.load(Relaxed);
        assert!(
            matches!(state.judge(since + 1, idle, None), Judgement::WaitUntil(t) if t == since + 60_000)
        );
        assert!(matches!(
            state.judge(since + 60_000, idle, None),
            Judgement::Idle
        ));
    }

    #[test]
    fn most_streams_reset_is_abuse_a_few_are_not() {
        let state = ConnState::new();
        for i in 0..200 {
            let mut guard = state.request(true);
            if i % 4 != 0 {
                guard.complete();
            } // a quarter reset: browsers do that
        }
        assert!(!state.abusive(state.premature.load(Relaxed)));
        for _ in 0..200 {
            drop(state.request(true)); // reset before any answer
        }
        assert!(state.abusive(state.premature.load(Relaxed)));
    }
}
