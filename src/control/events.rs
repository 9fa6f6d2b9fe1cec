//! The change history: one event per tenant a change touched, and how a
//! change is described as events (`describe`).
//!
//! The last thousand are kept in memory for `GET /v1/events`; each is also
//! logged when it is recorded, so a log pipeline has the full history, and
//! sent on a broadcast channel for `GET /v1/events/stream`. The channel is
//! bounded and never waits: a subscriber that falls behind loses its place
//! (`Lagged`) and catches up from the history by `seq`, so no reader can
//! hold up the control task that records.

use std::collections::VecDeque;
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::config::{Config, Pool, TenantConfig, Weights};

/// How many events are kept in memory.
pub const EVENTS_KEPT: usize = 1000;

/// What made a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The control file (the watcher, SIGHUP, an admin reload).
    File,
    /// An admin API call.
    Admin,
    /// The SLO guard's revert.
    Slo,
    /// The rollout clock: a ramp step, a promotion, a ramp ended.
    Rollout,
}

impl Source {
    /// The lowercase name events, logs and metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::File => "file",
            Source::Admin => "admin",
            Source::Slo => "slo",
            Source::Rollout => "rollout",
        }
    }
}

/// One recorded change of one tenant, as `GET /v1/events` and the webhook
/// show it (SPEC section 8).
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Numbered from 1 in the order recorded.
    pub seq: u64,
    /// When it was recorded (RFC 3339, milliseconds).
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
    /// `None` for a change outside any tenant (tokens, listen, defaults only).
    pub tenant: Option<String>,
    /// What made the change.
    pub source: Source,
    /// The admin token's name, when an admin call made the change.
    pub actor: Option<String>,
    /// `None` when the tenant did not exist before the change.
    pub from: Option<Weights>,
    /// `None` when the tenant was removed.
    pub to: Option<Weights>,
    /// The stable pool after the change (before it, for a removed tenant).
    pub stable: Option<Pool>,
    /// Why: the origin's reason, or what changed.
    pub reason: String,
    /// Whether the change is in the store.
    pub persisted: bool,
    /// The generation the change produced.
    pub generation: u64,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

/// How many events the live channel holds for its slowest subscriber
/// before that one lags (and catches up from the history).
pub const LIVE_BUFFER: usize = 256;

/// A bounded, ordered history, and its live feed.
pub struct EventLog {
    events: VecDeque<Event>,
    next_seq: u64,
    live: broadcast::Sender<Event>,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog {
            events: VecDeque::with_capacity(EVENTS_KEPT),
            next_seq: 0,
            live: broadcast::channel(LIVE_BUFFER).0,
        }
    }
}

impl EventLog {
    /// A receiver of every event recorded from now on. Taken while the log
    /// is locked, it misses nothing after [`EventLog::since`] read under
    /// the same lock, and repeats nothing before it.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }

    /// Up to `limit` kept events after `seq`, oldest first, and whether
    /// the history still reaches back to `seq + 1` (false when some were
    /// dropped from it, being more than [`EVENTS_KEPT`] behind).
    pub fn since(&self, seq: u64, limit: usize) -> (Vec<Event>, bool) {
        // Seqs are consecutive in the log: the first after `seq` is found
        // by arithmetic, not by a scan.
        let first = self.events.front().map_or(0, |e| e.seq);
        let skip = usize::try_from((seq + 1).saturating_sub(first)).unwrap_or(usize::MAX);
        let newer = self.events.iter().skip(skip).take(limit).cloned().collect();
        (newer, first <= seq + 1 || self.events.is_empty())
    }

    /// The seq of the newest event recorded; 0 before the first.
    pub fn last_seq(&self) -> u64 {
        self.next_seq
    }

    /// Numbers, logs and keeps `event`; returns the numbered copy.
    pub fn record(&mut self, mut event: Event) -> Event {
        self.next_seq += 1;
        event.seq = self.next_seq;
        tracing::info!(
            seq = event.seq,
            tenant = event.tenant.as_deref().unwrap_or("-"),
            source = event.source.as_str(),
            actor = event.actor.as_deref().unwrap_or("-"),
            from = %fmt_weights(event.from),
            to = %fmt_weights(event.to),
            stable = event.stable.map_or("-", Pool::as_str),
            persisted = event.persisted,
            generation = event.generation,
            reason = %event.reason,
            "change applied"
        );
        if self.events.len() == EVENTS_KEPT {
            self.events.pop_front();
        }
        self.events.push_back(event.clone());
        // Never waits; an error only says that nobody is listening.
        let _ = self.live.send(event.clone());
        event
    }

    /// The newest `limit` events (of `tenant`, if given), oldest first.
    pub fn recent(&self, tenant: Option<&str>, limit: usize) -> Vec<Event> {
        let matching: Vec<&Event> = self
            .events
            .iter()
            .filter(|e| tenant.is_none_or(|t| e.tenant.as_deref() == Some(t)))
            .collect();
        let skip = matching.len().saturating_sub(limit);
        matching.into_iter().skip(skip).cloned().collect()
    }
}

fn fmt_weights(w: Option<Weights>) -> String {
    w.map_or_else(
        || "-".to_owned(),
        |w| format!("blue={} green={}", w.blue(), w.green()),
    )
}

/// One event per tenant the change touched (or one without a tenant when
/// only process-wide settings changed).
pub fn describe(
    before: &Config,
    after: &Config,
    origin: &super::Origin,
    persisted: bool,
    generation: u64,
) -> Vec<Event> {
    let event = |tenant: Option<&str>,
                 from: Option<&TenantConfig>,
                 to: Option<&TenantConfig>,
                 reason: String| Event {
        seq: 0,
        at: SystemTime::now(),
        tenant: tenant.map(str::to_owned),
        source: origin.source,
        actor: origin.actor.clone(),
        from: from.map(|t| t.weights),
        to: to.map(|t| t.weights),
        stable: to.or(from).map(|t| t.stable),
        reason: origin.reason.clone().unwrap_or(reason),
        persisted,
        generation,
    };
    let mut events = Vec::new();
    for old in &before.tenants {
        match after.tenant(&old.name) {
            None => events.push(event(
                Some(&old.name),
                Some(old),
                None,
                "tenant removed from the control file".into(),
            )),
            Some(new) if *new != **old => {
                let reason = format!(
                    "control file changed: {}",
                    changed_keys(old, new).join(", ")
                );
                events.push(event(Some(&old.name), Some(old), Some(new), reason));
            }
            Some(_) => {}
        }
    }
    for new in after
        .tenants
        .iter()
        .filter(|t| before.tenant(&t.name).is_none())
    {
        events.push(event(
            Some(&new.name),
            None,
            Some(new),
            "tenant added to the control file".into(),
        ));
    }
    if events.is_empty() {
        events.push(event(
            None,
            None,
            None,
            "control file changed: process-wide settings".into(),
        ));
    }
    events
}

/// The names of the keys that differ between two versions of a tenant.
fn changed_keys(a: &TenantConfig, b: &TenantConfig) -> Vec<&'static str> {
    let checks: [(&'static str, bool); 10] = [
        ("hosts", a.hosts != b.hosts),
        ("preview_hosts", a.preview_hosts != b.preview_hosts),
        ("preview_token", a.preview_token != b.preview_token),
        ("stable", a.stable != b.stable),
        ("weights", a.weights != b.weights),
        ("sticky", a.sticky != b.sticky),
        ("pools", a.pools != b.pools),
        ("tls", a.tls != b.tls),
        ("rollout", a.rollout != b.rollout),
        ("settings", a.settings != b.settings),
    ];
    checks
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(k, _)| k)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(tenant: &str) -> Event {
        Event {
            seq: 0,
            at: SystemTime::now(),
            tenant: Some(tenant.into()),
            source: Source::Admin,
            actor: None,
            from: None,
            to: None,
            stable: None,
            reason: String::new(),
            persisted: true,
            generation: 1,
        }
    }

    #[test]
    fn keeps_the_newest_thousand_in_order() {
        let mut log = EventLog::default();
        for i in 0..1005 {
            log.record(event(if i % 2 == 0 { "a" } else { "b" }));
        }
        let all = log.recent(None, usize::MAX);
        assert_eq!(all.len(), EVENTS_KEPT);
        assert_eq!(all.first().map(|e| e.seq), Some(6));
        assert_eq!(all.last().map(|e| e.seq), Some(1005));
        let a = log.recent(Some("a"), 3);
        assert_eq!(
            a.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1001, 1003, 1005]
        );
        let seqs = |events: Vec<Event>| events.iter().map(|e| e.seq).collect::<Vec<_>>();
        let (newer, whole) = log.since(1003, 10);
        assert_eq!((seqs(newer), whole), (vec![1004, 1005], true));
        let (newer, whole) = log.since(2, usize::MAX);
        assert_eq!(newer.len(), EVENTS_KEPT);
        assert_eq!(newer.first().map(|e| e.seq), Some(6));
        assert!(!whole, "events 3 to 5 were dropped from the history");
        let (newer, whole) = log.since(5, 2);
        assert_eq!((seqs(newer), whole), (vec![6, 7], true));
        assert!(log.since(1005, 10).0.is_empty());
        assert_eq!(log.last_seq(), 1005);
    }

    #[test]
    fn subscribers_get_what_is_recorded_after_they_subscribe() {
        let mut log = EventLog::default();
        log.record(event("a"));
        let mut rx = log.subscribe();
        log.record(event("b"));
        let got = rx.try_recv().expect("the event recorded after subscribing");
        assert_eq!((got.seq, got.tenant.as_deref()), (2, Some("b")));
        assert!(rx.try_recv().is_err());
    }
}
