//! Listeners and connections: accept, TLS, pick HTTP/1.1 or HTTP/2, serve,
//! drain.
//!
//! hyper-util's `auto` builder serves HTTP/1.1 and HTTP/2 (h2c with prior
//! knowledge on the plain listener, ALPN on the TLS one) with upgrades; its
//! `GracefulShutdown` lets open connections finish their requests when the
//! process drains. Upgraded connections (WebSocket) have left hyper by then,
//! so they are counted in `Tunnels` and waited for separately.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, watch};
use tokio_rustls::TlsAcceptor;

use crate::proxy::{ConnInfo, Proxy};

/// A request head must arrive whole within this time (SPEC section 11); a
/// TLS handshake too.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head accepted; beyond it the client gets 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// HTTP/2 streams one client connection may have open at once.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
/// HTTP/2 streams a client may reset before being sent `GOAWAY` (the
/// "rapid reset" attack, CVE-2023-44487); hyper's default, set explicitly.
pub const MAX_PENDING_RESET_STREAMS: usize = 20;
/// How long a draining listener's last accepted connections get to send
/// their first request before idle connections are closed.
const ACCEPT_LINGER: Duration = Duration::from_millis(500);
/// Queued connections a listener holds before the kernel refuses more.
const BACKLOG: u32 = 4096;

/// `tls`: hyper's own advice — TLS streams write vectors poorly, so the
/// response head and a small body are copied into one buffer instead.
fn builder(tls: bool) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .writev(!tls)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(MAX_PENDING_RESET_STREAMS)
        .max_header_list_size(MAX_HEAD_BYTES as u32);
    b
}

/// Binds a listener with `SO_REUSEPORT`, so a new turnout can bind the same
/// address while the old one drains (see README, zero-downtime restarts).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// How connections of a listener start.
#[derive(Clone)]
pub enum Transport {
    Plain,
    Tls(TlsAcceptor),
}

/// Upgraded connections still open, for the drain to wait on.
#[derive(Default)]
pub struct Tunnels {
    open: AtomicUsize,
    closed: Notify,
}

impl Tunnels {
    /// Counts a tunnel open until the guard drops.
    pub fn open(self: &Arc<Self>) -> TunnelGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        TunnelGuard(Arc::clone(self))
    }

    pub fn count(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Resolves when no tunnel is open.
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

pub struct TunnelGuard(Arc<Tunnels>);

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

/// Accepts connections until `stop` turns true, serving each with `handler`;
/// then waits up to `drain` for open connections (and tunnels) to finish.
pub async fn serve<H, F, B>(
    listener: TcpListener,
    transport: Transport,
    handler: H,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
    tunnels: Option<Arc<Tunnels>>,
) where
    H: Fn(Request<Incoming>, ConnInfo) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = Arc::new(builder(matches!(transport, Transport::Tls(_))));
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let _ = stream.set_nodelay(true);
        let (builder, handler, transport, watcher) = (
            Arc::clone(&builder),
            handler.clone(),
            transport.clone(),
            graceful.watcher(),
        );
        tokio::spawn(async move {
            let result = match transport {
                Transport::Plain => {
                    let info = ConnInfo::new(peer, false, None);
                    serve_connection(&builder, stream, info, handler, watcher).await
                }
                Transport::Tls(acceptor) => match handshake(&acceptor, stream).await {
                    Ok((tls, sni)) => {
                        let info = ConnInfo::new(peer, true, sni);
                        serve_connection(&builder, tls, info, handler, watcher).await
                    }
                    Err(e) => Err(e),
                },
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let drained = async {
        // Connections accepted just before the listener closed may not have
        // had their request read yet, and hyper's graceful shutdown closes a
        // connection that is between requests. Let those requests arrive.
        tokio::time::sleep(ACCEPT_LINGER).await;
        graceful.shutdown().await;
        if let Some(t) = &tunnels {
            t.all_closed().await;
        }
    };
    if tokio::time::timeout(drain, drained).await.is_err() {
        tracing::warn!(?drain, "drain timeout passed with connections still open");
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, Option<Arc<str>>), BoxError> {
    let tls = tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream))
        .await
        .map_err(|_| "TLS handshake timed out")??;
    let sni = tls.get_ref().1.server_name().map(Arc::from);
    Ok((tls, sni))
}

async fn serve_connection<I, H, F, B>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    info: ConnInfo,
    handler: H,
    watcher: hyper_util::server::graceful::Watcher,
) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>, ConnInfo) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let service = service_fn(move |req| Infallibly {
        inner: handler(req, info.clone()),
    });
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    watcher.watch(conn).await
}

pin_project_lite::pin_project! {
    /// A handler's future as the `Result` hyper's services return. Not an
    /// `async` block: that would hold the handler's future twice (as captured
    /// value and as awaitee), and hyper moves the whole future once per
    /// request.
    struct Infallibly<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for Infallibly<F> {
    type Output = Result<F::Output, Infallible>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.project().inner.poll(cx).map(Ok)
    }
}

/// Resolves once `stop` turns true or its sender is gone.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves the proxy's data plane on `listener`.
pub async fn serve_proxy(
    listener: TcpListener,
    transport: Transport,
    proxy: Arc<Proxy>,
    stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let tunnels = Arc::clone(&proxy.tunnels);
    let handler = move |req, info: ConnInfo| Arc::clone(&proxy).handle(req, info);
    serve(listener, transport, handler, stop, drain, Some(tunnels)).await;
}
