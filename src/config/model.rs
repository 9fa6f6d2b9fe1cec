//! The validated control state: what the rest of turnout works with.
//!
//! These types are never deserialized directly; `validate.rs` builds them from
//! the raw file so every invariant here (weights not both 0, hosts normalised,
//! durations positive) holds by construction.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// One of the two pools every tenant owns (the SPEC's *pool*: `blue` or
/// `green`). Which one is stable is per tenant ([`TenantConfig::stable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pool {
    /// The pool named `blue` in the file, the API and metric labels.
    Blue,
    /// The pool named `green` in the file, the API and metric labels.
    Green,
}

impl Pool {
    /// Both pools, in [`Pool::index`] order: `[Blue, Green]`.
    pub const ALL: [Pool; 2] = [Pool::Blue, Pool::Green];

    /// `"blue"` or `"green"`: the spelling of the file, the admin API, the
    /// `X-Turnout-Pool` header and the `pool` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Pool::Blue => "blue",
            Pool::Green => "green",
        }
    }

    /// The other pool: the candidate of a stable pool and vice versa.
    pub fn other(self) -> Pool {
        match self {
            Pool::Blue => Pool::Green,
            Pool::Green => Pool::Blue,
        }
    }

    /// Position in per-pool arrays (`[blue, green]`).
    pub fn index(self) -> usize {
        match self {
            Pool::Blue => 0,
            Pool::Green => 1,
        }
    }

    /// The inverse of [`Pool::as_str`]: exactly `"blue"` or `"green"`
    /// (lower case); `None` for anything else.
    pub fn parse(s: &str) -> Option<Pool> {
        match s {
            "blue" => Some(Pool::Blue),
            "green" => Some(Pool::Green),
            _ => None,
        }
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{ blue = B, green = G }`: how a tenant's traffic is split between its
/// pools, in proportion to the two numbers (as nginx's and Envoy's weighted
/// upstreams do).
///
/// Valid by construction: each weight is at most [`Weights::MAX`] and they
/// are never both 0, so `total()` is in `1..=2 * MAX` and a draw below it
/// never panics. The fields are private; build one with [`Weights::new`]
/// (checked) or [`Weights::all_on`] / [`Weights::split`] (valid by their
/// shape). The serde-facing form of the file is `raw::RawWeights`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Weights {
    blue: u32,
    green: u32,
}

/// Why two numbers are not [`Weights`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsError {
    /// Both weights are 0: no pool would get the traffic.
    BothZero,
    /// This pool's weight is above [`Weights::MAX`].
    TooLarge(Pool),
}

impl fmt::Display for WeightsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightsError::BothZero => f.write_str("weights must not both be 0"),
            WeightsError::TooLarge(pool) => {
                write!(f, "the {pool} weight must be at most {}", Weights::MAX)
            }
        }
    }
}

impl std::error::Error for WeightsError {}

impl Weights {
    /// The largest weight of one pool (the file, the admin API and `ctl`
    /// share it): enough for a 0.0001 % split, small enough that the total
    /// fits a `u32` draw.
    pub const MAX: u32 = 1_000_000;

    /// Checked constructor: `blue` and `green` at most [`Weights::MAX`],
    /// not both 0.
    pub fn new(blue: u32, green: u32) -> Result<Weights, WeightsError> {
        if blue == 0 && green == 0 {
            return Err(WeightsError::BothZero);
        }
        for (pool, weight) in [(Pool::Blue, blue), (Pool::Green, green)] {
            if weight > Weights::MAX {
                return Err(WeightsError::TooLarge(pool));
            }
        }
        Ok(Weights { blue, green })
    }

    /// All traffic to `pool`: `{pool = 100, other = 0}`.
    pub fn all_on(pool: Pool) -> Weights {
        Weights::split(pool.other(), 100)
    }

    /// `candidate_percent` of the traffic to the pool other than `stable`,
    /// the rest to `stable` (a rollout step); a percent above 100 counts as
    /// 100. The weights always add up to 100.
    pub fn split(stable: Pool, candidate_percent: u32) -> Weights {
        let candidate = candidate_percent.min(100);
        let stable_weight = 100 - candidate;
        match stable {
            Pool::Blue => Weights {
                blue: stable_weight,
                green: candidate,
            },
            Pool::Green => Weights {
                blue: candidate,
                green: stable_weight,
            },
        }
    }

    /// The blue pool's weight, `0..=MAX`.
    pub fn blue(&self) -> u32 {
        self.blue
    }

    /// The green pool's weight, `0..=MAX`.
    pub fn green(&self) -> u32 {
        self.green
    }

    /// The weight of `color`.
    pub fn of(&self, color: Pool) -> u32 {
        match color {
            Pool::Blue => self.blue,
            Pool::Green => self.green,
        }
    }

    /// `blue + green`: at least 1, at most `2 * MAX`.
    pub fn total(&self) -> u32 {
        self.blue + self.green
    }

    /// The pool's share of traffic in basis points (0..=10 000).
    pub fn share_bp(&self, color: Pool) -> u32 {
        (u64::from(self.of(color)) * 10_000 / u64::from(self.total())) as u32
    }
}

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
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
            max_inflight: 2048,
            drain_timeout: Duration::from_secs(30),
            access_log: false,
            health: HealthSettings {
                path: "/healthz".to_owned(),
                interval: Duration::from_secs(2),
                timeout: Duration::from_secs(1),
                healthy_after: 2,
                unhealthy_after: 3,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_never_both_zero_nor_too_large() {
        assert_eq!(Weights::new(0, 0), Err(WeightsError::BothZero));
        assert_eq!(
            Weights::new(Weights::MAX + 1, 1),
            Err(WeightsError::TooLarge(Pool::Blue))
        );
        assert_eq!(
            Weights::new(0, u32::MAX),
            Err(WeightsError::TooLarge(Pool::Green))
        );
        assert_eq!(
            WeightsError::BothZero.to_string(),
            "weights must not both be 0"
        );
        assert_eq!(
            WeightsError::TooLarge(Pool::Green).to_string(),
            "the green weight must be at most 1000000"
        );
        let w = Weights::new(0, 7).unwrap();
        assert_eq!((w.blue(), w.green(), w.total()), (0, 7, 7));
        let max = Weights::new(Weights::MAX, Weights::MAX).unwrap();
        assert_eq!(max.total(), 2 * Weights::MAX);
        assert_eq!(max.share_bp(Pool::Blue), 5_000);
    }

    #[test]
    fn shares_add_up_and_follow_the_weights() {
        let w = Weights::new(1, 2).unwrap();
        assert_eq!(w.of(Pool::Blue), 1);
        assert_eq!(w.of(Pool::Green), 2);
        assert_eq!(w.share_bp(Pool::Blue), 3_333);
        assert_eq!(w.share_bp(Pool::Green), 6_666);
        let one_sided = Weights::new(5, 0).unwrap();
        assert_eq!(one_sided.share_bp(Pool::Blue), 10_000);
        assert_eq!(one_sided.share_bp(Pool::Green), 0);
    }

    #[test]
    fn all_on_and_split_are_valid_by_shape() {
        assert_eq!(Weights::all_on(Pool::Blue), Weights::new(100, 0).unwrap());
        assert_eq!(Weights::all_on(Pool::Green), Weights::new(0, 100).unwrap());
        assert_eq!(
            Weights::split(Pool::Blue, 20),
            Weights::new(80, 20).unwrap()
        );
        assert_eq!(
            Weights::split(Pool::Green, 20),
            Weights::new(20, 80).unwrap()
        );
        assert_eq!(Weights::split(Pool::Blue, 0), Weights::all_on(Pool::Blue));
        assert_eq!(
            Weights::split(Pool::Blue, 250),
            Weights::all_on(Pool::Green)
        );
        for percent in 0..=100 {
            for stable in Pool::ALL {
                let w = Weights::split(stable, percent);
                assert_eq!(w.total(), 100);
                assert_eq!(w.of(stable.other()), percent);
            }
        }
    }

    #[test]
    fn serializes_as_the_admin_api_shows_it() {
        let w = Weights::new(90, 10).unwrap();
        assert_eq!(
            serde_json::to_value(w).unwrap(),
            serde_json::json!({"blue": 90, "green": 10})
        );
    }
}
