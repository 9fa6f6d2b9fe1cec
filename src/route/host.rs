//! Host → tenant: exact names first, then wildcards by longest suffix.
//!
//! Both maps are hash maps, so a lookup costs one probe for the exact name
//! plus one per label of the host — flat however many tenants there are.
//! They hash with foldhash (hashbrown's default hasher, seeded per process)
//! rather than the standard library's SipHash: a lookup is on every
//! request, and the maps are built from the control file, never from what
//! clients send, so SipHash's guard against crafted keys buys nothing here.
//! Hashing the host took about 200 instructions per request with SipHash,
//! about 15 with foldhash (`benches/RESULTS.md`, seventh session).

use std::collections::HashMap;

use foldhash::fast::RandomState;

use crate::config::HostPattern;

/// Where a host leads: a tenant (by index in the table) and whether the host
/// is one of its preview hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostRoute {
    /// Index into the routing table's tenants (sorted by name).
    pub tenant: u32,
    /// The host is one of the tenant's `preview_hosts`.
    pub preview: bool,
}

/// All hosts of all tenants of one routing table, built with it. Hosts are
/// unique across tenants (validation sees to it), so an insert never
/// replaces another tenant's route.
#[derive(Debug, Default)]
pub struct HostIndex {
    exact: HashMap<Box<str>, HostRoute, RandomState>,
    /// Keyed by suffix including the leading dot: `*.a.com` → `.a.com`.
    wildcard: HashMap<Box<str>, HostRoute, RandomState>,
}

impl HostIndex {
    /// Adds one host pattern; a second insert of the same pattern replaces
    /// the first.
    pub fn insert(&mut self, pattern: &HostPattern, route: HostRoute) {
        match pattern {
            HostPattern::Exact(h) => self.exact.insert(h.as_str().into(), route),
            HostPattern::Wildcard(s) => self.wildcard.insert(s.as_str().into(), route),
        };
    }

    /// Looks up an already normalised (lower-case, no port) host.
    pub fn lookup(&self, host: &str) -> Option<HostRoute> {
        if let Some(route) = self.exact.get(host) {
            return Some(*route);
        }
        if self.wildcard.is_empty() {
            return None;
        }
        // Longest suffix first: walk the dots from the left.
        host.match_indices('.')
            .find_map(|(i, _)| self.wildcard.get(&host[i..]).copied())
    }
}

/// The host of a request as routing sees it: port and trailing dot removed,
/// lower-cased. Writes into `buf` only when the host has upper-case letters,
/// so the common case does not allocate or copy.
pub fn normalize<'a>(raw: &'a str, buf: &'a mut String) -> Option<&'a str> {
    let host = strip_port(raw);
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        buf.clear();
        buf.push_str(host);
        buf.make_ascii_lowercase();
        return Some(buf.as_str());
    }
    Some(host)
}

fn strip_port(raw: &str) -> &str {
    if raw.starts_with('[') {
        // IPv6 literal: `[::1]:8080`.
        return match raw.find(']') {
            Some(end) => &raw[..=end],
            None => raw,
        };
    }
    match raw.rfind(':') {
        Some(i) if raw[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &raw[..i],
        _ => raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> HostIndex {
        let mut idx = HostIndex::default();
        let r = |tenant, preview| HostRoute { tenant, preview };
        idx.insert(&HostPattern::Exact("a.com".into()), r(0, false));
        idx.insert(&HostPattern::Wildcard(".a.com".into()), r(1, false));
        idx.insert(&HostPattern::Wildcard(".eu.a.com".into()), r(2, false));
        idx.insert(&HostPattern::Exact("x.eu.a.com".into()), r(3, true));
        idx
    }

    #[test]
    fn exact_beats_wildcard_and_longest_suffix_wins() {
        let idx = index();
        assert_eq!(idx.lookup("a.com").map(|r| r.tenant), Some(0));
        assert_eq!(idx.lookup("www.a.com").map(|r| r.tenant), Some(1));
        assert_eq!(idx.lookup("shop.eu.a.com").map(|r| r.tenant), Some(2));
        assert_eq!(idx.lookup("deep.shop.eu.a.com").map(|r| r.tenant), Some(2));
        assert_eq!(
            idx.lookup("x.eu.a.com"),
            Some(HostRoute {
                tenant: 3,
                preview: true
            })
        );
        assert_eq!(idx.lookup("b.com"), None);
        assert_eq!(idx.lookup("xa.com"), None);
    }

    #[test]
    fn normalizes_case_port_and_dot() {
        let mut buf = String::new();
        assert_eq!(normalize("Shop.A.com.:8080", &mut buf), Some("shop.a.com"));
        assert_eq!(normalize("a.com", &mut buf), Some("a.com"));
        assert_eq!(normalize("127.0.0.1:80", &mut buf), Some("127.0.0.1"));
        assert_eq!(normalize("[::1]:80", &mut buf), Some("[::1]"));
        assert_eq!(normalize(":80", &mut buf), None);
        assert_eq!(normalize("", &mut buf), None);
    }
}
