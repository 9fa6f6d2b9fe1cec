//! Applying a change: validate → commit → swap → record → notify.
//!
//! Every change that sets a tenant's keys — an admin call, a rollout step,
//! an SLO revert — is one `TenantEdit` taken through [`ControlTask::edit`];
//! a new version of the whole state (a reload) through
//! [`ControlTask::apply`]. Both swap the routing table in one `ArcSwap`
//! store ([`ControlTask::swap`], with its side effects on health checks,
//! watched certificate files, ramp marks and SLO windows) and record an
//! event per tenant touched ([`ControlTask::record`], which also notifies
//! the webhook).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::events::{Event, describe};
use super::rollout::edit_of;
use super::store::{CommitError, Committed, Condition, Order};
use super::task::ControlTask;
use super::{ChangeError, Origin, Outcome, Source};
use crate::config::write::TenantEdit;
use crate::config::{Config, TenantConfig, Weights};
use crate::route::{RoutingTable, endpoint};

impl ControlTask {
    /// `Change::SetWeights`: an operator's split; it ends a running ramp.
    pub(super) async fn set_weights(
        &mut self,
        tenant: &str,
        weights: Weights,
        if_match: Option<u64>,
        force: bool,
        origin: &Origin,
    ) -> Result<Outcome, ChangeError> {
        if self.fleet.is_none() {
            // With a fleet store, etcd judges `If-Match` in the commit.
            self.check_generation(if_match)?;
        }
        self.check_candidate(tenant, weights, force)?;
        let edit = split_edit(tenant, weights);
        let outcome = self.edit(edit, if_match, origin, "weights set").await?;
        // A weights call is a new intent even with the same values: it
        // lifts a revert's latch (SPEC section 4.3, the cohort).
        if let Some(t) = self.proxy.table.load().tenant(tenant) {
            t.state.reverted.store(false, Ordering::Relaxed);
        }
        Ok(outcome)
    }

    /// `Change::Rollback`: all traffic to the stable pool; ends a ramp.
    pub(super) async fn rollback(
        &mut self,
        tenant: &str,
        if_match: Option<u64>,
        origin: &Origin,
    ) -> Result<Outcome, ChangeError> {
        if self.fleet.is_none() {
            self.check_generation(if_match)?;
        }
        let stable = self.tenant(tenant)?.stable;
        let edit = split_edit(tenant, Weights::all_on(stable));
        self.edit(edit, if_match, origin, "rollback to the stable pool")
            .await
    }

    /// `Change::Revert`: the SLO guard's revert — all traffic to stable
    /// when the candidate has any — after which the candidate's window
    /// starts afresh and the next breach may be signalled.
    pub(super) async fn revert(
        &mut self,
        tenant: &str,
        origin: &Origin,
    ) -> Result<Outcome, ChangeError> {
        let table = self.proxy.table.load_full();
        let t = table
            .tenant(tenant)
            .ok_or_else(|| ChangeError::UnknownTenant(tenant.to_owned()))?;
        let state = Arc::clone(&t.state);
        let candidate = t.candidate();
        let mut result = Ok(self.outcome(false));
        if t.config.weights.of(candidate) > 0 && self.fleet.is_some() {
            let edit = split_edit(tenant, Weights::all_on(t.stable()));
            let origin = Origin {
                reason: origin
                    .reason
                    .clone()
                    .or_else(|| Some("slo breach".to_owned())),
                ..origin.clone()
            };
            // Counted and logged by `fleet_revert` once committed.
            result = self.fleet_revert(edit, &origin).await;
        } else if t.config.weights.of(candidate) > 0 {
            let edit = split_edit(tenant, Weights::all_on(t.stable()));
            result = self.edit(edit, None, origin, "slo breach").await;
            let reason = origin.reason.as_deref().unwrap_or("-");
            match &result {
                Ok(_) => {
                    state.metrics.reverts.increment(1);
                    tracing::warn!(%tenant, pool = candidate.as_str(), %reason, "candidate reverted: SLO breached");
                }
                Err(e) => tracing::error!(%tenant, error = %e, "SLO revert failed"),
            }
        } else if !state.reverted.swap(true, Ordering::Relaxed) {
            // At weight 0 the breach came from the insiders' cohort: no
            // weights to move, but the tenant is reverted — its cohort goes
            // to stable until a new intent — and it is recorded and sent
            // like any revert.
            let reason = origin.reason.as_deref().unwrap_or("-").to_owned();
            tracing::warn!(%tenant, pool = candidate.as_str(), %reason, "candidate reverted on its cohort: SLO breached");
            let event = self.latch_event(t, origin, reason);
            if self.fleet.is_some() {
                // Latched here at once; committed once fleet-wide, counted
                // and sent by the replica whose commit lands.
                let edit = TenantEdit {
                    weights: Some(t.config.weights),
                    ..edit_of(tenant)
                };
                result = self.fleet_latch(edit, event).await;
            } else {
                state.metrics.reverts.increment(1);
                let recorded = self.published.events().record(event);
                if let Some(hook) = &self.running.notify {
                    self.notifier.send(hook, recorded.seq, &recorded);
                }
                result = Ok(self.outcome(true));
            }
        }
        // The candidate starts afresh: its next traffic is judged on its own.
        state.slo.restart(candidate);
        self.exposed(tenant);
        self.published.ramps().step_ended(tenant);
        state.breach_handled();
        result
    }

    /// The running tenant called `name`.
    pub(super) fn tenant(&self, name: &str) -> Result<&TenantConfig, ChangeError> {
        self.running
            .tenant(name)
            .ok_or_else(|| ChangeError::UnknownTenant(name.to_owned()))
    }

    /// `If-Match`: refused unless `if_match` names the serving generation.
    fn check_generation(&self, if_match: Option<u64>) -> Result<(), ChangeError> {
        match if_match {
            Some(g) if g != self.generation => Err(ChangeError::GenerationMismatch {
                current: self.generation,
            }),
            _ => Ok(()),
        }
    }

    /// Refuses to give the candidate traffic while it has no healthy
    /// endpoint, unless forced (SPEC section 5).
    pub(super) fn check_candidate(
        &self,
        tenant: &str,
        weights: Weights,
        force: bool,
    ) -> Result<(), ChangeError> {
        let candidate = self.tenant(tenant)?.candidate();
        if weights.of(candidate) == 0 || force {
            return Ok(());
        }
        let table = self.proxy.table.load();
        let healthy = table
            .tenant(tenant)
            .is_some_and(|t| endpoint::any_healthy(t.endpoints(candidate)));
        if healthy {
            Ok(())
        } else {
            Err(ChangeError::Conflict(format!(
                "the candidate pool {candidate} of {tenant} has no healthy endpoint; add ?force=true to send it traffic anyway"
            )))
        }
    }

    /// The running state with `edit` applied, validated, and the edit
    /// reduced to the keys it really changes.
    pub(super) fn validate(
        &self,
        mut edit: TenantEdit,
    ) -> Result<(Config, TenantEdit), ChangeError> {
        let mut next = (*self.running).clone();
        let t = next
            .tenant_mut(&edit.tenant)
            .ok_or_else(|| ChangeError::UnknownTenant(edit.tenant.clone()))?;
        if let Some(w) = edit.weights {
            t.weights = w;
        }
        if let Some(stable) = edit.stable {
            t.stable = stable;
        }
        match (edit.progress.take(), t.rollout.as_mut()) {
            (Some(progress), Some(rollout)) if rollout.progress != progress => {
                rollout.progress = progress.clone();
                edit.progress = Some(progress);
            }
            _ => {}
        }
        if let Some((_, problem)) = t.empty_pool_in_use() {
            return Err(ChangeError::Conflict(problem));
        }
        Ok((next, edit))
    }

    /// Applies one tenant's edit: validate, commit and swap (in the order
    /// the store asks), record, then fold in whatever else the store holds.
    pub(super) async fn edit(
        &mut self,
        edit: TenantEdit,
        if_match: Option<u64>,
        origin: &Origin,
        default_reason: &str,
    ) -> Result<Outcome, ChangeError> {
        let (next, edit) = self.validate(edit)?;
        if edit.weights.is_some() || edit.stable.is_some() {
            // Any decision about the split ends an in-memory bake.
            self.published.ramps().split_decided(&edit.tenant);
        }
        let origin = Origin {
            reason: origin
                .reason
                .clone()
                .or_else(|| Some(default_reason.to_owned())),
            ..origin.clone()
        };
        let condition = match if_match {
            Some(n) => Condition::IfMatch(n),
            None if matches!(origin.source, Source::Slo | Source::Rollout) => {
                Condition::Judged(self.generation)
            }
            None => Condition::Any,
        };
        let (previous, committed) = match self.store.order(origin.source) {
            Order::CommitFirst => {
                // A fleet store keeps the history: the events go with the
                // commit (their generation is the commit's revision).
                let events = match self.fleet {
                    Some(_) => describe(&self.running, &next, &origin, true, 0),
                    None => Vec::new(),
                };
                let committed = self.commit(edit, condition, events).await?;
                let revision = committed.stored.as_ref().and_then(|s| s.revision);
                (self.swap(next, origin.source, revision), committed)
            }
            Order::ApplyFirst => {
                let previous = self.swap(next, origin.source, None);
                let committed = self
                    .commit(edit, condition, Vec::new())
                    .await
                    .unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "change kept in memory only: not stored");
                        Committed {
                            persisted: false,
                            stored: None,
                        }
                    });
                (previous, committed)
            }
        };
        let applied = match previous {
            Some(previous) => self.record(&previous, &origin, committed.persisted),
            None => {
                self.update_status();
                self.outcome(false)
            }
        };
        let Some(stored) = committed.stored else {
            return Ok(applied);
        };
        if self.published.status().last_error.is_some() {
            // The file was read and is valid again (fixed before the watcher
            // saw it): that ends the reload error, as a reload would.
            self.reload_succeeded();
        }
        // The store may hold more than our edit (another replica's change
        // not yet seen): merge it like any other new version.
        let folded = self.fold(stored);
        Ok(Outcome {
            changed: applied.changed || folded.changed,
            ..folded
        })
    }

    /// Commits one edit under `If-Match`.
    async fn commit(
        &mut self,
        edit: TenantEdit,
        condition: Condition,
        events: Vec<super::events::Event>,
    ) -> Result<Committed, ChangeError> {
        match self.store.commit(vec![edit], condition, events).await {
            Ok(committed) => Ok(committed),
            Err(CommitError::Precondition { current }) => {
                Err(ChangeError::GenerationMismatch { current })
            }
            Err(CommitError::Unavailable(message)) => Err(ChangeError::Store(message)),
        }
    }

    /// Swaps in `next` if it differs from the running state, and records it;
    /// `persisted` says whether the change is in the store, `revision` is
    /// the store's number for it (see `Stored::revision`).
    pub(super) fn apply(
        &mut self,
        next: Config,
        origin: &Origin,
        persisted: bool,
        revision: Option<u64>,
    ) -> Outcome {
        match self.swap(next, origin.source, revision) {
            Some(previous) => self.record(&previous, origin, persisted),
            None => {
                self.update_status();
                self.outcome(false)
            }
        }
    }

    /// Builds the routing table of `config` at `generation`.
    pub(super) fn build(&self, config: Arc<Config>, generation: u64) -> Arc<RoutingTable> {
        Arc::new(
            self.registry
                .build_with(config, generation, &self.addresses),
        )
    }

    /// Builds and publishes the routing table for `next`; returns the state
    /// it replaced, or `None` when nothing changed. The new generation is
    /// the store's `revision` when it numbers its versions, else the next
    /// number.
    pub(super) fn swap(
        &mut self,
        next: Config,
        source: Source,
        revision: Option<u64>,
    ) -> Option<Arc<Config>> {
        if next == *self.running {
            if let Some(r) = revision.filter(|r| *r != self.generation) {
                // The same state at a newer store revision (our own commit
                // read back, another replica's identical decision): serve
                // it under the fleet's number.
                self.generation = r;
                let table = self.build(Arc::clone(&self.running), r);
                self.proxy.table.store(table);
            }
            return None;
        }
        self.generation = revision.unwrap_or(self.generation + 1);
        let next = Arc::new(next);
        let table = self.build(Arc::clone(&next), self.generation);
        // Marked before the new split is visible, so no reader sees the
        // reverted weights without the `reverted` status (the file write
        // that follows can take a while).
        for t in table.tenants() {
            let weights_changed = self
                .running
                .tenant(t.name())
                .is_none_or(|p| p.weights != t.config.weights);
            if weights_changed {
                t.state
                    .reverted
                    .store(source == Source::Slo, Ordering::Relaxed);
            }
        }
        self.proxy.table.store(Arc::clone(&table));
        self.health.reconcile(&table);
        let previous = std::mem::replace(&mut self.running, next);
        self.reconcile_names();
        self.watch_tls_files();
        self.published.ramps().retain(&table);
        for t in table.tenants() {
            let Some(before) = previous.tenant(t.name()) else {
                continue;
            };
            // A candidate that starts getting traffic, or a new candidate
            // after a promotion, is judged on its traffic from now on.
            let newly_candidate = before.stable != t.stable();
            let starts = before.weights.of(before.candidate()) == 0
                && t.config.weights.of(t.candidate()) > 0;
            if newly_candidate || starts {
                t.state.slo.restart(t.candidate());
                self.exposed(t.name());
            }
        }
        Some(previous)
    }

    /// The event of a revert that moved no weights (a cohort's, at weight
    /// 0): from and to the same weights, source `slo`.
    fn latch_event(&self, t: &crate::route::Tenant, origin: &Origin, reason: String) -> Event {
        Event {
            seq: 0,
            at: std::time::SystemTime::now(),
            tenant: Some(t.name().to_owned()),
            source: origin.source,
            actor: origin.actor.clone(),
            from: Some(t.config.weights),
            to: Some(t.config.weights),
            stable: Some(t.stable()),
            reason,
            persisted: self.persisted(),
            generation: self.generation,
        }
    }

    /// Records the events of a change already swapped in, and notifies the
    /// webhook of those the SPEC sends there (sources `slo` and `rollout`).
    fn record(&mut self, previous: &Config, origin: &Origin, persisted: bool) -> Outcome {
        let events = describe(previous, &self.running, origin, persisted, self.generation);
        let webhook = self.running.notify.clone();
        if self.fleet.is_some() {
            // The fleet's history is in the store (this change's events
            // went with its commit; the watch records them here): only the
            // committing replica notifies.
            let committed_here = origin.source != Source::File;
            for mut event in events {
                event.seq = self.generation;
                if let Some(hook) = &webhook
                    && committed_here
                    && matches!(event.source, Source::Slo | Source::Rollout)
                {
                    self.notifier.send(hook, self.generation, &event);
                }
            }
            self.update_status();
            return self.outcome(true);
        }
        let mut log = self.published.events();
        for event in events {
            let recorded = log.record(event);
            if let Some(hook) = &webhook
                && matches!(recorded.source, Source::Slo | Source::Rollout)
            {
                self.notifier.send(hook, recorded.seq, &recorded);
            }
        }
        drop(log);
        self.update_status();
        self.outcome(true)
    }

    /// Watches the certificate files the running state names (tenants',
    /// their `upstream_tls` ones and the webhook's CA bundle), so their
    /// changes reload too.
    pub(super) fn watch_tls_files(&mut self) {
        let files = self.running.tenants.iter().filter_map(|t| t.tls.as_ref());
        let ca = self.running.notify.iter().filter_map(|n| n.ca.as_ref());
        let upstream = std::iter::once(&self.running.defaults)
            .chain(self.running.tenants.iter().map(|t| &t.settings))
            .filter_map(|s| s.upstream_tls.as_ref());
        let upstream_files = upstream.clone().filter_map(|u| u.identity.as_ref());
        let paths = files
            .chain(upstream_files)
            .flat_map(|f| [f.cert.clone(), f.key.clone()])
            .chain(ca.map(|c| c.path.clone()))
            .chain(
                upstream
                    .filter_map(|u| u.ca.as_ref())
                    .map(|c| c.path.clone()),
            )
            .collect::<Vec<_>>();
        if !paths.is_empty() {
            self.store.watch_files(paths);
        }
    }

    /// The running state is all in the store.
    fn persisted(&self) -> bool {
        *self.running == self.stored
    }

    /// The outcome of the change just handled.
    pub(super) fn outcome(&self, changed: bool) -> Outcome {
        Outcome {
            generation: self.generation,
            changed,
            persisted: self.persisted(),
        }
    }

    /// Publishes the generation and persistence to `GET /v1/config`.
    pub(super) fn update_status(&self) {
        let mut status = self.published.status();
        status.generation = self.generation;
        status.persisted = self.persisted();
    }
}

/// An edit setting the split of `tenant`, which ends a running ramp.
fn split_edit(tenant: &str, weights: Weights) -> TenantEdit {
    TenantEdit {
        weights: Some(weights),
        progress: Some(None),
        ..edit_of(tenant)
    }
}
