//! `GET /v1/events/stream`: the event log live, as Server-Sent Events (the
//! HTML Living Standard's `text/event-stream`).
//!
//! Each event is one SSE message: `id:` is its `seq`, `data:` the same JSON
//! object `GET /v1/events` lists. A client reconnecting with
//! `Last-Event-ID: N` first gets the kept events after `N`, then the live
//! ones; without it, only events recorded from now on. A comment line is
//! sent every [`HEARTBEAT`] so proxies and load balancers in between do not
//! close a quiet stream, and a dead client is noticed.
//!
//! Shape: one small task per client reads the log's broadcast channel
//! ([`crate::control::EventLog::subscribe`]) and writes formatted messages
//! into a bounded channel that the response body drains. The control task
//! only ever does a non-blocking `broadcast::send`; a client that does not
//! read fills its own small buffer, its task waits, and its broadcast
//! receiver lags — then it catches up from the kept history by `seq`, a
//! chunk at a time, so it loses nothing the history still holds, holds up
//! no one, and holds little memory. When it is more than the history
//! behind, it is sent a `gap` event.
//!
//! Auth is the API's own: the reader role of `GET /v1/events` (a token's
//! scope filters the events). The token is checked again before each
//! event, so a token removed from the control file ends its streams.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body::Frame;
use tokio::sync::{broadcast, mpsc};

use super::ApiError;
use super::auth::{self, Caller};
use crate::control::{Event, Published};
use crate::route::RoutingTable;

/// How often a quiet stream gets a comment line.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// Formatted messages buffered per client between its task and its
/// connection; past this the client's task waits (and may lag).
const CLIENT_BUFFER: usize = 16;
/// Streams open at once; more get 503 (each holds a task and a buffer).
pub const MAX_STREAMS: usize = 256;
/// Events read from the history at a time while a client catches up, so
/// a lagging client holds at most this many besides its buffer.
const CATCH_UP_CHUNK: usize = 64;
/// What an `EventSource` waits before reconnecting, in milliseconds.
const RETRY_MS: u64 = 2000;

/// The count of open streams, for [`MAX_STREAMS`].
#[derive(Default)]
pub struct Streams(Arc<AtomicUsize>);

/// One open stream's place in [`Streams`]; gives it back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Streams {
    fn take(&self) -> Option<Slot> {
        let taken = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < MAX_STREAMS).then_some(n + 1)
            });
        taken.is_ok().then(|| Slot(Arc::clone(&self.0)))
    }
}

/// The body of a stream: the messages its task formats, as they come. It
/// ends when the task does (the token was revoked); dropping it (the client
/// went away) ends the task.
pub struct EventStream {
    messages: mpsc::Receiver<Bytes>,
}

impl http_body::Body for EventStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.messages
            .poll_recv(cx)
            .map(|m| m.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// What a stream was asked for.
pub struct StreamRequest {
    /// Only this tenant's events (already checked against the caller).
    pub tenant: Option<String>,
    /// The caller's `Authorization` value, checked again before each event.
    pub authorization: Option<Vec<u8>>,
}

/// The `Last-Event-ID` header (HTML Living Standard, server-sent events),
/// which a reconnecting client sends: the `seq` of the last event it got.
pub fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .map(str::trim)
        .and_then(|v| v.parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "Last-Event-ID must be the seq of an event (a whole number)",
            )
        })
}

/// Opens a stream: the response head, and its task started. `resume` is
/// the `Last-Event-ID`; one newer than any event recorded (the process
/// restarted and numbers from 1 again) replays every kept event.
pub fn open(
    published: &Arc<Published>,
    table: &Arc<ArcSwap<RoutingTable>>,
    streams: &Streams,
    request: StreamRequest,
    resume: Option<u64>,
) -> Result<Response<EventStream>, ApiError> {
    let slot = streams.take().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_STREAMS} event streams are open already"),
        )
    })?;
    // Subscribed first: whatever is recorded from here on reaches the live
    // receiver (or makes it lag), so reading the history after it misses
    // nothing; the feed passes each seq on once.
    let (live, after) = {
        let log = published.events();
        let after = match resume {
            Some(seq) if seq <= log.last_seq() => seq,
            Some(_) => 0,
            None => log.last_seq(),
        };
        (log.subscribe(), after)
    };
    let (tx, rx) = mpsc::channel(CLIENT_BUFFER);
    let first = format!("retry: {RETRY_MS}\n: turnout events\n\n");
    // The channel is new and empty: the first message always fits.
    let _ = tx.try_send(Bytes::from(first));
    let feed = Feed {
        request,
        table: Arc::clone(table),
        published: Arc::clone(published),
        last: after,
        catching_up: resume.is_some(),
        backlog: VecDeque::with_capacity(CATCH_UP_CHUNK),
        tx,
        _slot: slot,
    };
    tokio::spawn(feed.run(live));
    let mut resp = Response::new(EventStream { messages: rx });
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx in front would otherwise buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// One client's task.
struct Feed {
    request: StreamRequest,
    table: Arc<ArcSwap<RoutingTable>>,
    published: Arc<Published>,
    /// The seq of the last event passed on (sent or filtered out).
    last: u64,
    /// Reading the history (from `last`, a chunk at a time) rather than
    /// the live receiver: after a resume, or once it lagged.
    catching_up: bool,
    /// The chunk of the history being passed on.
    backlog: VecDeque<Event>,
    tx: mpsc::Sender<Bytes>,
    _slot: Slot,
}

/// Why a feed stopped.
struct Closed;

impl Feed {
    async fn run(mut self, mut live: broadcast::Receiver<Event>) {
        let start = tokio::time::Instant::now() + HEARTBEAT;
        let mut heartbeat = tokio::time::interval_at(start, HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.catching_up {
                // The live receiver waits (and may lag again) meanwhile:
                // its events are passed on in seq order, never before the
                // older ones still in the history.
                if self.catch_up().await.is_err() {
                    return;
                }
                continue;
            }
            tokio::select! {
                () = self.tx.closed() => return,
                _ = heartbeat.tick() => {
                    // A client with messages pending needs no heartbeat.
                    if let Err(mpsc::error::TrySendError::Closed(_)) =
                        self.tx.try_send(Bytes::from_static(b": heartbeat\n\n"))
                    {
                        return;
                    }
                }
                got = live.recv() => match got {
                    Ok(event) => {
                        if self.pass(&event).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, after = self.last, "an event stream client fell behind; catching up from the history");
                        self.catching_up = true;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    /// Passes on the next chunk of the history after `last`; the catch-up
    /// is over when a chunk comes back short. Tells the client of a gap
    /// when the history no longer reaches back to `last`.
    async fn catch_up(&mut self) -> Result<(), Closed> {
        let (chunk, whole) = self.published.events().since(self.last, CATCH_UP_CHUNK);
        if !whole {
            self.gap(self.last).await?;
        }
        self.catching_up = chunk.len() == CATCH_UP_CHUNK;
        self.backlog.extend(chunk);
        while let Some(event) = self.backlog.pop_front() {
            self.pass(&event).await?;
        }
        Ok(())
    }

    /// Sends `event` if the caller (as its token stands now) may see it
    /// and it is new to this stream.
    async fn pass(&mut self, event: &Event) -> Result<(), Closed> {
        if event.seq <= self.last {
            return Ok(());
        }
        self.last = event.seq;
        let caller = self.caller()?;
        let wanted = match (&self.request.tenant, &event.tenant) {
            (Some(only), Some(t)) => only == t,
            (Some(_), None) => false,
            (None, Some(t)) => caller.may_touch(t),
            (None, None) => true,
        };
        if !wanted {
            return Ok(());
        }
        let data = serde_json::to_string(event).map_err(|_| Closed)?;
        let message = format!("id: {}\ndata: {data}\n\n", event.seq);
        self.tx.send(Bytes::from(message)).await.map_err(|_| Closed)
    }

    /// Tells the client that the events after `after` up to the oldest
    /// kept one are gone: it should re-read the state it shows.
    async fn gap(&mut self, after: u64) -> Result<(), Closed> {
        let message = format!("event: gap\ndata: {{\"after\":{after}}}\n\n");
        self.tx.send(Bytes::from(message)).await.map_err(|_| Closed)
    }

    /// The caller by the current token table; `Closed` once the token is
    /// refused, or no longer covers the stream's tenant.
    fn caller(&self) -> Result<Caller, Closed> {
        let table = self.table.load();
        let caller =
            auth::authenticate(&table.config.tokens, self.request.authorization.as_deref())
                .map_err(|_| Closed)?;
        match &self.request.tenant {
            Some(t) if !caller.may_touch(t) => Err(Closed),
            _ => Ok(caller),
        }
    }
}
