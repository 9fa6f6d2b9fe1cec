//! One client connection as hyper serves it, and parked while it idles.
//!
//! hyper's HTTP/1.1 connection holds an 8 KiB read buffer and an 8 KiB
//! write buffer for its whole life, idle or not; with the task around it
//! an idle keep-alive client cost about 28 KiB (`benches/memory.sh`),
//! against nginx's ~1 KiB (nginx frees a request's buffers when it ends
//! and keeps a small one while the connection idles). So an HTTP/1.1
//! connection idle for [`PARK_AFTER`] is *parked*: hyper's connection is
//! ended without closing the socket (its buffers go), and the socket alone
//! waits for the client's next bytes; then a new hyper connection serves
//! them. Under load a connection never idles that long, so parking costs
//! nothing per request.
//!
//! The phases: `Detect` reads the first bytes to tell HTTP/2's preface
//! (h2c with prior knowledge, or h2 over TLS) from HTTP/1.1, as hyper-util's
//! `auto` builder does; `Http1` / `Http2` are hyper's connections (boxed,
//! so a parked connection's task is small); `Parked` holds the socket
//! alone. Bytes read but not yet consumed — the detected preface, or a
//! partial head hyper had read when it was parked — are handed to the next
//! phase through [`Replay`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::conn::{BoxError, Served};
use super::watched::{ReadReady, Watched};
use crate::proxy::conn::ConnState;

/// How long an HTTP/1.1 connection idles before it is parked. Long enough
/// that a connection under load never parks (one re-arm of its timer a
/// second), short enough that idle clients cost little soon after.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// The HTTP/2 connection preface (RFC 9113 section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// hyper's two connection builders, configured once per listener.
pub struct Builders {
    /// HTTP/1.1.
    pub http1: http1::Builder,
    /// HTTP/2 (h2c with prior knowledge, or h2 after TLS).
    pub http2: http2::Builder<TokioExecutor>,
}

/// A connection's I/O with bytes to hand back before reading more: the
/// bytes read to detect the protocol, or what hyper had read and not used
/// when its connection was parked.
pub struct Replay<I> {
    prefix: Bytes,
    io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Replay<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Replay<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

type Io<I> = TokioIo<Replay<Watched<I>>>;

enum Phase<I, S>
where
    S: HttpService<Incoming>,
{
    Detect {
        io: Replay<Watched<I>>,
        read: [u8; 24],
        filled: usize,
    },
    Http1(Pin<Box<http1::UpgradeableConnection<Io<I>, S>>>),
    Http2(Pin<Box<http2::Connection<Io<I>, S, TokioExecutor>>>),
    Parked(Replay<Watched<I>>),
    /// Between phases, or over.
    Ended,
}

/// A client connection served by hyper, parked while it idles (see the
/// module doc). Resolves when the connection is over.
pub struct Connection<I, S>
where
    S: HttpService<Incoming>,
{
    phase: Phase<I, S>,
    builders: Arc<Builders>,
    service: S,
    state: Arc<ConnState>,
    /// `park` was called and the HTTP/1.1 connection is ending for it.
    parking: bool,
    /// `shut_down_gracefully` was called: no new phase starts.
    closing: bool,
    /// `turnout_client_connections{state="parked"}`, when counted.
    parked_gauge: Option<Gauge>,
}

impl<I, S> Connection<I, S>
where
    S: HttpService<Incoming>,
{
    /// Serves `io` (the connection `state` belongs to) with `service`,
    /// counting it in `parked_gauge` while it is parked.
    pub fn new(
        io: Watched<I>,
        builders: Arc<Builders>,
        service: S,
        state: Arc<ConnState>,
        parked_gauge: Option<Gauge>,
    ) -> Connection<I, S> {
        Connection {
            phase: Phase::Detect {
                io: Replay {
                    prefix: Bytes::new(),
                    io,
                },
                read: [0; 24],
                filled: 0,
            },
            builders,
            service,
            state,
            parking: false,
            closing: false,
            parked_gauge,
        }
    }

    /// Enters or leaves the parked phase's bookkeeping (idempotent).
    fn set_parked(&mut self, parked: bool) {
        if self.state.parked.load(Relaxed) == parked {
            return;
        }
        if parked {
            self.state.parked.store(true, Relaxed);
            // Its requests' shared timer (`proxy::timer`) is made again
            // by the next request.
            self.state.timer.release();
        } else {
            self.state.unparked();
        }
        if let Some(g) = &self.parked_gauge {
            if parked {
                g.increment(1.0);
            } else {
                g.decrement(1.0);
            }
        }
    }
}

impl<I, S> Drop for Connection<I, S>
where
    S: HttpService<Incoming>,
{
    fn drop(&mut self) {
        self.set_parked(false);
    }
}

impl<I, S, B> Connection<I, S>
where
    I: AsyncRead + AsyncWrite + ReadReady + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B> + Clone + Unpin + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    fn http1(&self, io: Replay<Watched<I>>) -> Phase<I, S> {
        let conn = self
            .builders
            .http1
            .serve_connection(TokioIo::new(io), self.service.clone())
            .with_upgrades();
        Phase::Http1(Box::pin(conn))
    }

    /// Reads until the first bytes tell HTTP/2's preface from anything
    /// else; `Ok(None)` when the client closed before sending a byte.
    fn poll_detect(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Phase<I, S>>>> {
        let Phase::Detect { io, read, filled } = &mut self.phase else {
            unreachable!("poll_detect outside the detection phase");
        };
        let h2 = loop {
            let mut buf = ReadBuf::new(&mut read[*filled..]);
            ready!(Pin::new(&mut *io).poll_read(cx, &mut buf))?;
            let n = buf.filled().len();
            if n == 0 {
                return Poll::Ready(Ok(None));
            }
            *filled += n;
            let h2 = read[..*filled] == H2_PREFACE[..*filled];
            if !h2 || *filled == H2_PREFACE.len() {
                break h2;
            }
        };
        let Phase::Detect {
            mut io,
            read,
            filled,
        } = std::mem::replace(&mut self.phase, Phase::Ended)
        else {
            unreachable!("the detection phase was just polled");
        };
        io.prefix = Bytes::copy_from_slice(&read[..filled]);
        Poll::Ready(Ok(Some(if h2 {
            let conn = self
                .builders
                .http2
                .serve_connection(TokioIo::new(io), self.service.clone());
            Phase::Http2(Box::pin(conn))
        } else {
            self.http1(io)
        })))
    }

    /// The HTTP/1.1 phase ended for parking: takes hyper's connection apart
    /// and keeps the socket, with any bytes hyper had read and not used.
    fn unpark_or_park(&mut self) -> Phase<I, S> {
        let Phase::Http1(conn) = std::mem::replace(&mut self.phase, Phase::Ended) else {
            unreachable!("parking outside the HTTP/1.1 phase");
        };
        self.parking = false;
        self.state.parking.store(false, Relaxed);
        let Some(parts) = Pin::into_inner(conn).into_parts() else {
            // Upgraded: the tunnel owns the socket now.
            return Phase::Ended;
        };
        let mut io = parts.io.into_inner();
        if !parts.read_buf.is_empty() {
            // A head had begun: serve it at once, nothing to park.
            let mut prefix = BytesMut::from(&parts.read_buf[..]);
            prefix.extend_from_slice(&io.prefix);
            io.prefix = prefix.freeze();
            return self.http1(io);
        }
        if !io.prefix.is_empty() {
            return self.http1(io);
        }
        self.set_parked(true);
        Phase::Parked(io)
    }
}

impl<I, S, B> Future for Connection<I, S>
where
    I: AsyncRead + AsyncWrite + ReadReady + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B> + Clone + Unpin + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            let next = match &mut this.phase {
                Phase::Detect { .. } => match ready!(this.poll_detect(cx))? {
                    Some(phase) => phase,
                    None => return Poll::Ready(Ok(())),
                },
                Phase::Http1(conn) => {
                    ready!(conn.as_mut().poll(cx))?;
                    if !this.parking || this.closing {
                        return Poll::Ready(Ok(()));
                    }
                    this.unpark_or_park()
                }
                Phase::Http2(conn) => return conn.as_mut().poll(cx).map_err(Into::into),
                Phase::Parked(io) => {
                    ready!(io.io.poll_read_ready(cx))?;
                    let Phase::Parked(io) = std::mem::replace(&mut this.phase, Phase::Ended) else {
                        unreachable!("the parked phase was just polled");
                    };
                    this.set_parked(false);
                    this.http1(io)
                }
                Phase::Ended => return Poll::Ready(Ok(())),
            };
            this.phase = next;
        }
    }
}

impl<I, S, B> Served for Connection<I, S>
where
    I: AsyncRead + AsyncWrite + ReadReady + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B> + Clone + Unpin + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    fn shut_down_gracefully(self: Pin<&mut Self>) {
        let this = self.get_mut();
        this.closing = true;
        match &mut this.phase {
            Phase::Http1(conn) => {
                // A parking connection must close now after all.
                this.state.parking.store(false, Relaxed);
                conn.as_mut().graceful_shutdown();
            }
            Phase::Http2(conn) => conn.as_mut().graceful_shutdown(),
            // Nothing in flight: over at the next poll.
            Phase::Detect { .. } | Phase::Parked(_) | Phase::Ended => {
                this.set_parked(false);
                this.phase = Phase::Ended;
            }
        }
    }

    fn park(self: Pin<&mut Self>) {
        let this = self.get_mut();
        if this.closing || this.parking {
            return;
        }
        if let Phase::Http1(conn) = &mut this.phase {
            // hyper ends an idle connection at once; `Watched` keeps the
            // socket open instead of shutting it down.
            this.parking = true;
            this.state.parking.store(true, Relaxed);
            conn.as_mut().graceful_shutdown();
        }
    }
}
