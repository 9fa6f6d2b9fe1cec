//! Exchanges a client abandoned (an HTTP/2 stream reset, a client gone
//! mid-body), finished in the background so their upstream connection can
//! serve again instead of being closed — the reason a "rapid reset" costs
//! no upstream connection per stream (SPEC section 11). Bounded three
//! ways: time ([`RESCUE_TIME`]), bytes read off ([`RESCUE_BYTES`]) and
//! rescues at once per endpoint ([`RESCUE_MAX`]); and each holds the
//! caller's slots while it runs, so abandoning requests frees no capacity.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;

use super::{Holder, IdleConnections, SendResult};

/// How long an abandoned exchange may take to finish in the background
/// before its connection is closed instead.
pub const RESCUE_TIME: Duration = Duration::from_secs(2);
/// How much of an abandoned response is read off before closing is the
/// cheaper way out.
pub const RESCUE_BYTES: usize = 256 * 1024;
/// Abandoned exchanges finishing at once per endpoint; more are closed.
pub const RESCUE_MAX: usize = 8;

/// What a rescue holds while it runs: a slot of the tenant's
/// `max_inflight` and the endpoint's in-flight count, as the request did
/// (so abandoning requests frees no capacity and P2C still sees the load),
/// and one of the endpoint's [`RESCUE_MAX`] places.
pub(super) struct Held {
    _slots: Box<dyn Send>,
    connections: Arc<IdleConnections>,
}

impl Held {
    /// `None` when the endpoint already has [`RESCUE_MAX`] rescues running.
    pub(super) fn take(connections: &Arc<IdleConnections>, holder: Holder) -> Option<Held> {
        let rescues = &connections.rescues;
        if rescues.fetch_add(1, Ordering::AcqRel) >= RESCUE_MAX {
            rescues.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Held {
            _slots: holder(),
            connections: Arc::clone(connections),
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.connections.rescues.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Reads `body` to its end within the rescue limits; true when it ended
/// cleanly, so its connection can serve again.
pub(super) async fn drain(mut body: Incoming) -> bool {
    use http_body_util::BodyExt as _;
    let read = async {
        let mut left = RESCUE_BYTES;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Some(data) = frame.data_ref() {
                let Some(rest) = left.checked_sub(data.len()) else {
                    return false;
                };
                left = rest;
            }
        }
        true
    };
    tokio::time::timeout(RESCUE_TIME, read)
        .await
        .unwrap_or(false)
}

/// A send in progress, boxed so that it can outlive its request.
type PendingSend = Pin<Box<dyn Future<Output = SendResult> + Send>>;

/// The wait for a response head that a client may abandon (an HTTP/2 stream
/// reset: the "rapid reset" pattern). Dropped before the head arrived, the
/// exchange goes on in the background, bounded by [`RESCUE_TIME`] and
/// [`RESCUE_BYTES`], and its connection returns to the pool, so a reset
/// costs no upstream connection (SPEC section 11). Only bodiless requests
/// are rescued: a half-sent body cannot be finished for a client that is
/// gone.
pub struct Rescuable {
    exchange: Option<PendingSend>,
    connections: Arc<IdleConnections>,
    holder: Option<Holder>,
}

impl Rescuable {
    /// Wraps `exchange`, a send on `connections`; `holder` makes what a
    /// rescue holds while it runs.
    pub fn new<F>(exchange: F, connections: Arc<IdleConnections>, holder: Holder) -> Rescuable
    where
        F: Future<Output = SendResult> + Send + 'static,
    {
        Rescuable {
            exchange: Some(Box::pin(exchange)),
            connections,
            holder: Some(holder),
        }
    }
}

impl Future for Rescuable {
    type Output = SendResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<SendResult> {
        let Some(exchange) = self.exchange.as_mut() else {
            return Poll::Pending;
        };
        let result = std::task::ready!(exchange.as_mut().poll(cx));
        self.exchange = None;
        Poll::Ready(result)
    }
}

impl Drop for Rescuable {
    fn drop(&mut self) {
        let (Some(exchange), Some(holder)) = (self.exchange.take(), self.holder.take()) else {
            return;
        };
        let Some(held) = Held::take(&self.connections, holder) else {
            return;
        };
        tokio::spawn(async move {
            let answered = tokio::time::timeout(RESCUE_TIME, exchange).await;
            if let Ok(Ok((response, sender))) = answered
                && drain(response.into_body()).await
                && let Some(sender) = sender
            {
                held.connections.put(sender);
            }
            drop(held);
        });
    }
}
