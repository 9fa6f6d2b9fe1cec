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
    TooLarge(Color),
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
        for (pool, weight) in [(Color::Blue, blue), (Color::Green, green)] {
            if weight > Weights::MAX {
                return Err(WeightsError::TooLarge(pool));
            }
        }
        Ok(Weights { blue, green })
    }

    /// All traffic to `pool`: `{pool = 100, other = 0}`.
    pub fn all_on(pool: Color) -> Weights {
        Weights::split(pool.other(), 100)
    }

    /// `candidate_percent` of the traffic to the pool other than `stable`,
    /// the rest to `stable` (a rollout step); a percent above 100 counts as
    /// 100. The weights always add up to 100.
    pub fn split(stable: Color, candidate_percent: u32) -> Weights {
        let candidate = candidate_percent.min(100);
        let stable_weight = 100 - candidate;
        match stable {
            Color::Blue => Weights {
                blue: stable_weight,
                green: candidate,
            },
            Color::Green => Weights {
                blue: candidate,
                green: stable_weight,
            },
        }
    }

    pub fn blue(&self) -> u32 {
        self.blue
    }

    pub fn green(&self) -> u32 {
        self.green
    }

    /// The weight of `color`.
    pub fn of(&self, color: Color) -> u32 {
        match color {
            Color::Blue => self.blue,
            Color::Green => self.green,
        }
    }

    /// `blue + green`: at least 1, at most `2 * MAX`.
    pub fn total(&self) -> u32 {
        self.blue + self.green
    }

    /// The pool's share of traffic in basis points (0..=10 000).
    pub fn share_bp(&self, color: Color) -> u32 {
        (u64::from(self.of(color)) * 10_000 / u64::from(self.total())) as u32
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

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: Listen,
    /// `[defaults]` resolved: also the process-wide drain timeout.
    pub defaults: Settings,
    /// Sorted by name. Shared with the routing table's tenants, so applying
    /// a change does not copy every tenant.
    pub tenants: Vec<std::sync::Arc<TenantConfig>>,
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
    pub path: PathBuf,
    /// In file order; at least one.
    pub roots: std::sync::Arc<[rustls::pki_types::CertificateDer<'static>]>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_never_both_zero_nor_too_large() {
        assert_eq!(Weights::new(0, 0), Err(WeightsError::BothZero));
        assert_eq!(
            Weights::new(Weights::MAX + 1, 1),
            Err(WeightsError::TooLarge(Color::Blue))
        );
        assert_eq!(
            Weights::new(0, u32::MAX),
            Err(WeightsError::TooLarge(Color::Green))
        );
        assert_eq!(
            WeightsError::BothZero.to_string(),
            "weights must not both be 0"
        );
        assert_eq!(
            WeightsError::TooLarge(Color::Green).to_string(),
            "the green weight must be at most 1000000"
        );
        let w = Weights::new(0, 7).unwrap();
        assert_eq!((w.blue(), w.green(), w.total()), (0, 7, 7));
        let max = Weights::new(Weights::MAX, Weights::MAX).unwrap();
        assert_eq!(max.total(), 2 * Weights::MAX);
        assert_eq!(max.share_bp(Color::Blue), 5_000);
    }

    #[test]
    fn shares_add_up_and_follow_the_weights() {
        let w = Weights::new(1, 2).unwrap();
        assert_eq!(w.of(Color::Blue), 1);
        assert_eq!(w.of(Color::Green), 2);
        assert_eq!(w.share_bp(Color::Blue), 3_333);
        assert_eq!(w.share_bp(Color::Green), 6_666);
        let one_sided = Weights::new(5, 0).unwrap();
        assert_eq!(one_sided.share_bp(Color::Blue), 10_000);
        assert_eq!(one_sided.share_bp(Color::Green), 0);
    }

    #[test]
    fn all_on_and_split_are_valid_by_shape() {
        assert_eq!(Weights::all_on(Color::Blue), Weights::new(100, 0).unwrap());
        assert_eq!(Weights::all_on(Color::Green), Weights::new(0, 100).unwrap());
        assert_eq!(
            Weights::split(Color::Blue, 20),
            Weights::new(80, 20).unwrap()
        );
        assert_eq!(
            Weights::split(Color::Green, 20),
            Weights::new(20, 80).unwrap()
        );
        assert_eq!(Weights::split(Color::Blue, 0), Weights::all_on(Color::Blue));
        assert_eq!(
            Weights::split(Color::Blue, 250),
            Weights::all_on(Color::Green)
        );
        for percent in 0..=100 {
            for stable in Color::ALL {
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
