//! Raw file → validated `Config`, collecting every problem with its key.
//!
//! Validation never stops at the first problem: an operator fixing a file
//! wants the whole list. Each problem carries the key path; `mod.rs` turns
//! paths into `LINE:COL` with the locator.

mod dns;
mod tenant;

use tenant::tenant;
pub use tenant::{normalize_host, valid_tenant_name};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use super::locate::KeyPath;
use super::model::*;
use super::raw::*;
use super::secrets::tokens;

/// Looks up environment variables; a parameter so tests need not mutate the
/// process environment.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Longer durations are surely mistakes, and would overflow clock arithmetic.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// `[listen] idle_timeout` when the file does not set it (SPEC section 11;
/// nginx's `keepalive_timeout` is 75 s).
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What validation found, each with its key path.
#[derive(Default)]
pub struct Problems {
    /// Errors: the file is refused.
    pub errors: Vec<(KeyPath, String)>,
    /// `*_env` keys whose variable is unset or empty. `run` and reload refuse
    /// the file for them; `check` only warns, since the secrets are usually
    /// absent where files are checked (a CI job; SPEC §2).
    pub unset_secrets: Vec<(KeyPath, String)>,
}

impl Problems {
    pub(crate) fn add(&mut self, path: KeyPath, message: impl Into<String>) {
        self.errors.push((path, message.into()));
    }
}

/// A file without errors, and the `*_env` keys whose secret was not found.
pub struct Validated {
    /// The model. Built without the missing secrets: a token whose variable
    /// is unset is left out, a tenant's missing preview token is `None`.
    /// Only `check` may use it when `unset_secrets` is not empty.
    pub config: Config,
    /// As in [`Problems::unset_secrets`].
    pub unset_secrets: Vec<(KeyPath, String)>,
}

/// The first character of `text` that could forge or hide a log line (see
/// [`is_log_unsafe`]), with its index in characters.
pub fn log_unsafe_char(text: &str) -> Option<(usize, char)> {
    text.chars().enumerate().find(|&(_, c)| is_log_unsafe(c))
}

/// A character that could forge or hide a log line: a control character
/// (C0, DEL, C1: CR and LF start a new line, ESC a terminal sequence), a
/// Unicode line or paragraph separator, or a bidirectional override or
/// isolate (which can make a line read otherwise than it is written;
/// CVE-2021-42574).
pub fn is_log_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Validates `raw`; `base_dir` anchors relative TLS paths.
pub fn validate(
    raw: RawConfig,
    base_dir: &Path,
    env: EnvLookup<'_>,
) -> Result<Validated, Problems> {
    let mut p = Problems::default();
    let root = KeyPath::root();

    let listen_path = root.key("listen");
    let http = addr(
        &mut p,
        &listen_path.key("http"),
        raw.listen.http.as_deref(),
        "0.0.0.0:8080",
    );
    let admin = addr(
        &mut p,
        &listen_path.key("admin"),
        raw.listen.admin.as_deref(),
        "127.0.0.1:9901",
    );
    let https = raw
        .listen
        .https
        .as_deref()
        .and_then(|s| parse_addr(&mut p, &listen_path.key("https"), s));
    let idle_timeout = duration(
        &mut p,
        &listen_path,
        "idle_timeout",
        raw.listen.idle_timeout.as_deref(),
        DEFAULT_IDLE_TIMEOUT,
    );

    let defaults = settings(
        &mut p,
        &root.key("defaults"),
        &Settings::default(),
        &raw.defaults,
        base_dir,
    );

    let mut tenants = Vec::with_capacity(raw.tenants.len());
    let mut host_owner: HashMap<HostPattern, String> = HashMap::new();
    for (name, rt) in raw.tenants {
        let path = root.key("tenants").key(&name);
        if let Some(t) = tenant(
            &mut p,
            &path,
            name,
            rt,
            &defaults,
            base_dir,
            env,
            &mut host_owner,
        ) {
            tenants.push(std::sync::Arc::new(t));
        }
    }

    let tokens_path = root.key("admin").key("tokens");
    let tokens = tokens(&mut p, &tokens_path, raw.admin, &tenants, env);

    let notify = raw
        .notify
        .and_then(|n| webhook(&mut p, &root.key("notify"), n, base_dir));

    let store = raw
        .store
        .and_then(|s| super::store::store(&mut p, &root.key("store"), s, base_dir, env));
    let dns = dns::dns(&mut p, &root.key("dns"), raw.dns);

    let (Some(http), Some(admin)) = (http, admin) else {
        return Err(p);
    };
    let config = Config {
        listen: Listen {
            http,
            https,
            admin,
            idle_timeout,
        },
        defaults,
        tenants,
        tokens,
        notify,
        store,
        dns,
    };
    // A token whose secret is unset is still a configured token: the
    // exposure rule is about the file, not about this environment.
    let unresolved_token = p
        .unset_secrets
        .iter()
        .any(|(k, _)| k.0.starts_with(&tokens_path.0));
    if let Some(problem) = config
        .admin_exposure_problem()
        .filter(|_| !unresolved_token)
    {
        p.add(listen_path.key("admin"), problem);
    }
    if p.errors.is_empty() {
        Ok(Validated {
            config,
            unset_secrets: p.unset_secrets,
        })
    } else {
        Err(p)
    }
}

/// `[notify]`: an absolute http(s) URL, and a CA bundle (for https only)
/// that must load.
fn webhook(p: &mut Problems, path: &KeyPath, n: RawNotify, base_dir: &Path) -> Option<Webhook> {
    let https = n.webhook.starts_with("https://");
    let has_host = n
        .webhook
        .parse::<http::Uri>()
        .is_ok_and(|u| u.host().is_some_and(|h| !h.is_empty()));
    if !(https || n.webhook.starts_with("http://")) || !has_host {
        p.add(
            path.key("webhook"),
            "must be an http:// or https:// URL with a host",
        );
        return None;
    }
    let ca = match n.ca {
        None => None,
        Some(_) if !https => {
            p.add(path.key("ca"), "applies to https:// webhooks only");
            return None;
        }
        Some(file) => match ca_bundle(&base_dir.join(file)) {
            Ok(bundle) => Some(bundle),
            Err(message) => {
                p.add(path.key("ca"), message);
                return None;
            }
        },
    };
    Some(Webhook { url: n.webhook, ca })
}

pub(super) fn ca_bundle(file: &Path) -> Result<CaBundle, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not a PEM certificate bundle: {e}", file.display()))?;
    if roots.is_empty() {
        return Err(format!("{} holds no certificate", file.display()));
    }
    let mut store = rustls::RootCertStore::empty();
    for (i, cert) in roots.iter().enumerate() {
        store.add(cert.clone()).map_err(|e| {
            format!(
                "certificate {} of {} is not a usable root: {e}",
                i + 1,
                file.display()
            )
        })?;
    }
    Ok(CaBundle {
        path: file.to_owned(),
        roots: roots.into(),
    })
}

fn addr(
    p: &mut Problems,
    path: &KeyPath,
    value: Option<&str>,
    default: &str,
) -> Option<SocketAddr> {
    parse_addr(p, path, value.unwrap_or(default))
}

pub(super) fn parse_addr(p: &mut Problems, path: &KeyPath, value: &str) -> Option<SocketAddr> {
    match SocketAddr::from_str(value) {
        Ok(a) => Some(a),
        Err(_) => {
            p.add(path.clone(), format!("`{value}` is not an IP:port address"));
            None
        }
    }
}

pub(super) fn duration(
    p: &mut Problems,
    parent: &KeyPath,
    key: &str,
    value: Option<&str>,
    default: Duration,
) -> Duration {
    let Some(value) = value else { return default };
    // The key path is only built for a problem: a good file of thousands of
    // tenants should not allocate one per setting.
    match humantime::parse_duration(value) {
        Ok(d) if d > MAX_DURATION => {
            p.add(parent.key(key), "must be at most a year");
            default
        }
        Ok(d) if d > Duration::ZERO => d,
        Ok(_) => {
            p.add(parent.key(key), "must be greater than 0");
            default
        }
        Err(_) => {
            p.add(
                parent.key(key),
                format!("`{value}` is not a duration such as \"250ms\", \"2s\" or \"5m\""),
            );
            default
        }
    }
}

pub(super) fn count(
    p: &mut Problems,
    parent: &KeyPath,
    key: &str,
    value: Option<i64>,
    default: u32,
) -> u32 {
    let Some(value) = value else { return default };
    match u32::try_from(value) {
        Ok(n) if n >= 1 => n,
        _ => {
            p.add(
                parent.key(key),
                format!("must be a whole number from 1 to {}", u32::MAX),
            );
            default
        }
    }
}

/// Resolves one layer of settings over `base` (built-ins, or `[defaults]`).
pub(super) fn settings(
    p: &mut Problems,
    path: &KeyPath,
    base: &Settings,
    raw: &RawSettings,
    base_dir: &Path,
) -> Settings {
    let hp = path.key("health");
    let sp = path.key("slo");
    let (rh, rs) = (&raw.health, &raw.slo);
    let health = HealthSettings {
        path: match &rh.path {
            Some(s) if s.starts_with('/') => s.clone(),
            Some(_) => {
                p.add(hp.key("path"), "must start with /");
                base.health.path.clone()
            }
            None => base.health.path.clone(),
        },
        interval: duration(
            p,
            &hp,
            "interval",
            rh.interval.as_deref(),
            base.health.interval,
        ),
        timeout: duration(
            p,
            &hp,
            "timeout",
            rh.timeout.as_deref(),
            base.health.timeout,
        ),
        healthy_after: count(
            p,
            &hp,
            "healthy_after",
            rh.healthy_after,
            base.health.healthy_after,
        ),
        unhealthy_after: count(
            p,
            &hp,
            "unhealthy_after",
            rh.unhealthy_after,
            base.health.unhealthy_after,
        ),
        grpc: rh.grpc.unwrap_or(base.health.grpc),
    };
    let max_error_rate = match rs.max_error_rate {
        Some(r) if (0.0..=1.0).contains(&r) => r,
        Some(_) => {
            p.add(sp.key("max_error_rate"), "must be between 0 and 1");
            base.slo.max_error_rate
        }
        None => base.slo.max_error_rate,
    };
    let baseline = match rs.baseline.as_deref() {
        None => base.slo.baseline,
        Some("stable") => Baseline::Stable,
        Some("absolute") => Baseline::Absolute,
        Some(other) => {
            p.add(
                sp.key("baseline"),
                format!("`{other}` is not \"stable\" or \"absolute\""),
            );
            base.slo.baseline
        }
    };
    let slo = SloSettings {
        max_error_rate,
        window: duration(p, &sp, "window", rs.window.as_deref(), base.slo.window),
        min_requests: count(
            p,
            &sp,
            "min_requests",
            rs.min_requests,
            base.slo.min_requests,
        ),
        max_p99: match rs.max_p99.as_deref() {
            Some(v) => Some(duration(p, &sp, "max_p99", Some(v), Duration::from_secs(1))),
            None => base.slo.max_p99,
        },
        baseline,
        confidence: match rs.confidence {
            Some(c) if (0.5..1.0).contains(&c) => c,
            Some(_) => {
                p.add(sp.key("confidence"), "must be at least 0.5 and below 1");
                base.slo.confidence
            }
            None => base.slo.confidence,
        },
    };
    Settings {
        connect_timeout: duration(
            p,
            path,
            "connect_timeout",
            raw.connect_timeout.as_deref(),
            base.connect_timeout,
        ),
        request_timeout: duration(
            p,
            path,
            "request_timeout",
            raw.request_timeout.as_deref(),
            base.request_timeout,
        ),
        max_inflight: count(p, path, "max_inflight", raw.max_inflight, base.max_inflight),
        drain_timeout: duration(
            p,
            path,
            "drain_timeout",
            raw.drain_timeout.as_deref(),
            base.drain_timeout,
        ),
        access_log: raw.access_log.unwrap_or(base.access_log),
        candidate_match: match &raw.candidate_match {
            Some(rules) => tenant::candidate_match(p, &path.key("candidate_match"), rules),
            None => base.candidate_match.clone(),
        },
        rate_limit: match &raw.rate_limit {
            Some(l) => Some(super::limit::rate_limit(p, &path.key("rate_limit"), l)),
            None => base.rate_limit,
        },
        client_rate_limit: match &raw.client_rate_limit {
            Some(l) => Some(super::limit::client_rate_limit(
                p,
                &path.key("client_rate_limit"),
                l,
            )),
            None => base.client_rate_limit.clone(),
        },
        health,
        slo,
        outlier: super::outlier::resolve(
            p,
            &path.key("outlier"),
            base.outlier.as_ref(),
            raw.outlier.as_ref(),
        ),
        upstream_tls: super::upstream_tls::resolve(
            p,
            &path.key("upstream_tls"),
            base.upstream_tls.as_ref(),
            raw.upstream_tls.as_ref(),
            base_dir,
        ),
    }
}
