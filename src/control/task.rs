//! The control task: applies changes one at a time.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::mpsc;

use super::events::{Event, EventLog};
use super::merge::merge;
use super::{Change, ChangeError, Control, Origin, Outcome, ReloadStatus, Request, Shared};
use crate::app::ListenOverrides;
use crate::config::write::{self, TenantEdit};
use crate::config::{self, Config, TenantConfig, Weights};
use crate::proxy::Proxy;
use crate::route::{Registry, endpoint};

/// Changes queued before senders wait.
const QUEUE: usize = 64;

struct ControlTask {
    path: PathBuf,
    overrides: ListenOverrides,
    registry: Arc<Registry>,
    proxy: Arc<Proxy>,
    shared: Arc<Shared>,
    /// The state being served (the same `Arc` the routing table holds).
    running: Arc<Config>,
    /// The last version of the file that parsed and validated.
    file: Config,
    /// The text last read from the file, valid or not.
    file_text: String,
    generation: u64,
}

/// Starts the control task for a proxy already serving `config` (read from
/// `text`) at generation 1.
pub fn spawn(
    path: PathBuf,
    overrides: ListenOverrides,
    text: String,
    registry: Arc<Registry>,
    proxy: Arc<Proxy>,
) -> Control {
    let table = proxy.table.load_full();
    let running = Arc::clone(&table.config);
    let shared = Arc::new(Shared {
        events: Mutex::new(EventLog::default()),
        status: Mutex::new(ReloadStatus {
            path: path.clone(),
            generation: table.generation,
            last_reload: Some(SystemTime::now()),
            last_error: None,
            persisted: true,
        }),
    });
    let (tx, mut rx) = mpsc::channel::<Request>(QUEUE);
    let mut task = ControlTask {
        path,
        overrides,
        registry,
        proxy,
        shared: Arc::clone(&shared),
        file: (*running).clone(),
        running,
        file_text: text,
        generation: table.generation,
    };
    tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            let result = task.handle(req.change, &req.origin);
            let _ = req.reply.send(result);
        }
    });
    Control { tx, shared }
}

impl ControlTask {
    fn handle(&mut self, change: Change, origin: &Origin) -> Result<Outcome, ChangeError> {
        match change {
            Change::Reload { forced } => self.reload(forced),
            Change::SetWeights {
                tenant,
                weights,
                if_match,
                force,
            } => {
                self.check_generation(if_match)?;
                let current = self.tenant(&tenant)?;
                let candidate = current.candidate();
                let raises_candidate = weights.of(candidate) > 0;
                if raises_candidate && !force && !self.candidate_has_healthy_endpoint(&tenant) {
                    return Err(ChangeError::Conflict(format!(
                        "the candidate pool {candidate} of {tenant} has no healthy endpoint; add ?force=true to set it anyway"
                    )));
                }
                self.set(&tenant, weights, origin, "weights set")
            }
            Change::Rollback { tenant, if_match } => {
                self.check_generation(if_match)?;
                let stable = self.tenant(&tenant)?.stable;
                let mut weights = Weights::default();
                match stable {
                    config::Color::Blue => weights.blue = 100,
                    config::Color::Green => weights.green = 100,
                }
                self.set(&tenant, weights, origin, "rollback to the stable pool")
            }
        }
    }

    fn tenant(&self, name: &str) -> Result<&TenantConfig, ChangeError> {
        self.running
            .tenant(name)
            .ok_or_else(|| ChangeError::UnknownTenant(name.to_owned()))
    }

    fn check_generation(&self, if_match: Option<u64>) -> Result<(), ChangeError> {
        match if_match {
            Some(g) if g != self.generation => Err(ChangeError::GenerationMismatch {
                current: self.generation,
            }),
            _ => Ok(()),
        }
    }

    fn candidate_has_healthy_endpoint(&self, tenant: &str) -> bool {
        let table = self.proxy.table.load();
        table
            .tenant(tenant)
            .is_some_and(|t| endpoint::any_healthy(t.endpoints(t.candidate())))
    }

    /// Sets a tenant's weights: validate, write through, apply, and fold in
    /// whatever else the file on disk holds.
    fn set(
        &mut self,
        tenant: &str,
        weights: Weights,
        origin: &Origin,
        default_reason: &str,
    ) -> Result<Outcome, ChangeError> {
        let mut next = (*self.running).clone();
        let t = next
            .tenant_mut(tenant)
            .ok_or_else(|| ChangeError::UnknownTenant(tenant.to_owned()))?;
        t.weights = weights;
        if let Some((_, problem)) = t.empty_pool_in_use() {
            return Err(ChangeError::Conflict(problem));
        }
        let edit = TenantEdit {
            tenant: tenant.to_owned(),
            weights: Some(weights),
            stable: None,
        };
        let written = self.write_through(&[edit]);
        let origin = Origin {
            reason: origin
                .reason
                .clone()
                .or_else(|| Some(default_reason.to_owned())),
            ..origin.clone()
        };
        let applied = self.apply(next, &origin, written.is_some());
        let Some((text, file)) = written else { return Ok(applied) };
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
    fn write_through(&mut self, edits: &[TenantEdit]) -> Option<(String, Config)> {
        let result = (|| {
            let text =
                std::fs::read_to_string(&self.path).map_err(|e| format!("cannot read: {e}"))?;
            let edited = write::edit(&text, edits)?;
            let parsed = self
                .parse(&edited)
                .map_err(|e| format!("the edited file would not validate: {e}"))?;
            write::write_atomically(&self.path, &edited)
                .map_err(|e| format!("cannot write: {e}"))?;
            Ok::<_, String>((edited, parsed))
        })();
        match result {
            Ok(written) => Some(written),
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "change kept in memory only: the control file was not updated");
                None
            }
        }
    }

    fn parse(&self, text: &str) -> Result<Config, config::ConfigError> {
        let mut parsed = config::parse(text, &self.path, &|var| std::env::var(var).ok())?;
        self.overrides
            .apply(&mut parsed)
            .map_err(|problem| config::ConfigError::general(&self.path, problem))?;
        Ok(parsed)
    }

    fn reload(&mut self, forced: bool) -> Result<Outcome, ChangeError> {
        let metrics = Arc::clone(&self.proxy.metrics);
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                let error = config::ConfigError::unreadable(&self.path, &e);
                return Err(self.reload_failed(error, &metrics));
            }
        };
        if !forced && text == self.file_text {
            return Ok(self.outcome(false));
        }
        match self.parse(&text) {
            Ok(file) => {
                metrics.reloads_ok.increment(1);
                let mut status = self.shared.status();
                status.last_reload = Some(SystemTime::now());
                status.last_error = None;
                drop(status);
                Ok(self.fold_file(text, file))
            }
            Err(error) => {
                self.file_text = text;
                Err(self.reload_failed(error, &metrics))
            }
        }
    }

    fn reload_failed(
        &mut self,
        error: config::ConfigError,
        metrics: &crate::metrics::Metrics,
    ) -> ChangeError {
        metrics.reloads_error.increment(1);
        tracing::error!(path = %self.path.display(), error = %error, "control file not applied; the last good state keeps serving");
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
        self.file_text = text;
        let persisted = merged == self.file;
        self.apply(merged, &Origin::file(), persisted)
    }

    /// Swaps in `next` if it differs from the running state, and records it;
    /// `persisted` says whether the change is in the file.
    fn apply(&mut self, next: Config, origin: &Origin, persisted: bool) -> Outcome {
        if next == *self.running {
            self.update_status();
            return self.outcome(false);
        }
        self.generation += 1;
        let next = Arc::new(next);
        let table = self.registry.build(Arc::clone(&next), self.generation);
        self.proxy.table.store(Arc::new(table));
        let previous = std::mem::replace(&mut self.running, next);
        let events = describe(&previous, &self.running, origin, persisted, self.generation);
        let mut log = self.shared.events();
        for event in events {
            log.record(event);
        }
        drop(log);
        self.update_status();
        self.outcome(true)
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
            Some(new) if new != old => {
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
