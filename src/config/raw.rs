//! The control file exactly as TOML spells it: serde types with no logic.
//!
//! Every struct denies unknown keys, so a typo is an error rather than a
//! silently ignored setting. Nothing outside `config` sees these types: the
//! rest of the proxy works on the validated model (`model.rs`), so the file
//! format can stay stable while the internals change.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub listen: RawListen,
    #[serde(default)]
    pub defaults: RawSettings,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub notify: Option<RawNotify>,
    #[serde(default)]
    pub tenants: BTreeMap<String, RawTenant>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    pub http: Option<String>,
    pub https: Option<String>,
    pub admin: Option<String>,
    /// Idle keep-alive client connections close after this (`"60s"`).
    pub idle_timeout: Option<String>,
}

/// The keys of `[defaults]`; each may be repeated in a tenant.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    pub connect_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub max_inflight: Option<i64>,
    pub drain_timeout: Option<String>,
    pub access_log: Option<bool>,
    #[serde(default)]
    pub health: RawHealth,
    #[serde(default)]
    pub slo: RawSlo,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub path: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub healthy_after: Option<i64>,
    pub unhealthy_after: Option<i64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlo {
    pub max_error_rate: Option<f64>,
    pub window: Option<String>,
    pub min_requests: Option<i64>,
    pub max_p99: Option<String>,
    pub baseline: Option<String>,
    pub confidence: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    #[serde(default)]
    pub tokens: BTreeMap<String, RawToken>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    pub token_env: Option<String>,
    pub token_sha256: Option<String>,
    pub tenants: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    pub webhook: String,
    /// A PEM bundle, relative to the control file's directory.
    pub ca: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    pub hosts: Vec<String>,
    #[serde(default)]
    pub preview_hosts: Vec<String>,
    pub preview_token_env: Option<String>,
    pub stable: String,
    pub weights: RawWeights,
    pub sticky: Option<RawSticky>,
    pub pools: RawPools,
    pub tls: Option<RawTls>,
    pub rollout: Option<RawRollout>,
    // The per-tenant copies of `[defaults]`. Spelled out rather than
    // `#[serde(flatten)]`, which does not work with `deny_unknown_fields`.
    pub connect_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub max_inflight: Option<i64>,
    pub drain_timeout: Option<String>,
    pub access_log: Option<bool>,
    #[serde(default)]
    pub health: RawHealth,
    #[serde(default)]
    pub slo: RawSlo,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeights {
    pub blue: i64,
    pub green: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSticky {
    pub header: Option<String>,
    pub cookie: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPools {
    pub blue: Vec<String>,
    pub green: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    pub steps: Vec<i64>,
    pub interval: String,
    pub bake: String,
    pub progress: Option<RawProgress>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProgress {
    pub step: i64,
    pub since: String,
}
