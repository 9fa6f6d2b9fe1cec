//! The control task's side of a fleet store (SPEC section 12): SLO reverts
//! that apply at once and commit after, held while the store is away.
//!
//! A revert is applied locally as soon as the guard finds the breach (the
//! request path must not wait for etcd), then committed conditioned on
//! the tenant's state being the one the breach was judged on. Only the
//! replica whose commit succeeds counts it in `turnout_reverts_total` and
//! sends the webhook; its event is in the same transaction, so the fleet's
//! history has it once. A commit that finds the state moved on (another
//! replica reverted first, an operator wrote newer weights) is dropped and
//! the stored state read again. While etcd is unreachable the revert is
//! held (never sent: a request to a frozen etcd may be applied when it
//! thaws) and committed when etcd answers again, before that state is
//! read. An attempt that timed out yet was applied is found by its event's
//! key on the next one, and counts as this replica's commit.
//!
//! A cohort's revert at weight 0 moves no weights but latches the tenant
//! (its cohort goes to stable until a new intent, SPEC section 4.3); the
//! latch is stored with the tenant's key, so it too is committed once and
//! followed by every replica.

use super::events::{Event, describe};
use super::store::{CommitError, Condition};
use super::task::ControlTask;
use super::{Change, ChangeError, Origin, Outcome, Source};
use crate::config::write::TenantEdit;

/// A revert applied locally whose commit is still to be made.
pub(super) struct Held {
    edit: TenantEdit,
    /// The generation the breach was judged on.
    judged: u64,
    events: Vec<Event>,
}

impl ControlTask {
    /// Applies `edit` (a revert) now and commits it after.
    pub(super) async fn fleet_revert(
        &mut self,
        edit: TenantEdit,
        origin: &Origin,
    ) -> Result<Outcome, ChangeError> {
        let (next, edit) = self.validate(edit)?;
        self.published.ramps().split_decided(&edit.tenant);
        let judged = self.generation;
        let events = describe(&self.running, &next, origin, true, judged);
        // Traffic moves now; the generation stays the stored one until the
        // commit gives the revert its own.
        self.swap(next, Source::Slo, Some(judged));
        self.update_status();
        let held = Held {
            edit,
            judged,
            events,
        };
        self.commit_held(held).await;
        Ok(self.outcome(true))
    }

    /// Commits a revert that moved no weights (the cohort's, at weight 0,
    /// latched here already): `edit` sets the weights the breach was
    /// judged on, which the store records as an SLO revert, with `event`.
    pub(super) async fn fleet_latch(
        &mut self,
        edit: TenantEdit,
        event: Event,
    ) -> Result<Outcome, ChangeError> {
        let held = Held {
            edit,
            judged: self.generation,
            events: vec![event],
        };
        self.commit_held(held).await;
        Ok(self.outcome(true))
    }

    /// Commits the reverts held while etcd was away, oldest first; stops at
    /// the first the store still cannot take.
    pub(super) async fn commit_all_held(&mut self) {
        let tenants: Vec<String> = self.held.keys().cloned().collect();
        for tenant in tenants {
            let Some(held) = self.held.remove(&tenant) else {
                continue;
            };
            if !self.commit_held(held).await {
                break;
            }
        }
    }

    /// Commits one held revert; `false` when the store cannot be reached
    /// (it is held again).
    async fn commit_held(&mut self, held: Held) -> bool {
        let tenant = held.edit.tenant.clone();
        let result = self
            .store
            .commit(
                vec![held.edit.clone()],
                Condition::Judged(held.judged),
                held.events.clone(),
            )
            .await;
        match result {
            Ok(committed) => {
                let table = self.proxy.table.load();
                if let Some(t) = table.tenant(&tenant) {
                    t.state.metrics.reverts.increment(1);
                }
                if let Some(stored) = committed.stored {
                    self.fold(stored);
                }
                let webhook = self.running.notify.clone();
                for mut event in held.events {
                    // Numbered by the revision that made it: the same on
                    // every replica's history, unlike a local `seq`.
                    (event.generation, event.seq) = (self.generation, self.generation);
                    tracing::warn!(%tenant, reason = %event.reason, generation = self.generation, "candidate reverted fleet-wide: SLO breached");
                    if let Some(hook) = &webhook {
                        self.notifier.send(hook, self.generation, &event);
                    }
                }
                true
            }
            Err(CommitError::Precondition { current }) => {
                tracing::info!(%tenant, current, "revert not committed: the fleet's state moved on since it was judged (reverted elsewhere or overridden); taking the stored state");
                self.forget_local(&tenant);
                self.pending
                    .push_back((Change::Reload { forced: true }, Origin::file()));
                true
            }
            Err(CommitError::Unavailable(error)) => {
                tracing::warn!(%tenant, %error, "revert applied here and held until etcd answers");
                self.held.insert(tenant, held);
                false
            }
        }
    }

    /// A dropped revert is no longer a local change to keep: what this
    /// replica serves becomes the previous stored version of `tenant`, so
    /// the next read takes the store's weights, stable pool and progress
    /// wherever they differ from it (the merge rule keeps a running value
    /// only where the store did not change it, SPEC section 7).
    fn forget_local(&mut self, tenant: &str) {
        let Some(run) = self.running.tenant(tenant).cloned() else {
            return;
        };
        if let Some(prev) = self.stored.tenant_mut(tenant) {
            (prev.weights, prev.stable) = (run.weights, run.stable);
            if let (Some(p), Some(r)) = (prev.rollout.as_mut(), run.rollout.as_ref()) {
                p.progress.clone_from(&r.progress);
            }
        }
    }
}
