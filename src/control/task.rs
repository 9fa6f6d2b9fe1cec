//! The control task: applies changes one at a time.
//!
//! Besides the requests of `Control::submit`, it takes SLO breaches from the
//! request path and ticks a clock for rollouts, all in one loop, so no two
//! changes ever race. Its file work (read, validate, lock, write, rename)
//! runs on the blocking pool (`disk.rs`) and is awaited, so a slow disk
//! delays the next change, never a request.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use super::disk::Disk;
use super::events::{Event, EventLog};
use super::merge::merge;
use super::{Change, ChangeError, Control, Origin, Outcome, ReloadStatus, Request, Shared, Source};
use crate::app::ListenOverrides;
use crate::config::write::TenantEdit;
use crate::config::{self, Color, Config, RolloutProgress, TenantConfig, Weights};
use crate::health;
use crate::notify::Notifier;
use crate::proxy::Proxy;
use crate::route::{Breach, Registry, endpoint};
use crate::slo::Verdict;

/// Changes queued before senders wait.
const QUEUE: usize = 64;
/// How often running rollouts are looked at.
const ROLLOUT_TICK: Duration = Duration::from_millis(100);

/// What the control task needs from the rest of the process.
pub struct Parts {
    pub path: PathBuf,
    pub overrides: ListenOverrides,
    /// The file's text at start-up, already parsed into the serving table.
    pub text: String,
    pub registry: Arc<Registry>,
    pub proxy: Arc<Proxy>,
    pub health: Arc<health::Checker>,
    pub notifier: Notifier,
    pub breaches: mpsc::UnboundedReceiver<Breach>,
    /// The task ends (and stops watching files and probing) when this
    /// turns true.
    pub stop: tokio::sync::watch::Receiver<bool>,
}

struct ControlTask {
    /// The control file, and the file work done on it off the runtime.
    disk: Disk,
    registry: Arc<Registry>,
    proxy: Arc<Proxy>,
    health: Arc<health::Checker>,
    notifier: Notifier,
    shared: Arc<Shared>,
    /// The state being served (the same `Arc` the routing table holds).
    running: Arc<Config>,
    /// The last version of the file that parsed and validated.
    file: Config,
    /// The text last read from the file, valid or not; `None` after a read
    /// that failed, so whatever is read next is looked at.
    file_text: Option<String>,
    generation: u64,
    /// Candidate requests completed when the current rollout step began.
    step_marks: HashMap<String, u64>,
    /// Watches the control file's directory and those of TLS files.
    watcher: Option<super::watch::Watcher>,
}

/// Starts the control task for a proxy already serving the file at
/// generation 1.
pub fn spawn(parts: Parts) -> Control {
    let table = parts.proxy.table.load_full();
    let running = Arc::clone(&table.config);
    let shared = Arc::new(Shared {
        events: Mutex::new(EventLog::default()),
        status: Mutex::new(ReloadStatus {
            path: parts.path.clone(),
            generation: table.generation,
            last_reload: Some(SystemTime::now()),
            last_error: None,
            persisted: true,
        }),
        bakes: Mutex::default(),
    });
    parts.health.reconcile(&table);
    let (tx, mut rx) = mpsc::channel::<Request>(QUEUE);
    let mut breaches = parts.breaches;
    let mut stop = parts.stop;
    let mut task = ControlTask {
        disk: Disk {
            path: parts.path,
            overrides: parts.overrides,
        },
        registry: parts.registry,
        proxy: parts.proxy,
        health: parts.health,
        notifier: parts.notifier,
        shared: Arc::clone(&shared),
        file: (*running).clone(),
        running,
        file_text: Some(parts.text),
        generation: table.generation,
        step_marks: HashMap::new(),
        watcher: None,
    };
    let control = Control { tx, shared };
    task.watcher = Some(super::watch::spawn(task.path(), control.clone()));
    task.watch_tls_files();
    tokio::spawn(async move {
        // Temporary files of a writer killed mid-write (kill -9) go first.
        if let Err(error) = task.disk.run(Disk::clean_up).await {
            tracing::warn!(%error, "stale temporary files not looked for");
        }
        let mut tick = tokio::time::interval(ROLLOUT_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                req = rx.recv() => {
                    let Some(req) = req else { break };
                    let result = task.handle(req.change, &req.origin).await;
                    let _ = req.reply.send(result);
                }
                Some(breach) = breaches.recv() => task.revert(breach).await,
                _ = tick.tick() => task.advance_rollouts().await,
                _ = crate::server::stopped(&mut stop) => break,
            }
        }
        task.health.stop();
    });
    control
}

impl ControlTask {
    async fn handle(&mut self, change: Change, origin: &Origin) -> Result<Outcome, ChangeError> {
        match change {
            Change::Reload { forced } => self.reload(forced).await,
            Change::SetWeights {
                tenant,
                weights,
                if_match,
                force,
            } => {
                self.check_generation(if_match)?;
                self.check_candidate(&tenant, weights, force)?;
                self.set(
                    &tenant,
                    Plan::weights(weights).ends_ramp(),
                    origin,
                    "weights set",
                )
                .await
            }
            Change::Rollback { tenant, if_match } => {
                self.check_generation(if_match)?;
                let stable = self.tenant(&tenant)?.stable;
                self.set(
                    &tenant,
                    Plan::weights(all_on(stable)).ends_ramp(),
                    origin,
                    "rollback to the stable pool",
                )
                .await
            }
            Change::StartRollout { tenant, force } => {
                let t = self.tenant(&tenant)?;
                let Some(rollout) = &t.rollout else {
                    return Err(ChangeError::Conflict(format!(
                        "tenant {tenant} has no [tenants.{tenant}.rollout] table"
                    )));
                };
                // Idempotent: while a ramp runs (of this candidate, the one
                // pool that is not stable) the same call changes nothing, so
                // a retried pipeline step cannot pull traffic back to step 1.
                if rollout.progress.is_some() {
                    return Ok(self.outcome(false));
                }
                let first = rollout.steps[0];
                let weights = share_weights(t.stable, first);
                self.check_candidate(&tenant, weights, force)?;
                let plan = Plan::weights(weights).progress(Some(progress_at(0)));
                let reason = format!(
                    "rollout started: step 1/{} at {first}%",
                    rollout.steps.len()
                );
                let outcome = self.set(&tenant, plan, origin, &reason).await?;
                self.mark_step(&tenant);
                Ok(outcome)
            }
            Change::Promote { tenant, force } => {
                let t = self.tenant(&tenant)?;
                let weights = all_on(t.candidate());
                // Idempotent like a rollout: a promotion already baking keeps
                // its bake clock (a ramp below 100% is moved on to 100%).
                let baking = t.rollout.as_ref().is_some_and(|r| {
                    r.progress
                        .as_ref()
                        .is_some_and(|p| r.steps.get(p.step) == Some(&100))
                }) || self.bakes().contains_key(&tenant);
                if baking && t.weights == weights {
                    return Ok(self.outcome(false));
                }
                self.check_candidate(&tenant, weights, force)?;
                let (plan, reason) = match &t.rollout {
                    Some(r) => {
                        let last = r.steps.len() - 1;
                        let bake = humantime::format_duration(r.bake);
                        (
                            Plan::weights(weights).progress(Some(progress_at(last))),
                            format!("promote: candidate at 100%, baking for {bake}"),
                        )
                    }
                    None => {
                        let window = humantime::format_duration(t.settings.slo.window);
                        (
                            Plan::weights(weights),
                            format!(
                                "promote: candidate at 100%, baking for the SLO window ({window})"
                            ),
                        )
                    }
                };
                let has_table = t.rollout.is_some();
                let outcome = self.set(&tenant, plan, origin, &reason).await?;
                if !has_table {
                    self.bakes().insert(tenant.clone(), SystemTime::now());
                }
                self.mark_step(&tenant);
                Ok(outcome)
            }
        }
    }

    fn tenant(&self, name: &str) -> Result<&TenantConfig, ChangeError> {
        self.running
            .tenant(name)
            .ok_or_else(|| ChangeError::UnknownTenant(name.to_owned()))
    }

    fn bakes(&self) -> std::sync::MutexGuard<'_, HashMap<String, SystemTime>> {
        self.shared.bakes.lock().unwrap_or_else(|p| p.into_inner())
    }

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
    fn check_candidate(
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

    /// Applies a plan to one tenant: validate, write through, apply, and fold
    /// in whatever else the file on disk holds.
    async fn set(
        &mut self,
        tenant: &str,
        plan: Plan,
        origin: &Origin,
        default_reason: &str,
    ) -> Result<Outcome, ChangeError> {
        let mut next = (*self.running).clone();
        let t = next
            .tenant_mut(tenant)
            .ok_or_else(|| ChangeError::UnknownTenant(tenant.to_owned()))?;
        let mut edit = TenantEdit {
            tenant: tenant.to_owned(),
            ..Default::default()
        };
        if let Some(w) = plan.weights {
            t.weights = w;
            edit.weights = Some(w);
        }
        if let Some(stable) = plan.stable {
            t.stable = stable;
            edit.stable = Some(stable);
        }
        if let Some(progress) = plan.progress
            && let Some(rollout) = t.rollout.as_mut()
            && rollout.progress != progress
        {
            rollout.progress = progress.clone();
            edit.progress = Some(progress);
        }
        if let Some((_, problem)) = t.empty_pool_in_use() {
            return Err(ChangeError::Conflict(problem));
        }
        if plan.weights.is_some() || plan.stable.is_some() {
            // Any decision about the split ends an in-memory bake.
            self.bakes().remove(tenant);
        }
        let origin = Origin {
            reason: origin
                .reason
                .clone()
                .or_else(|| Some(default_reason.to_owned())),
            ..origin.clone()
        };
        // Traffic moves first; the file (a lock, a write, two fsyncs) after.
        let previous = self.swap(next, origin.source);
        let written = self.write_through(vec![edit]).await;
        let applied = match previous {
            Some(previous) => self.record(&previous, &origin, written.is_some()),
            None => {
                self.update_status();
                self.outcome(false)
            }
        };
        let Some((text, file)) = written else {
            return Ok(applied);
        };
        if self.shared.status().last_error.is_some() {
            // The file was read and is valid again (fixed before the watcher
            // saw it): that ends the reload error, as a reload would.
            self.reload_succeeded();
        }
        // The file may hold more than our edit (another replica's change not
        // yet seen): merge it like any other file change.
        let folded = self.fold_file(text, file);
        Ok(Outcome {
            changed: applied.changed || folded.changed,
            ..folded
        })
    }

    /// Edits the file on disk and replaces it; returns the written text and
    /// its parsed state, or `None` (logged) when the file cannot be written.
    async fn write_through(&self, edits: Vec<TenantEdit>) -> Option<(String, Config)> {
        let result = self
            .disk
            .run(move |disk| disk.write_through(&edits))
            .await
            .and_then(|written| written);
        match result {
            Ok(written) => Some(written),
            Err(error) => {
                tracing::warn!(path = %self.path().display(), %error, "change kept in memory only: the control file was not updated");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        &self.disk.path
    }

    async fn reload(&mut self, forced: bool) -> Result<Outcome, ChangeError> {
        let metrics = Arc::clone(&self.proxy.metrics);
        let read = self.disk.run(Disk::read).await;
        let text = match read.unwrap_or_else(|lost| Err(self.disk.error(lost))) {
            Ok(t) => t,
            Err(error) => {
                // Nothing was read: whatever the file holds next is news,
                // even the text it held before.
                self.file_text = None;
                return Err(self.reload_failed(error, &metrics));
            }
        };
        // An unchanged file may still name changed certificates.
        let has_tls = self.running.tenants.iter().any(|t| t.tls.is_some())
            || self.running.notify.as_ref().is_some_and(|n| n.ca.is_some());
        if !forced && self.file_text.as_ref() == Some(&text) && !has_tls {
            // The same text as last time, valid or not: its verdict stands
            // (a failed one is still in `last_error`).
            return Ok(self.outcome(false));
        }
        self.file_text = Some(text.clone());
        if text.trim().is_empty() {
            // Most likely caught between a truncate and a write; never a
            // reason to drop every tenant.
            let error = self.disk.error("the control file is empty".to_owned());
            return Err(self.reload_failed(error, &metrics));
        }
        let parsed = self
            .disk
            .run(move |disk| disk.parse(&text).map(|file| (text, file)))
            .await;
        match parsed.unwrap_or_else(|lost| Err(self.disk.error(lost))) {
            Ok((text, file)) => {
                self.reload_succeeded();
                Ok(self.fold_file(text, file))
            }
            Err(error) => Err(self.reload_failed(error, &metrics)),
        }
    }

    /// A valid version of the file was read: the reload error, if any, is
    /// over.
    fn reload_succeeded(&mut self) {
        self.proxy.metrics.reloads_ok.increment(1);
        let mut status = self.shared.status();
        status.last_reload = Some(SystemTime::now());
        status.last_error = None;
    }

    fn reload_failed(
        &mut self,
        error: config::ConfigError,
        metrics: &crate::metrics::Metrics,
    ) -> ChangeError {
        metrics.reloads_error.increment(1);
        tracing::error!(path = %self.path().display(), error = %error, "control file not applied; the last good state keeps serving");
        let mut status = self.shared.status();
        status.last_reload = Some(SystemTime::now());
        status.last_error = Some(error.to_string());
        ChangeError::File(error)
    }

    /// Merges a new version of the file into the running state and applies it.
    fn fold_file(&mut self, text: String, mut file: Config) -> Outcome {
        if file.listen != self.running.listen {
            tracing::warn!(
                "[listen] changed in the control file; listeners change on restart only"
            );
            file.listen = self.running.listen.clone();
        }
        let merged = merge(&self.running, &self.file, file.clone());
        self.file = file;
        self.file_text = Some(text);
        let persisted = merged == self.file;
        self.apply(merged, &Origin::file(), persisted)
    }

    /// Swaps in `next` if it differs from the running state, and records it;
    /// `persisted` says whether the change is in the file.
    fn apply(&mut self, next: Config, origin: &Origin, persisted: bool) -> Outcome {
        match self.swap(next, origin.source) {
            Some(previous) => self.record(&previous, origin, persisted),
            None => {
                self.update_status();
                self.outcome(false)
            }
        }
    }

    /// Builds and publishes the routing table for `next`; returns the state
    /// it replaced, or `None` when nothing changed.
    fn swap(&mut self, next: Config, source: Source) -> Option<Arc<Config>> {
        if next == *self.running {
            return None;
        }
        self.generation += 1;
        let next = Arc::new(next);
        let table = Arc::new(self.registry.build(Arc::clone(&next), self.generation));
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
        self.watch_tls_files();
        self.step_marks.retain(|t, _| table.tenant(t).is_some());
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
            }
        }
        Some(previous)
    }

    /// Records the events of a change already swapped in.
    fn record(&mut self, previous: &Config, origin: &Origin, persisted: bool) -> Outcome {
        let events = describe(previous, &self.running, origin, persisted, self.generation);
        let webhook = self.running.notify.clone();
        let mut log = self.shared.events();
        for event in events {
            let recorded = log.record(event);
            if let Some(hook) = &webhook
                && matches!(recorded.source, Source::Slo | Source::Rollout)
            {
                self.notifier.send(hook, recorded);
            }
        }
        drop(log);
        self.update_status();
        self.outcome(true)
    }

    /// Watches the certificate files the running state names (tenants'
    /// and the webhook's CA bundle), so their changes reload too.
    fn watch_tls_files(&mut self) {
        if let Some(w) = self.watcher.as_mut() {
            let files = self.running.tenants.iter().filter_map(|t| t.tls.as_ref());
            let ca = self.running.notify.iter().filter_map(|n| n.ca.as_ref());
            w.ensure(
                files
                    .flat_map(|f| [f.cert.as_path(), f.key.as_path()])
                    .chain(ca.map(|c| c.path.as_path())),
            );
        }
    }

    /// The running state is all in the file.
    fn persisted(&self) -> bool {
        *self.running == self.file
    }

    fn outcome(&self, changed: bool) -> Outcome {
        Outcome {
            generation: self.generation,
            changed,
            persisted: self.persisted(),
        }
    }

    fn update_status(&self) {
        let mut status = self.shared.status();
        status.generation = self.generation;
        status.persisted = self.persisted();
    }

    /// The SLO guard's revert: all traffic to stable, through the one path.
    async fn revert(&mut self, breach: Breach) {
        let table = self.proxy.table.load_full();
        let Some(tenant) = table.tenant(&breach.tenant) else {
            return;
        };
        let state = Arc::clone(&tenant.state);
        let stable = tenant.stable();
        let candidate = tenant.candidate();
        if tenant.config.weights.of(candidate) > 0 {
            let origin = Origin {
                source: Source::Slo,
                actor: None,
                reason: Some(breach.reason.clone()),
            };
            let plan = Plan::weights(all_on(stable)).ends_ramp();
            match self.set(&breach.tenant, plan, &origin, "slo breach").await {
                Ok(_) => {
                    state.metrics.reverts.increment(1);
                    tracing::warn!(tenant = %breach.tenant, pool = candidate.as_str(), reason = %breach.reason, "candidate reverted: SLO breached");
                }
                Err(e) => tracing::error!(tenant = %breach.tenant, error = %e, "SLO revert failed"),
            }
        }
        // The candidate starts afresh: its next traffic is judged on its own.
        state.slo.restart(candidate);
        self.step_marks.remove(&breach.tenant);
        state.breach_handled();
    }

    /// Moves every running ramp (and promote bake) along when its time has
    /// come and its SLO holds.
    async fn advance_rollouts(&mut self) {
        let now = SystemTime::now();
        let ramps: Vec<(String, usize, SystemTime)> = self
            .running
            .tenants
            .iter()
            .filter_map(|t| {
                let p = t.rollout.as_ref()?.progress.as_ref()?;
                Some((t.name.clone(), p.step, p.since))
            })
            .collect();
        for (tenant, step, since) in ramps {
            self.advance(&tenant, step, since, now).await;
        }
        let bakes: Vec<(String, SystemTime)> =
            self.bakes().iter().map(|(t, s)| (t.clone(), *s)).collect();
        for (tenant, since) in bakes {
            let Some(t) = self.running.tenant(&tenant) else {
                self.bakes().remove(&tenant);
                continue;
            };
            if t.weights != all_on(t.candidate()) {
                self.bakes().remove(&tenant);
                continue;
            }
            let window = t.settings.slo.window;
            if elapsed(since, now) >= window && self.ready_to_move(&tenant).await {
                self.finish_promotion(&tenant).await;
            }
        }
    }

    async fn advance(&mut self, tenant: &str, step: usize, since: SystemTime, now: SystemTime) {
        let Some(t) = self.running.tenant(tenant) else {
            return;
        };
        let stable = t.stable;
        let Some(rollout) = t.rollout.clone() else {
            return;
        };
        let Some(&share) = rollout.steps.get(step) else {
            return;
        };
        if t.weights != share_weights(stable, share) {
            // The split was changed outside the ramp (a file edit, another
            // replica): that decision ends the ramp.
            self.end_ramp(tenant, "rollout ended: the weights were changed outside it")
                .await;
            return;
        }
        let hold = if share < 100 {
            rollout.interval
        } else {
            rollout.bake
        };
        if elapsed(since, now) < hold || !self.ready_to_move(tenant).await {
            return;
        }
        if share >= 100 {
            self.finish_promotion(tenant).await;
            return;
        }
        let next = step + 1;
        let next_share = rollout.steps[next];
        let weights = share_weights(stable, next_share);
        let plan = Plan::weights(weights).progress(Some(progress_at(next)));
        let origin = Origin {
            source: Source::Rollout,
            actor: None,
            reason: Some(format!(
                "rollout step {}/{} at {next_share}%",
                next + 1,
                rollout.steps.len()
            )),
        };
        if let Err(e) = self.set(tenant, plan, &origin, "rollout step").await {
            tracing::error!(%tenant, error = %e, "rollout step failed");
        }
        self.mark_step(tenant);
    }

    /// The candidate may move on: its verdict is `ok` and it has served at
    /// least `min_requests` since the step began.
    async fn ready_to_move(&mut self, tenant: &str) -> bool {
        let table = self.proxy.table.load();
        let Some(t) = table.tenant(tenant) else {
            return false;
        };
        let done = t.state.completed(t.candidate());
        let mark = *self.step_marks.entry(tenant.to_owned()).or_insert(done);
        let enough = done.saturating_sub(mark) >= u64::from(t.config.settings.slo.min_requests);
        match t.verdict(t.candidate()) {
            Verdict::Ok => enough,
            Verdict::Inconclusive => false,
            Verdict::Breach(reason) => {
                // Judged on a success (errors are judged as they happen):
                // a breach found here reverts all the same.
                let breach = Breach {
                    tenant: tenant.to_owned(),
                    reason,
                };
                drop(table);
                self.revert(breach).await;
                false
            }
        }
    }

    /// Stops a ramp without touching the weights.
    async fn end_ramp(&mut self, tenant: &str, reason: &str) {
        let origin = Origin {
            source: Source::Rollout,
            actor: None,
            reason: Some(reason.to_owned()),
        };
        let plan = Plan::default().progress(None);
        if let Err(e) = self.set(tenant, plan, &origin, reason).await {
            tracing::error!(%tenant, error = %e, "ending the rollout failed");
        }
        self.step_marks.remove(tenant);
    }

    fn mark_step(&mut self, tenant: &str) {
        let table = self.proxy.table.load();
        if let Some(t) = table.tenant(tenant) {
            self.step_marks
                .insert(tenant.to_owned(), t.state.completed(t.candidate()));
        }
    }

    /// The bake is over: the candidate becomes the stable pool.
    async fn finish_promotion(&mut self, tenant: &str) {
        let Some(t) = self.running.tenant(tenant) else {
            return;
        };
        let new_stable = t.candidate();
        let plan = Plan {
            weights: None,
            stable: Some(new_stable),
            progress: Some(None),
        };
        let origin = Origin {
            source: Source::Rollout,
            actor: None,
            reason: Some(format!("promoted: {new_stable} is now the stable pool")),
        };
        if let Err(e) = self.set(tenant, plan, &origin, "promoted").await {
            tracing::error!(%tenant, error = %e, "promotion failed");
        }
        self.bakes().remove(tenant);
        self.step_marks.remove(tenant);
    }
}

/// What one change does to a tenant's keys.
#[derive(Debug, Default)]
struct Plan {
    weights: Option<Weights>,
    stable: Option<Color>,
    /// `Some(None)` ends a ramp.
    progress: Option<Option<RolloutProgress>>,
}

impl Plan {
    fn weights(w: Weights) -> Plan {
        Plan {
            weights: Some(w),
            ..Plan::default()
        }
    }

    fn progress(mut self, p: Option<RolloutProgress>) -> Plan {
        self.progress = Some(p);
        self
    }

    /// A split decided outside the ramp ends the ramp.
    fn ends_ramp(self) -> Plan {
        self.progress(None)
    }
}

fn all_on(pool: Color) -> Weights {
    Weights::all_on(pool)
}

/// Weights giving the candidate (the pool other than `stable`) `percent`.
fn share_weights(stable: Color, percent: u32) -> Weights {
    Weights::split(stable, percent)
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

/// One event per tenant the change touched (or one without a tenant when
/// only process-wide settings changed).
fn describe(
    before: &Config,
    after: &Config,
    origin: &Origin,
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
