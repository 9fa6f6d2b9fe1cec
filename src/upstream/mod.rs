//! Upstream connections — HTTP/1.1 keep-alive and shared HTTP/2 — and
//! their pool per endpoint.
//!
//! An `h2c://` endpoint, or an `https://` one whose ALPN chose `h2`, has
//! one HTTP/2 connection that every request shares (hyper's
//! `client::conn::http2`), held in an `ArcSwapOption` so a request takes it
//! without a lock; only opening it takes the endpoint's connect gate, so a
//! burst opens one connection rather than one each (SPEC section 15).
//! The rest of this note is about HTTP/1.1.
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

mod lease;
mod rescue;
mod transport;
mod upload;

pub use lease::{Holder, Lease};
pub use rescue::{RESCUE_BYTES, RESCUE_MAX, RESCUE_TIME, Rescuable};
use transport::{Connected, connect, h2_form, http1_form};
pub use transport::{H2Sender, TlsTarget};
pub use upload::{Upload, UploadState};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use crossbeam_queue::SegQueue;
use http::{Method, Request, Response};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use tokio::time::Instant;

use crate::config::Protocol;
use crate::config::endpoint::EndpointAddress;

/// A request body on its way upstream: the client's stream, or nothing for a
/// bodiless request (which can then be sent again on a retry).
pub type UpstreamBody = Either<Upload, Empty<Bytes>>;

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

/// The connections of one endpoint — idle HTTP/1.1 keep-alive ones, the
/// shared HTTP/2 one — with its address and protocol. Shared (`Arc`) by
/// the endpoint and every exchange lent one of them.
pub struct IdleConnections {
    /// The endpoint's `host:port`, where new connections go.
    address: Box<str>,
    /// The endpoint's scheme.
    protocol: Protocol,
    /// For `https://`: the TLS in force for new connections (replaced when
    /// a change brings new `upstream_tls`).
    tls: ArcSwapOption<TlsTarget>,
    /// The shared HTTP/2 connection, once one is open.
    h2: ArcSwapOption<H2Sender>,
    /// Held while an HTTP/2 connection is being opened, so concurrent
    /// requests wait for it rather than each opening one. Never taken by
    /// a request that finds the connection open.
    connecting: tokio::sync::Mutex<()>,
    /// An `https://` endpoint's ALPN chose `http/1.1`: its connections are
    /// opened without the gate, like plain HTTP/1.1 ones (several at once).
    speaks_http1: AtomicBool,
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
    /// No connection yet to `address`; an `https://` one verified against
    /// the system's roots for its host until [`IdleConnections::set_tls`].
    pub fn new(address: &EndpointAddress<'_>) -> IdleConnections {
        let connections = IdleConnections {
            address: address.authority.into(),
            protocol: address.protocol,
            tls: ArcSwapOption::empty(),
            h2: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            speaks_http1: AtomicBool::new(false),
            idle: SegQueue::new(),
            count: AtomicUsize::new(0),
            rescues: AtomicUsize::new(0),
        };
        connections.set_tls(None, address.host());
        connections
    }

    /// Sets the TLS new connections to an `https://` endpoint use: the
    /// tenant's `upstream_tls`, or (`None`) the system's roots; the server
    /// name is `upstream_tls.server_name`, else `host`. Connections already
    /// open keep theirs, as a listener's do on a certificate reload.
    pub fn set_tls(&self, tls: Option<&crate::config::UpstreamTls>, host: &str) {
        if self.protocol != Protocol::Https {
            return;
        }
        let client = tls.map_or_else(crate::config::upstream_tls::default_client, |t| {
            Arc::clone(&t.client)
        });
        let name = tls
            .and_then(|t| t.server_name.clone())
            .or_else(|| rustls::pki_types::ServerName::try_from(host.to_owned()).ok());
        let Some(server_name) = name else {
            return;
        };
        let unchanged =
            self.tls.load().as_ref().is_some_and(|now| {
                Arc::ptr_eq(&now.client, &client) && now.server_name == server_name
            });
        if !unchanged {
            self.tls.store(Some(Arc::new(TlsTarget {
                client,
                server_name,
            })));
        }
    }

    /// The shared HTTP/2 connection, if one is open.
    fn shared_h2(&self) -> Option<H2Sender> {
        let h2 = self.h2.load();
        h2.as_ref()
            .filter(|s| !s.is_closed())
            .map(|s| H2Sender::clone(s))
    }

    /// Opens a connection; an HTTP/2 one becomes the shared one. When an
    /// HTTP/2 connection may come of it, one opener at a time: those who
    /// waited take the connection the first opened.
    async fn open(&self, connect_timeout: Duration) -> std::io::Result<Connected> {
        let tls = self.tls.load_full();
        if self.protocol == Protocol::Http1 || self.speaks_http1.load(Ordering::Relaxed) {
            let connected = connect(&self.address, self.protocol, tls, connect_timeout).await?;
            if let Connected::Http2(h2) = &connected {
                // The server changed its mind (a new deployment): share it.
                self.speaks_http1.store(false, Ordering::Relaxed);
                self.h2.store(Some(Arc::new(h2.clone())));
            }
            return Ok(connected);
        }
        let _gate = self.connecting.lock().await;
        if let Some(h2) = self.shared_h2() {
            return Ok(Connected::Http2(h2));
        }
        let connected = connect(&self.address, self.protocol, tls, connect_timeout).await?;
        match &connected {
            Connected::Http2(h2) => self.h2.store(Some(Arc::new(h2.clone()))),
            Connected::Http1(_) => self.speaks_http1.store(true, Ordering::Relaxed),
        }
        Ok(connected)
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

/// What [`send`] comes back with: the response and the HTTP/1.1
/// connection it came on (`None` for HTTP/2), or why there is none.
pub type SendResult = Result<(Response<Incoming>, Option<Sender>), SendError>;

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
    mut request: Request<UpstreamBody>,
    reuse: bool,
) -> SendResult {
    let address = &*connections.address;
    let reused = if reuse { connections.take() } else { None };
    if reused.is_none()
        && reuse
        && connections.protocol != Protocol::Http1
        && let Some(h2) = connections.shared_h2()
    {
        return Box::pin(send_h2(&connections, h2, request, true)).await;
    }
    let fresh = reused.is_none();
    let may_be_stale = reused
        .as_ref()
        .is_some_and(|(_, idled)| *idled >= MAY_BE_STALE_AFTER);
    let mut sender = match reused {
        Some((s, _)) => s,
        // Boxed: connecting is rare, and its future would otherwise make
        // every request's future larger.
        None => match Box::pin(connections.open(connect_timeout)).await {
            Ok(Connected::Http1(s)) => s,
            Ok(Connected::Http2(h2)) => {
                return Box::pin(send_h2(&connections, h2, request, false)).await;
            }
            Err(e) => return Err(SendError::Connect(e, Box::new(request))),
        },
    };
    http1_form(&mut request);
    if let Err(e) = sender.ready().await {
        return Err(if fresh {
            SendError::Exchange(e)
        } else {
            SendError::Stale(Box::new(request))
        });
    }
    let spare = may_be_stale.then(|| replayable(&request)).flatten();
    match sender.try_send_request(request).await {
        Ok(response) => Ok((response, Some(sender))),
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

/// One request on the shared HTTP/2 connection `h2` (`reused`: it was
/// open before this request). A connection that turned out gone before
/// the request went out hands it back ([`SendError::Stale`]) for one more
/// attempt on a new connection.
async fn send_h2(
    connections: &IdleConnections,
    mut h2: H2Sender,
    mut request: Request<UpstreamBody>,
    reused: bool,
) -> SendResult {
    h2_form(&mut request, connections.protocol.uri_scheme());
    match h2.try_send_request(request).await {
        Ok(response) => Ok((response, None)),
        Err(mut e) => {
            if h2.is_closed() {
                // Forget it, unless another request already replaced it.
                connections.h2.rcu(|current| match current {
                    Some(c) if c.is_closed() => None,
                    other => other.clone(),
                });
            }
            match e.take_message() {
                Some(unsent) if reused => Err(SendError::Stale(Box::new(unsent))),
                _ => Err(SendError::Exchange(e.into_error())),
            }
        }
    }
}

/// A health probe's exchange with the endpoint of `connections`, over a
/// connection of its own in the endpoint's protocol and TLS (SPEC section
/// 15: probes use the endpoint's protocol), opened within
/// `connect_timeout` and closed when the response has been read.
///
/// # Errors
///
/// Connecting (a TLS certificate that does not verify included) or the
/// exchange failed.
pub async fn probe(
    connections: &IdleConnections,
    connect_timeout: Duration,
    mut request: Request<http_body_util::Full<Bytes>>,
) -> Result<Response<Incoming>, Box<dyn std::error::Error + Send + Sync>> {
    let tls = connections.tls.load_full();
    let connected = connect(
        &connections.address,
        connections.protocol,
        tls,
        connect_timeout,
    )
    .await?;
    Ok(match connected {
        Connected::Http1(mut sender) => {
            http1_form(&mut request);
            sender.send_request(request).await?
        }
        Connected::Http2(mut sender) => {
            h2_form(&mut request, connections.protocol.uri_scheme());
            sender.send_request(request).await?
        }
    })
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
    async fn pair(listener: &tokio::net::TcpListener) -> (Sender, tokio::net::TcpStream) {
        let address = listener.local_addr().unwrap().to_string();
        let (sender, accepted) = tokio::join!(
            connect(&address, Protocol::Http1, None, Duration::from_secs(5)),
            listener.accept()
        );
        let Ok(Connected::Http1(sender)) = sender else {
            panic!("an HTTP/1.1 connection")
        };
        (sender, accepted.unwrap().0)
    }

    fn pool_of(address: &str) -> IdleConnections {
        IdleConnections::new(&crate::config::endpoint::parse(address).unwrap())
    }

    #[tokio::test]
    async fn keeps_at_most_max_idle_and_drops_closed_connections() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = pool_of("127.0.0.1:1");
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
        let pool = pool_of("127.0.0.1:1");
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
