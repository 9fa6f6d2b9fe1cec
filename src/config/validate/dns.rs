//! `[dns]`: name servers as `IP:PORT` (or `IP`, port 53, as resolv.conf
//! lists them) and a positive refresh interval.

use std::net::{IpAddr, SocketAddr};

use super::super::dns::{DEFAULT_REFRESH, DnsSettings};
use super::super::locate::KeyPath;
use super::super::raw::RawDns;
use super::{Problems, duration};

/// The validated `[dns]` table; every problem located at its key.
pub(super) fn dns(p: &mut Problems, path: &KeyPath, raw: RawDns) -> DnsSettings {
    let refresh = duration(p, path, "refresh", raw.refresh.as_deref(), DEFAULT_REFRESH);
    let list = raw.servers.unwrap_or_default();
    let servers_path = path.key("servers");
    let mut servers = Vec::with_capacity(list.len());
    for (i, server) in list.iter().enumerate() {
        let parsed = server
            .parse::<SocketAddr>()
            .ok()
            .or_else(|| server.parse::<IpAddr>().ok().map(|ip| (ip, 53).into()));
        match parsed {
            Some(addr) if addr.port() == 0 => {
                p.add(servers_path.index(i), format!("`{server}`: port 0"));
            }
            Some(addr) => servers.push(addr),
            None => p.add(
                servers_path.index(i),
                format!("`{server}` is not an IP:PORT address"),
            ),
        }
    }
    DnsSettings { servers, refresh }
}
