//! One `[tenants.NAME]` table → a validated `TenantConfig`: its name,
//! hosts (each owned by one tenant only), pools and endpoints, weights,
//! sticky key, preview token and rollout table. Every problem is collected
//! with its key path, like the rest of validation (`validate`).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use super::super::locate::KeyPath;
use super::super::model::*;
use super::super::raw::*;
use super::super::secrets::secret;
use std::str::FromStr;

use super::{EnvLookup, Problems, duration, settings};

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
pub(super) fn tenant(
    p: &mut Problems,
    path: &KeyPath,
    name: String,
    rt: RawTenant,
    defaults: &Settings,
    base_dir: &Path,
    env: EnvLookup<'_>,
    host_owner: &mut HashMap<HostPattern, String>,
) -> Option<TenantConfig> {
    let before = p.errors.len();
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
        .and_then(|var| secret(p, path.key("preview_token_env"), var, env));

    let stable = Pool::parse(&rt.stable).unwrap_or_else(|| {
        p.add(
            path.key("stable"),
            format!("`{}` is not \"blue\" or \"green\"", rt.stable),
        );
        Pool::Blue
    });

    let weights = weights(p, &path.key("weights"), rt.weights, stable);

    let sticky = rt.sticky.and_then(|s| sticky(p, &path.key("sticky"), s));

    let pp = path.key("pools");
    let pools = [rt.pools.blue, rt.pools.green];
    for color in Pool::ALL {
        let list = &pools[color.index()];
        let cp = pp.key(color.as_str());
        for (i, ep) in list.iter().enumerate() {
            if let Err(message) = super::super::endpoint::parse(ep) {
                p.add(cp.index(i), message);
            } else if list[..i].contains(ep) {
                p.add(cp.index(i), format!("`{ep}` is listed twice"));
            }
        }
    }
    let tls = rt.tls.and_then(|t| {
        let (cert, key) = (base_dir.join(&t.cert), base_dir.join(&t.key));
        match super::super::tls::load(&cert, &key) {
            Ok(loaded) => Some(TlsFiles {
                cert,
                key,
                certified: loaded.certified,
                fingerprint: loaded.fingerprint,
            }),
            Err(super::super::tls::TlsProblem::Cert(m)) => {
                p.add(path.key("tls").key("cert"), m);
                None
            }
            Err(super::super::tls::TlsProblem::Key(m)) => {
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
        candidate_match: rt.candidate_match,
        rate_limit: rt.rate_limit,
        client_rate_limit: rt.client_rate_limit,
        health: rt.health,
        slo: rt.slo,
        outlier: rt.outlier,
        upstream_tls: rt.upstream_tls,
    };
    let settings = settings(p, path, defaults, &layer, base_dir);

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
    (p.errors.len() == before).then_some(tenant)
}

/// The file's `weights`, each out-of-range value located at its own key and
/// `{0, 0}` at the table. After a problem the tenant gets all traffic on
/// `stable`, a placeholder that is never applied (the file is refused).
fn weights(p: &mut Problems, wp: &KeyPath, raw: RawWeights, stable: Pool) -> Weights {
    let mut weight = |pool: Pool, v: i64| {
        let w = u32::try_from(v).ok().filter(|w| *w <= Weights::MAX);
        if w.is_none() {
            let message = format!("must be between 0 and {}", Weights::MAX);
            p.add(wp.key(pool.as_str()), message);
        }
        w
    };
    let (blue, green) = (weight(Pool::Blue, raw.blue), weight(Pool::Green, raw.green));
    let (Some(blue), Some(green)) = (blue, green) else {
        return Weights::all_on(stable);
    };
    Weights::new(blue, green).unwrap_or_else(|e| {
        let at = match e {
            WeightsError::BothZero => wp.clone(),
            WeightsError::TooLarge(pool) => wp.key(pool.as_str()),
        };
        p.add(at, e.to_string());
        Weights::all_on(stable)
    })
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

/// `candidate_match`: each rule names exactly one of a header (a valid
/// header name) or a cookie (`[A-Za-z0-9._-]+`) and a value a request can
/// carry (visible ASCII and spaces).
pub(super) fn candidate_match(
    p: &mut Problems,
    path: &KeyPath,
    raw: &[RawMatch],
) -> Vec<MatchRule> {
    let mut rules = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let at = path.index(i);
        let value_ok = !r.value.is_empty() && r.value.bytes().all(|b| (b' '..=b'~').contains(&b));
        if !value_ok {
            p.add(
                at.key("value"),
                "must be non-empty printable ASCII, as a header or cookie value is",
            );
        }
        match (&r.header, &r.cookie) {
            (Some(h), None) => match http::HeaderName::from_str(h) {
                Ok(name) if value_ok => rules.push(MatchRule::Header {
                    name,
                    value: r.value.clone(),
                }),
                Ok(_) => {}
                Err(_) => p.add(at.key("header"), format!("`{h}` is not a header name")),
            },
            (None, Some(c)) => {
                let ok = !c.is_empty()
                    && c.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if !ok {
                    p.add(at.key("cookie"), format!("`{c}` is not a cookie name"));
                } else if value_ok {
                    rules.push(MatchRule::Cookie {
                        name: c.clone(),
                        value: r.value.clone(),
                    });
                }
            }
            _ => p.add(at, "set exactly one of `header` or `cookie`"),
        }
    }
    rules
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
