//! A 10 000-tenant control file reloaded while traffic flows: how long each
//! reload takes to load and apply, and whether any request fails meanwhile.
//!
//! Real sockets, real upstreams and the real proxy, all in this process (so
//! the load, the upstreams and the proxy share the machine's two cores).
//! Client tasks send keep-alive requests to random tenants the whole time;
//! the control file is rewritten with every tenant's split changed and
//! `POST /v1/config/reload` applies it (the call returns once the new table
//! is live). Reported: each reload's time, the requests served, the failed
//! ones (the target is zero) and the worst request latency seen.
//!
//! Run: `cargo bench --bench reload_under_load`

#![allow(clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::*;

/// The allocator the `turnout` binary uses (src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TENANTS: usize = 10_000;
const RELOADS: usize = 5;
const CLIENTS: usize = 16;

/// The tenant tables; `spawn_proxy_in` puts a `[listen]` table before them.
fn tenants(b: &Upstream, g: &Upstream, green: u32) -> String {
    let mut text = String::new();
    for i in 0..TENANTS {
        let hosts = format!("[\"t{i}.test\"]");
        text.push_str(&tenant(
            &format!("t{i}"),
            &hosts,
            b,
            g,
            (100 - green, green),
            "",
        ));
    }
    text
}

#[derive(Default)]
struct Load {
    ok: AtomicUsize,
    failed: AtomicUsize,
    worst_us: AtomicU64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let started = Instant::now();
    let proxy = spawn_proxy_in(tempfile::tempdir().unwrap(), "", &tenants(&b, &g, 10)).await;
    let proxy = Arc::new(proxy);
    println!(
        "{TENANTS} tenants: start-up {} ms",
        started.elapsed().as_millis()
    );
    let listen = std::fs::read_to_string(&proxy.path).unwrap();
    let listen = listen[..listen.find("[tenants.").unwrap()].to_owned();

    let load = Arc::new(Load::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (proxy, load, stop) = (Arc::clone(&proxy), Arc::clone(&load), Arc::clone(&stop));
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let host = format!("t{}.test", fastrand::usize(..TENANTS));
                let req = http::Request::get(proxy.http_url("/"))
                    .header("host", host)
                    .body(http_body_util::Full::default())
                    .unwrap();
                let sent = Instant::now();
                // A connection-level failure counts as a failed request too.
                let ok = match proxy.client.request(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        http_body_util::BodyExt::collect(resp.into_body())
                            .await
                            .is_ok()
                            && status == 200
                    }
                    Err(_) => false,
                };
                let us = sent.elapsed().as_micros() as u64;
                load.worst_us.fetch_max(us, Ordering::Relaxed);
                if ok {
                    load.ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    load.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    println!("| reload | tenants changed | load + apply ms |");
    println!("|---|---|---|");
    for n in 1..=RELOADS {
        let green = if n % 2 == 1 { 50 } else { 10 };
        std::fs::write(&proxy.path, format!("{listen}{}", tenants(&b, &g, green))).unwrap();
        let t = Instant::now();
        proxy.reload().await;
        println!("| {n} | {TENANTS} | {} |", t.elapsed().as_millis());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    println!(
        "requests during the run: {} ok, {} failed; worst latency {:.1} ms",
        load.ok.load(Ordering::Relaxed),
        load.failed.load(Ordering::Relaxed),
        load.worst_us.load(Ordering::Relaxed) as f64 / 1000.0
    );
}
