//! Criterion benches of the per-request work that does not touch a socket:
//! the routing decision (host → tenant → pool → endpoint) at 10, 10 000 and
//! 100 000 tenants, the sticky hash, the SLO window update, and loading and
//! applying a 10 000-tenant control file.
//!
//! Run: `cargo bench --bench hot_path`

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use turnout::config::{self, Config, HostPattern, Listen, Pool, Settings, TenantConfig, Weights};
use turnout::metrics::Metrics;
use turnout::route::pool::{self, PoolChoice};
use turnout::route::{RoutingTable, TableBuilder, endpoint, host, sticky};
use turnout::slo::Window;

/// The allocator the `turnout` binary uses (src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn tenant(i: usize) -> TenantConfig {
    TenantConfig {
        name: format!("t{i}"),
        hosts: vec![
            HostPattern::Exact(format!("t{i}.example.com")),
            HostPattern::Wildcard(format!(".t{i}.example.com")),
        ],
        preview_hosts: vec![],
        preview_token: None,
        stable: Pool::Blue,
        weights: Weights::new(90, 10).unwrap(),
        sticky: None,
        pools: [
            vec![
                format!("10.{}.{}.1:8080", i / 256 % 256, i % 256),
                format!("10.{}.{}.2:8080", i / 256 % 256, i % 256),
            ],
            vec![format!("10.{}.{}.3:8080", i / 256 % 256, i % 256)],
        ],
        tls: None,
        rollout: None,
        settings: Settings::default(),
    }
}

fn table(tenants: usize) -> RoutingTable {
    table_with(tenants, Settings::default())
}

/// Tenants whose settings are `settings` (every tenant alike).
fn table_with(tenants: usize, settings: Settings) -> RoutingTable {
    let config = Config {
        listen: Listen {
            http: "127.0.0.1:0".parse().unwrap(),
            https: None,
            admin: "127.0.0.1:0".parse().unwrap(),
            idle_timeout: std::time::Duration::from_secs(60),
        },
        defaults: Settings::default(),
        tenants: (0..tenants)
            .map(|i| {
                let mut t = tenant(i);
                t.settings = settings.clone();
                Arc::new(t)
            })
            .collect(),
        tokens: vec![],
        notify: None,
        store: None,
        dns: Default::default(),
    };
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    TableBuilder::new(Metrics::new(), tx).build(Arc::new(config), 1)
}

/// What the proxy does per request before it forwards.
fn decide(
    table: &RoutingTable,
    raw_host: &str,
    headers: &HeaderMap,
) -> Option<Arc<turnout::route::Endpoint>> {
    let mut buf = String::new();
    let host = host::normalize(raw_host, &mut buf)?;
    let (tenant, preview) = table.route(host)?;
    let pool = match pool::choose(tenant, preview, headers) {
        PoolChoice::Pool { pool, .. }
        | PoolChoice::NewCookie { pool, .. }
        | PoolChoice::Cohort { pool } => pool,
        PoolChoice::PreviewForbidden => return None,
    };
    endpoint::choose(tenant.endpoints(pool), None)
}

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("routing_decision");
    let headers = HeaderMap::new();
    for n in [10, 10_000, 100_000] {
        let t = table(n);
        let exact = format!("t{}.example.com", n / 2);
        let wild = format!("api.t{}.example.com:443", n / 3);
        group.bench_with_input(BenchmarkId::new("exact_host", n), &n, |b, _| {
            b.iter(|| decide(&t, black_box(&exact), &headers).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("wildcard_host", n), &n, |b, _| {
            b.iter(|| decide(&t, black_box(&wild), &headers).unwrap())
        });
    }
    group.finish();
}

/// The insiders' cohort (issue 16): a tenant without rules pays nothing
/// (`routing_decision`); with rules, a header lookup or one cookie scan.
fn cohort(c: &mut Criterion) {
    use turnout::config::MatchRule;
    let settings = Settings {
        candidate_match: vec![
            MatchRule::Header {
                name: http::HeaderName::from_static("x-canary"),
                value: "always".to_owned(),
            },
            MatchRule::Cookie {
                name: "canary".to_owned(),
                value: "always".to_owned(),
            },
        ],
        ..Settings::default()
    };
    let t = table_with(10_000, settings);
    let host = "t5000.example.com";
    let mut group = c.benchmark_group("cohort");
    let none = HeaderMap::new();
    group.bench_function("rules_no_match", |b| {
        b.iter(|| decide(&t, black_box(host), &none).unwrap())
    });
    let mut header = HeaderMap::new();
    header.insert("x-canary", http::HeaderValue::from_static("always"));
    group.bench_function("header_match", |b| {
        b.iter(|| decide(&t, black_box(host), &header).unwrap())
    });
    let mut cookie = HeaderMap::new();
    cookie.insert(
        http::header::COOKIE,
        http::HeaderValue::from_static("session=abc; lang=en; canary=always"),
    );
    group.bench_function("cookie_match", |b| {
        b.iter(|| decide(&t, black_box(host), &cookie).unwrap())
    });
    group.finish();
}

fn sticky_hash(c: &mut Criterion) {
    let seed = sticky::tenant_seed("acme");
    c.bench_function("sticky_bucket", |b| {
        b.iter(|| sticky::bucket(seed, black_box(b"user-8c1f2e9a")))
    });
}

fn slo_window(c: &mut Criterion) {
    let w = Window::new(Duration::from_secs(30));
    let now = Instant::now();
    c.bench_function("slo_window_record", |b| {
        b.iter(|| {
            w.record(
                black_box(now),
                false,
                black_box(Duration::from_micros(1800)),
            )
        })
    });
}

/// The SLO guard's per-request cost (issue 12): a success is a window add
/// and two tally adds; a candidate error also runs the sequential test,
/// which is a cached threshold lookup (no lock, no allocation).
fn slo_guard(c: &mut Criterion) {
    use turnout::config::Pool;
    use turnout::slo::guard::TenantGuard;
    // The SPEC's default SLO: 0.05, 30 s, 20 requests, 0.99.
    let slo = Settings::default().slo;
    let guard = TenantGuard::new(&slo);
    let now = Instant::now();
    let ms = Duration::from_millis(2);
    // A healthy candidate's history: 100 000 requests at 4 % errors.
    for i in 0..100_000u32 {
        guard.record(
            "t",
            &slo,
            Pool::Green,
            Pool::Blue,
            true,
            i % 25 == 0,
            ms,
            now,
        );
    }
    let mut group = c.benchmark_group("slo_guard");
    group.bench_function("record_success", |b| {
        b.iter(|| {
            guard.record(
                "t",
                &slo,
                Pool::Green,
                Pool::Blue,
                true,
                black_box(false),
                ms,
                now,
            )
        })
    });
    // One error among 25 requests keeps the candidate at 4 %: every
    // iteration judges once and never breaches (a breach would latch).
    group.bench_function("record_25_at_4_percent_one_judged", |b| {
        b.iter(|| {
            for i in 0..25 {
                let error = black_box(i == 0);
                guard.record("t", &slo, Pool::Green, Pool::Blue, true, error, ms, now);
            }
        })
    });
    group.finish();
}

fn control_file_load(c: &mut Criterion) {
    let mut text = String::from("[listen]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n");
    for i in 0..10_000 {
        text.push_str(&format!(
            "\n[tenants.t{i}]\nhosts = [\"t{i}.example.com\", \"*.t{i}.example.com\"]\nstable = \"blue\"\n\
             weights = {{ blue = 90, green = 10 }}\npools.blue = [\"10.0.{}.{}:8080\"]\npools.green = [\"10.1.{}.{}:8080\"]\n",
            i / 256 % 256,
            i % 256,
            i / 256 % 256,
            i % 256
        ));
    }
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let registry = TableBuilder::new(Metrics::new(), tx);
    let mut generation = 0;
    let mut group = c.benchmark_group("control_file");
    group.sample_size(10);
    group.bench_function("parse_10000_tenants", |b| {
        b.iter(|| black_box(config::parse(&text, Path::new("bench.toml"), &|_| None).unwrap()))
    });
    let parsed = Arc::new(config::parse(&text, Path::new("bench.toml"), &|_| None).unwrap());
    group.bench_function("build_table_10000_tenants", |b| {
        b.iter(|| {
            generation += 1;
            black_box(registry.build(Arc::clone(&parsed), generation))
        })
    });
    group.bench_function("load_and_apply_10000_tenants", |b| {
        b.iter(|| {
            let config = config::parse(&text, Path::new("bench.toml"), &|_| None).unwrap();
            generation += 1;
            black_box(registry.build(Arc::new(config), generation))
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    routing,
    cohort,
    sticky_hash,
    slo_window,
    slo_guard,
    control_file_load
);
criterion_main!(benches);
