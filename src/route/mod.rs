//! The compiled routing table: host → tenant → pool → endpoint.
//!
//! A `RoutingTable` is immutable and built whole from a validated `Config`
//! each time a change is applied; the proxy holds it in an `ArcSwap`, so a
//! request sees the old table or the new one, never a mix. Everything that
//! must outlive a table — endpoint health and in-flight counts, a tenant's
//! in-flight count and metric handles — lives in the `TableBuilder`, keyed by
//! address or tenant name, and each new table links to it.

pub mod endpoint;
pub mod host;
pub mod limit;
pub mod named;
pub mod outlier;
pub mod pool;
pub mod sticky;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::config::{Config, Pool, TenantConfig};
use crate::metrics::{Metrics, TenantMetrics};
use crate::slo::Verdict;
use crate::slo::guard::TenantGuard;
pub use endpoint::Endpoint;
use host::{HostIndex, HostRoute};
pub use named::Addresses;

/// One generation of the control state, compiled for requests: the host
/// index, and each tenant with its endpoints and long-lived state. Immutable;
/// the proxy holds the current one in an `ArcSwap` and the control task
/// swaps in a new one for every applied change.
pub struct RoutingTable {
    /// The generation it was built for: grows by one with every applied
    /// change, whatever its source.
    pub generation: u64,
    /// The validated control state it was built from.
    pub config: Arc<Config>,
    hosts: HostIndex,
    /// In the order of `config.tenants` (sorted by name).
    tenants: Vec<Arc<Tenant>>,
}

impl RoutingTable {
    /// The tenant a normalised host belongs to, and whether it is a preview host.
    pub fn route(&self, host: &str) -> Option<(&Arc<Tenant>, bool)> {
        let HostRoute { tenant, preview } = self.hosts.lookup(host)?;
        Some((&self.tenants[tenant as usize], preview))
    }

    /// Every tenant, sorted by name.
    pub fn tenants(&self) -> &[Arc<Tenant>] {
        &self.tenants
    }

    /// The tenant called `name` (a binary search).
    pub fn tenant(&self, name: &str) -> Option<&Arc<Tenant>> {
        self.tenants
            .binary_search_by(|t| t.config.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.tenants[i])
    }
}

/// One tenant as requests see it: its settings plus precomputed routing
/// figures and links to its long-lived state.
pub struct Tenant {
    /// The tenant's validated settings, shared with the table's `Config`.
    pub config: Arc<TenantConfig>,
    /// Seed of the sticky hash (`sticky::tenant_seed`).
    seed: u64,
    candidate_share_bp: u32,
    /// Endpoints per pool, indexed by `Pool::index`.
    pools: [Box<[Arc<Endpoint>]>; 2],
    /// `turnout_outlier_ejections_total` per endpoint of each pool (in
    /// `pools` order); empty when the tenant has outlier ejection off.
    ejections: [Box<[metrics::Counter]>; 2],
    /// What outlives this table: in-flight count, metrics, SLO guard.
    pub state: Arc<TenantState>,
    /// Its rate limits' buckets (SPEC section 16), checked after admission.
    pub limits: limit::Limits,
}

impl Tenant {
    /// The tenant's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The pool known to be good.
    pub fn stable(&self) -> Pool {
        self.config.stable
    }

    /// The pool carrying the new release.
    pub fn candidate(&self) -> Pool {
        self.config.stable.other()
    }

    /// The endpoints of `pool`, in file order (healthy or not).
    pub fn endpoints(&self, pool: Pool) -> &[Arc<Endpoint>] {
        &self.pools[pool.index()]
    }

    /// Counts an ejection of the `index`th endpoint of `pool`.
    pub fn count_ejection(&self, pool: Pool, index: usize) {
        if let Some(counter) = self.ejections[pool.index()].get(index) {
            counter.increment(1);
        }
    }

    /// The tenant's metric handles.
    pub fn metrics(&self) -> &TenantMetrics {
        &self.state.metrics
    }

    /// The pool for a sticky key: the candidate iff the key's bucket is below
    /// the candidate's share.
    pub fn pool_for_key(&self, key: &[u8]) -> Pool {
        if sticky::bucket(self.seed, key) < self.candidate_share_bp {
            self.candidate()
        } else {
            self.stable()
        }
    }

    /// A pool drawn at random by weight (`Weights` are never both 0, so the
    /// range is never empty).
    pub fn draw(&self) -> Pool {
        let w = self.config.weights;
        if fastrand::u32(..w.total()) < w.blue() {
            Pool::Blue
        } else {
            Pool::Green
        }
    }

    /// The candidate's share in basis points.
    pub fn candidate_share_bp(&self) -> u32 {
        self.candidate_share_bp
    }

    /// The candidate's verdict now (`pool` is the candidate; the verdict
    /// judges the candidate's exposure, with stable as its baseline).
    pub fn verdict(&self, pool: Pool) -> Verdict {
        debug_assert_eq!(pool, self.candidate());
        self.state.slo.judge(self.stable()).verdict()
    }

    /// Takes one of the tenant's `max_inflight` slots, or `None` when full.
    pub fn admit(&self) -> Option<Admission> {
        let state = &self.state;
        let before = state.inflight.fetch_add(1, Ordering::AcqRel);
        if before >= self.config.settings.max_inflight {
            state.inflight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Admission(Arc::clone(state)))
    }
}

/// A candidate found in breach of its SLO, for the control task to revert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breach {
    /// The tenant whose candidate broke its SLO.
    pub tenant: String,
    /// The revert reason, with its figures (`error rate 0.42 (at least
    /// 0.27 at 99 %) > 0.05 over 57 requests`).
    pub reason: String,
}

/// What a tenant keeps across routing tables.
pub struct TenantState {
    inflight: AtomicU32,
    /// Metric handles, registered once when the tenant first appears.
    pub metrics: TenantMetrics,
    /// Its SLO windows, verdict and breach latch.
    pub slo: TenantGuard,
    /// Requests finished per pool since the process started.
    completed: [AtomicU64; 2],
    /// Requests per pool whose client went away before the response head
    /// (recorded as 499, no evidence either way; SPEC section 6).
    abandoned: [AtomicU64; 2],
    breach_tx: mpsc::UnboundedSender<Breach>,
    /// The last change of the weights was an SLO revert.
    pub reverted: AtomicBool,
    /// The rate limits of the latest table, for the next one to keep or
    /// carry (`limit::Limits::rebuild`); only the control path locks it.
    limits: Mutex<limit::Limits>,
}

impl TenantState {
    /// The tenant's admitted requests now (plus slots held by [`hold`]).
    ///
    /// [`hold`]: TenantState::hold
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Requests of `pool` finished since the process started that were
    /// evidence about it (see [`TenantState::completed_one`]); the ramp
    /// compares two readings to count a step's requests.
    pub fn completed(&self, pool: Pool) -> u64 {
        self.completed[pool.index()].load(Ordering::Relaxed)
    }

    /// A slot held, beyond `max_inflight`'s admission, by work an admitted
    /// request left behind: an abandoned exchange finishing in the
    /// background (`upstream::Rescuable`). It counts against the tenant's
    /// limit until it drops, so abandoning requests frees no capacity.
    pub fn hold(self: &Arc<Self>) -> Admission {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        Admission(Arc::clone(self))
    }

    /// Counts a request of `pool` abandoned by its client before the head.
    pub fn abandoned(&self, pool: Pool) {
        self.abandoned[pool.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests of `pool` abandoned by their clients since the process
    /// started.
    pub fn abandoned_count(&self, pool: Pool) -> u64 {
        self.abandoned[pool.index()].load(Ordering::Relaxed)
    }

    /// Counts a finished request of `pool` that is evidence about it (for
    /// the ramp's per-step count).
    pub fn completed_one(&self, pool: Pool) {
        self.completed[pool.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Hands a breach the SLO guard found to the control task, which
    /// reverts (`slo::guard` returns each breach once).
    pub fn signal_breach(&self, tenant: &str, reason: String) {
        let _ = self.breach_tx.send(Breach {
            tenant: tenant.to_owned(),
            reason,
        });
    }

    /// Called by the control task once it has handled a breach.
    pub fn breach_handled(&self) {
        self.slo.breach_handled();
    }
}

/// One admitted request of a tenant; frees its slot on drop.
pub struct Admission(Arc<TenantState>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The long-lived state routing tables link to. Only the control path
/// (building a table) takes its locks; requests never do.
pub struct TableBuilder {
    /// The process's metrics, where tenant handles are registered.
    pub metrics: Arc<Metrics>,
    breach_tx: mpsc::UnboundedSender<Breach>,
    endpoints: Mutex<HashMap<Box<str>, Arc<Endpoint>>>,
    tenants: Mutex<HashMap<String, Arc<TenantState>>>,
}

impl TableBuilder {
    /// A registry whose tenants report SLO breaches on `breach_tx`.
    pub fn new(metrics: Arc<Metrics>, breach_tx: mpsc::UnboundedSender<Breach>) -> TableBuilder {
        TableBuilder {
            metrics,
            breach_tx,
            endpoints: Mutex::default(),
            tenants: Mutex::default(),
        }
    }

    /// Compiles `config` into a routing table, reusing the state of endpoints
    /// and tenants that stay configured and dropping the rest. Endpoints
    /// given by name get none of their addresses: see [`TableBuilder::build_with`].
    pub fn build(&self, config: Arc<Config>, generation: u64) -> RoutingTable {
        self.build_with(config, generation, &Addresses::default())
    }

    /// [`TableBuilder::build`], with each pool entry given by name expanded
    /// into one endpoint per address it last resolved to (`addresses`; SPEC
    /// section 13). An endpoint whose address is gone is dropped with the
    /// table: requests in flight on it finish, and its idle connections
    /// close when the last of them ends.
    pub fn build_with(
        &self,
        config: Arc<Config>,
        generation: u64,
        addresses: &Addresses,
    ) -> RoutingTable {
        let mut old_endpoints = std::mem::take(&mut *lock(&self.endpoints));
        let mut old_tenants = std::mem::take(&mut *lock(&self.tenants));
        let mut endpoints = HashMap::new();
        let mut states = HashMap::with_capacity(config.tenants.len());
        let mut hosts = HostIndex::default();
        let mut tenants = Vec::with_capacity(config.tenants.len());

        for (index, tc) in config.tenants.iter().enumerate() {
            let pools = Pool::ALL.map(|color| {
                let mut pool = Vec::with_capacity(tc.pool(color).len());
                for address in tc.pool(color) {
                    named::expand(address, addresses, |key, dial, name| {
                        if let Some(ep) = endpoints.get(key) {
                            // Listed by an earlier tenant (by name): its
                            // settings stand, as for health probes.
                            pool.push(Arc::clone(ep));
                            return;
                        }
                        let Some(ep) = old_endpoints
                            .remove(key)
                            .or_else(|| Endpoint::named(key, dial, name).map(Arc::new))
                        else {
                            return;
                        };
                        ep.set_tls(tc.settings.upstream_tls.as_ref());
                        endpoints.insert(key.into(), Arc::clone(&ep));
                        pool.push(ep);
                    });
                }
                pool.into_boxed_slice()
            });
            let state = old_tenants.remove(&tc.name).unwrap_or_else(|| {
                Arc::new(TenantState {
                    inflight: AtomicU32::new(0),
                    metrics: self.metrics.tenant(&tc.name),
                    slo: TenantGuard::new(&tc.settings.slo),
                    completed: [AtomicU64::new(0), AtomicU64::new(0)],
                    abandoned: [AtomicU64::new(0), AtomicU64::new(0)],
                    breach_tx: self.breach_tx.clone(),
                    reverted: AtomicBool::new(false),
                    limits: Mutex::default(),
                })
            });
            let limits = {
                let mut last = lock(&state.limits);
                *last = limit::Limits::rebuild(&tc.settings, &last);
                last.clone()
            };
            state.slo.configure(&tc.settings.slo);
            for color in Pool::ALL {
                let share = f64::from(tc.weights.share_bp(color)) / 100.0;
                state.metrics.pool(color).share.set(share);
            }
            states.insert(tc.name.clone(), Arc::clone(&state));
            for (patterns, preview) in [(&tc.hosts, false), (&tc.preview_hosts, true)] {
                for pattern in patterns {
                    let route = HostRoute {
                        tenant: index as u32,
                        preview,
                    };
                    hosts.insert(pattern, route);
                }
            }
            let ejections = Pool::ALL.map(|color| match tc.settings.outlier {
                Some(_) => pools[color.index()]
                    .iter()
                    .map(|e| self.metrics.outlier_ejections(&tc.name, color, &e.address))
                    .collect(),
                None => Box::default(),
            });
            tenants.push(Arc::new(Tenant {
                config: Arc::clone(tc),
                seed: sticky::tenant_seed(&tc.name),
                candidate_share_bp: tc.weights.share_bp(tc.candidate()),
                pools,
                ejections,
                state,
                limits,
            }));
        }
        // Tenants that left the file: their shares are 0 from now on.
        for state in old_tenants.values() {
            for color in Pool::ALL {
                state.metrics.pool(color).share.set(0.0);
            }
        }
        *lock(&self.endpoints) = endpoints;
        *lock(&self.tenants) = states;
        self.metrics.generation.set(generation as f64);
        RoutingTable {
            generation,
            config,
            hosts,
            tenants,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain maps behind, still usable.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
