//! The lease of an upstream connection to one exchange: how an HTTP/1.1
//! connection goes back to its endpoint's idle queue only when the response
//! body was read to its end (and the request body had all gone out), or is
//! read off in the background when the client went away (a rescue), and is
//! closed otherwise — the only way back into [`IdleConnections`].

use std::sync::Arc;

use hyper::body::Incoming;

use super::rescue::{Held, drain};
use super::{IdleConnections, Sender, UploadState};

/// A connection lent to one exchange, carried by the response body. It
/// returns to its endpoint's pool only through [`Lease::finished`] (or a
/// successful [`Lease::rescue`]); dropped otherwise, it closes (hyper
/// cannot reuse a half-read response).
pub struct Lease {
    /// The HTTP/1.1 connection; `None` for a stream of the shared HTTP/2
    /// connection, which has nothing to give back.
    sender: Option<Sender>,
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
    /// Lends `sender`, a connection of `connections` (`None`: an HTTP/2
    /// stream), to one exchange.
    pub fn new(
        sender: Option<Sender>,
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
    /// [`RESCUE_BYTES`](super::RESCUE_BYTES) within
    /// [`RESCUE_TIME`](super::RESCUE_TIME)) and keep the connection;
    /// otherwise close it.
    pub fn rescue(mut self, rest: Incoming) {
        let Some(holder) = self.rescuable.take() else {
            return;
        };
        if self.upload.is_some() || self.sender.is_none() {
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
        if let Some(sender) = self.sender {
            self.connections.put(sender);
        }
    }
}
