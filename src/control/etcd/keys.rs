//! The key layout under `[store] prefix` and what each key holds.
//!
//! - `PREFIX/tenants/NAME`: one tenant's runtime state as JSON
//!   ([`Runtime`]): weights, stable pool, rollout progress, and the file's
//!   values it last took in (so a file edit is applied once, fleet-wide);
//! - `PREFIX/events/TIME-NAME-N`: one event of the fleet's history as JSON,
//!   written in the same transaction as the change it records; its
//!   `create_revision` is the generation the change produced.
//!
//! JSON, not protobuf: an operator can read and fix a key with `etcdctl`.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::config::{Config, Pool, RolloutProgress, TenantConfig, Weights};
use crate::control::events::{Event, Source};

/// The keys of one `[store] prefix`.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// The layout under `prefix` (no trailing `/`).
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// Every tenant's key starts with this.
    pub fn tenants(&self) -> String {
        format!("{}/tenants/", self.prefix)
    }

    /// The key of `tenant`'s runtime state.
    pub fn tenant(&self, tenant: &str) -> String {
        format!("{}/tenants/{tenant}", self.prefix)
    }

    /// The tenant a key of [`Keys::tenants`] belongs to.
    pub fn tenant_of<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(&self.prefix)?.strip_prefix("/tenants/")
    }

    /// Every event's key starts with this.
    pub fn events(&self) -> String {
        format!("{}/events/", self.prefix)
    }

    /// An event's key: sorted by time, unique by tenant, position and the
    /// replica writing it; the same for every attempt to commit one event.
    pub fn event(&self, at: SystemTime, tenant: Option<&str>, n: usize, replica: &str) -> String {
        let nanos = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!(
            "{}/events/{nanos:020}-{}-{n}-{replica}",
            self.prefix,
            tenant.unwrap_or("-")
        )
    }

    /// Every replica's counts key starts with this.
    pub fn all_counts(&self) -> String {
        format!("{}/counts/", self.prefix)
    }

    /// The key of `replica`'s SLO counts (lease-bound).
    pub fn counts(&self, replica: &str) -> String {
        format!("{}/counts/{replica}", self.prefix)
    }

    /// The replica a key of [`Keys::all_counts`] belongs to.
    pub fn replica_of<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(&self.prefix)?.strip_prefix("/counts/")
    }

    /// The whole prefix (a watch covers it).
    pub fn all(&self) -> String {
        format!("{}/", self.prefix)
    }
}

/// The keys that turnout itself changes at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// Candidate and stable shares.
    pub blue: u32,
    /// As `blue`.
    pub green: u32,
    /// `"blue"` or `"green"`.
    pub stable: WirePool,
    /// The ramp's step and its start (Unix seconds), when one runs.
    pub progress: Option<(usize, u64)>,
}

/// A pool as JSON spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WirePool {
    /// [`Pool::Blue`].
    Blue,
    /// [`Pool::Green`].
    Green,
}

impl From<Pool> for WirePool {
    fn from(p: Pool) -> WirePool {
        match p {
            Pool::Blue => WirePool::Blue,
            Pool::Green => WirePool::Green,
        }
    }
}

impl From<WirePool> for Pool {
    fn from(p: WirePool) -> Pool {
        match p {
            WirePool::Blue => Pool::Blue,
            WirePool::Green => Pool::Green,
        }
    }
}

impl Split {
    /// The runtime keys of `t` as the control state holds them.
    pub fn of(t: &TenantConfig) -> Split {
        let progress = t.rollout.as_ref().and_then(|r| r.progress.as_ref());
        Split {
            blue: t.weights.blue(),
            green: t.weights.green(),
            stable: t.stable.into(),
            progress: progress.map(|p| (p.step, unix(p.since))),
        }
    }

    /// Sets these keys on `t`; `Err` (and `t` unchanged) when they do not
    /// fit it (weights both 0, a step past its table, an empty pool given
    /// traffic).
    pub fn apply_to(&self, t: &mut TenantConfig) -> Result<(), String> {
        let weights = Weights::new(self.blue, self.green).map_err(|e| e.to_string())?;
        let mut next = t.clone();
        next.weights = weights;
        next.stable = self.stable.into();
        if let Some(rollout) = next.rollout.as_mut() {
            rollout.progress = match self.progress {
                Some((step, _)) if step >= rollout.steps.len() => {
                    return Err(format!("rollout step {step} is past the table"));
                }
                Some((step, since)) => Some(RolloutProgress {
                    step,
                    since: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(since),
                }),
                None => None,
            };
        }
        if let Some((_, problem)) = next.empty_pool_in_use() {
            return Err(problem);
        }
        *t = next;
        Ok(())
    }
}

/// One tenant's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runtime {
    /// What the fleet serves.
    pub state: Split,
    /// The control file's values this state last took in: a replica whose
    /// file now says something else proposes the file's edit (once).
    pub file: Split,
    /// The split was set by an SLO revert (the tenant shows `reverted` on
    /// every replica until the next decision).
    #[serde(default)]
    pub reverted: bool,
    /// When a promote bake began on a tenant without a rollout table
    /// (Unix seconds), so any replica finishes it.
    #[serde(default)]
    pub bake: Option<u64>,
}

/// `config` with each tenant's runtime keys taken from `runtime` (those
/// that fit; a key that does not is logged and the file's values serve).
pub fn overlay(
    mut config: Config,
    runtime: &std::collections::BTreeMap<String, (Runtime, u64)>,
) -> Config {
    for (name, (rt, _)) in runtime {
        let Some(t) = config.tenant(name) else {
            continue;
        };
        if Split::of(t) == rt.state {
            continue;
        }
        if let Some(t) = config.tenant_mut(name)
            && let Err(problem) = rt.state.apply_to(t)
        {
            tracing::error!(tenant = %name, %problem, "the stored state does not fit the control file; serving the file's values for this tenant");
        }
    }
    config
}

/// Wall-clock seconds since the Unix epoch.
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An event as stored.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireEvent {
    at_ms: u64,
    tenant: Option<String>,
    source: String,
    actor: Option<String>,
    from: Option<(u32, u32)>,
    to: Option<(u32, u32)>,
    stable: Option<WirePool>,
    reason: String,
}

impl WireEvent {
    /// `event` as stored (its `seq` and `generation` are the reader's).
    pub fn of(event: &Event) -> WireEvent {
        let at_ms = event
            .at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let pair = |w: Option<Weights>| w.map(|w| (w.blue(), w.green()));
        WireEvent {
            at_ms,
            tenant: event.tenant.clone(),
            source: event.source.as_str().to_owned(),
            actor: event.actor.clone(),
            from: pair(event.from),
            to: pair(event.to),
            stable: event.stable.map(Into::into),
            reason: event.reason.clone(),
        }
    }

    /// The event, produced at `generation` (the key's create revision).
    pub fn into_event(self, generation: u64) -> Event {
        let source = match self.source.as_str() {
            "admin" => Source::Admin,
            "slo" => Source::Slo,
            "rollout" => Source::Rollout,
            _ => Source::File,
        };
        let weights = |p: Option<(u32, u32)>| p.and_then(|(b, g)| Weights::new(b, g).ok());
        Event {
            seq: 0,
            at: SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(self.at_ms),
            tenant: self.tenant,
            source,
            actor: self.actor,
            from: weights(self.from),
            to: weights(self.to),
            stable: self.stable.map(Into::into),
            reason: self.reason,
            persisted: true,
            generation,
        }
    }
}
