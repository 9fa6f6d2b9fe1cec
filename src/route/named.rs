//! Endpoints by name (SPEC section 13): a pool entry that names a host is
//! expanded, when a table is built, into one endpoint per address the name
//! last resolved to — Envoy's STRICT_DNS, HAProxy's `server-template`.
//!
//! The addresses come from the control task ([`Addresses`], fed by `dns`'s
//! resolution tasks through the one change path), never from a lookup here:
//! building a table never waits on the network, and requests never resolve.
//! Each address is an endpoint of its own, keyed — and labelled in metrics
//! and the tenant view — `name:port/ip`, so its health, in-flight count and
//! keep-alive connections are its own and carry over every rebuild while
//! the name keeps resolving to it.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::config::dns::endpoint_name;

/// The last answer for each name that has resolved at least once: the
/// state the control task keeps beside the control state. A name missing
/// here never resolved, and its pool entries expand to no endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addresses {
    by_name: HashMap<Box<str>, Vec<IpAddr>>,
}

impl Addresses {
    /// The addresses `name` last resolved to, sorted; `None` if it never
    /// resolved.
    pub fn get(&self, name: &str) -> Option<&[IpAddr]> {
        self.by_name.get(name).map(Vec::as_slice)
    }

    /// Records an answer for `name` (deduplicated and sorted, so an answer
    /// in another order is the same answer); `true` when it differs from
    /// the last one. An empty answer is not recorded: a name whose records
    /// vanished keeps its last addresses, like a failed lookup (SPEC
    /// section 13).
    pub fn set(&mut self, name: &str, mut addresses: Vec<IpAddr>) -> bool {
        addresses.sort_unstable();
        addresses.dedup();
        if addresses.is_empty() || self.get(name) == Some(&addresses) {
            return false;
        }
        self.by_name.insert(name.into(), addresses);
        true
    }

    /// Forgets the names `keep` rejects (those no pool lists any more).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.by_name.retain(|name, _| keep(name));
    }
}

/// Calls `each(key, dial, name)` for every endpoint pool entry `address`
/// stands for now: the entry itself when it is an IP literal (`key` and
/// `dial` are `address`, `name` is `None`, nothing allocated); one call per
/// address of its name otherwise — none when the name never resolved — in
/// address order, with `key` the registry key and `endpoint` label
/// `name:port/ip`, `dial` the entry with its name replaced by the address
/// (`ip:port`, `[v6]:port`), and `name` the entry's `host:port`, which
/// probes send as `Host` and the tenant view shows.
pub fn expand(
    address: &str,
    addresses: &Addresses,
    mut each: impl FnMut(&str, &str, Option<&str>),
) {
    let Some(name) = endpoint_name(address) else {
        return each(address, address, None);
    };
    for ip in addresses.get(name.host).unwrap_or_default() {
        let host = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        let key = format!("{address}/{ip}");
        let dial = format!("{}{host}:{}", name.prefix, name.port);
        each(&key, &dial, Some(name.authority));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    type Expanded = (String, String, Option<String>);

    fn expanded(address: &str, known: &Addresses) -> Vec<Expanded> {
        let mut out = Vec::new();
        expand(address, known, |key, dial, name| {
            out.push((key.to_owned(), dial.to_owned(), name.map(str::to_owned)));
        });
        out
    }

    #[test]
    fn literals_stand_for_themselves_and_names_for_their_addresses() {
        let mut known = Addresses::default();
        assert_eq!(
            expanded("10.0.0.1:80", &known),
            vec![("10.0.0.1:80".into(), "10.0.0.1:80".into(), None)]
        );
        assert!(
            expanded("shop.svc:8080", &known).is_empty(),
            "never resolved"
        );
        assert!(known.set("shop.svc", vec![ip("::1"), ip("10.0.0.3"), ip("10.0.0.2")]));
        let keys = expanded("shop.svc:8080", &known);
        let name = Some("shop.svc:8080".to_owned());
        assert_eq!(
            keys,
            vec![
                (
                    "shop.svc:8080/10.0.0.2".into(),
                    "10.0.0.2:8080".into(),
                    name.clone()
                ),
                (
                    "shop.svc:8080/10.0.0.3".into(),
                    "10.0.0.3:8080".into(),
                    name.clone()
                ),
                ("shop.svc:8080/::1".into(), "[::1]:8080".into(), name),
            ]
        );
    }

    #[test]
    fn an_answer_is_new_only_when_its_set_of_addresses_is() {
        let mut known = Addresses::default();
        assert!(known.set("a", vec![ip("10.0.0.1"), ip("10.0.0.2")]));
        assert!(!known.set("a", vec![ip("10.0.0.2"), ip("10.0.0.1"), ip("10.0.0.1")]));
        assert!(
            !known.set("a", vec![]),
            "an empty answer keeps the last one"
        );
        assert_eq!(known.get("a"), Some(&[ip("10.0.0.1"), ip("10.0.0.2")][..]));
        assert!(known.set("a", vec![ip("10.0.0.3")]));
        known.retain(|name| name != "a");
        assert_eq!(known.get("a"), None);
    }
}
