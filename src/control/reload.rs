//! Reloads: a new version of the stored state, merged into the running one.
//!
//! The control file may change under turnout at any time (an operator, a
//! GitOps sync, another replica's write-through). A reload loads it from the
//! store, counts and shows the outcome (`turnout_reloads_total`, the reload
//! status of `GET /v1/config`), and merges it with the running state by the
//! rule of SPEC section 7 (`merge`): a key the file changed takes the file's
//! value, a key it did not keeps the running one.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::merge::merge;
use super::store::{Load, Stored};
use super::task::ControlTask;
use super::{ChangeError, Origin, Outcome};
use crate::config::ConfigError;

impl ControlTask {
    /// `Change::Reload`: loads the store's state and applies it if it is
    /// new. `forced` looks even at a version seen before.
    pub(super) async fn reload(&mut self, forced: bool) -> Result<Outcome, ChangeError> {
        // Reverts held while the fleet store was away commit first, judged
        // on the state they were decided from, before newer state is read.
        if !self.held.is_empty() {
            self.commit_all_held().await;
        }
        // An unchanged file may still name changed certificates.
        let has_tls = self.running.tenants.iter().any(|t| t.tls.is_some())
            || self.running.notify.as_ref().is_some_and(|n| n.ca.is_some())
            || self.running.defaults.upstream_tls.is_some()
            || self
                .running
                .tenants
                .iter()
                .any(|t| t.settings.upstream_tls.is_some());
        let load = if forced || has_tls {
            Load::Always
        } else {
            Load::IfChanged
        };
        match self.store.load(load).await {
            // The same version as last time, valid or not: its verdict
            // stands (a failed one is still in `last_error`).
            Ok(None) => Ok(self.outcome(false)),
            Ok(Some(mut stored)) => {
                let file_error = stored.file_error.take();
                if stored.file_parsed {
                    self.reload_succeeded();
                } else if file_error.is_none() {
                    // Only the fleet's state moved: a broken control file's
                    // error still stands until the file is fixed.
                    self.proxy.metrics.reloads_ok.increment(1);
                }
                // Names the new version brings resolve before it applies.
                self.resolve_new(&stored.config).await;
                let outcome = self.fold(stored);
                match file_error {
                    Some(error) => Err(self.reload_failed(error)),
                    None => Ok(outcome),
                }
            }
            Err(error) => Err(self.reload_failed(error)),
        }
    }

    /// A valid version was read: the reload error, if any, is over.
    pub(super) fn reload_succeeded(&mut self) {
        self.proxy.metrics.reloads_ok.increment(1);
        let mut status = self.published.status();
        status.last_reload = Some(SystemTime::now());
        status.last_error = None;
    }

    /// A version that does not read, parse or validate: the last good state
    /// keeps serving; the error is logged, counted and shown.
    fn reload_failed(&mut self, error: ConfigError) -> ChangeError {
        self.proxy.metrics.reloads_error.increment(1);
        tracing::error!(path = %self.store.path().display(), error = %error, "control file not applied; the last good state keeps serving");
        let mut status = self.published.status();
        status.last_reload = Some(SystemTime::now());
        status.last_error = Some(error.to_string());
        ChangeError::File(error)
    }

    /// Merges a new stored version into the running state and applies it.
    pub(super) fn fold(&mut self, stored: Stored) -> Outcome {
        let mut file = stored.config;
        if file.store != self.running.store {
            tracing::warn!(
                "[store] changed in the control file; the store changes on restart only"
            );
            file.store.clone_from(&self.running.store);
        }
        if file.listen != self.running.listen {
            tracing::warn!(
                "[listen] changed in the control file; listeners change on restart only"
            );
            file.listen = self.running.listen.clone();
        }
        let merged = merge(&self.running, &self.stored, file.clone());
        self.stored = file;
        let persisted = merged == self.stored;
        let outcome = self.apply(merged, &Origin::file(), persisted, stored.revision);
        if self.fleet.is_some() && stored.revision.is_some() && !self.fleet_read {
            // The first read of the fleet's state (etcd was away at start):
            // a candidate exposed in it was exposed before this replica
            // knew, so its exposure is the fleet's, taken from the peers.
            self.fleet_read = true;
            self.exposures.clear();
        }
        if let Some(bakes) = &stored.bakes {
            self.published.ramps().follow_bakes(bakes);
        }
        let table = self.proxy.table.load();
        if self.fleet.is_some() && stored.revision.is_some() {
            // The fleet's store says which tenants are reverted (by any
            // replica, or lifted by a new intent anywhere); a revert held
            // here, not yet committed, keeps its mark.
            for t in table.tenants() {
                if !self.held.contains_key(t.name()) {
                    let reverted = stored.reverted.iter().any(|r| r == t.name());
                    t.state.reverted.store(reverted, Ordering::Relaxed);
                }
            }
        }
        outcome
    }
}
