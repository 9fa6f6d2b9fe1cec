//! The validated control state: what the rest of turnout works with.
//!
//! These types are never deserialized directly; `validate.rs` builds them from
//! the raw file so every invariant here (weights not both 0, hosts normalised,
//! durations positive) holds by construction.

use std::fmt;

pub use super::endpoint::Protocol;
pub use super::limit::{ClientKey, ClientRateLimit, RateLimit};
pub use super::outlier::OutlierSettings;
pub use super::pool::{Pool, Weights, WeightsError};
pub use super::upstream_tls::UpstreamTls;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// A host name a tenant answers for, already lower-cased without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
///
/// Matching (SPEC section 4.1): exact names win over wildcards, and among
/// wildcards the longest suffix wins (`route::host`).
pub enum HostPattern {
    /// A full name such as `acme.example.com`.
    Exact(String),
    /// `*.acme.com`, stored as the suffix `.acme.com`.
    Wildcard(String),
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// Where a sticky key is read from (the tenant's `sticky`). The key's
/// bucket `hash(tenant, key) mod 10000` picks the pool (`route::sticky`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyKey {
    /// The value of this request header; a request without it is drawn at
    /// random by weight.
    Header(http::HeaderName),
    /// The value of the cookie of this name; a request without it is drawn
    /// at random and answered with `Set-Cookie` carrying a fresh key.
    Cookie(String),
}

/// `slo.baseline`: what the candidate's error rate is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    /// Judge the candidate's error rate on its own.
    Absolute,
    /// Judge it against the stable pool's rate.
    Stable,
}

/// `health`: how each endpoint is probed (SPEC section 5). A probe is
/// `GET path`; it passes on any 2xx or 3xx within `timeout`.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSettings {
    /// The probe's request path, starting with `/` (default `/healthz`).
    pub path: String,
    /// Time between two probes of one endpoint, before jitter (default 2 s).
    pub interval: Duration,
    /// A probe without a complete answer by then fails (default 1 s).
    pub timeout: Duration,
    /// Consecutive passes that make an unhealthy endpoint healthy; at
    /// least 1 (default 2).
    pub healthy_after: u32,
    /// Consecutive failures that make a healthy endpoint unhealthy; at
    /// least 1 (default 3).
    pub unhealthy_after: u32,
    /// Probe with the gRPC health checking protocol
    /// (`grpc.health.v1.Health/Check` for the whole server; `SERVING`
    /// passes) instead of `GET path` (default `false`; SPEC section 15).
    pub grpc: bool,
}

/// `slo`: the guard on the candidate pool (SPEC section 6).
#[derive(Debug, Clone, PartialEq)]
pub struct SloSettings {
    /// The fraction of candidate requests that may fail, in `[0, 1]`
    /// (default 0.05). With [`Baseline::Stable`], the excess over the
    /// stable pool's rate that is allowed.
    pub max_error_rate: f64,
    /// The sliding window's length (default 30 s); `slo::window` splits it
    /// into buckets.
    pub window: Duration,
    /// No verdict on fewer requests in the window; at least 1 (default 20).
    pub min_requests: u32,
    /// The optional latency SLO: a breach when the fraction of candidate
    /// requests slower than this is confidently above 1 %.
    pub max_p99: Option<Duration>,
    /// What the error rate is judged against (default absolute).
    pub baseline: Baseline,
    /// `slo.confidence`, in [0.5, 1): the probability that a candidate
    /// within its SLO is never reverted over its whole exposure (SPEC
    /// section 6; `slo::sequential` spends `1 - confidence` across its tests).
    pub confidence: f64,
}

/// The keys of `[defaults]`, resolved for one tenant.
#[derive(Debug, Clone, PartialEq)]
///
/// `Default` holds the built-in values the SPEC lists (section 3), under
/// `[defaults]`, under a tenant's own keys.
pub struct Settings {
    /// Limit on the TCP connect to an endpoint (default 2 s); past it the
    /// attempt fails with `kind="connect"`.
    pub connect_timeout: Duration,
    /// Limit on the whole upstream exchange, request head to the response's
    /// last byte (default 30 s); past it the answer is 504, or the body is
    /// cut.
    pub request_timeout: Duration,
    /// Concurrent requests the tenant admits; the next one gets 503 with
    /// `Retry-After: 1` (default 2048).
    pub max_inflight: u32,
    /// How long requests in flight may finish after `SIGTERM` (default
    /// 30 s). Only `[defaults]`' value is used, process-wide.
    pub drain_timeout: Duration,
    /// One log line per request when `true` (default `false`).
    pub access_log: bool,
    /// Active health checks of the tenant's endpoints.
    pub health: HealthSettings,
    /// The SLO guard of the tenant's candidate.
    pub slo: SloSettings,
    /// The insiders' cohort (SPEC section 4.3): requests matching any rule
    /// go to the candidate whatever the weights; empty: no cohort.
    pub candidate_match: Vec<MatchRule>,
    /// The tenant's request rate, per replica (SPEC section 16); `None`:
    /// unlimited (default).
    pub rate_limit: Option<RateLimit>,
    /// Each client's request rate within the tenant; `None`: unlimited
    /// (default).
    pub client_rate_limit: Option<ClientRateLimit>,
    /// Passive outlier ejection (SPEC section 15); `None`: off.
    pub outlier: Option<OutlierSettings>,
    /// TLS to `https://` endpoints; `None`: the system's roots, no client
    /// certificate, the endpoint's host as server name.
    pub upstream_tls: Option<UpstreamTls>,
}

/// One `candidate_match` rule: a header or a cookie with an exact value
/// (ingress-nginx's canary-by-header/-cookie, Flagger's A/B `match`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchRule {
    /// The request header `name` equals `value` exactly.
    Header {
        /// The header's name (lower-case).
        name: http::HeaderName,
        /// The exact value.
        value: String,
    },
    /// The cookie `name`, among the request's cookies, equals `value`.
    Cookie {
        /// The cookie's name.
        name: String,
        /// The exact value.
        value: String,
    },
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
            max_inflight: 2048,
            drain_timeout: Duration::from_secs(30),
            access_log: false,
            candidate_match: Vec::new(),
            rate_limit: None,
            client_rate_limit: None,
            outlier: None,
            upstream_tls: None,
            health: HealthSettings {
                path: "/healthz".to_owned(),
                interval: Duration::from_secs(2),
                timeout: Duration::from_secs(1),
                healthy_after: 2,
                unhealthy_after: 3,
                grpc: false,
            },
            slo: SloSettings {
                max_error_rate: 0.05,
                window: Duration::from_secs(30),
                min_requests: 20,
                max_p99: None,
                baseline: Baseline::Absolute,
                confidence: 0.99,
            },
        }
    }
}

/// A tenant's certificate: where it came from, and loaded.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The PEM certificate chain, resolved against the control file's
    /// directory; watched for changes.
    pub cert: PathBuf,
    /// The PEM private key, resolved likewise; watched for changes.
    pub key: PathBuf,
    /// The loaded chain and key the SNI resolver presents for the tenant's
    /// hosts.
    pub certified: std::sync::Arc<rustls::sign::CertifiedKey>,
    /// SHA-256 of both files' bytes: equal digests, equal certificates.
    pub fingerprint: [u8; 32],
}

impl PartialEq for TlsFiles {
    fn eq(&self, other: &Self) -> bool {
        self.cert == other.cert && self.key == other.key && self.fingerprint == other.fingerprint
    }
}

/// `rollout.progress`: where a running ramp is. Part of the control state
/// (written through to the file) so that a restart resumes the ramp.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutProgress {
    /// Index into `steps`.
    pub step: usize,
    /// Wall-clock time the ramp reached `step` (RFC 3339 in the file, to
    /// the second); the next step is due `interval` later.
    pub since: SystemTime,
}

/// `[tenants.NAME.rollout]`: the automatic ramp (SPEC section 8).
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// Candidate share in percent at each step, increasing, ending at 100.
    pub steps: Vec<u32>,
    /// Time at each step, while the verdict is `ok` and at least
    /// `min_requests` candidate requests were seen in it.
    pub interval: Duration,
    /// Time at 100 before the candidate becomes stable.
    pub bake: Duration,
    /// `Some` while a ramp runs; `None` when none does.
    pub progress: Option<RolloutProgress>,
}

/// One `[tenants.NAME]` table, validated and resolved over `[defaults]`.
///
/// Shared (`Arc`) between [`Config`] and the routing table built from it.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantConfig {
    /// Matches `[a-z0-9][a-z0-9_-]{0,62}`: safe in metric labels and URLs.
    pub name: String,
    /// Host names routed to this tenant; at least one, none owned by another
    /// tenant.
    pub hosts: Vec<HostPattern>,
    /// Host names that always go to the candidate pool, never failing over.
    pub preview_hosts: Vec<HostPattern>,
    /// The token preview requests must carry, read from `preview_token_env`.
    pub preview_token: Option<String>,
    /// The pool known to be good; reverts send all traffic there.
    pub stable: Pool,
    /// The split between the pools.
    pub weights: Weights,
    /// Where the sticky key is read; `None` draws each request at random.
    pub sticky: Option<StickyKey>,
    /// Endpoint addresses (`host:port`), indexed by `Pool::index`.
    pub pools: [Vec<String>; 2],
    /// The certificate served for the tenant's hosts on the HTTPS listener.
    pub tls: Option<TlsFiles>,
    /// The automatic ramp, when the tenant has a rollout table.
    pub rollout: Option<Rollout>,
    /// `[defaults]` with the tenant's own keys over it.
    pub settings: Settings,
}

impl TenantConfig {
    /// The pool that is not stable: the one carrying a new release.
    pub fn candidate(&self) -> Pool {
        self.stable.other()
    }

    /// The endpoint addresses (`host:port`) of `color`, in file order.
    pub fn pool(&self, color: Pool) -> &[String] {
        &self.pools[color.index()]
    }

    /// A pool that would get traffic but has no endpoints: the stable pool,
    /// or one with weight above 0. The rule every change must pass.
    pub fn empty_pool_in_use(&self) -> Option<(Pool, String)> {
        Pool::ALL.into_iter().find_map(|color| {
            if !self.pool(color).is_empty() {
                return None;
            }
            if color == self.stable {
                Some((
                    color,
                    format!("pool {color} is the stable pool but has no endpoints"),
                ))
            } else if self.weights.of(color) > 0 {
                Some((
                    color,
                    format!("pool {color} has weight above 0 but has no endpoints"),
                ))
            } else {
                None
            }
        })
    }
}

/// A bearer token of the admin API and the tenants it may touch.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenConfig {
    /// The `NAME` of `[admin.tokens.NAME]`: the `actor` of the events the
    /// token makes. Free of characters that could forge a log line.
    pub name: String,
    /// SHA-256 of the token, so the secret itself need not stay in memory.
    pub sha256: [u8; 32],
    /// `None` means every tenant (`["*"]`).
    pub tenants: Option<Vec<String>>,
}

/// `[listen]`: where turnout serves, and the process-wide client
/// connection limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Listen {
    /// Plain HTTP/1.1 and h2c.
    pub http: SocketAddr,
    /// TLS with SNI, when configured.
    pub https: Option<SocketAddr>,
    /// The admin API and `/metrics`.
    pub admin: SocketAddr,
    /// A client connection with no request in flight is closed after this
    /// long (SPEC section 11; nginx's `keepalive_timeout`, Envoy's
    /// `idle_timeout`). Default 60 s.
    pub idle_timeout: Duration,
}

/// The whole validated control state: what one generation of the routing
/// table is compiled from.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `[listen]`; in the running state, with the `--listen-*` overrides
    /// applied.
    pub listen: Listen,
    /// `[defaults]` resolved: also the process-wide drain timeout.
    pub defaults: Settings,
    /// Sorted by name. Shared with the routing table's tenants, so applying
    /// a change does not copy every tenant.
    pub tenants: Vec<std::sync::Arc<TenantConfig>>,
    /// `[admin.tokens]`; empty means the admin API takes no token (and
    /// must then listen on loopback).
    pub tokens: Vec<TokenConfig>,
    /// `[notify]`: where `slo` and `rollout` events are POSTed.
    pub notify: Option<Webhook>,
}

/// A webhook receiver (`[notify]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    /// An absolute `http://` or `https://` URL.
    pub url: String,
    /// `ca`: the only roots an `https://` receiver's certificate may chain
    /// to; the system's trust store when absent.
    pub ca: Option<CaBundle>,
}

/// Trusted root certificates loaded from a PEM file.
#[derive(Debug, Clone, PartialEq)]
pub struct CaBundle {
    /// The PEM file, resolved against the control file's directory.
    pub path: PathBuf,
    /// In file order; at least one.
    pub roots: std::sync::Arc<[rustls::pki_types::CertificateDer<'static>]>,
}

impl Config {
    /// The tenant called `name` (a binary search: `tenants` is sorted).
    pub fn tenant(&self, name: &str) -> Option<&TenantConfig> {
        self.tenants
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .ok()
            .map(|i| &*self.tenants[i])
    }

    /// The admin API must not be reachable off loopback without a token.
    pub fn admin_exposure_problem(&self) -> Option<String> {
        let admin = self.listen.admin;
        (!admin.ip().is_loopback() && self.tokens.is_empty()).then(|| {
            format!("{admin} is not loopback: configure at least one [admin.tokens] entry")
        })
    }

    /// A tenant to change; copied first if a routing table still shares it.
    pub fn tenant_mut(&mut self, name: &str) -> Option<&mut TenantConfig> {
        self.tenants
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .ok()
            .map(|i| std::sync::Arc::make_mut(&mut self.tenants[i]))
    }
}
