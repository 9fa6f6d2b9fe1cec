//! A client connection's I/O, timing the head of a kept-alive HTTP/1.1
//! connection's next request from its first byte (SPEC section 11). Only a
//! head that did not arrive whole in one read arms a timer.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::proxy::conn::{ConnState, HEAD_TIMEOUT};

/// A connection's I/O, timing the head of a kept-alive HTTP/1.1
/// connection's next request from its first byte.
pub struct Watched<I> {
    io: I,
    state: Arc<ConnState>,
    /// Requests started when bytes arrived on an idle connection.
    waiting_from: Option<u64>,
    /// Boxed: armed only for a head that did not arrive in one read.
    head_timer: Option<Pin<Box<Sleep>>>,
}

impl<I> Watched<I> {
    /// Watches `io`, the connection `state` belongs to.
    pub fn new(io: I, state: Arc<ConnState>) -> Watched<I> {
        Watched {
            io,
            state,
            waiting_from: None,
            head_timer: None,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        let state = &*this.state;
        if state.is_upgraded() {
            // A tunnel's bytes are not request heads.
            this.head_timer = None;
            return polled;
        }
        let started = state.started.load(Relaxed);
        match polled {
            // Bytes of a next request on an idle HTTP/1.1 connection:
            // remember which request they belong to; no clock yet.
            Poll::Ready(Ok(()))
                if buf.filled().len() > before
                    && this.waiting_from.is_none()
                    && started > 0
                    && state.inflight.load(Relaxed) == 0
                    && !state.http2.load(Relaxed) =>
            {
                this.waiting_from = Some(started);
            }
            Poll::Pending => {
                if let Some(from) = this.waiting_from {
                    if started != from || state.inflight.load(Relaxed) != 0 {
                        // The head arrived: nothing to time.
                        this.waiting_from = None;
                        this.head_timer = None;
                    } else {
                        // The head did not come whole: 10 s from now.
                        let timer = this
                            .head_timer
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep(HEAD_TIMEOUT)));
                        if timer.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "request head not complete within 10 s of its first byte",
                            )));
                        }
                    }
                }
            }
            _ => {}
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
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

    /// A connection being parked (`served`) keeps its socket open: hyper
    /// ends its connection, but the client's is not closed.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.state.parking.load(Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A socket that can say when it has bytes (or an end) to read, without
/// reading: how a parked connection waits with no buffer.
pub trait ReadReady {
    /// Ready when a read would not block (data, end of stream or an error).
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl ReadReady for tokio::net::TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::TcpStream::poll_read_ready(self, cx)
    }
}

/// rustls reads whole records ahead of the reader; a parked connection's
/// reader had read until the socket had nothing more, so the socket's
/// readiness is the connection's.
impl ReadReady for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().0.poll_read_ready(cx)
    }
}

impl<I: ReadReady> ReadReady for Watched<I> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.poll_read_ready(cx)
    }
}
