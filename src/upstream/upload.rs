//! The client's request body on its way upstream, and how its upload is
//! going: what decides whether a connection can serve again and whose
//! fault a failed exchange is (SPEC section 6).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use hyper::body::Incoming;

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
    /// connection's [`Lease`](super::Lease) read.
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
