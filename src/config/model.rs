//! The validated control state: what the rest of turnout works with.
//!
//! These types are never deserialized directly; `validate.rs` builds them from
//! the raw file so every invariant here (weights not both 0, hosts normalised,
//! durations positive) holds by construction.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// One of the two pools every tenant owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Color {
    Blue,
    Green,
}

impl Color {
    pub const ALL: [Color; 2] = [Color::Blue, Color::Green];

    pub fn as_str(self) -> &'static str {
        match self {
            Color::Blue => "blue",
            Color::Green => "green",
        }
    }

    /// The other pool: the candidate of a stable pool and vice versa.
    pub fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }

    /// Position in per-pool arrays (`[blue, green]`).
    pub fn index(self) -> usize {
        match self {
            Color::Blue => 0,
            Color::Green => 1,
        }
    }

    pub fn parse(s: &str) -> Option<Color> {
        match s {
            "blue" => Some(Color::Blue),
            "green" => Some(Color::Green),
            _ => None,
        }
    }
}

impl fmt::Display for Color {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{ blue = B, green = G }`; never both 0 once validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Weights {
    pub blue: u32,
    pub green: u32,
}

impl Weights {
    pub fn of(&self, color: Color) -> u32 {
        match color {
            Color::Blue => self.blue,
            Color::Green => self.green,
        }
    }

    pub fn total(&self) -> u32 {
        self.blue + self.green
    }

    /// The pool's share of traffic in basis points (0..=10 000).
    pub fn share_bp(&self, color: Color) -> u32 {
        let total = u64::from(self.total());
        if total == 0 {
            return 0;
        }
        (u64::from(self.of(color)) * 10_000 / total) as u32
    }
}

/// A host name a tenant answers for, already lower-cased without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
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

/// Where a sticky key is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyKey {
    Header(http::HeaderName),
    Cookie(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    /// Judge the candidate's error rate on its own.
    Absolute,
    /// Judge it against the stable pool's rate.
    Stable,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthSettings {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_after: u32,
    pub unhealthy_after: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SloSettings {
    pub max_error_rate: f64,
    pub window: Duration,
    pub min_requests: u32,
    pub max_p99: Option<Duration>,
    pub baseline: Baseline,
    /// `slo.confidence`, in [0.5, 1): the probability that a candidate
    /// within its SLO is never reverted over its whole exposure (SPEC
    /// section 6; `slo::sequential` spends `1 - confidence` across its tests).
    pub confidence: f64,
}

/// The keys of `[defaults]`, resolved for one tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_inflight: u32,
    pub drain_timeout: Duration,
    pub access_log: bool,
    pub health: HealthSettings,
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
    pub cert: PathBuf,
    pub key: PathBuf,
    pub certified: std::sync::Arc<rustls::sign::CertifiedKey>,
    /// SHA-256 of both files' bytes: equal digests, equal certificates.
    pub fingerprint: [u8; 32],
}

impl PartialEq for TlsFiles {
    fn eq(&self, other: &Self) -> bool {
        self.cert == other.cert && self.key == other.key && self.fingerprint == other.fingerprint
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RolloutProgress {
    /// Index into `steps`.
    pub step: usize,
    pub since: SystemTime,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// Candidate share in percent at each step, increasing, ending at 100.
    pub steps: Vec<u32>,
    pub interval: Duration,
    pub bake: Duration,
    pub progress: Option<RolloutProgress>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TenantConfig {
    pub name: String,
    pub hosts: Vec<HostPattern>,
    pub preview_hosts: Vec<HostPattern>,
    /// The token preview requests must carry, read from `preview_token_env`.
    pub preview_token: Option<String>,
    pub stable: Color,
    pub weights: Weights,
    pub sticky: Option<StickyKey>,
    /// Endpoint addresses (`host:port`), indexed by `Color::index`.
    pub pools: [Vec<String>; 2],
    pub tls: Option<TlsFiles>,
    pub rollout: Option<Rollout>,
    pub settings: Settings,
}

impl TenantConfig {
    pub fn candidate(&self) -> Color {
        self.stable.other()
    }

    pub fn pool(&self, color: Color) -> &[String] {
        &self.pools[color.index()]
    }

    /// A pool that would get traffic but has no endpoints: the stable pool,
    /// or one with weight above 0. The rule every change must pass.
    pub fn empty_pool_in_use(&self) -> Option<(Color, String)> {
        Color::ALL.into_iter().find_map(|color| {
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
    pub name: String,
    /// SHA-256 of the token, so the secret itself need not stay in memory.
    pub sha256: [u8; 32],
    /// `None` means every tenant (`["*"]`).
    pub tenants: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listen {
    pub http: SocketAddr,
    pub https: Option<SocketAddr>,
    pub admin: SocketAddr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: Listen,
    /// `[defaults]` resolved: also the process-wide drain timeout.
    pub defaults: Settings,
    /// Sorted by name. Shared with the routing table's tenants, so applying
    /// a change does not copy every tenant.
    pub tenants: Vec<std::sync::Arc<TenantConfig>>,
    pub tokens: Vec<TokenConfig>,
    pub notify_webhook: Option<String>,
}

impl Config {
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
