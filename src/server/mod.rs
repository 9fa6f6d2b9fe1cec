//! Listeners and connections: accept, TLS, pick HTTP/1.1 or HTTP/2, serve,
//! drain.
//!
//! hyper serves HTTP/1.1 (with upgrades) and HTTP/2 (h2c with prior
//! knowledge on the plain listener, h2 on the TLS one), told apart by the
//! first bytes (`served`, which also parks idle HTTP/1.1 connections). Each
//! connection is driven by `conn::drive`, which bounds what a client can
//! hold (SPEC section 11) and shuts it down gracefully when the process
//! drains. Open connections and upgraded tunnels (WebSocket), which leave
//! hyper once upgraded, are counted so the drain can wait for both.

pub mod conn;
pub mod served;
pub mod tls;
pub mod watched;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::metrics::ConnectionGauges;
use crate::metrics::{LocalError, Metrics};
use crate::proxy::Proxy;
pub use crate::proxy::conn::HEAD_TIMEOUT as HEADER_READ_TIMEOUT;
use crate::proxy::conn::{ConnInfo, ConnState, OpenCount};
pub use crate::proxy::conn::{OpenGuard, TunnelGuard, Tunnels};
use conn::Counted;
use served::Builders;
use watched::{ReadReady, Watched};

/// The largest request head accepted; beyond it the client gets 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// HTTP/2 streams one client connection may have open at once.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
/// HTTP/2 streams a client may reset before being sent `GOAWAY` (the
/// "rapid reset" attack, CVE-2023-44487); hyper's default, set explicitly.
/// It counts resets of streams not yet handed to turnout; those reset
/// after are judged by `conn` (Envoy's premature-reset rule).
pub const MAX_PENDING_RESET_STREAMS: usize = 20;
/// Queued connections a listener holds before the kernel refuses more.
const BACKLOG: u32 = 4096;
/// The longest pause of the accept loop after the process ran out of file
/// descriptors (or memory); it starts at 10 ms and doubles.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// `tls`: hyper's own advice — TLS streams write vectors poorly, so the
/// response head and a small body are copied into one buffer instead.
fn builder(tls: bool) -> Builders {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .writev(!tls)
        .timer(TokioTimer::new())
        // hyper's timer would also run while a kept-alive connection idles,
        // closing it after 10 s; `conn::Watched` times heads from their
        // first byte instead (SPEC section 11).
        .header_read_timeout(None)
        // A client that sends its request and then shuts its writing side
        // (`shutdown(SHUT_WR)`) still gets the response.
        .half_close(true)
        .max_buf_size(MAX_HEAD_BYTES);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(MAX_PENDING_RESET_STREAMS)
        .max_header_list_size(MAX_HEAD_BYTES as u32);
    Builders { http1, http2 }
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
    /// HTTP/1.1 and h2c.
    Plain,
    /// TLS first, then HTTP/1.1 or HTTP/2 by ALPN.
    Tls(TlsAcceptor),
}

/// How a listener's connections are served.
#[derive(Clone)]
pub struct ServeSettings {
    /// How long open connections get to finish once the listener stops;
    /// zero closes them at once (the admin API).
    pub drain: Duration,
    /// `[listen] idle_timeout`.
    pub idle_timeout: Duration,
    /// Where accept failures of the process's own making are counted.
    pub metrics: Option<Arc<Metrics>>,
    /// Where the listener's client connections are counted (the proxy's
    /// listeners; not the admin API's).
    pub connections: Option<crate::metrics::ConnectionGauges>,
}

/// Accepts connections until `stop` turns true, serving each with `handler`;
/// then waits up to `settings.drain` for open connections (and tunnels) to
/// finish. When the process is out of file descriptors, the accept loop
/// pauses (10 ms, doubling up to 1 s) and counts the failure as a local
/// error; it resumes as soon as descriptors are free again.
pub async fn serve<H, F, B>(
    listener: TcpListener,
    transport: Transport,
    handler: H,
    mut stop: watch::Receiver<bool>,
    settings: ServeSettings,
    tunnels: Option<Arc<Tunnels>>,
) where
    H: Fn(Request<Incoming>, ConnInfo) -> F + Clone + Unpin + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builders = Arc::new(builder(matches!(transport, Transport::Tls(_))));
    let connections = Arc::new(OpenCount::default());
    let mut backoff = Duration::ZERO;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => {
                    backoff = Duration::ZERO;
                    pair
                }
                Err(e) => {
                    let local = LocalError::of(&e);
                    if let (Some(reason), Some(m)) = (local, &settings.metrics) {
                        m.local_error(reason);
                    }
                    backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_BACKOFF);
                    if backoff == Duration::from_millis(10) {
                        tracing::warn!(error = %e, "accept failed; pausing the listener");
                    }
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let _ = stream.set_nodelay(true);
        if let Some(g) = &settings.connections {
            g.open.increment(1.0);
        }
        let accepted = Accepted {
            peer,
            builders: Arc::clone(&builders),
            handler: handler.clone(),
            idle_timeout: settings.idle_timeout,
            gauges: settings.connections.clone(),
            stop: stop.clone(),
            _open: connections.open(),
        };
        // One task per connection, its future as small as its transport
        // needs: a parked plain connection's task holds no TLS state.
        match &transport {
            Transport::Plain => {
                tokio::spawn(accepted.serve_plain(stream));
            }
            Transport::Tls(acceptor) => {
                tokio::spawn(accepted.serve_tls(acceptor.clone(), stream));
            }
        }
    }
    drop(listener);
    let drained = async {
        connections.all_closed().await;
        if let Some(t) = &tunnels {
            t.all_closed().await;
        }
    };
    if tokio::time::timeout(settings.drain, drained).await.is_err() && !settings.drain.is_zero() {
        let open = connections.count() + tunnels.as_ref().map_or(0, |t| t.count());
        tracing::warn!(drain = ?settings.drain, open, "drain timeout passed with connections still open");
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An accepted client connection and what serving it needs.
struct Accepted<H> {
    peer: SocketAddr,
    builders: Arc<Builders>,
    handler: H,
    idle_timeout: Duration,
    gauges: Option<ConnectionGauges>,
    stop: watch::Receiver<bool>,
    /// Counts the connection open until it is over.
    _open: OpenGuard,
}

impl<H, F, B> Accepted<H>
where
    H: Fn(Request<Incoming>, ConnInfo) -> F + Clone + Unpin + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    async fn serve_plain(self, stream: TcpStream) {
        let state = ConnState::new();
        let info = ConnInfo::new(self.peer, false, None, Arc::clone(&state));
        let io = Watched::new(stream, state);
        self.serve(io, info).await;
    }

    async fn serve_tls(self, acceptor: TlsAcceptor, stream: TcpStream) {
        // Boxed: the handshake's state is not kept for the connection's life.
        match Box::pin(handshake(&acceptor, stream)).await {
            Ok((tls, sni)) => {
                let state = ConnState::new();
                let info = ConnInfo::new(self.peer, true, sni, Arc::clone(&state));
                let io = Watched::new(tls, state);
                self.serve(io, info).await;
            }
            Err(e) => self.ended(Err(e)),
        }
    }

    async fn serve<I>(self, io: Watched<I>, info: ConnInfo)
    where
        I: AsyncRead + AsyncWrite + ReadReady + Unpin + Send + 'static,
    {
        let state = Arc::clone(&info.state);
        let handler = self.handler.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let guard = info.state.request(req.version() == http::Version::HTTP_2);
            Counted::new(handler(req, info.clone()), guard)
        });
        let parked = self.gauges.as_ref().map(|g| g.parked.clone());
        let conn = served::Connection::new(
            io,
            Arc::clone(&self.builders),
            service,
            Arc::clone(&state),
            parked,
        );
        let stop = self.stop.clone();
        let result = conn::drive(
            conn,
            &state,
            self.idle_timeout,
            Some(served::PARK_AFTER),
            stop,
        )
        .await;
        self.ended(result);
    }

    fn ended(self, result: Result<(), BoxError>) {
        if let Err(e) = result {
            tracing::debug!(error = %e, peer = %self.peer, "connection ended with an error");
        }
        if let Some(g) = &self.gauges {
            g.open.decrement(1.0);
        }
    }
}

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
    settings: ServeSettings,
) {
    let tunnels = Arc::clone(&proxy.tunnels);
    let handler = move |req, info: ConnInfo| Arc::clone(&proxy).handle(req, info);
    serve(listener, transport, handler, stop, settings, Some(tunnels)).await;
}
