//! The compiled routing table: host → tenant → pool → endpoint.
//!
//! A `RoutingTable` is immutable and built whole from a validated `Config`
//! each time a change is applied; the proxy holds it in an `ArcSwap`, so a
//! request sees the old table or the new one, never a mix. Everything that
//! must outlive a table — endpoint health and in-flight counts, a tenant's
//! in-flight count and metric handles — lives in the `Registry`, keyed by
//! address or tenant name, and each new table links to it.

pub mod endpoint;
pub mod host;
pub mod pool;
pub mod sticky;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::{Color, Config, TenantConfig};
use crate::metrics::{Metrics, TenantMetrics};
use crate::upstream::{Clients, UpstreamClient};
pub use endpoint::Endpoint;
use host::{HostIndex, HostRoute};

pub struct RoutingTable {
    pub generation: u64,
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

    pub fn tenants(&self) -> &[Arc<Tenant>] {
        &self.tenants
    }

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
    pub config: TenantConfig,
    /// Seed of the sticky hash (`sticky::tenant_seed`).
    seed: u64,
    candidate_share_bp: u32,
    /// Endpoints per pool, indexed by `Color::index`.
    pools: [Box<[Arc<Endpoint>]>; 2],
    pub state: Arc<TenantState>,
    /// The pooled client for this tenant's `connect_timeout`.
    pub client: UpstreamClient,
}

impl Tenant {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn stable(&self) -> Color {
        self.config.stable
    }

    pub fn candidate(&self) -> Color {
        self.config.stable.other()
    }

    pub fn endpoints(&self, pool: Color) -> &[Arc<Endpoint>] {
        &self.pools[pool.index()]
    }

    pub fn metrics(&self) -> &TenantMetrics {
        &self.state.metrics
    }

    /// The pool for a sticky key: the candidate iff the key's bucket is below
    /// the candidate's share.
    pub fn pool_for_key(&self, key: &[u8]) -> Color {
        if sticky::bucket(self.seed, key) < self.candidate_share_bp {
            self.candidate()
        } else {
            self.stable()
        }
    }

    /// A pool drawn at random by weight.
    pub fn draw(&self) -> Color {
        let w = self.config.weights;
        if fastrand::u32(..w.total()) < w.blue {
            Color::Blue
        } else {
            Color::Green
        }
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

/// What a tenant keeps across routing tables.
pub struct TenantState {
    inflight: AtomicU32,
    pub metrics: TenantMetrics,
}

impl TenantState {
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
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
pub struct Registry {
    pub metrics: Arc<Metrics>,
    endpoints: Mutex<HashMap<Box<str>, Arc<Endpoint>>>,
    tenants: Mutex<HashMap<String, Arc<TenantState>>>,
    clients: Clients,
}

impl Registry {
    pub fn new(metrics: Arc<Metrics>) -> Registry {
        Registry {
            metrics,
            endpoints: Mutex::default(),
            tenants: Mutex::default(),
            clients: Clients::default(),
        }
    }

    /// Compiles `config` into a routing table, reusing the state of endpoints
    /// and tenants that stay configured and dropping the rest.
    pub fn build(&self, config: Arc<Config>, generation: u64) -> RoutingTable {
        let mut old_endpoints = std::mem::take(&mut *lock(&self.endpoints));
        let mut old_tenants = std::mem::take(&mut *lock(&self.tenants));
        let mut endpoints = HashMap::new();
        let mut states = HashMap::with_capacity(config.tenants.len());
        let mut hosts = HostIndex::default();
        let mut tenants = Vec::with_capacity(config.tenants.len());

        for (index, tc) in config.tenants.iter().enumerate() {
            let pools = Color::ALL.map(|color| {
                tc.pool(color)
                    .iter()
                    .filter_map(|address| {
                        let existing = old_endpoints
                            .remove(address.as_str())
                            .or_else(|| endpoints.get(address.as_str()).cloned());
                        let ep = existing.or_else(|| Endpoint::new(address).map(Arc::new))?;
                        endpoints.insert(address.as_str().into(), Arc::clone(&ep));
                        Some(ep)
                    })
                    .collect::<Box<[_]>>()
            });
            let state = old_tenants.remove(&tc.name).unwrap_or_else(|| {
                Arc::new(TenantState {
                    inflight: AtomicU32::new(0),
                    metrics: self.metrics.tenant(&tc.name),
                })
            });
            for color in Color::ALL {
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
            tenants.push(Arc::new(Tenant {
                config: tc.clone(),
                seed: sticky::tenant_seed(&tc.name),
                candidate_share_bp: tc.weights.share_bp(tc.candidate()),
                pools,
                state,
                client: self.clients.get(tc.settings.connect_timeout),
            }));
        }
        // Tenants that left the file: their shares are 0 from now on.
        for state in old_tenants.values() {
            for color in Color::ALL {
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
