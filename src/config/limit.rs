//! Rate limits in the control file (SPEC section 16): `rate_limit` (the
//! whole tenant) and `client_rate_limit` (each client of a tenant), as
//! TOML spells them, as validated, and the rule between the two.
//!
//! Kept apart from `raw.rs`, `model.rs` and `validate/` so the feature
//! reads in one place; those files only name these types. A limit is a
//! whole inline table: a tenant's `rate_limit` replaces `[defaults]`' one
//! entirely rather than key by key (as nginx's `limit_req` does per
//! `location`), so a tenant never runs on half of each.

use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use super::locate::KeyPath;
use super::validate::{Problems, count};

/// `client_rate_limit.max_clients` when the file does not set it: the
/// per-tenant bound on client keys held (SPEC section 16).
pub const DEFAULT_MAX_CLIENTS: u32 = 100_000;
/// Above this `rps` a token would be due in under a nanosecond, the
/// resolution of the buckets' clock.
const MAX_RPS: f64 = 1e9;
/// Longest time an empty bucket may take to fill again (`burst / rps`):
/// longer is surely a mistake, and would overflow the buckets' clock
/// arithmetic.
const MAX_REFILL: Duration = Duration::from_secs(365 * 24 * 3600);

/// `rate_limit = { rps, burst }` as written: unchecked, so that a negative
/// or fractional `burst` reaches validation and gets a located error.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// Tokens added per second; may be fractional (`0.5`: one every 2 s).
    pub rps: f64,
    /// The bucket's size: requests allowed at once after a quiet spell.
    pub burst: i64,
}

/// `client_rate_limit = { rps, burst, key, max_clients }` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientRateLimit {
    /// Tokens added per second to each client's bucket.
    pub rps: f64,
    /// Each client's bucket size.
    pub burst: i64,
    /// `"ip"` (the default) or `{ header = "x-api-key" }`.
    pub key: Option<RawClientKey>,
    /// Client keys held per tenant, least recently seen evicted first.
    pub max_clients: Option<i64>,
}

/// `key = "ip"` or `key = { header = "..." }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawClientKey {
    /// A name: only `"ip"` is one.
    Name(String),
    /// `{ header = "x-api-key" }`.
    Header {
        /// The request header whose value is the client's key.
        header: String,
    },
}

/// A token bucket (GCRA): `rps` tokens a second, at most `burst` held; a
/// request takes one or is refused with 429 (SPEC section 16).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Tokens added per second, in `(0, 1e9]`; fractional allowed.
    pub rps: f64,
    /// Tokens held at most (the requests allowed at once), at least 1;
    /// `burst / rps` is at most a year.
    pub burst: u32,
}

impl RateLimit {
    /// The time between two tokens: `1 / rps`, at least a nanosecond.
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.rps).max(Duration::from_nanos(1))
    }
}

/// What identifies a client for `client_rate_limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientKey {
    /// The connection's peer address. A client's own `X-Forwarded-For` is
    /// not trusted: anyone can write one.
    Ip,
    /// The value of this request header (an API key, say); a request
    /// without it is keyed by its peer address.
    Header(http::HeaderName),
}

/// `client_rate_limit`: one bucket per client key, each tenant its own.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientRateLimit {
    /// Every client's bucket.
    pub limit: RateLimit,
    /// What a client is.
    pub key: ClientKey,
    /// Client keys held per tenant, at least 1 (default 100 000); past it
    /// the least recently seen key is forgotten, and comes back with a full
    /// bucket.
    pub max_clients: u32,
}

/// The limits of `settings` for `turnout check`'s line about a tenant:
/// `"; rate limit 500/s, burst 1000; client rate limit 20/s, burst 40 by
/// header x-api-key"`, or `""` without limits.
pub fn summary(settings: &super::Settings) -> String {
    let mut out = String::new();
    if let Some(l) = settings.rate_limit {
        out.push_str(&format!("; rate limit {}/s, burst {}", l.rps, l.burst));
    }
    if let Some(c) = &settings.client_rate_limit {
        let by = match &c.key {
            ClientKey::Ip => "ip".to_owned(),
            ClientKey::Header(name) => format!("header {name}"),
        };
        out.push_str(&format!(
            "; client rate limit {}/s, burst {} by {by}, max {} clients",
            c.limit.rps, c.limit.burst, c.max_clients
        ));
    }
    out
}

/// Validates `rate_limit` at `path` (located errors on `rps` and `burst`).
pub(super) fn rate_limit(p: &mut Problems, path: &KeyPath, raw: &RawRateLimit) -> RateLimit {
    let rps = if raw.rps.is_finite() && raw.rps > 0.0 && raw.rps <= MAX_RPS {
        raw.rps
    } else {
        p.add(
            path.key("rps"),
            "must be a number of requests per second above 0 and at most 1e9",
        );
        1.0
    };
    let burst = match u32::try_from(raw.burst) {
        Ok(b) if b >= 1 => b,
        _ => {
            p.add(
                path.key("burst"),
                format!("must be a whole number from 1 to {}", u32::MAX),
            );
            1
        }
    };
    if f64::from(burst) / rps > MAX_REFILL.as_secs_f64() {
        p.add(
            path.key("burst"),
            "an empty bucket would take over a year to fill (burst / rps)",
        );
    }
    RateLimit { rps, burst }
}

/// Validates `client_rate_limit` at `path`.
pub(super) fn client_rate_limit(
    p: &mut Problems,
    path: &KeyPath,
    raw: &RawClientRateLimit,
) -> ClientRateLimit {
    let limit = rate_limit(
        p,
        path,
        &RawRateLimit {
            rps: raw.rps,
            burst: raw.burst,
        },
    );
    let key = match &raw.key {
        None => ClientKey::Ip,
        Some(RawClientKey::Name(name)) if name == "ip" => ClientKey::Ip,
        Some(RawClientKey::Name(name)) => {
            p.add(
                path.key("key"),
                format!("`{name}` is not \"ip\" or {{ header = \"...\" }}"),
            );
            ClientKey::Ip
        }
        Some(RawClientKey::Header { header }) => match http::HeaderName::from_str(header) {
            Ok(name) => ClientKey::Header(name),
            Err(_) => {
                p.add(
                    path.key("key").key("header"),
                    format!("`{header}` is not a header name"),
                );
                ClientKey::Ip
            }
        },
    };
    let max_clients = count(p, path, "max_clients", raw.max_clients, DEFAULT_MAX_CLIENTS);
    ClientRateLimit {
        limit,
        key,
        max_clients,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(rps: f64, burst: i64) -> RawRateLimit {
        RawRateLimit { rps, burst }
    }

    #[test]
    fn limits_in_range_pass() {
        let mut p = Problems::default();
        let l = rate_limit(&mut p, &KeyPath::root(), &raw(0.5, 3));
        assert!(p.errors.is_empty());
        assert_eq!(l, RateLimit { rps: 0.5, burst: 3 });
        assert_eq!(l.interval(), Duration::from_secs(2));
    }

    #[test]
    fn bad_rps_and_burst_are_each_located() {
        for (rps, burst, bad) in [
            (0.0, 1, "rps"),
            (-1.0, 1, "rps"),
            (f64::NAN, 1, "rps"),
            (2e9, 1, "rps"),
            (1.0, 0, "burst"),
            (1.0, -4, "burst"),
            (1e-9, 10, "burst"),
        ] {
            let mut p = Problems::default();
            rate_limit(&mut p, &KeyPath::root().key("rate_limit"), &raw(rps, burst));
            assert_eq!(p.errors.len(), 1, "{rps} {burst}");
            assert_eq!(p.errors[0].0.to_string(), format!("rate_limit.{bad}"));
        }
    }

    #[test]
    fn client_key_is_ip_or_a_header() {
        let mut p = Problems::default();
        let mut c = RawClientRateLimit {
            rps: 1.0,
            burst: 1,
            key: None,
            max_clients: None,
        };
        let path = KeyPath::root();
        assert_eq!(client_rate_limit(&mut p, &path, &c).key, ClientKey::Ip);
        assert_eq!(
            client_rate_limit(&mut p, &path, &c).max_clients,
            DEFAULT_MAX_CLIENTS
        );
        c.key = Some(RawClientKey::Header {
            header: "X-Api-Key".into(),
        });
        let key = client_rate_limit(&mut p, &path, &c).key;
        assert_eq!(
            key,
            ClientKey::Header(http::HeaderName::from_static("x-api-key"))
        );
        assert!(p.errors.is_empty());
        c.key = Some(RawClientKey::Name("cookie".into()));
        c.max_clients = Some(0);
        client_rate_limit(&mut p, &path, &c);
        let keys: Vec<String> = p.errors.iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(keys, ["key", "max_clients"]);
    }
}

#[cfg(test)]
mod file_tests {
    use std::path::Path;

    fn parse(limits: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
        let text = format!(
            "[defaults]\nrate_limit = {{ rps = 2000, burst = 4000 }}\n\n[tenants.t]\nhosts = [\"t\"]\nstable = \"blue\"\nweights = {{ blue = 1, green = 0 }}\npools.blue = [\"a:1\"]\npools.green = []\n{limits}\n"
        );
        crate::config::parse(&text, Path::new("t.toml"), &|_| None)
    }

    #[test]
    fn defaults_are_copied_and_a_tenant_sets_its_own() {
        let c = parse("").unwrap();
        let t = &c.tenant("t").unwrap().settings;
        assert_eq!(t.rate_limit.map(|l| (l.rps, l.burst)), Some((2000.0, 4000)));
        assert_eq!(t.client_rate_limit, None);
        let c = parse(
            "rate_limit = { rps = 0.5, burst = 1 }\nclient_rate_limit = { rps = 5, burst = 10, key = { header = \"x-api-key\" }, max_clients = 50 }",
        )
        .unwrap();
        let t = &c.tenant("t").unwrap().settings;
        assert_eq!(t.rate_limit.map(|l| (l.rps, l.burst)), Some((0.5, 1)));
        assert_eq!(
            t.client_rate_limit.as_ref().map(|c| c.max_clients),
            Some(50)
        );
    }

    #[test]
    fn errors_name_line_and_key() {
        let e = parse("client_rate_limit = { rps = 0, burst = 1, key = \"cookie\" }").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("t.toml:10:") && text.contains("tenants.t.client_rate_limit.rps"),
            "{text}"
        );
        assert!(text.contains("client_rate_limit.key: `cookie`"), "{text}");
        let e = parse("rate_limit = { rps = 1, burst = 2, per = \"s\" }").unwrap_err();
        assert!(e.to_string().contains("t.toml:10:"), "{e}");
    }
}
