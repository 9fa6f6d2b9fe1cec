//! The rate limits' own costs (SPEC section 16), apart from sockets:
//!
//! 1. memory: the client table with 1 000 000 distinct client keys held
//!    (`max_clients = 1 000 000`), and the default table (`max_clients =
//!    100 000`) after 1 000 000 distinct keys went through it — the bound;
//!    by the maps' own count and by the process's resident set;
//! 2. time per check (criterion): no limit, a tenant bucket that passes,
//!    a client bucket that passes (a table of 100 000 keys), each refusing.
//!
//! Run: `cargo bench --bench rate_limit` (figures in benches/RESULTS.md).
//! The request-level figures (a 429 against a proxied request, and another
//! tenant's latency under a flood) are `benches/rate_limit.sh`'s.

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::Criterion;
use governor::nanos::Nanos;
use http::HeaderMap;
use turnout::config::{ClientKey, ClientRateLimit, RateLimit, Settings};
use turnout::route::limit::{ClientTable, Limits};

/// The allocator the `turnout` binary uses (src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The process's resident set in bytes (`/proc/self/statm`).
fn resident() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Puts `keys` distinct client keys (IPv4 addresses) through a table of
/// `max_clients`, as requests do; the keys held and bytes used after.
fn fill(max_clients: u32, keys: u32) -> (usize, usize, usize) {
    let before = resident();
    let table = ClientTable::new(max_clients, Some(7));
    for i in 0..keys {
        let key = table.key_of_ip(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)));
        table
            .measure_and_replace(key, |_| Ok::<_, ()>(((), Nanos::from(u64::from(i) + 1))))
            .unwrap();
    }
    let grown = resident().saturating_sub(before);
    let out = (table.len(), table.memory_bytes(), grown);
    drop(table);
    out
}

fn memory() {
    println!("client table memory (rate_limit::ClientTable)");
    for (max, keys) in [
        (1_000_000, 1_000_000),
        (100_000, 1_000_000),
        (100_000, 100_000),
    ] {
        let (held, bytes, rss) = fill(max, keys);
        println!(
            "  max_clients {max:>9}, {keys:>9} distinct keys: {held:>9} held, \
             {:>6.1} MiB in the maps ({:>5.1} B/key), resident set +{:>6.1} MiB",
            bytes as f64 / (1 << 20) as f64,
            bytes as f64 / held as f64,
            rss as f64 / (1 << 20) as f64,
        );
    }
}

fn checks(c: &mut Criterion) {
    let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let headers = HeaderMap::new();
    let limits = |tenant: Option<RateLimit>, client: Option<ClientRateLimit>| {
        let settings = Settings {
            rate_limit: tenant,
            client_rate_limit: client,
            ..Settings::default()
        };
        Limits::rebuild(&settings, &Limits::default())
    };
    let per_client = |rps: f64, burst: u32| ClientRateLimit {
        limit: RateLimit { rps, burst },
        key: ClientKey::Ip,
        max_clients: 100_000,
    };
    let open = RateLimit {
        rps: 1e9,
        burst: u32::MAX,
    };
    let shut = RateLimit {
        rps: 1e-3,
        burst: 1,
    };

    let mut g = c.benchmark_group("rate_limit_check");
    let none = limits(None, None);
    g.bench_function("no limit", |b| {
        b.iter(|| black_box(none.check(&headers, black_box(ip))))
    });
    let tenant_pass = limits(Some(open), None);
    g.bench_function("tenant bucket, passes", |b| {
        b.iter(|| black_box(tenant_pass.check(&headers, black_box(ip))))
    });
    let tenant_refuse = limits(Some(shut), None);
    g.bench_function("tenant bucket, refuses", |b| {
        b.iter(|| black_box(tenant_refuse.check(&headers, black_box(ip))))
    });
    // 100 000 clients held; each check one of them in turn.
    let clients: Vec<IpAddr> = (0..100_000u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)))
        .collect();
    let client_pass = limits(None, Some(per_client(1e9, u32::MAX)));
    let mut i = 0;
    g.bench_function("client bucket of 100 000, passes", |b| {
        b.iter(|| {
            i = (i + 1) % clients.len();
            black_box(client_pass.check(&headers, clients[i]))
        })
    });
    let client_refuse = limits(None, Some(per_client(1e-3, 1)));
    for ip in &clients {
        let _ = client_refuse.check(&headers, *ip);
    }
    g.bench_function("client bucket of 100 000, refuses", |b| {
        b.iter(|| {
            i = (i + 1) % clients.len();
            black_box(client_refuse.check(&headers, clients[i]))
        })
    });
    g.finish();
}

fn main() {
    memory();
    let mut c = Criterion::default().configure_from_args();
    checks(&mut c);
    c.final_summary();
}
