//! Endpoint state and choice: power of two choices on in-flight counts.
//!
//! An `Endpoint` outlives routing tables: it is keyed by address in the
//! registry, so its health and in-flight count carry across reloads and are
//! shared by every tenant that lists the same address.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use super::outlier::Outlier;
use crate::config::Protocol;
use crate::upstream::IdleConnections;

/// One upstream address (`host:port`), shared by every pool of every tenant
/// that lists it: its health verdict, requests in flight and idle
/// connections. Lives in the `TableBuilder` as long as some tenant lists it.
#[derive(Debug)]
pub struct Endpoint {
    /// The registry key and the `endpoint` metric label:
    /// `[scheme://]host:port` exactly as the control file spells it, or
    /// `name:port/ip` for one address of a name (SPEC section 13;
    /// `route::named`).
    pub address: Box<str>,
    /// For one address of a name: the pool entry's authority (`name:port`)
    /// it came from, sent as `Host` by health probes and (its host) the TLS
    /// server name; `None` for an IP literal.
    pub name: Option<Box<str>>,
    /// How turnout talks to it (the address's scheme, SPEC section 15).
    pub protocol: Protocol,
    healthy: AtomicBool,
    inflight: AtomicU32,
    /// Its connections: idle HTTP/1.1 keep-alive ones and the shared
    /// HTTP/2 one (shared with the exchanges lent one).
    pub connections: Arc<IdleConnections>,
    /// Passive outlier ejection's state (SPEC section 15).
    pub outlier: Outlier,
}

impl Endpoint {
    /// `None` unless `address` is `[scheme://]host:port`
    /// (`config::endpoint::parse`).
    pub fn new(address: &str) -> Option<Endpoint> {
        Endpoint::named(address, address, None)
    }

    /// An endpoint keyed `address` that dials `dial`
    /// (`[scheme://]ip:port`), one address of the pool entry whose
    /// authority is `name` (see [`Endpoint::name`]); `None` unless `dial`
    /// parses as an endpoint address.
    pub fn named(address: &str, dial: &str, name: Option<&str>) -> Option<Endpoint> {
        let parsed = crate::config::endpoint::parse(dial).ok()?;
        let endpoint = Endpoint {
            address: address.into(),
            name: name.map(Into::into),
            protocol: parsed.protocol,
            healthy: AtomicBool::new(true),
            inflight: AtomicU32::new(0),
            connections: Arc::new(IdleConnections::new(&parsed)),
            outlier: Outlier::default(),
        };
        endpoint.set_tls(None);
        Some(endpoint)
    }

    /// The address dialled, without its scheme: `host:port` as written for
    /// an IP literal, `ip:port` for one address of a name.
    pub fn dial(&self) -> &str {
        self.connections.address()
    }

    /// The host a TLS server name defaults to: the name for one address of
    /// a name (its certificate names the service, not the pod's address),
    /// else the host dialled.
    fn tls_host(&self) -> &str {
        let authority = self.name.as_deref().unwrap_or(self.dial());
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
        host.trim_start_matches('[').trim_end_matches(']')
    }

    /// Sets the TLS new connections use, for an `https://` endpoint (see
    /// `upstream::IdleConnections::set_tls`).
    pub fn set_tls(&self, tls: Option<&crate::config::UpstreamTls>) {
        self.connections.set_tls(tls, self.tls_host());
    }

    /// Whether it may take a request now: healthy and not ejected.
    pub fn is_usable(&self) -> bool {
        self.is_healthy() && !self.outlier.is_ejected()
    }

    /// The health checker's verdict; `true` from creation (SPEC section 5:
    /// a fresh proxy serves at once). Unhealthy endpoints get no traffic.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Returns the previous state, so callers can log flips.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed)
    }

    /// Requests in flight to it now, across all tenants: the load the power
    /// of two choices compares.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard drops.
    pub fn start(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard(Arc::clone(self))
    }
}

/// Holds one in-flight slot of an endpoint.
#[derive(Debug)]
pub struct InflightGuard(Arc<Endpoint>);

impl InflightGuard {
    /// The endpoint whose slot this is.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Picks the less loaded of two usable (healthy, not ejected) endpoints
/// drawn at random, skipping `exclude` (an endpoint that just failed).
/// Does not allocate.
pub fn choose(endpoints: &[Arc<Endpoint>], exclude: Option<&Endpoint>) -> Option<Arc<Endpoint>> {
    let usable =
        |e: &Arc<Endpoint>| e.is_usable() && !exclude.is_some_and(|x| std::ptr::eq(x, &**e));
    let n = endpoints.len();
    // From a random start, the first usable endpoint going round the ring.
    let draw = || {
        let start = fastrand::usize(..n);
        (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| usable(&endpoints[i]))
    };
    match n {
        0 => None,
        1 => usable(&endpoints[0]).then(|| Arc::clone(&endpoints[0])),
        _ => {
            let a = draw()?;
            let b = draw().unwrap_or(a);
            let pick = if endpoints[b].inflight() < endpoints[a].inflight() {
                b
            } else {
                a
            };
            Some(Arc::clone(&endpoints[pick]))
        }
    }
}

/// Whether any endpoint of the pool can take traffic.
pub fn any_healthy(endpoints: &[Arc<Endpoint>]) -> bool {
    endpoints.iter().any(|e| e.is_healthy())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| Arc::new(Endpoint::new(&format!("10.0.0.{i}:80")).unwrap()))
            .collect()
    }

    #[test]
    fn skips_unhealthy_and_excluded() {
        let eps = pool(3);
        eps[0].set_healthy(false);
        for _ in 0..200 {
            let e = choose(&eps, Some(&eps[1])).unwrap();
            assert_eq!(e.address.as_ref(), "10.0.0.2:80");
        }
        eps[2].set_healthy(false);
        assert!(choose(&eps, Some(&eps[1])).is_none());
        assert!(choose(&[], None).is_none());
    }

    #[test]
    fn prefers_the_less_loaded() {
        let eps = pool(2);
        let _busy: Vec<_> = (0..5).map(|_| eps[0].start()).collect();
        // With two endpoints, both are drawn unless the same one comes twice;
        // the idle one must win far more often than not.
        let idle = (0..1000)
            .filter(|_| choose(&eps, None).unwrap().address.as_ref() == "10.0.0.1:80")
            .count();
        assert!(idle > 600, "{idle}");
    }

    #[test]
    fn guard_counts_in_flight() {
        let eps = pool(1);
        let g = eps[0].start();
        assert_eq!(eps[0].inflight(), 1);
        drop(g);
        assert_eq!(eps[0].inflight(), 0);
    }
}
