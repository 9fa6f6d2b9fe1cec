//! The change history: one event per tenant a change touched.
//!
//! The last thousand are kept in memory for `GET /v1/events`; each is also
//! logged when it is recorded, so a log pipeline has the full history.

use std::collections::VecDeque;
use std::time::SystemTime;

use serde::Serialize;

use crate::config::{Color, Weights};

/// How many events are kept in memory.
pub const EVENTS_KEPT: usize = 1000;

/// What made a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    File,
    Admin,
    Slo,
    Rollout,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::File => "file",
            Source::Admin => "admin",
            Source::Slo => "slo",
            Source::Rollout => "rollout",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub seq: u64,
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
    /// `None` for a change outside any tenant (tokens, listen, defaults only).
    pub tenant: Option<String>,
    pub source: Source,
    /// The admin token's name, when an admin call made the change.
    pub actor: Option<String>,
    /// `None` when the tenant did not exist before the change.
    pub from: Option<Weights>,
    /// `None` when the tenant was removed.
    pub to: Option<Weights>,
    pub stable: Option<Color>,
    pub reason: String,
    pub persisted: bool,
    /// The generation the change produced.
    pub generation: u64,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

/// A bounded, ordered history.
#[derive(Default)]
pub struct EventLog {
    events: VecDeque<Event>,
    next_seq: u64,
}

impl EventLog {
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
            stable = event.stable.map_or("-", Color::as_str),
            persisted = event.persisted,
            generation = event.generation,
            reason = %event.reason,
            "change applied"
        );
        if self.events.len() == EVENTS_KEPT {
            self.events.pop_front();
        }
        self.events.push_back(event.clone());
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
    }
}
