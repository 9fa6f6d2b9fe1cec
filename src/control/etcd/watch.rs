//! The fleet's watch: one etcd watch over the whole prefix.
//!
//! A change of a tenant key becomes a reload of the control task (which
//! reads every key at one revision: nothing is ever skipped, and a burst
//! of changes is one reload); an event key is recorded into the local
//! history, so `GET /v1/events` on any replica shows the fleet's. The watch
//! resumes from the last revision it handled + 1; if etcd compacted that
//! revision away, it re-reads the history and reloads the whole state.
//!
//! A dead or frozen etcd is noticed within a few seconds: HTTP/2
//! keep-alive on the channel, and a progress request every second that
//! must be answered within [`SILENCE`]. It then reconnects with jittered,
//! doubling backoff; every (re)connection reloads, so a replica catches up
//! (and commits a revert held while etcd was away) as soon as it is back.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, SortOrder, SortTarget, WatchOptions};
use tokio::sync::Notify;

use super::Link;
use super::keys::{Keys, WireEvent};
use crate::control::events::EVENTS_KEPT;
use crate::control::{Change, Control, Origin};

/// A progress request is sent this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// No answer for this long: etcd counts as gone and the watch reconnects.
const SILENCE: Duration = Duration::from_secs(3);
/// Backoff between reconnections: from, doubling up to.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// What the watch task needs.
pub(super) struct Watch {
    pub(super) store: Arc<crate::config::store::StoreConfig>,
    pub(super) keys: Keys,
    pub(super) link: Link,
    pub(super) control: Control,
    pub(super) peers: super::counts::Peers,
    pub(super) replica: String,
}

/// Why a watch session ended.
enum Ended {
    /// etcd is unreachable, or stopped answering.
    Lost(String),
    /// The revision to resume from was compacted away.
    Compacted,
}

impl Watch {
    /// Watches until the process stops.
    pub(super) async fn run(self) {
        let reload = Arc::new(Notify::new());
        // Ends with this task (aborted when the store is dropped).
        let _reloader = AbortOnDrop(tokio::spawn(reloads(
            Arc::clone(&reload),
            self.control.clone(),
        )));
        let mut last_event = 0_i64;
        let mut backoff = BACKOFF.0;
        let mut resume: Option<i64> = None;
        let mut logged: Option<String> = None;
        loop {
            match self.session(&reload, &mut last_event, &mut resume).await {
                Ended::Compacted => {
                    tracing::warn!(
                        "etcd compacted the watched revisions away; reading the whole state again"
                    );
                    resume = None;
                    backoff = BACKOFF.0;
                    continue;
                }
                Ended::Lost(error) => {
                    if self.link.status.connected() {
                        tracing::error!(%error, "etcd lost; serving the last applied state and reconnecting");
                    } else if logged.as_deref() != Some(error.as_str()) {
                        // Never connected, or failing anew (a refused
                        // certificate or password): said once per reason.
                        tracing::error!(%error, "cannot reach etcd; retrying");
                    }
                    self.link.down(&error);
                    logged = Some(error);
                }
            }
            let jitter = backoff.mul_f64(fastrand::f64() * 0.5 + 0.75);
            tokio::time::sleep(jitter).await;
            backoff = (backoff * 2).min(BACKOFF.1);
            if self.link.status.connected() {
                backoff = BACKOFF.0;
            }
        }
    }

    /// One connection: catch up, then follow until it fails.
    async fn session(
        &self,
        reload: &Notify,
        last_event: &mut i64,
        resume: &mut Option<i64>,
    ) -> Ended {
        let lost = |e: etcd_client::Error| Ended::Lost(super::unreachable(&e, &self.store));
        let mut client = match super::connect(&self.store).await {
            Ok(c) => c,
            Err(e) => return Ended::Lost(e),
        };
        let start = match *resume {
            Some(r) => r,
            None => match self.catch_up(&mut client, last_event).await {
                Ok(r) => r + 1,
                Err(e) => return lost(e),
            },
        };
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(start)
            .with_progress_notify();
        let mut stream = match client.watch(self.keys.all(), Some(options)).await {
            Ok(s) => s,
            Err(e) => return lost(e),
        };
        tracing::info!(revision = start, "following etcd");
        // Whatever happened while away: read the whole state again.
        reload.notify_one();
        let mut next = start;
        let mut progress = tokio::time::interval(PROGRESS_EVERY);
        let mut heard = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = progress.tick() => {
                    if heard.elapsed() > SILENCE {
                        *resume = Some(next);
                        return Ended::Lost(format!("no answer from etcd for {SILENCE:?}"));
                    }
                    if let Err(e) = stream.request_progress().await {
                        *resume = Some(next);
                        return lost(e);
                    }
                }
                message = stream.message() => {
                    let response = match message {
                        Ok(Some(r)) => r,
                        Ok(None) => {
                            *resume = Some(next);
                            return Ended::Lost("the watch stream ended".to_owned());
                        }
                        Err(e) => {
                            *resume = Some(next);
                            return lost(e);
                        }
                    };
                    heard = tokio::time::Instant::now();
                    self.link.up(true);
                    if response.compact_revision() > 0 || (response.canceled() && !response.created()) {
                        if response.compact_revision() > 0 {
                            return Ended::Compacted;
                        }
                        *resume = Some(next);
                        return Ended::Lost(format!("watch canceled: {}", response.cancel_reason()));
                    }
                    let mut tenants_changed = false;
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        next = next.max(kv.mod_revision() + 1);
                        let Ok(key) = kv.key_str() else { continue };
                        if self.keys.tenant_of(key).is_some() {
                            tenants_changed = true;
                        } else if let Some(replica) = self.keys.replica_of(key) {
                            if replica != self.replica {
                                let evidence = (event.event_type() == EventType::Put)
                                    .then(|| super::counts::decode(kv.value()))
                                    .flatten();
                                self.peers.set(replica, evidence);
                            }
                        } else if key.starts_with(&self.keys.events())
                            && event.event_type() == EventType::Put
                            && kv.create_revision() > *last_event
                        {
                            self.record(kv.value(), kv.create_revision());
                            *last_event = kv.create_revision();
                        }
                    }
                    if let Some(h) = response.header() {
                        next = next.max(h.revision() + 1);
                    }
                    if tenants_changed {
                        reload.notify_one();
                    }
                }
            }
        }
    }

    /// Records the newest events not yet recorded; returns the revision read at.
    async fn catch_up(
        &self,
        client: &mut etcd_client::Client,
        last_event: &mut i64,
    ) -> Result<i64, etcd_client::Error> {
        let options = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_limit(i64::try_from(EVENTS_KEPT).unwrap_or(i64::MAX));
        let response = client.get(self.keys.events(), Some(options)).await?;
        let revision = response.header().map_or(0, |h| h.revision());
        // The other replicas' counts, at the same revision.
        let at = GetOptions::new().with_prefix().with_revision(revision);
        let counts = client.get(self.keys.all_counts(), Some(at)).await?;
        self.peers.clear();
        for kv in counts.kvs() {
            let Some(replica) = kv.key_str().ok().and_then(|k| self.keys.replica_of(k)) else {
                continue;
            };
            if replica != self.replica {
                self.peers.set(replica, super::counts::decode(kv.value()));
            }
        }
        for kv in response.kvs().iter().rev() {
            if kv.create_revision() > *last_event {
                self.record(kv.value(), kv.create_revision());
                *last_event = kv.create_revision();
            }
        }
        self.link.up(true);
        Ok(revision)
    }

    /// Records one stored event into the local history.
    fn record(&self, value: &[u8], revision: i64) {
        match serde_json::from_slice::<WireEvent>(value) {
            Ok(wire) => {
                let event = wire.into_event(u64::try_from(revision).unwrap_or(0));
                self.control.published.events().record(event);
            }
            Err(error) => tracing::warn!(%error, "unreadable event in etcd skipped"),
        }
    }
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Turns watch signals into reloads, one at a time: signals that arrive
/// while a reload runs make one more.
async fn reloads(signal: Arc<Notify>, control: Control) {
    loop {
        signal.notified().await;
        if let Err(e) = control
            .submit(Change::Reload { forced: false }, Origin::file())
            .await
        {
            if matches!(e, crate::control::ChangeError::Stopped) {
                return;
            }
            tracing::debug!(error = %e, "reload after an etcd change failed");
        }
    }
}
