//! The control file exactly as TOML spells it: serde types with no logic.
//!
//! Every struct denies unknown keys, so a typo is an error rather than a
//! silently ignored setting. Nothing outside `config` sees these types: the
//! rest of the proxy works on the validated model (`model.rs`), so the file
//! format can stay stable while the internals change.

use std::collections::BTreeMap;

use serde::Deserialize;

pub use super::limit::{RawClientKey, RawClientRateLimit, RawRateLimit};

/// The whole control file (SPEC section 3): every top-level table.
///
/// Every table may be absent; `validate` fills in the defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[listen]`: the addresses served and the client idle timeout.
    #[serde(default)]
    pub listen: RawListen,
    /// `[defaults]`: settings every tenant inherits unless it sets its own.
    #[serde(default)]
    pub defaults: RawSettings,
    /// `[admin]`: the bearer tokens of the admin API.
    #[serde(default)]
    pub admin: RawAdmin,
    /// `[notify]`: the optional webhook for `slo` and `rollout` events.
    #[serde(default)]
    pub notify: Option<RawNotify>,
    /// `[store]`: the runtime state in etcd (SPEC section 12).
    #[serde(default)]
    pub store: Option<super::store::RawStore>,
    /// `[dns]`: how endpoints given by name are resolved (SPEC section 13).
    #[serde(default)]
    pub dns: RawDns,
    /// `[tenants.NAME]`, keyed by tenant name (sorted, as `BTreeMap` keeps
    /// them); the name is checked by `validate`, not here.
    #[serde(default)]
    pub tenants: BTreeMap<String, RawTenant>,
}

/// `[dns]`: the name servers and refresh interval for endpoints given by
/// name; both keys optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    /// `servers`: `"IP:PORT"` (or `"IP"`, port 53) strings that replace the
    /// system's name servers.
    pub servers: Option<Vec<String>>,
    /// `refresh`: a duration string (`"5s"`), the time between two
    /// resolutions of one name.
    pub refresh: Option<String>,
}

/// `[listen]`: addresses as `IP:port` strings, unparsed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    /// `http`: plain HTTP/1.1 and h2c; `"0.0.0.0:8080"` when absent.
    pub http: Option<String>,
    /// `https`: TLS with SNI; no TLS listener when absent.
    pub https: Option<String>,
    /// `admin`: the admin API and `/metrics`; `"127.0.0.1:9901"` when absent.
    pub admin: Option<String>,
    /// Idle keep-alive client connections close after this (`"60s"`).
    pub idle_timeout: Option<String>,
}

/// The keys of `[defaults]`; each may be repeated in a tenant.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    /// `connect_timeout`: a duration string (`"2s"`) for the TCP connect to
    /// an endpoint.
    pub connect_timeout: Option<String>,
    /// `request_timeout`: a duration string for the whole upstream
    /// exchange, request head to the response's last byte.
    pub request_timeout: Option<String>,
    /// `max_inflight`: concurrent requests per tenant; `i64` so that a
    /// negative or huge number reaches `validate` and gets a located error.
    pub max_inflight: Option<i64>,
    /// `drain_timeout`: a duration string; how long requests in flight may
    /// finish after `SIGTERM` (the `[defaults]` value is the process's).
    pub drain_timeout: Option<String>,
    /// `access_log`: one log line per request when `true`.
    pub access_log: Option<bool>,
    /// `candidate_match`: the insiders' cohort rules (SPEC section 4.3).
    pub candidate_match: Option<Vec<RawMatch>>,
    /// `rate_limit = { rps, burst }`: the tenant's request rate (SPEC 16).
    pub rate_limit: Option<RawRateLimit>,
    /// `client_rate_limit = { rps, burst, key, max_clients }`: each
    /// client's request rate (SPEC section 16).
    pub client_rate_limit: Option<RawClientRateLimit>,
    /// `[defaults.health]` (or a tenant's `health`).
    #[serde(default)]
    pub health: RawHealth,
    /// `[defaults.slo]` (or a tenant's `slo`).
    #[serde(default)]
    pub slo: RawSlo,
    /// `[defaults.outlier]` (or a tenant's `outlier`): passive outlier
    /// ejection, off when absent (SPEC section 15).
    pub outlier: Option<super::outlier::RawOutlier>,
    /// `[defaults.upstream_tls]` (or a tenant's `upstream_tls`): TLS to
    /// `https://` endpoints (SPEC section 15).
    pub upstream_tls: Option<super::upstream_tls::RawUpstreamTls>,
}

/// `[defaults.health]` or a tenant's `health`: active checks per endpoint
/// (SPEC section 5). Absent keys inherit.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// `path`: the probe's request path; must start with `/`.
    pub path: Option<String>,
    /// `interval`: a duration string, time between two probes of one
    /// endpoint.
    pub interval: Option<String>,
    /// `timeout`: a duration string; a probe without an answer by then fails.
    pub timeout: Option<String>,
    /// `healthy_after`: consecutive passes that make an endpoint healthy.
    pub healthy_after: Option<i64>,
    /// `unhealthy_after`: consecutive failures that make it unhealthy.
    pub unhealthy_after: Option<i64>,
    /// `grpc`: probe with `grpc.health.v1.Health/Check` instead of `GET
    /// path` (SPEC section 15).
    pub grpc: Option<bool>,
}

/// `[defaults.slo]` or a tenant's `slo`: the candidate's SLO guard (SPEC
/// section 6). Absent keys inherit.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlo {
    /// `max_error_rate`: fraction of candidate requests that may fail, in
    /// `[0, 1]`.
    pub max_error_rate: Option<f64>,
    /// `window`: a duration string, the length of the sliding window.
    pub window: Option<String>,
    /// `min_requests`: no verdict on fewer requests in the window.
    pub min_requests: Option<i64>,
    /// `max_p99`: a duration string; the optional latency SLO.
    pub max_p99: Option<String>,
    /// `baseline`: `"absolute"` (the default) or `"stable"`.
    pub baseline: Option<String>,
    /// `confidence`: in `[0.5, 1)`, 1 minus the chance a good release is
    /// ever reverted.
    pub confidence: Option<f64>,
}

/// `[admin]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// `[admin.tokens.NAME]`, keyed by token name (the `actor` of the
    /// events the token makes).
    #[serde(default)]
    pub tokens: BTreeMap<String, RawToken>,
}

/// One `[admin.tokens.NAME]` table: a bearer token of the admin API. Exactly
/// one of `token_env` and `token_sha256` must be set (checked by
/// `secrets::tokens`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    /// `token_env`: the environment variable that holds the token itself.
    pub token_env: Option<String>,
    /// `token_sha256`: the token's SHA-256 as 64 hex digits, so the secret
    /// need not be in the process's environment.
    pub token_sha256: Option<String>,
    /// `tenants`: tenant names the token may change, or `["*"]` for all.
    pub tenants: Vec<String>,
}

/// `[notify]`: where `slo` and `rollout` events are POSTed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    /// `webhook`: an absolute `http://` or `https://` URL.
    pub webhook: String,
    /// `ca`: a PEM bundle, relative to the control file's directory; the
    /// only roots an `https://` receiver may chain to.
    pub ca: Option<String>,
}

/// One `[tenants.NAME]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    /// `hosts`: exact names or `*.suffix` wildcards; at least one, each
    /// owned by this tenant only.
    pub hosts: Vec<String>,
    /// `preview_hosts`: names that always go to the candidate.
    #[serde(default)]
    pub preview_hosts: Vec<String>,
    /// `preview_token_env`: the environment variable holding the token
    /// preview requests must carry in `X-Turnout-Preview`.
    pub preview_token_env: Option<String>,
    /// `stable`: `"blue"` or `"green"`.
    pub stable: String,
    /// `weights = { blue = B, green = G }`.
    pub weights: RawWeights,
    /// `sticky = { header = "..." }` or `{ cookie = "..." }`.
    pub sticky: Option<RawSticky>,
    /// `pools.blue` and `pools.green`: endpoint lists.
    pub pools: RawPools,
    /// `tls = { cert, key }`: the tenant's certificate for SNI.
    pub tls: Option<RawTls>,
    /// `[tenants.NAME.rollout]`: the automatic ramp.
    pub rollout: Option<RawRollout>,
    // The per-tenant copies of `[defaults]`. Spelled out rather than
    // `#[serde(flatten)]`, which does not work with `deny_unknown_fields`.
    /// As [`RawSettings::connect_timeout`], for this tenant.
    pub connect_timeout: Option<String>,
    /// As [`RawSettings::request_timeout`], for this tenant.
    pub request_timeout: Option<String>,
    /// As [`RawSettings::max_inflight`], for this tenant.
    pub max_inflight: Option<i64>,
    /// As [`RawSettings::drain_timeout`], for this tenant.
    pub drain_timeout: Option<String>,
    /// As [`RawSettings::access_log`], for this tenant.
    pub access_log: Option<bool>,
    /// As [`RawSettings::candidate_match`], for this tenant.
    pub candidate_match: Option<Vec<RawMatch>>,
    /// As [`RawSettings::rate_limit`], for this tenant.
    pub rate_limit: Option<RawRateLimit>,
    /// As [`RawSettings::client_rate_limit`], for this tenant.
    pub client_rate_limit: Option<RawClientRateLimit>,
    /// The tenant's `health` table, over `[defaults.health]`.
    #[serde(default)]
    pub health: RawHealth,
    /// The tenant's `slo` table, over `[defaults.slo]`.
    #[serde(default)]
    pub slo: RawSlo,
    /// The tenant's `outlier` table, over `[defaults.outlier]`.
    pub outlier: Option<super::outlier::RawOutlier>,
    /// The tenant's `upstream_tls` table, over `[defaults.upstream_tls]`.
    pub upstream_tls: Option<super::upstream_tls::RawUpstreamTls>,
}

/// `weights = { blue = B, green = G }`, unchecked: `i64` so that negative
/// or too large values reach `validate` and get a located error.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeights {
    /// The blue pool's weight, `0..=Weights::MAX`.
    pub blue: i64,
    /// The green pool's weight, `0..=Weights::MAX`.
    pub green: i64,
}

/// `sticky`: where the sticky key is read; exactly one of the two is set.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSticky {
    /// A request header name, e.g. `"x-user-id"`.
    pub header: Option<String>,
    /// A cookie name (`[A-Za-z0-9._-]+`), e.g. `"turnout_id"`.
    pub cookie: Option<String>,
}

/// One `candidate_match` rule: exactly one of `header` or `cookie`, and
/// the exact `value` it must have.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// A request header name, e.g. `"x-canary"`.
    pub header: Option<String>,
    /// A cookie name (`[A-Za-z0-9._-]+`), e.g. `"canary"`.
    pub cookie: Option<String>,
    /// The exact value that matches.
    pub value: String,
}

/// `pools.blue` and `pools.green`: endpoints as `host:port` strings. Either
/// may be empty unless it is the stable pool or has a weight above 0.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPools {
    /// The blue pool's endpoints.
    pub blue: Vec<String>,
    /// The green pool's endpoints.
    pub green: Vec<String>,
}

/// `tls = { cert, key }`: PEM files, relative to the control file's
/// directory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// The certificate chain, leaf first.
    pub cert: String,
    /// The private key matching the leaf.
    pub key: String,
}

/// `[tenants.NAME.rollout]`: the automatic ramp (SPEC section 8).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    /// `steps`: candidate shares in percent, `1..=100`, increasing, ending
    /// at 100.
    pub steps: Vec<i64>,
    /// `interval`: a duration string, time at each step while the SLO holds.
    pub interval: String,
    /// `bake`: a duration string, time at 100 before the candidate becomes
    /// stable.
    pub bake: String,
    /// `progress`: written by turnout while a ramp runs, removed when it
    /// ends; deleting it stops the ramp.
    pub progress: Option<RawProgress>,
}

/// `progress = { step, since }`: where a running ramp is.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProgress {
    /// Index into `steps`, from 0.
    pub step: i64,
    /// When the ramp reached `step`, as an RFC 3339 time
    /// (`"2026-11-26T10:00:00Z"`).
    pub since: String,
}
