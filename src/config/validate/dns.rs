//! `[dns]`: name servers as `IP:PORT` (or `IP`, port 53, as resolv.conf
//! lists them) and a positive refresh interval.

use std::net::{IpAddr, SocketAddr};

use super::super::dns::{DEFAULT_REFRESH, DnsSettings};
use super::super::locate::KeyPath;
use super::super::raw::RawDns;
use super::{Problems, duration};

/// The validated `[dns]` table; every problem located at its key.
pub(super) fn dns(p: &mut Problems, path: &KeyPath, raw: RawDns) -> DnsSettings {
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
    let refresh = duration(p, path, "refresh", raw.refresh.as_deref(), DEFAULT_REFRESH);
    DnsSettings { servers, refresh }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config::parse;

    const TENANT: &str = "[tenants.t]\nhosts = [\"t\"]\nstable = \"blue\"\nweights = { blue = 1, green = 0 }\npools.blue = [\"app.svc:80\"]\npools.green = []\n";

    #[test]
    fn servers_and_refresh_are_read_and_defaulted() {
        let c = parse(TENANT, Path::new("t.toml"), &|_| None).unwrap();
        assert!(c.dns.servers.is_empty());
        assert_eq!(c.dns.refresh, Duration::from_secs(5));
        let text = format!(
            "[dns]\nservers = [\"10.0.0.53:5353\", \"10.0.0.54\"]\nrefresh = \"1s\"\n{TENANT}"
        );
        let c = parse(&text, Path::new("t.toml"), &|_| None).unwrap();
        let servers: Vec<String> = c.dns.servers.iter().map(ToString::to_string).collect();
        assert_eq!(servers, ["10.0.0.53:5353", "10.0.0.54:53"]);
        assert_eq!(c.dns.refresh, Duration::from_secs(1));
    }

    #[test]
    fn bad_values_are_located_errors() {
        let text =
            format!("[dns]\nservers = [\"dns.example:53\"]\nrefresh = \"0s\"\nretry = 1\n{TENANT}");
        let e = parse(&text, Path::new("t.toml"), &|_| None).unwrap_err();
        assert!(e.to_string().contains("t.toml:4:1"), "{e}");
        let text = format!("[dns]\nservers = [\"dns.example:53\"]\nrefresh = \"0s\"\n{TENANT}");
        let e = parse(&text, Path::new("t.toml"), &|_| None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.toml:2:12: dns.servers[0]: `dns.example:53` is not an IP:PORT address"),
            "{e}"
        );
        assert!(
            e.contains("t.toml:3:1: dns.refresh: must be greater than 0"),
            "{e}"
        );
    }
}
