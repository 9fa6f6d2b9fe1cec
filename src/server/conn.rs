//! Driving one client connection: hyper serves it, and one timer of its
//! own closes it as `proxy::conn::ConnState::judge` says (SPEC section 11),
//! re-armed only when it fires or when a request's deadline or an idle
//! limit comes sooner — never per request. The connection's requests are
//! counted through `Counted` (the service future) and `CountedBody` (the
//! response body), so the state knows what is in flight and what a client
//! reset.
//!
//! On a kept-alive HTTP/1.1 connection a head must be complete within 10 s
//! of its first byte: `watched::Watched`, the connection's I/O, starts that
//! clock only when a head did not arrive whole in one read, so the usual
//! request arms no timer at all.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::proxy::conn::{ACCEPT_LINGER, ConnState, HEAD_TIMEOUT, Judgement, RequestGuard, now_ms};

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
                guard.complete();
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
            guard.complete();
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

/// A client connection as [`drive`] sees it: a future that ends with the
/// connection, which can be shut down gracefully and parked.
pub trait Served: Future<Output = Result<(), BoxError>> {
    /// hyper's `graceful_shutdown`: finish the requests in flight (HTTP/2:
    /// `GOAWAY`), then end; a connection with nothing in flight ends at once.
    fn shut_down_gracefully(self: Pin<&mut Self>);

    /// Gives back what an idle HTTP/1.1 connection holds, keeping the
    /// socket (`served`); anything else is left as it is.
    fn park(self: Pin<&mut Self>);
}

/// Drives `conn` until it ends, closing it as the module doc says and
/// parking it once idle for `park_after` (`None`: never); on `stop`, shuts
/// it down gracefully; a connection that has not sent its first request
/// yet gets until `ACCEPT_LINGER` after opening to do so.
pub async fn drive<C: Served>(
    conn: C,
    state: &ConnState,
    idle_timeout: Duration,
    park_after: Option<Duration>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), BoxError> {
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
    // Made once, and polled only when the stop signal woke it: a watch
    // receiver's wait takes the channel's mutex on every poll.
    let stopped = std::pin::pin!(super::stopped(&mut stop));
    let mut stopped = crate::proxy::wake::OnWake::new(stopped);
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
                    conn.as_mut().shut_down_gracefully();
                }
                match state.judge(now, idle_timeout, park_after) {
                    Judgement::Close(why) => {
                        tracing::debug!(reason = why, "closing client connection");
                        return Ok(());
                    }
                    Judgement::Idle if graceful => return Ok(()),
                    Judgement::Idle => {
                        graceful = true;
                        conn.as_mut().shut_down_gracefully();
                        // A peer that does not close after GOAWAY is cut off.
                        timer.as_mut().reset(tokio::time::Instant::now() + ACCEPT_LINGER);
                    }
                    Judgement::Park(ms) => {
                        conn.as_mut().park();
                        timer.as_mut().reset(at(ms));
                    }
                    Judgement::WaitUntil(ms) => timer.as_mut().reset(at(ms)),
                }
            }
            () = std::future::poll_fn(|cx| state.wake.poll_woken(cx)) => {
                // Judged at once: the timer fires now.
                timer.as_mut().reset(tokio::time::Instant::now());
            }
            () = &mut stopped, if !draining => {
                draining = true;
                let linger_until = state.opened_ms + ACCEPT_LINGER.as_millis() as u64;
                if state.requests() > 0 {
                    graceful = true;
                    conn.as_mut().shut_down_gracefully();
                } else if now_ms() >= linger_until {
                    return Ok(());
                } else {
                    timer.as_mut().reset(at(linger_until));
                }
            }
        }
    }
}
