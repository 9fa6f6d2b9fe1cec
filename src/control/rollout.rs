//! Rollouts and promote bakes: one state machine per tenant.
//!
//! A ramp's progress (its step and when the step began) is control state,
//! stored with the tenant (`rollout.progress`), so it survives a restart
//! and is shared by replicas. Two things are not: the candidate's completed
//! requests when the current step began (a step moves on only after
//! `min_requests` more), and the start of a promote bake on a tenant
//! without a rollout table (which has no `progress` key to live in). Both
//! live here, in one [`Ramp`] per tenant, changed only by the control task.
//!
//! The rollout clock is a [`Change::Tick`]: the tick looks at every running
//! ramp and bake and turns what is due into changes of their own
//! (`Advance`, `Finish`, `EndRamp`, or a `Revert` when the candidate is
//! found in breach), which the loop then applies one by one like any other.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::task::ControlTask;
use super::{Change, ChangeError, Origin, Outcome};
use crate::config::write::TenantEdit;
use crate::config::{Config, RolloutProgress, TenantConfig, Weights};
use crate::route::{RoutingTable, Tenant};
use crate::slo::Verdict;

/// A fleet's pooled (candidate, stable) counts of one exposure.
pub(super) type Pooled = (crate::slo::sequential::Tally, crate::slo::sequential::Tally);

/// One tenant's ramp as the control task tracks it beside the stored
/// progress.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Ramp {
    /// The candidate's completed requests when the current step (or bake)
    /// began; `None` until first looked at (a ramp started by a file edit or
    /// another replica counts from when this process first judged it).
    mark: Option<u64>,
    /// When a promote bake on a tenant without a rollout table began.
    bake: Option<SystemTime>,
}

/// Every tenant's [`Ramp`], by tenant name.
#[derive(Debug, Default)]
pub struct Ramps {
    tenants: HashMap<String, Ramp>,
}

/// Whether a candidate may move on to its next step.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Readiness {
    /// Its verdict is `ok` and it served `min_requests` since the step began.
    Ready,
    /// Not yet: too few requests, or an inconclusive verdict.
    Wait,
    /// Its verdict is a breach (judged on a success, which the request path
    /// does not judge): the candidate must be reverted.
    Breach(String),
}

impl Ramps {
    /// When the promote bake of `tenant` began (tenants without a rollout
    /// table only).
    pub fn bake_started(&self, tenant: &str) -> Option<SystemTime> {
        self.tenants.get(tenant).and_then(|r| r.bake)
    }

    /// A step (or a bake) began with the candidate at `completed` requests.
    fn stepped(&mut self, tenant: &str, completed: u64) {
        self.tenants.entry(tenant.to_owned()).or_default().mark = Some(completed);
    }

    /// A promote bake began on a tenant without a rollout table.
    fn baking(&mut self, tenant: &str, at: SystemTime) {
        self.tenants.entry(tenant.to_owned()).or_default().bake = Some(at);
    }

    /// Takes the promote bakes a fleet store keeps: these run, no other.
    pub(super) fn follow_bakes(&mut self, bakes: &[(String, SystemTime)]) {
        let names: Vec<String> = self.tenants.keys().cloned().collect();
        for name in names {
            if !bakes.iter().any(|(t, _)| *t == name) {
                self.split_decided(&name);
            }
        }
        for (tenant, at) in bakes {
            self.baking(tenant, *at);
        }
    }

    /// The split was decided (weights or stable pool set): an in-memory
    /// bake is over.
    pub(super) fn split_decided(&mut self, tenant: &str) {
        self.update(tenant, |r| r.bake = None);
    }

    /// The ramp is over (reverted, ended): its step mark goes.
    pub(super) fn step_ended(&mut self, tenant: &str) {
        self.update(tenant, |r| r.mark = None);
    }

    /// Forgets the tenants `table` no longer has.
    pub(super) fn retain(&mut self, table: &RoutingTable) {
        self.tenants.retain(|t, _| table.tenant(t).is_some());
    }

    fn update(&mut self, tenant: &str, change: impl FnOnce(&mut Ramp)) {
        if let Some(ramp) = self.tenants.get_mut(tenant) {
            change(ramp);
            if *ramp == Ramp::default() {
                self.tenants.remove(tenant);
            }
        }
    }

    /// Whether the candidate of `t` may move on; marks the step on first
    /// sight.
    /// In a fleet (`pooled`: the fleet's candidate and stable counts, this
    /// replica's included) the counts and the verdict are the fleet's.
    fn readiness(&mut self, t: &Tenant, pooled: Option<Pooled>) -> Readiness {
        let (done, verdict) = match pooled {
            Some((candidate, stable)) => (
                candidate.requests,
                t.state.slo.judge_pooled(candidate, stable).verdict(),
            ),
            None => (t.state.completed(t.candidate()), t.verdict(t.candidate())),
        };
        let ramp = self.tenants.entry(t.name().to_owned()).or_default();
        let mark = *ramp.mark.get_or_insert(done);
        let enough = done.saturating_sub(mark) >= u64::from(t.config.settings.slo.min_requests);
        match verdict {
            Verdict::Ok if enough => Readiness::Ready,
            Verdict::Ok | Verdict::Inconclusive => Readiness::Wait,
            Verdict::Breach(reason) => Readiness::Breach(reason),
        }
    }

    /// What is due at `now`: at most one change per tenant.
    fn due(
        &mut self,
        running: &Config,
        table: &RoutingTable,
        now: SystemTime,
        pooled: &dyn Fn(&Tenant) -> Option<Pooled>,
    ) -> Vec<(Change, Origin)> {
        let mut due: Vec<_> = running
            .tenants
            .iter()
            .filter_map(|t| self.step_due(t, table, now, pooled))
            .collect();
        let ramping = |t: &TenantConfig| t.rollout.as_ref().is_some_and(|r| r.progress.is_some());
        let bakes: Vec<(String, SystemTime)> = self
            .tenants
            .iter()
            .filter(|(t, _)| !running.tenant(t).is_some_and(ramping))
            .filter_map(|(t, r)| Some((t.clone(), r.bake?)))
            .collect();
        for (tenant, since) in bakes {
            let baking = running
                .tenant(&tenant)
                .filter(|t| t.weights == Weights::all_on(t.candidate()));
            let Some(t) = baking else {
                self.split_decided(&tenant);
                continue;
            };
            if elapsed(since, now) < t.settings.slo.window {
                continue;
            }
            match self.judge(table, &tenant, pooled) {
                Readiness::Ready => due.push((Change::Finish { tenant }, Origin::rollout(None))),
                Readiness::Wait => {}
                Readiness::Breach(reason) => due.push(revert(tenant, reason)),
            }
        }
        due
    }

    /// What the ramp of `t` (if one runs) asks for at `now`.
    fn step_due(
        &mut self,
        t: &TenantConfig,
        table: &RoutingTable,
        now: SystemTime,
        pooled: &dyn Fn(&Tenant) -> Option<Pooled>,
    ) -> Option<(Change, Origin)> {
        let rollout = t.rollout.as_ref()?;
        let progress = rollout.progress.as_ref()?;
        let share = *rollout.steps.get(progress.step)?;
        let tenant = t.name.clone();
        if t.weights != Weights::split(t.stable, share) {
            // The split was changed outside the ramp (a file edit, another
            // replica): that decision ends the ramp.
            let reason = "rollout ended: the weights were changed outside it".to_owned();
            return Some((Change::EndRamp { tenant, reason }, Origin::rollout(None)));
        }
        let hold = if share < 100 {
            rollout.interval
        } else {
            rollout.bake
        };
        if elapsed(progress.since, now) < hold {
            return None;
        }
        match self.judge(table, &tenant, pooled) {
            Readiness::Wait => None,
            Readiness::Breach(reason) => Some(revert(tenant, reason)),
            Readiness::Ready if share >= 100 => {
                Some((Change::Finish { tenant }, Origin::rollout(None)))
            }
            Readiness::Ready => {
                let step = progress.step + 1;
                let reason = format!(
                    "rollout step {}/{} at {}%",
                    step + 1,
                    rollout.steps.len(),
                    rollout.steps[step]
                );
                let origin = Origin::rollout(Some(reason));
                Some((Change::Advance { tenant, step }, origin))
            }
        }
    }

    fn judge(
        &mut self,
        table: &RoutingTable,
        tenant: &str,
        pooled: &dyn Fn(&Tenant) -> Option<Pooled>,
    ) -> Readiness {
        table
            .tenant(tenant)
            .map_or(Readiness::Wait, |t| self.readiness(t, pooled(t)))
    }
}

/// The revert a breach found by the clock asks for.
pub(super) fn revert(tenant: String, reason: String) -> (Change, Origin) {
    let origin = Origin::slo(reason.clone());
    (Change::Revert { tenant, reason }, origin)
}

impl ControlTask {
    /// `Change::Tick`: queues every step that is due.
    pub(super) fn tick(&mut self) {
        if self.fleet.as_ref().is_some_and(|s| !s.connected()) {
            // Ramps hold while the fleet's store is away (a step must be
            // committed before it is served).
            return;
        }
        self.fleet_evidence();
        let table = self.proxy.table.load();
        let pooled = |t: &Tenant| self.pooled(t);
        let due = self
            .published
            .ramps()
            .due(&self.running, &table, SystemTime::now(), &pooled);
        self.pending.extend(due);
    }

    /// `Change::StartRollout`: the first step of the tenant's rollout table.
    /// Idempotent: while a ramp runs the same call changes nothing, so a
    /// retried pipeline step cannot pull traffic back to step 1.
    pub(super) async fn start_rollout(
        &mut self,
        tenant: &str,
        force: bool,
        origin: &Origin,
    ) -> Result<Outcome, ChangeError> {
        let t = self.tenant(tenant)?;
        let Some(rollout) = &t.rollout else {
            return Err(ChangeError::Conflict(format!(
                "tenant {tenant} has no [tenants.{tenant}.rollout] table"
            )));
        };
        if rollout.progress.is_some() {
            return Ok(self.outcome(false));
        }
        let first = rollout.steps[0];
        let weights = Weights::split(t.stable, first);
        let reason = format!(
            "rollout started: step 1/{} at {first}%",
            rollout.steps.len()
        );
        self.check_candidate(tenant, weights, force)?;
        let edit = TenantEdit {
            weights: Some(weights),
            progress: Some(Some(progress_at(0))),
            ..edit_of(tenant)
        };
        let outcome = self.edit(edit, None, origin, &reason).await?;
        self.mark_step(tenant);
        Ok(outcome)
    }

    /// `Change::Promote`: candidate to 100 %, then a bake (the rollout
    /// table's, or the SLO window), then `Finish`. Idempotent like a
    /// rollout: a promotion already baking keeps its bake clock.
    pub(super) async fn promote(
        &mut self,
        tenant: &str,
        force: bool,
        origin: &Origin,
    ) -> Result<Outcome, ChangeError> {
        let t = self.tenant(tenant)?;
        let weights = Weights::all_on(t.candidate());
        let baking = t.rollout.as_ref().is_some_and(|r| {
            r.progress
                .as_ref()
                .is_some_and(|p| r.steps.get(p.step) == Some(&100))
        }) || self.published.bake_started(tenant).is_some();
        if baking && t.weights == weights {
            return Ok(self.outcome(false));
        }
        let mut edit = TenantEdit {
            weights: Some(weights),
            ..edit_of(tenant)
        };
        let reason = match &t.rollout {
            Some(r) => {
                edit.progress = Some(Some(progress_at(r.steps.len() - 1)));
                let bake = humantime::format_duration(r.bake);
                format!("promote: candidate at 100%, baking for {bake}")
            }
            None => {
                let window = humantime::format_duration(t.settings.slo.window);
                format!("promote: candidate at 100%, baking for the SLO window ({window})")
            }
        };
        let has_table = t.rollout.is_some();
        if !has_table {
            // Kept by a fleet store, so any replica finishes the bake.
            edit.bake = Some(Some(SystemTime::now()));
        }
        self.check_candidate(tenant, weights, force)?;
        let outcome = self.edit(edit, None, origin, &reason).await?;
        if !has_table {
            self.published.ramps().baking(tenant, SystemTime::now());
        }
        self.mark_step(tenant);
        Ok(outcome)
    }

    /// `Change::Advance`: the ramp's next step.
    pub(super) async fn advance(
        &mut self,
        tenant: &str,
        step: usize,
        origin: &Origin,
    ) -> Result<Outcome, ChangeError> {
        let t = self.tenant(tenant)?;
        let share = t
            .rollout
            .as_ref()
            .and_then(|r| r.steps.get(step))
            .copied()
            .ok_or_else(|| ChangeError::Conflict(format!("{tenant} has no rollout step {step}")))?;
        let edit = TenantEdit {
            weights: Some(Weights::split(t.stable, share)),
            progress: Some(Some(progress_at(step))),
            ..edit_of(tenant)
        };
        let result = self.edit(edit, None, origin, "rollout step").await;
        if let Err(e) = &result {
            log_step_failure(tenant, e, "rollout step failed");
        }
        self.mark_step(tenant);
        result
    }

    /// `Change::EndRamp`: stops a ramp without touching the weights.
    pub(super) async fn end_ramp(
        &mut self,
        tenant: &str,
        reason: &str,
        origin: &Origin,
    ) -> Result<Outcome, ChangeError> {
        let edit = TenantEdit {
            progress: Some(None),
            ..edit_of(tenant)
        };
        let result = self.edit(edit, None, origin, reason).await;
        if let Err(e) = &result {
            log_step_failure(tenant, e, "ending the rollout failed");
        }
        self.published.ramps().step_ended(tenant);
        result
    }

    /// `Change::Finish`: the bake is over; the candidate becomes the
    /// stable pool.
    pub(super) async fn finish(
        &mut self,
        tenant: &str,
        origin: &Origin,
    ) -> Result<Outcome, ChangeError> {
        let new_stable = self.tenant(tenant)?.candidate();
        let edit = TenantEdit {
            stable: Some(new_stable),
            progress: Some(None),
            ..edit_of(tenant)
        };
        let reason = format!("promoted: {new_stable} is now the stable pool");
        let origin = Origin {
            reason: origin.reason.clone().or(Some(reason)),
            ..origin.clone()
        };
        let result = self.edit(edit, None, &origin, "promoted").await;
        if let Err(e) = &result {
            log_step_failure(tenant, e, "promotion failed");
        }
        let mut ramps = self.published.ramps();
        ramps.split_decided(tenant);
        ramps.step_ended(tenant);
        result
    }

    /// A step began: counts the candidate's requests from here.
    fn mark_step(&mut self, tenant: &str) {
        let table = self.proxy.table.load();
        if let Some(t) = table.tenant(tenant) {
            let done = match self.pooled(t) {
                Some((candidate, _)) => candidate.requests,
                None => t.state.completed(t.candidate()),
            };
            self.published.ramps().stepped(tenant, done);
        }
    }
}

/// An edit of `tenant` that sets nothing yet.
pub(super) fn edit_of(tenant: &str) -> TenantEdit {
    TenantEdit {
        tenant: tenant.to_owned(),
        ..TenantEdit::default()
    }
}

/// Progress at `step`, starting now (to the second, as the file keeps it).
fn progress_at(step: usize) -> RolloutProgress {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    RolloutProgress {
        step,
        since: UNIX_EPOCH + Duration::from_secs(secs),
    }
}

fn elapsed(since: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(since).unwrap_or(Duration::ZERO)
}

/// A step another replica took first (its commit found the state moved on)
/// is expected in a fleet; anything else is an error.
fn log_step_failure(tenant: &str, e: &ChangeError, what: &str) {
    if let ChangeError::GenerationMismatch { current } = e {
        tracing::debug!(%tenant, current, "{what}: the fleet's state moved on (taken by another replica)");
    } else {
        tracing::error!(%tenant, error = %e, "{what}");
    }
}
