//! Upstream HTTP/1.1 connections and their keep-alive pool.
//!
//! Each endpoint keeps its idle connections in a lock-free queue. A request
//! takes one (or opens one), sends on it with hyper's `client::conn::http1`,
//! and the connection goes back to the queue when the response body has been
//! read to its end — no shared pool map, no lock and no task spawned per
//! request (hyper-util's pooled client did all three; see
//! benches/RESULTS.md). A response cut short, or one that came before the
//! request body had all gone out, closes its connection, as nginx does.
//! Connections are reused oldest first — the lock-free queue is FIFO, where
//! nginx and Go reuse the newest — so after a burst the surplus stays in
//! rotation until the 60 s idle limit rather than ageing out sooner.

mod rescue;

use rescue::{Held, drain};
pub use rescue::{RESCUE_BYTES, RESCUE_MAX, RESCUE_TIME, Rescuable};

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_queue::SegQueue;
use http::{Method, Request, Response};
use http_body::{Body, Frame};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A request body on its way upstream: the client's stream, or nothing for a
/// bodiless request (which can then be sent again on a retry).
pub type UpstreamBody = Either<Upload, Empty<Bytes>>;

/// The client's request body, streamed upstream; marks when it has all
/// gone out. A connection whose upstream answered before the upload ended
/// stays busy with it, so it must not be handed to the next request.
pub struct Upload {
    body: Incoming,
    state: Arc<UploadState>,
}

/// How an upload is going, shared with the exchange that sends it: whether
/// it has all gone out, whether the client broke it (a malformed or cut
/// body), and whether it is waiting on the client right now — what decides
/// whose fault a failed exchange is (SPEC section 6).
#[derive(Debug, Default)]
pub struct UploadState {
    sent: AtomicBool,
    client_failed: AtomicBool,
    waiting_on_client: AtomicBool,
}

impl UploadState {
    /// The whole body has gone out.
    pub fn sent(&self) -> bool {
        self.sent.load(Ordering::Acquire)
    }

    /// The client's body broke (malformed chunked framing, cut short).
    pub fn client_failed(&self) -> bool {
        self.client_failed.load(Ordering::Acquire)
    }

    /// The upload is stalled on the client, not on the upstream.
    pub fn waiting_on_client(&self) -> bool {
        self.waiting_on_client.load(Ordering::Acquire)
    }
}

impl Upload {
    /// The body to send, and its state, which the exchange and the
    /// connection's [`Lease`] read.
    pub fn new(body: Incoming) -> (Upload, Arc<UploadState>) {
        let state = Arc::new(UploadState::default());
        let upload = Upload {
            body,
            state: Arc::clone(&state),
        };
        (upload, state)
    }
}

impl Body for Upload {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        let state = &self.state;
        state
            .waiting_on_client
            .store(polled.is_pending(), Ordering::Release);
        if let Poll::Ready(Some(Err(_))) = polled {
            state.client_failed.store(true, Ordering::Release);
        }
        // hyper stops polling once the body says it is over.
        if matches!(polled, Poll::Ready(None)) || self.body.is_end_stream() {
            state.sent.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The request half of one HTTP/1.1 client connection to an endpoint
/// (hyper's `SendRequest`); one request at a time, reused while the
/// connection stays open and idle connections are kept in [`IdleConnections`].
pub type Sender = http1::SendRequest<UpstreamBody>;

/// How long an idle upstream connection is kept for reuse (nginx's upstream
/// `keepalive_timeout` default).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Idle connections kept per endpoint; more are closed when they come back.
pub const MAX_IDLE: usize = 256;

/// A connection idle this long may be closed by the upstream's own
/// keep-alive timer just as a request goes out on it (gunicorn closes after
/// 2 s, Node.js and Apache after 5 s); see [`send`].
const MAY_BE_STALE_AFTER: Duration = Duration::from_secs(1);

/// Why no response came back.
pub enum SendError {
    /// No connection could be opened: nothing was sent, and the request
    /// comes back for a retry elsewhere.
    Connect(std::io::Error, Box<Request<UpstreamBody>>),
    /// A reused connection turned out closed by the upstream (see
    /// [`send`]): the request comes back to be sent on a new connection.
    Stale(Box<Request<UpstreamBody>>),
    /// The exchange failed after the connection was up.
    Exchange(hyper::Error),
}

struct Idle {
    sender: Sender,
    since: Instant,
}

impl Idle {
    /// How long it has idled, if it may still be used.
    fn usable(&self) -> Option<Duration> {
        let idled = self.since.elapsed();
        (!self.sender.is_closed() && idled < IDLE_TIMEOUT).then_some(idled)
    }
}

/// The idle keep-alive connections of one endpoint, with its address.
/// Shared (`Arc`) by the endpoint and every exchange lent one of them.
pub struct IdleConnections {
    /// The endpoint's `host:port`, where new connections go.
    address: Box<str>,
    idle: SegQueue<Idle>,
    /// Entries in `idle`, kept apart because `SegQueue::len` is not cheap.
    count: AtomicUsize,
    /// Abandoned exchanges finishing in the background (at most
    /// [`RESCUE_MAX`]).
    rescues: AtomicUsize,
}

impl std::fmt::Debug for IdleConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleConnections")
            .field("idle", &self.count.load(Ordering::Relaxed))
            .finish()
    }
}

impl IdleConnections {
    /// No connection yet to `address` (`host:port`).
    pub fn new(address: &str) -> IdleConnections {
        IdleConnections {
            address: address.into(),
            idle: SegQueue::new(),
            count: AtomicUsize::new(0),
            rescues: AtomicUsize::new(0),
        }
    }

    /// The `host:port` new connections are opened to.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The oldest idle connection that is still open and fresh, with how
    /// long it idled.
    fn take(&self) -> Option<(Sender, Duration)> {
        while let Some(idle) = self.idle.pop() {
            self.count.fetch_sub(1, Ordering::Relaxed);
            if let Some(idled) = idle.usable() {
                return Some((idle.sender, idled));
            }
        }
        None
    }

    /// Keeps `sender` for the next request, unless the pool is full.
    fn put(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        if self.count.fetch_add(1, Ordering::Relaxed) >= MAX_IDLE {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        self.idle.push(Idle {
            sender,
            since: Instant::now(),
        });
    }

    /// Closes connections idle for longer than [`IDLE_TIMEOUT`] or closed by
    /// the upstream; called from the endpoint's health probe loop.
    pub fn sweep(&self) {
        for _ in 0..self.count.load(Ordering::Relaxed) {
            let Some(idle) = self.idle.pop() else { break };
            self.count.fetch_sub(1, Ordering::Relaxed);
            if idle.usable().is_some() {
                self.count.fetch_add(1, Ordering::Relaxed);
                self.idle.push(idle);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

/// A connection lent to one exchange, carried by the response body. It
/// returns to its endpoint's pool only through [`Lease::finished`] (or a
/// successful [`Lease::rescue`]); dropped otherwise, it closes (hyper
/// cannot reuse a half-read response).
pub struct Lease {
    sender: Sender,
    connections: Arc<IdleConnections>,
    /// For a request with a body: how its upload is going.
    upload: Option<Arc<UploadState>>,
    /// When the rest of the response may be read off in the background as
    /// the client goes away (see [`Lease::rescue`]): what the rescue holds
    /// on the caller's behalf while it runs.
    rescuable: Option<Holder>,
}

/// Makes what a rescue holds while it runs — the caller's slots (a
/// tenant's `max_inflight`, an endpoint's in-flight count), so abandoning
/// requests frees no capacity and load balancing still sees the load.
pub type Holder = Box<dyn FnOnce() -> Box<dyn Send> + Send>;

impl Lease {
    /// Lends `sender`, a connection of `connections`, to one exchange.
    pub fn new(
        sender: Sender,
        connections: Arc<IdleConnections>,
        upload: Option<Arc<UploadState>>,
        rescuable: Option<Holder>,
    ) -> Lease {
        Lease {
            sender,
            connections,
            upload,
            rescuable,
        }
    }

    /// The client went away with `rest` of the response unread: when the
    /// exchange is rescuable, read it off in the background (at most
    /// [`RESCUE_BYTES`] within [`RESCUE_TIME`]) and keep the connection;
    /// otherwise close it.
    pub fn rescue(mut self, rest: Incoming) {
        let Some(holder) = self.rescuable.take() else {
            return;
        };
        if self.upload.is_some() {
            return;
        }
        let Some(held) = Held::take(&self.connections, holder) else {
            return;
        };
        tokio::spawn(async move {
            if drain(rest).await {
                self.finished();
            }
            drop(held);
        });
    }

    /// The response body ended cleanly: the connection can serve again,
    /// unless the request body is still going out (the upstream answered
    /// early) — then it closes, as nginx does.
    pub fn finished(self) {
        if self.upload.is_some_and(|upload| !upload.sent()) {
            return;
        }
        self.connections.put(self.sender);
    }
}

/// What [`send`] comes back with: the response and the connection it came
/// on, or why there is none.
pub type SendResult = Result<(Response<Incoming>, Sender), SendError>;

/// Opens a connection to `address` and starts its connection task.
async fn connect(address: &str, timeout: Duration) -> std::io::Result<Sender> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "connect_timeout elapsed")
        })??;
    // Request heads are small and written at once; do not wait for ACKs.
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        // Ends when the upstream closes, the sender is dropped, or an
        // upgrade takes the socket over.
        if let Err(e) = connection.with_upgrades().await {
            tracing::trace!(error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
}

/// One attempt to send `request` to the endpoint of `connections`: on its
/// idle connection when `reuse` (and one is there), else on a new one. The
/// retry policy is the caller's (`proxy::forward::send`, the one loop):
/// [`SendError::Stale`] says the attempt met a reused connection the
/// upstream had closed — before the request went out, or, after an idle
/// long enough for the upstream's keep-alive timer to be the reason, before
/// any answer to a request that can be sent again (bodiless, idempotent) —
/// and hands the request back for one more attempt on a new connection, as
/// nginx and Go's client do. Only then is the request head copied.
pub async fn send(
    connections: Arc<IdleConnections>,
    connect_timeout: Duration,
    request: Request<UpstreamBody>,
    reuse: bool,
) -> SendResult {
    let address = &*connections.address;
    let reused = if reuse { connections.take() } else { None };
    let fresh = reused.is_none();
    let may_be_stale = reused
        .as_ref()
        .is_some_and(|(_, idled)| *idled >= MAY_BE_STALE_AFTER);
    let mut sender = match reused {
        Some((s, _)) => s,
        // Boxed: connecting is rare, and its future would otherwise make
        // every request's future larger.
        None => match Box::pin(connect(address, connect_timeout)).await {
            Ok(s) => s,
            Err(e) => return Err(SendError::Connect(e, Box::new(request))),
        },
    };
    if let Err(e) = sender.ready().await {
        return Err(if fresh {
            SendError::Exchange(e)
        } else {
            SendError::Stale(Box::new(request))
        });
    }
    let spare = may_be_stale.then(|| replayable(&request)).flatten();
    match sender.try_send_request(request).await {
        Ok(response) => Ok((response, sender)),
        Err(mut e) => match (e.take_message(), spare) {
            (Some(unsent), _) if !fresh => Err(SendError::Stale(Box::new(unsent))),
            (None, Some(copy)) if closed_before_answer(e.error()) => {
                tracing::debug!(
                    address,
                    "idle upstream connection closed under a request; sending it again"
                );
                Err(SendError::Stale(Box::new(copy)))
            }
            _ => Err(SendError::Exchange(e.into_error())),
        },
    }
}

/// A copy of `request` to send again, if it has no body and an idempotent
/// method (RFC 9110 §9.2.2).
fn replayable(request: &Request<UpstreamBody>) -> Option<Request<UpstreamBody>> {
    let idempotent = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    if !idempotent || matches!(request.body(), Either::Left(_)) {
        return None;
    }
    let mut copy = Request::new(Either::Right(Empty::new()));
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
}

/// The upstream closed the connection before any answer came back.
fn closed_before_answer(e: &hyper::Error) -> bool {
    e.is_incomplete_message() || e.is_canceled() || e.is_closed()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection to a listener that accepts and holds the server side.
    async fn pair(listener: &tokio::net::TcpListener) -> (Sender, TcpStream) {
        let address = listener.local_addr().unwrap().to_string();
        let (sender, accepted) =
            tokio::join!(connect(&address, Duration::from_secs(5)), listener.accept());
        (sender.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn keeps_at_most_max_idle_and_drops_closed_connections() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = IdleConnections::new("127.0.0.1:1");
        let mut servers = Vec::new();
        for _ in 0..MAX_IDLE + 3 {
            let (sender, server) = pair(&listener).await;
            pool.put(sender);
            servers.push(server);
        }
        assert_eq!(pool.len(), MAX_IDLE, "the surplus is closed, not kept");

        // The upstream closes every connection: a sweep forgets them all and
        // nothing closed is ever handed out.
        drop(servers);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while pool.len() > 0 {
            assert!(std::time::Instant::now() < deadline, "{} left", pool.len());
            pool.sweep();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(pool.take().is_none());
    }

    #[tokio::test]
    async fn a_closed_connection_is_not_pooled() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = IdleConnections::new("127.0.0.1:1");
        let (closed, server) = pair(&listener).await;
        drop(server);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !closed.is_closed() {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        pool.put(closed);
        assert_eq!(pool.len(), 0);

        let (open, _server) = pair(&listener).await;
        pool.put(open);
        let taken = pool.take().expect("an open connection is handed out");
        assert!(!taken.0.is_closed());
        assert!(pool.take().is_none());
    }
}
