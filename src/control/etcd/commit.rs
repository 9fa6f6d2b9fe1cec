//! Committing a change: one etcd transaction per change, conditioned in
//! etcd, with the change's events in the same transaction.
//!
//! Conditions (SPEC section 12; see `Condition`):
//! - every commit rewrites the tenant's whole key from the value last read,
//!   so it requires the key unchanged since that read (`mod_revision`
//!   equal, or the key absent when none was read);
//! - `If-Match: N`: no tenant key changed after N — a compare over the
//!   whole tenants prefix (`mod_revision < N + 1`), which keeps
//!   `If-Match`'s meaning exactly ("nothing changed since N");
//! - a decision judged at N: the tenant's key unchanged after N.
//!
//! Nothing is sent while etcd is known to be away (the watch has not heard
//! from it): a request that times out on a frozen etcd may still be
//! applied when it thaws, so a refused write must not have been sent.
//!
//! An operator's change without `If-Match` that loses the race to another
//! writer re-reads the key and is applied over the newer value (last
//! writer wins, as with one process); so does an `If-Match: N` commit that
//! failed only because this replica had not yet read up to N. The others
//! fail with the current generation and write nothing.

use etcd_client::{Compare, CompareOp, GetOptions, SortOrder, SortTarget, Txn, TxnOp};

use super::EtcdStore;
use super::keys::{Runtime, Split, WireEvent};
use crate::config::write::TenantEdit;
use crate::control::events::{EVENTS_KEPT, Event, Source};
use crate::control::store::{CommitError, Condition};

/// Tries of an unconditional change racing other writers.
const ATTEMPTS: usize = 3;
/// The events are trimmed to [`EVENTS_KEPT`] every this many commits.
const TRIM_EVERY: u32 = 50;

fn rev(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl EtcdStore {
    /// Commits `edits` under `condition` with `events`; on success the
    /// store's view (`runtime`, `revision`) includes them.
    pub(super) async fn commit_edits(
        &mut self,
        edits: Vec<TenantEdit>,
        condition: Condition,
        events: Vec<Event>,
    ) -> Result<(), CommitError> {
        let unavailable = CommitError::Unavailable;
        if !self.link.status.connected() {
            // Never sent while etcd is known away: a request to a frozen
            // etcd times out here yet may still be applied when it thaws,
            // so a write refused now (an operator's 503, a held revert)
            // would land later behind the caller's back — and a held
            // revert would then find its own write, or a refused one, and
            // be dropped without its event.
            return Err(unavailable(
                "etcd is unreachable: not connected; changes are refused until it answers"
                    .to_owned(),
            ));
        }
        // The same keys on every attempt, so a retry can tell whether an
        // earlier attempt that timed out was applied after all.
        let event_keys: Vec<String> = events
            .iter()
            .enumerate()
            .map(|(i, e)| self.keys.event(e.at, e.tenant.as_deref(), i, &self.replica))
            .collect();
        for attempt in 0..ATTEMPTS {
            let mut compares = Vec::new();
            let mut ops = Vec::new();
            let mut written = Vec::new();
            for edit in &edits {
                let key = self.keys.tenant(&edit.tenant);
                let (base, compare) = match self.runtime.get(&edit.tenant) {
                    Some((rt, r)) => (
                        rt.clone(),
                        Compare::mod_revision(key.clone(), CompareOp::Equal, rev(*r)),
                    ),
                    None => {
                        let Some(t) = self
                            .file_config
                            .as_ref()
                            .and_then(|c| c.tenant(&edit.tenant))
                        else {
                            return Err(unavailable(format!("no tenant {}", edit.tenant)));
                        };
                        let split = Split::of(t);
                        let rt = Runtime {
                            state: split,
                            file: split,
                            reverted: false,
                            bake: None,
                        };
                        (
                            rt,
                            Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                        )
                    }
                };
                compares.push(compare);
                if let Condition::Judged(n) = condition {
                    compares.push(Compare::mod_revision(
                        key.clone(),
                        CompareOp::Less,
                        rev(n + 1),
                    ));
                }
                let sets_split = edit.weights.is_some() || edit.stable.is_some();
                let by_slo = events.iter().any(|e| {
                    e.source == Source::Slo && e.tenant.as_deref() == Some(edit.tenant.as_str())
                });
                let runtime = Runtime {
                    state: edited(base.state, edit),
                    file: base.file,
                    reverted: if sets_split { by_slo } else { base.reverted },
                    // Any decision about the split ends a bake (as
                    // `Ramps::split_decided` does in memory).
                    bake: match edit.bake {
                        Some(bake) => bake.map(super::keys::unix),
                        None if sets_split => None,
                        None => base.bake,
                    },
                };
                let value = serde_json::to_vec(&runtime).map_err(|e| unavailable(e.to_string()))?;
                ops.push(TxnOp::put(key, value, None));
                written.push((edit.tenant.clone(), runtime));
            }
            if let Condition::IfMatch(n) = condition {
                compares.push(
                    Compare::mod_revision(self.keys.tenants(), CompareOp::Less, rev(n + 1))
                        .with_prefix(),
                );
            }
            for (event, key) in events.iter().zip(&event_keys) {
                let value = serde_json::to_vec(&WireEvent::of(event))
                    .map_err(|e| unavailable(e.to_string()))?;
                ops.push(TxnOp::put(key.clone(), value, None));
            }
            let mut client = self.client().await.map_err(unavailable)?;
            let response = client
                .txn(Txn::new().when(compares).and_then(ops))
                .await
                .map_err(|e| unavailable(self.unanswered(&e)))?;
            if response.succeeded() {
                let revision = response
                    .header()
                    .and_then(|h| u64::try_from(h.revision()).ok())
                    .unwrap_or(self.revision);
                for (tenant, runtime) in written {
                    self.runtime.insert(tenant, (runtime, revision));
                }
                self.revision = self.revision.max(revision);
                self.link.loaded(self.revision);
                self.trim().await;
                return Ok(());
            }
            // Someone else wrote first: see what the store holds now.
            self.read().await.map_err(unavailable)?;
            // Or this very change did: an earlier attempt (a held revert's,
            // sent before etcd froze) timed out here but was applied. It is
            // committed, once; the read above holds it.
            if let Some(key) = event_keys.first()
                && self.exists(key).await.map_err(unavailable)?
            {
                return Ok(());
            }
            // `If-Match: N` from a replica ahead of this one: nothing
            // changed after N, only this replica's view was behind.
            let caught_up = matches!(condition, Condition::IfMatch(n) if self.revision <= n);
            if !(condition == Condition::Any || caught_up) || attempt + 1 == ATTEMPTS {
                return Err(CommitError::Precondition {
                    current: self.revision,
                });
            }
        }
        Err(CommitError::Precondition {
            current: self.revision,
        })
    }

    /// A commit sent that etcd did not answer (a timeout, a connection
    /// lost on the way): like any distributed write whose answer is lost
    /// (etcd's own clients, the Kubernetes API's "may still be processing
    /// the request"), it may or may not have been applied. The operator's
    /// 503 says so: read the state before retrying, or retry with
    /// `If-Match` (a 412 then tells the first attempt landed).
    fn unanswered(&mut self, e: &etcd_client::Error) -> String {
        format!(
            "{}; the change was sent but not answered, so it may still be applied: read the state before retrying, or retry with If-Match",
            self.failed(e)
        )
    }

    /// Whether `key` is in etcd.
    async fn exists(&mut self, key: &str) -> Result<bool, String> {
        let mut client = self.client().await?;
        let options = GetOptions::new().with_count_only();
        let response = client
            .get(key, Some(options))
            .await
            .map_err(|e| self.failed(&e))?;
        Ok(response.count() > 0)
    }

    /// Keeps the newest [`EVENTS_KEPT`] events (every [`TRIM_EVERY`]
    /// commits; replicas trimming at once delete the same keys).
    async fn trim(&mut self) {
        self.commits += 1;
        if self.commits < TRIM_EVERY {
            return;
        }
        self.commits = 0;
        let Ok(mut client) = self.client().await else {
            return;
        };
        let newest = GetOptions::new()
            .with_prefix()
            .with_keys_only()
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(rev(EVENTS_KEPT as u64 + 1));
        let Ok(response) = client.get(self.keys.events(), Some(newest)).await else {
            return;
        };
        if response.kvs().len() <= EVENTS_KEPT {
            return;
        }
        // Everything up to and including the first one past the kept.
        let Some(oldest_dropped) = response.kvs().last().map(|kv| kv.key().to_vec()) else {
            return;
        };
        let mut end = oldest_dropped;
        end.push(0);
        let range = etcd_client::DeleteOptions::new().with_range(end);
        if let Err(error) = client.delete(self.keys.events(), Some(range)).await {
            tracing::warn!(%error, "old events not trimmed from etcd");
        }
    }
}

/// `state` with the keys `edit` names set.
fn edited(mut state: Split, edit: &TenantEdit) -> Split {
    if let Some(w) = edit.weights {
        (state.blue, state.green) = (w.blue(), w.green());
    }
    if let Some(stable) = edit.stable {
        state.stable = stable.into();
    }
    if let Some(progress) = &edit.progress {
        state.progress = progress
            .as_ref()
            .map(|p| (p.step, super::keys::unix(p.since)));
    }
    state
}
