//! Evidence across a fleet (SPEC section 12): this replica's SLO counts
//! published every second, and the fleet's pooled counts judged.
//!
//! Each replica sees a slice of the traffic. Ramp steps and promotions need
//! the verdict `ok` on the fleet's pooled candidate and stable counts
//! (`rollout` asks [`ControlTask::pooled`]); a revert comes from whichever
//! is first: this replica's own breach (the request path: the verdict is
//! valid on any sample) or the pooled counts' (judged here each second).
//! Counts are added up only within one exposure: the generation at which
//! the candidate began getting traffic (or became the candidate), which is
//! the same etcd revision on every replica that applied it. A replica
//! started while the candidate was exposed did not see that revision
//! applied; it takes the exposure its peers publish.

use std::time::{Duration, Instant};

use super::rollout::{Pooled, revert};
use super::store::{Counts, Evidence};
use super::task::ControlTask;
use crate::route::Tenant;
use crate::slo::Verdict;
use crate::slo::sequential::Tally;

/// How often this replica's counts are published and the pooled ones judged.
const EVERY: Duration = Duration::from_secs(1);

fn sum(a: Tally, b: Tally) -> Tally {
    Tally {
        requests: a.requests + b.requests,
        errors: a.errors + b.errors,
        slow: a.slow + b.slow,
    }
}

impl ControlTask {
    /// The exposure `tenant`'s candidate counts belong to.
    fn exposure(&self, tenant: &str) -> u64 {
        self.exposures.get(tenant).map_or(0, |(g, _)| *g)
    }

    /// Takes the exposure the other replicas count in for a tenant whose
    /// exposure began before this replica started (it has none of its
    /// own): its counts, taken since it started, belong to that exposure,
    /// so they are pooled with the fleet's at once. Taken again each round
    /// while newer ones appear (the first one seen may be a stale key: a
    /// dead replica's, or one not yet republished since a new exposure).
    fn adopt_exposure(&mut self, tenant: &str) {
        let own = match self.exposures.get(tenant) {
            Some((_, false)) => return,
            Some((g, true)) => Some(*g),
            None => None,
        };
        let Some(exposure) = self.store.peer_exposure(tenant, self.generation) else {
            return;
        };
        if own.is_none_or(|own| exposure > own) {
            tracing::info!(%tenant, exposure, "joined the fleet's exposure of the candidate");
            self.exposures.insert(tenant.to_owned(), (exposure, true));
        }
    }

    /// A new exposure of `tenant`'s candidate began at the serving
    /// generation (its counts started afresh).
    pub(super) fn exposed(&mut self, tenant: &str) {
        self.exposures
            .insert(tenant.to_owned(), (self.generation, false));
    }

    /// The fleet's (candidate, stable) counts of `t`'s current exposure,
    /// this replica's included; `None` without a fleet.
    pub(super) fn pooled(&self, t: &Tenant) -> Option<Pooled> {
        self.fleet.as_ref()?;
        let others = self.store.pooled(t.name(), self.exposure(t.name()))?;
        let (candidate, stable) = t.state.slo.tallies(t.stable());
        Some((sum(candidate, others.candidate), sum(stable, others.stable)))
    }

    /// Every second in a fleet: publishes this replica's counts, and
    /// reverts a candidate the pooled counts find in breach.
    pub(super) fn fleet_evidence(&mut self) {
        if self.fleet.is_none() || self.evidence_at.is_some_and(|t| t.elapsed() < EVERY) {
            return;
        }
        self.evidence_at = Some(Instant::now());
        let table = self.proxy.table.load_full();
        let mut evidence = Evidence::new();
        for t in table.tenants() {
            if t.config.weights.of(t.candidate()) == 0 {
                continue;
            }
            self.adopt_exposure(t.name());
            let (candidate, stable) = t.state.slo.tallies(t.stable());
            let exposure = self.exposure(t.name());
            evidence.insert(
                t.name().to_owned(),
                Counts {
                    exposure,
                    candidate,
                    stable,
                },
            );
            let Some((c, s)) = self.pooled(t) else {
                continue;
            };
            if c.requests == candidate.requests {
                // No other replica's counts: the request path judges these.
                continue;
            }
            if let Verdict::Breach(reason) = t.state.slo.judge_pooled(c, s).verdict() {
                let reason = format!("{reason} (pooled across the fleet)");
                self.pending.push_back(revert(t.name().to_owned(), reason));
            }
        }
        self.store.publish(evidence);
    }
}
