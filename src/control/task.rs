//! The control task: the loop that receives every change and applies them
//! one at a time.
//!
//! Sources: the requests of `Control::submit` (admin calls, the store's
//! watch, SIGHUP), SLO breaches from the request path, the rollout clock,
//! and the endpoint names' `dns` tasks with new answers. Each becomes a
//! [`Change`] and is dispatched to the step that handles its kind (`apply`,
//! `reload`, `rollout`, `resolved`). Changes a change asks
//! for (the steps a tick finds due) are queued and applied next, before
//! anything new is received. The store's I/O runs off the runtime and is
//! awaited, so a slow disk delays the next change, never a request.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::events::EventLog;
use super::fleet::Held;
use super::store::{Load, Store, StoreStatus};
use super::{Change, ChangeError, Control, Origin, Outcome, Published, ReloadStatus, Request};
use crate::config::{Config, ConfigError};
use crate::dns::{Discovery, Resolution};
use crate::health;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::proxy::Proxy;
use crate::route::{Addresses, Breach, TableBuilder};

/// Changes queued before senders wait.
const QUEUE: usize = 64;
/// How often running rollouts are looked at.
const ROLLOUT_TICK: Duration = Duration::from_millis(100);

/// What the control task needs from the rest of the process.
pub struct Wiring {
    /// Where the control state lives (the control file, for now).
    pub store: Box<dyn Store>,
    /// Builds routing tables (and keeps tenants' state across them).
    pub registry: Arc<TableBuilder>,
    /// The process's metrics, which the proxy records into too.
    pub metrics: Arc<Metrics>,
    /// Probes the endpoints of the serving table.
    pub health: Arc<health::Checker>,
    /// Sends `slo` and `rollout` events to the webhook.
    pub notifier: Notifier,
    /// SLO breaches the request path signals.
    pub breaches: mpsc::UnboundedReceiver<Breach>,
    /// The task ends (and stops watching files and probing) when this
    /// turns true, or when its sender is dropped.
    pub stop: watch::Receiver<bool>,
}

/// The control task's state; its steps live in `apply`, `reload` and
/// `rollout`.
pub(super) struct ControlTask {
    pub(super) store: Box<dyn Store>,
    pub(super) registry: Arc<TableBuilder>,
    pub(super) proxy: Arc<Proxy>,
    pub(super) health: Arc<health::Checker>,
    pub(super) notifier: Notifier,
    pub(super) published: Arc<Published>,
    /// The state being served (the same `Arc` the routing table holds).
    pub(super) running: Arc<Config>,
    /// The last version of the store's state that loaded and validated.
    pub(super) stored: Config,
    /// The generation serving.
    pub(super) generation: u64,
    /// Changes asked for by the change just handled, applied next.
    pub(super) pending: VecDeque<(Change, Origin)>,
    /// The status of a fleet store (etcd); `None` with the control file.
    pub(super) fleet: Option<Arc<StoreStatus>>,
    /// SLO reverts applied here and not yet committed to the fleet store
    /// (it was unreachable), by tenant.
    pub(super) held: BTreeMap<String, Held>,
    /// The generation at which each tenant's candidate exposure began
    /// (its SLO counts started afresh): a fleet pools counts per exposure.
    /// `true` when it was taken from the peers (it began before this
    /// replica knew): raised to the newest they publish until this replica
    /// sees an exposure begin itself.
    pub(super) exposures: HashMap<String, (u64, bool)>,
    /// Whether a fleet's stored state has been read once (a replica that
    /// starts while etcd is away serves the file's topology until then).
    pub(super) fleet_read: bool,
    /// When this replica's counts were last published to the fleet.
    pub(super) evidence_at: Option<std::time::Instant>,
    /// The resolution task of each endpoint name (SPEC section 13).
    pub(super) dns: Discovery,
    /// The addresses each endpoint name last resolved to; the routing
    /// table expands names with them.
    pub(super) addresses: Addresses,
}

/// Loads the control state from the store, makes generation 1 of it, and
/// starts the control task. Returns the handle every source of change
/// holds, and the proxy serving generation 1 (not yet on any listener).
/// `Err` is the located error of a state that does not load.
pub async fn start(wiring: Wiring) -> Result<(Control, Arc<Proxy>), ConfigError> {
    let mut store = wiring.store;
    let first = store.load(Load::Always).await?.ok_or_else(|| {
        ConfigError::general(store.path(), "the store returned no state".to_owned())
    })?;
    let generation = first.revision.unwrap_or(1);
    let fleet_read = first.revision.is_some();
    let running = Arc::new(first.config);
    // Names resolve before generation 1 is built, so their pools serve
    // from the first request.
    let (mut dns, resolutions) = Discovery::new(Arc::clone(&wiring.metrics));
    let mut addresses = Addresses::default();
    for r in dns.resolve_new(&running, &addresses).await {
        addresses.set(&r.name, r.addresses);
    }
    let table = wiring
        .registry
        .build_with(Arc::clone(&running), generation, &addresses);
    let proxy = Arc::new(Proxy::new(table, wiring.metrics));
    let published = Arc::new(Published {
        events: Mutex::new(EventLog::default()),
        status: Mutex::new(ReloadStatus {
            path: store.path().to_owned(),
            generation,
            last_reload: None,
            last_error: None,
            persisted: true,
        }),
        ramps: Mutex::default(),
        store: store.status(),
    });
    let store_status = store.status();
    let (tx, rx) = mpsc::channel::<Request>(QUEUE);
    let control = Control { tx, published };
    let mut task = ControlTask {
        store,
        registry: wiring.registry,
        proxy: Arc::clone(&proxy),
        health: wiring.health,
        notifier: wiring.notifier,
        published: Arc::clone(&control.published),
        stored: (*running).clone(),
        running,
        generation,
        pending: VecDeque::new(),
        fleet: store_status,
        held: BTreeMap::new(),
        exposures: HashMap::new(),
        fleet_read,
        evidence_at: None,
        dns,
        addresses,
    };
    task.reload_succeeded();
    task.health.reconcile(&task.proxy.table.load());
    task.reconcile_names();
    task.store.watch(control.clone());
    task.watch_tls_files();
    tokio::spawn(task.run(rx, wiring.breaches, resolutions, wiring.stop));
    Ok((control, proxy))
}

impl ControlTask {
    /// The loop: receive → dispatch, one change at a time, until stopped.
    async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut breaches: mpsc::UnboundedReceiver<Breach>,
        mut resolutions: mpsc::UnboundedReceiver<Resolution>,
        mut stop: watch::Receiver<bool>,
    ) {
        self.store.clean_up().await;
        let mut tick = tokio::time::interval(ROLLOUT_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let (change, origin, reply) = match self.pending.pop_front() {
                Some((change, origin)) => (change, origin, None),
                None => tokio::select! {
                    req = requests.recv() => {
                        let Some(req) = req else { break };
                        (req.change, req.origin, Some(req.reply))
                    }
                    Some(breach) = breaches.recv() => {
                        let origin = Origin::slo(breach.reason.clone());
                        (Change::Revert { tenant: breach.tenant, reason: breach.reason }, origin, None)
                    }
                    // A name's new answer is a consequence of the file's
                    // pools, not a change of them: it records no event.
                    Some(r) = resolutions.recv() => {
                        (Change::Resolved { name: r.name, addresses: r.addresses }, Origin::file(), None)
                    }
                    _ = tick.tick() => (Change::Tick, Origin::rollout(None), None),
                    _ = crate::server::stopped(&mut stop) => break,
                },
            };
            let result = self.handle(change, &origin).await;
            if let Some(reply) = reply {
                let _ = reply.send(result);
            }
        }
        self.health.stop();
        self.dns.stop();
    }

    /// Dispatches one change to the step that handles its kind.
    async fn handle(&mut self, change: Change, origin: &Origin) -> Result<Outcome, ChangeError> {
        match change {
            Change::Reload { forced } => self.reload(forced).await,
            Change::SetWeights {
                tenant,
                weights,
                if_match,
                force,
            } => {
                self.set_weights(&tenant, weights, if_match, force, origin)
                    .await
            }
            Change::Rollback { tenant, if_match } => self.rollback(&tenant, if_match, origin).await,
            Change::StartRollout { tenant, force } => {
                self.start_rollout(&tenant, force, origin).await
            }
            Change::Promote { tenant, force } => self.promote(&tenant, force, origin).await,
            Change::Revert { tenant, reason } => {
                self.revert(&tenant, &with_reason(origin, reason)).await
            }
            Change::Tick => {
                self.tick();
                Ok(self.outcome(false))
            }
            Change::Advance { tenant, step } => self.advance(&tenant, step, origin).await,
            Change::Finish { tenant } => self.finish(&tenant, origin).await,
            Change::EndRamp { tenant, reason } => {
                let origin = with_reason(origin, reason.clone());
                self.end_ramp(&tenant, &reason, &origin).await
            }
            Change::Resolved { name, addresses } => self.resolved(&name, addresses),
        }
    }
}

/// `origin` with the reason its change names.
fn with_reason(origin: &Origin, reason: String) -> Origin {
    Origin {
        reason: Some(reason),
        ..origin.clone()
    }
}
