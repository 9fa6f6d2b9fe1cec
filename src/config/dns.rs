//! Endpoints given by name (SPEC section 13): the `[dns]` settings, and
//! telling a pool entry that names a host (`shop-green.default.svc:8080`)
//! from one that is an IP literal (`10.0.0.11:8080`, `[::1]:8080`).
//!
//! Only the shape lives here. Resolving is `dns`'s (background tasks, one
//! per distinct name), expanding a name into one endpoint per address is
//! the routing table builder's (`route::named`): the control state keeps
//! the names exactly as the file spells them, so write-through and the merge
//! rule never see addresses.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::Problem;
use super::locate::{KeyPath, Locator};
use super::model::{Config, Pool};

/// `[dns] refresh` when the file does not set it: Envoy's STRICT_DNS
/// `dns_refresh_rate` default.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(5);

/// `[dns]`: where names are resolved and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// Name servers (`IP:PORT`) that replace the system's
    /// (`/etc/resolv.conf`); empty: the system's, with its search domains
    /// and `ndots`.
    pub servers: Vec<SocketAddr>,
    /// Time between two resolutions of one name (default 5 s), whatever the
    /// answer's TTL (Envoy's `respect_dns_ttl: false`).
    pub refresh: Duration,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            servers: Vec::new(),
            refresh: DEFAULT_REFRESH,
        }
    }
}

/// A pool entry whose host is a DNS name rather than an IP literal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointName<'a> {
    /// Anything before the authority (`h2c://`), kept for the addresses the
    /// name expands to; empty for a plain `host:port`.
    pub prefix: &'a str,
    /// The pool entry without its prefix: `host:port`, what health probes
    /// send as `Host`.
    pub authority: &'a str,
    /// The name resolved: the host, as the file spells it.
    pub host: &'a str,
    /// The port every address of the name is dialled on.
    pub port: u16,
}

/// The name in pool entry `address`, or `None` when its host is an IP
/// literal (dialled as it is) or the entry is not `host:port` at all.
/// A `scheme://` prefix is allowed and kept apart.
pub fn endpoint_name(address: &str) -> Option<EndpointName<'_>> {
    let split = address.find("://").map_or(0, |i| i + 3);
    let (prefix, authority) = address.split_at(split);
    // The common case, an IP literal, without allocating (tables of
    // thousands of endpoints are built on every change).
    if authority.parse::<SocketAddr>().is_ok() {
        return None;
    }
    let parsed: http::uri::Authority = authority.parse().ok()?;
    let port = parsed.port_u16()?;
    let host_len = authority.rfind(':')?;
    let host = &authority[..host_len];
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || literal.parse::<IpAddr>().is_ok() {
        return None;
    }
    Some(EndpointName {
        prefix,
        authority,
        host,
        port,
    })
}

/// The distinct names the pools of `config` list, sorted: one resolution
/// task each, however many tenants, pools and ports list them.
pub fn names(config: &Config) -> BTreeSet<&str> {
    config
        .tenants
        .iter()
        .flat_map(|t| t.pools.iter().flatten())
        .filter_map(|address| endpoint_name(address).map(|n| n.host))
        .collect()
}

/// A located warning for every pool entry of `config` (read from `text`)
/// whose name is among `failed` (`(name, why)`, as `dns::unresolvable`
/// finds them): `tenants.T.pools.P[i]: cannot resolve NAME: why`, in file
/// order. `turnout check` prints them without failing (SPEC section 13).
pub fn unresolved_entries(
    text: &str,
    config: &Config,
    failed: &[(String, String)],
) -> Vec<Problem> {
    let locator = Locator::new(text);
    let mut found = Vec::new();
    for t in &config.tenants {
        for color in Pool::ALL {
            for (i, address) in t.pool(color).iter().enumerate() {
                let Some(name) = endpoint_name(address) else {
                    continue;
                };
                let Some((_, why)) = failed.iter().find(|(n, _)| n == name.host) else {
                    continue;
                };
                let key = KeyPath::root()
                    .key("tenants")
                    .key(&t.name)
                    .key("pools")
                    .key(color.as_str())
                    .index(i);
                let (line, col) = locator.position(&key);
                found.push(Problem {
                    line,
                    col,
                    key: Some(key.to_string()),
                    message: format!("cannot resolve `{}`: {why}", name.host),
                });
            }
        }
    }
    found.sort_by_key(|p| (p.line, p.col));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_told_from_ip_literals() {
        assert_eq!(endpoint_name("10.0.0.1:8080"), None);
        assert_eq!(endpoint_name("[::1]:8080"), None);
        assert_eq!(endpoint_name("h2c://10.0.0.1:8080"), None);
        assert_eq!(endpoint_name("no-port"), None);
        assert_eq!(
            endpoint_name("shop-green.default.svc:8080"),
            Some(EndpointName {
                prefix: "",
                authority: "shop-green.default.svc:8080",
                host: "shop-green.default.svc",
                port: 8080,
            })
        );
        let prefixed = endpoint_name("h2c://grpc.svc:9000").unwrap();
        assert_eq!(
            (prefixed.prefix, prefixed.authority, prefixed.host),
            ("h2c://", "grpc.svc:9000", "grpc.svc")
        );
    }
}
