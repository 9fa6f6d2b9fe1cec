//! Raw file → validated `Config`, collecting every problem with its key.
//!
//! Validation never stops at the first problem: an operator fixing a file
//! wants the whole list. Each problem carries the key path; `mod.rs` turns
//! paths into `LINE:COL` with the locator.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::locate::KeyPath;
use super::model::*;
use super::raw::*;

/// Looks up environment variables; a parameter so tests need not mutate the
/// process environment.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

const MAX_WEIGHT: i64 = 1_000_000;
/// Longer durations are surely mistakes, and would overflow clock arithmetic.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Default)]
pub struct Problems(pub Vec<(KeyPath, String)>);

impl Problems {
    fn add(&mut self, path: KeyPath, message: impl Into<String>) {
        self.0.push((path, message.into()));
    }
}

/// Validates `raw`; `base_dir` anchors relative TLS paths.
pub fn validate(raw: RawConfig, base_dir: &Path, env: EnvLookup<'_>) -> Result<Config, Problems> {
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

    let defaults = settings(
        &mut p,
        &root.key("defaults"),
        &Settings::default(),
        &raw.defaults,
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

    let tokens = tokens(
        &mut p,
        &root.key("admin").key("tokens"),
        raw.admin,
        &tenants,
        env,
    );

    let notify_webhook = raw.notify.and_then(|n| {
        if n.webhook.starts_with("http://") || n.webhook.starts_with("https://") {
            Some(n.webhook)
        } else {
            p.add(
                root.key("notify").key("webhook"),
                "must be an http:// or https:// URL",
            );
            None
        }
    });

    let (Some(http), Some(admin)) = (http, admin) else {
        return Err(p);
    };
    let config = Config {
        listen: Listen { http, https, admin },
        defaults,
        tenants,
        tokens,
        notify_webhook,
    };
    if let Some(problem) = config.admin_exposure_problem() {
        p.add(listen_path.key("admin"), problem);
    }
    if p.0.is_empty() { Ok(config) } else { Err(p) }
}

fn addr(
    p: &mut Problems,
    path: &KeyPath,
    value: Option<&str>,
    default: &str,
) -> Option<SocketAddr> {
    parse_addr(p, path, value.unwrap_or(default))
}

fn parse_addr(p: &mut Problems, path: &KeyPath, value: &str) -> Option<SocketAddr> {
    match SocketAddr::from_str(value) {
        Ok(a) => Some(a),
        Err(_) => {
            p.add(path.clone(), format!("`{value}` is not an IP:port address"));
            None
        }
    }
}

fn duration(
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

fn count(p: &mut Problems, parent: &KeyPath, key: &str, value: Option<i64>, default: u32) -> u32 {
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
fn settings(p: &mut Problems, path: &KeyPath, base: &Settings, raw: &RawSettings) -> Settings {
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
        health,
        slo,
    }
}

/// Tenant names are used in metric labels and URLs, so they are kept tame.
pub fn valid_tenant_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

/// Lower-cases a host name and strips a trailing dot; `None` if it has
/// characters no DNS name or IPv4 literal has.
pub fn normalize_host(host: &str) -> Option<String> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_');
    ok.then(|| host.to_ascii_lowercase())
}

fn host_pattern(text: &str) -> Option<HostPattern> {
    match text.strip_prefix("*.") {
        Some(rest) => normalize_host(rest).map(|h| HostPattern::Wildcard(format!(".{h}"))),
        None => normalize_host(text).map(HostPattern::Exact),
    }
}

#[allow(clippy::too_many_arguments)]
fn tenant(
    p: &mut Problems,
    path: &KeyPath,
    name: String,
    rt: RawTenant,
    defaults: &Settings,
    base_dir: &Path,
    env: EnvLookup<'_>,
    host_owner: &mut HashMap<HostPattern, String>,
) -> Option<TenantConfig> {
    let before = p.0.len();
    if !valid_tenant_name(&name) {
        p.add(
            path.clone(),
            format!("tenant name `{name}` must match [a-z0-9][a-z0-9_-]{{0,62}}"),
        );
    }

    let mut hosts_of = |key: &str, list: &[String], p: &mut Problems| -> Vec<HostPattern> {
        let mut out = Vec::with_capacity(list.len());
        for (i, text) in list.iter().enumerate() {
            let hp = || path.key(key).index(i);
            let Some(pattern) = host_pattern(text) else {
                p.add(hp(), format!("`{text}` is not a host name or *.wildcard"));
                continue;
            };
            match host_owner.get(&pattern) {
                Some(owner) if *owner == name => {
                    p.add(hp(), format!("host `{text}` is listed twice"))
                }
                Some(owner) => p.add(
                    hp(),
                    format!("host `{text}` already belongs to tenant `{owner}`"),
                ),
                None => {
                    host_owner.insert(pattern.clone(), name.clone());
                    out.push(pattern);
                }
            }
        }
        out
    };
    let hosts = hosts_of("hosts", &rt.hosts, p);
    let preview_hosts = hosts_of("preview_hosts", &rt.preview_hosts, p);
    if rt.hosts.is_empty() {
        p.add(path.key("hosts"), "a tenant needs at least one host");
    }

    let preview_token = rt
        .preview_token_env
        .as_deref()
        .and_then(|var| match env(var) {
            Some(v) if !v.is_empty() => Some(v),
            _ => {
                p.add(
                    path.key("preview_token_env"),
                    format!("environment variable {var} is not set"),
                );
                None
            }
        });

    let stable = Color::parse(&rt.stable).unwrap_or_else(|| {
        p.add(
            path.key("stable"),
            format!("`{}` is not \"blue\" or \"green\"", rt.stable),
        );
        Color::Blue
    });

    let wp = path.key("weights");
    let weight = |p: &mut Problems, key: &str, v: i64| -> u32 {
        if (0..=MAX_WEIGHT).contains(&v) {
            v as u32
        } else {
            p.add(wp.key(key), format!("must be between 0 and {MAX_WEIGHT}"));
            0
        }
    };
    let weights = Weights {
        blue: weight(p, "blue", rt.weights.blue),
        green: weight(p, "green", rt.weights.green),
    };
    if rt.weights.blue == 0 && rt.weights.green == 0 {
        p.add(wp, "weights must not both be 0");
    }

    let sticky = rt.sticky.and_then(|s| sticky(p, &path.key("sticky"), s));

    let pp = path.key("pools");
    let pools = [rt.pools.blue, rt.pools.green];
    for color in Color::ALL {
        let list = &pools[color.index()];
        let cp = pp.key(color.as_str());
        for (i, ep) in list.iter().enumerate() {
            if !valid_endpoint(ep) {
                p.add(cp.index(i), format!("`{ep}` is not host:port"));
            } else if list[..i].contains(ep) {
                p.add(cp.index(i), format!("`{ep}` is listed twice"));
            }
        }
    }
    let tls = rt.tls.and_then(|t| {
        let (cert, key) = (base_dir.join(&t.cert), base_dir.join(&t.key));
        match super::tls::load(&cert, &key) {
            Ok(loaded) => Some(TlsFiles {
                cert,
                key,
                certified: loaded.certified,
                fingerprint: loaded.fingerprint,
            }),
            Err(super::tls::TlsProblem::Cert(m)) => {
                p.add(path.key("tls").key("cert"), m);
                None
            }
            Err(super::tls::TlsProblem::Key(m)) => {
                p.add(path.key("tls").key("key"), m);
                None
            }
        }
    });

    let rollout = rt.rollout.map(|r| rollout(p, &path.key("rollout"), r));

    let layer = RawSettings {
        connect_timeout: rt.connect_timeout,
        request_timeout: rt.request_timeout,
        max_inflight: rt.max_inflight,
        drain_timeout: rt.drain_timeout,
        access_log: rt.access_log,
        health: rt.health,
        slo: rt.slo,
    };
    let settings = settings(p, path, defaults, &layer);

    let tenant = TenantConfig {
        name,
        hosts,
        preview_hosts,
        preview_token,
        stable,
        weights,
        sticky,
        pools,
        tls,
        rollout,
        settings,
    };
    if let Some((color, message)) = tenant.empty_pool_in_use() {
        p.add(pp.key(color.as_str()), message);
    }
    (p.0.len() == before).then_some(tenant)
}

fn valid_endpoint(ep: &str) -> bool {
    match http::uri::Authority::from_str(ep) {
        Ok(a) => a.port_u16().is_some_and(|p| p > 0) && !a.host().is_empty() && !ep.contains('@'),
        Err(_) => false,
    }
}

fn sticky(p: &mut Problems, path: &KeyPath, raw: RawSticky) -> Option<StickyKey> {
    match (raw.header, raw.cookie) {
        (Some(h), None) => match http::HeaderName::from_str(&h) {
            Ok(name) => Some(StickyKey::Header(name)),
            Err(_) => {
                p.add(path.key("header"), format!("`{h}` is not a header name"));
                None
            }
        },
        (None, Some(c)) => {
            let ok = !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if ok {
                Some(StickyKey::Cookie(c))
            } else {
                p.add(path.key("cookie"), format!("`{c}` is not a cookie name"));
                None
            }
        }
        _ => {
            p.add(path.clone(), "set exactly one of `header` or `cookie`");
            None
        }
    }
}

fn rollout(p: &mut Problems, path: &KeyPath, raw: RawRollout) -> Rollout {
    let sp = path.key("steps");
    let mut steps = Vec::with_capacity(raw.steps.len());
    for (i, s) in raw.steps.iter().enumerate() {
        if !(1..=100).contains(s) {
            p.add(sp.index(i), "a step is a share in percent from 1 to 100");
        } else if steps.last().is_some_and(|last| *last >= *s as u32) {
            p.add(sp.index(i), "steps must increase");
        } else {
            steps.push(*s as u32);
        }
    }
    if steps.last() != Some(&100) {
        p.add(sp, "steps must end at 100");
    }
    let progress = raw.progress.and_then(|pr| {
        let pp = path.key("progress");
        let step = usize::try_from(pr.step)
            .ok()
            .filter(|s| *s < raw.steps.len());
        let since = humantime::parse_rfc3339_weak(&pr.since).ok();
        if step.is_none() {
            p.add(
                pp.key("step"),
                format!("must be from 0 to {}", raw.steps.len().saturating_sub(1)),
            );
        }
        if since.is_none() {
            p.add(
                pp.key("since"),
                format!("`{}` is not an RFC 3339 time", pr.since),
            );
        }
        Some(RolloutProgress {
            step: step?,
            since: since?,
        })
    });
    Rollout {
        steps,
        interval: duration(
            p,
            path,
            "interval",
            Some(&raw.interval),
            Duration::from_secs(1),
        ),
        bake: duration(p, path, "bake", Some(&raw.bake), Duration::from_secs(1)),
        progress,
    }
}

fn tokens(
    p: &mut Problems,
    path: &KeyPath,
    raw: RawAdmin,
    tenants: &[std::sync::Arc<TenantConfig>],
    env: EnvLookup<'_>,
) -> Vec<TokenConfig> {
    let mut out = Vec::new();
    for (name, t) in raw.tokens {
        let tp = path.key(&name);
        let sha256 = match (t.token_env, t.token_sha256) {
            (Some(var), None) => match env(&var) {
                Some(v) if !v.is_empty() => Some(Sha256::digest(v.as_bytes()).into()),
                _ => {
                    p.add(
                        tp.key("token_env"),
                        format!("environment variable {var} is not set"),
                    );
                    None
                }
            },
            (None, Some(hex_digest)) => {
                let parsed = hex::decode(hex_digest.trim())
                    .ok()
                    .and_then(|v| <[u8; 32]>::try_from(v).ok());
                if parsed.is_none() {
                    p.add(tp.key("token_sha256"), "must be 64 hexadecimal digits");
                }
                parsed
            }
            _ => {
                p.add(
                    tp.clone(),
                    "set exactly one of `token_env` or `token_sha256`",
                );
                None
            }
        };
        let scope = if t.tenants.iter().any(|s| s == "*") {
            None
        } else {
            for (i, s) in t.tenants.iter().enumerate() {
                if tenants
                    .binary_search_by(|x| x.name.as_str().cmp(s))
                    .is_err()
                {
                    p.add(tp.key("tenants").index(i), format!("no tenant named `{s}`"));
                }
            }
            if t.tenants.is_empty() {
                p.add(tp.key("tenants"), "list at least one tenant, or \"*\"");
            }
            Some(t.tenants)
        };
        if let Some(sha256) = sha256 {
            out.push(TokenConfig {
                name,
                sha256,
                tenants: scope,
            });
        }
    }
    out
}
