//! Upstream HTTP/1.1 connections and their keep-alive pool.
//!
//! Each endpoint keeps its idle connections in a lock-free queue. A request
//! takes one (or opens one), sends on it with hyper's `client::conn::http1`,
//! and the connection goes back to the queue when the response body has been
//! read to its end — no shared pool map, no lock and no task spawned per
//! request (hyper-util's pooled client did all three; see
//! benches/RESULTS.md). A response cut short closes its connection, as nginx
//! does.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_queue::SegQueue;
use http::{Request, Response};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::route::Endpoint;

/// A request body on its way upstream: the client's stream, or nothing for a
/// bodiless request (which can then be sent again on a retry).
pub type UpstreamBody = Either<Incoming, Empty<Bytes>>;

pub type Sender = http1::SendRequest<UpstreamBody>;

/// How long an idle upstream connection is kept for reuse (nginx's upstream
/// `keepalive_timeout` default).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Idle connections kept per endpoint; more are closed when they come back.
pub const MAX_IDLE: usize = 256;

/// Why no response came back.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened: nothing was sent, and the request
    /// comes back for a retry elsewhere.
    Connect(std::io::Error, Box<Request<UpstreamBody>>),
    /// The exchange failed after the connection was up.
    Exchange(hyper::Error),
}

struct Idle {
    sender: Sender,
    since: Instant,
}

/// The idle keep-alive connections of one endpoint.
#[derive(Default)]
pub struct IdlePool {
    idle: SegQueue<Idle>,
    /// Entries in `idle`, kept apart because `SegQueue::len` is not cheap.
    count: AtomicUsize,
}

impl std::fmt::Debug for IdlePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdlePool")
            .field("idle", &self.count.load(Ordering::Relaxed))
            .finish()
    }
}

impl IdlePool {
    /// The oldest idle connection that is still open and fresh.
    fn take(&self) -> Option<Sender> {
        while let Some(idle) = self.idle.pop() {
            self.count.fetch_sub(1, Ordering::Relaxed);
            if !idle.sender.is_closed() && idle.since.elapsed() < IDLE_TIMEOUT {
                return Some(idle.sender);
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
            if !idle.sender.is_closed() && idle.since.elapsed() < IDLE_TIMEOUT {
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
/// returns to its endpoint's pool only through [`Lease::finished`]; dropped
/// otherwise, it closes (hyper cannot reuse a half-read response).
pub struct Lease {
    sender: Sender,
    endpoint: Arc<Endpoint>,
}

impl Lease {
    pub fn new(sender: Sender, endpoint: Arc<Endpoint>) -> Lease {
        Lease { sender, endpoint }
    }

    /// The response body ended cleanly: the connection can serve again.
    pub fn finished(self) {
        self.endpoint.connections.put(self.sender);
    }
}

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

/// Sends `request` on an idle connection of `pool` or a new one to
/// `address`. A reused connection that turns out to be closed before the
/// request went out is replaced by a new one, once.
pub async fn send(
    pool: &IdlePool,
    address: &str,
    connect_timeout: Duration,
    mut request: Request<UpstreamBody>,
) -> Result<(Response<Incoming>, Sender), SendError> {
    let mut reused = pool.take();
    loop {
        let fresh = reused.is_none();
        let mut sender = match reused.take() {
            Some(s) => s,
            // Boxed: connecting is rare, and its future would otherwise
            // make every request's future larger.
            None => match Box::pin(connect(address, connect_timeout)).await {
                Ok(s) => s,
                Err(e) => return Err(SendError::Connect(e, Box::new(request))),
            },
        };
        if let Err(e) = sender.ready().await {
            if fresh {
                return Err(SendError::Exchange(e));
            }
            continue;
        }
        match sender.try_send_request(request).await {
            Ok(response) => return Ok((response, sender)),
            Err(mut e) => match e.take_message() {
                Some(unsent) if !fresh => request = unsent,
                _ => return Err(SendError::Exchange(e.into_error())),
            },
        }
    }
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
        let pool = IdlePool::default();
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
        let pool = IdlePool::default();
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
        assert!(!taken.is_closed());
        assert!(pool.take().is_none());
    }
}
