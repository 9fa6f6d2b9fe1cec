//! Fleet reaction (SPEC section 12): how long a change made on one replica
//! takes to be served by every replica of a fleet on one etcd.
//!
//! Three turnouts in this process on one real etcd on loopback (started by
//! the bench: `etcd` must be on PATH), each with its own copy of the
//! control file, as replicas behind a Service have.
//!
//! - **revert**: shop at 50/50, the green candidate starts answering 500,
//!   a client sends requests to replica A only. Reported: from the first
//!   failing response the client saw to A's local revert, and to the revert
//!   served by all three (each replica's routing table, polled in-process).
//! - **admin**: from sending `PUT /v1/tenants/shop/weights` to replica A to
//!   the new split served by all three.
//!
//! p50 and max over [`TRIALS`] trials each.
//!
//! Run: `cargo bench --features etcd --bench fleet`

#![allow(clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "../tests/fleet/etcd.rs"]
#[allow(dead_code)] // the tests' etcd also pauses and restarts
mod etcd;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::*;
use turnout::config::Weights;

const TRIALS: usize = 20;
const WAIT: Duration = Duration::from_secs(20);

/// The weights replica `p` serves now (its routing table).
fn serving(p: &TestProxy) -> Weights {
    p.running
        .proxy
        .table
        .load()
        .tenant("shop")
        .unwrap()
        .config
        .weights
}

/// Spins until every replica serves `w`; returns when the last one did.
async fn all_serve(replicas: &[Arc<TestProxy>], w: Weights) -> Instant {
    let deadline = Instant::now() + WAIT;
    loop {
        if replicas.iter().all(|p| serving(p) == w) {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "not served everywhere: {w:?}");
        tokio::task::yield_now().await;
    }
}

/// Sets the split on A through the admin API (and waits for it everywhere).
async fn set(replicas: &[Arc<TestProxy>], blue: u32, green: u32) -> Duration {
    let body = format!(r#"{{"blue": {blue}, "green": {green}}}"#);
    let started = Instant::now();
    let r = replicas[0]
        .admin("PUT", "/v1/tenants/shop/weights", None, Some(&body))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    all_serve(replicas, Weights::new(blue, green).unwrap()).await - started
}

/// One revert: (first failure → A reverted, first failure → all reverted).
async fn revert(replicas: &[Arc<TestProxy>], green: &Upstream) -> (Duration, Duration) {
    green.set_failing(false);
    set(replicas, 50, 50).await;
    let a = Arc::clone(&replicas[0]);
    let stop = Arc::new(AtomicBool::new(false));
    let first_failure = Arc::new(std::sync::Mutex::new(None::<Instant>));
    green.set_failing(true);
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (a, stop, first) = (
            Arc::clone(&a),
            Arc::clone(&stop),
            Arc::clone(&first_failure),
        );
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if a.get("shop.test", "/").await.status == 500 {
                    let now = Instant::now();
                    first.lock().unwrap().get_or_insert(now);
                }
            }
        }));
    }
    let reverted = Weights::new(100, 0).unwrap();
    let deadline = Instant::now() + WAIT;
    let local = loop {
        if serving(&a) == reverted {
            break Instant::now();
        }
        assert!(Instant::now() < deadline, "no revert on A");
        tokio::task::yield_now().await;
    };
    let everywhere = all_serve(replicas, reverted).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let first = first_failure.lock().unwrap().expect("a failing response");
    (local - first, everywhere - first)
}

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "| {name} | {:.1} | {:.1} | {} |",
        ms(samples[samples.len() / 2]),
        ms(*samples.last().unwrap()),
        samples.len()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let etcd = etcd::Etcd::start().await;
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let setup = || {
        Setup::shop()
            .preamble(&etcd.store("bench"))
            .pools(&b, &g)
            .weights(50, 50)
            .extra("slo = { min_requests = 20 }")
    };
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let p = Arc::new(setup().spawn().await);
        wait_until(WAIT, "ready", || async {
            p.admin_get("/readyz").await.status == 200
        })
        .await;
        replicas.push(p);
    }
    let mut admin = Vec::new();
    for i in 0..TRIALS {
        let green = 10 + u32::try_from(i % 5).unwrap() * 10;
        admin.push(set(&replicas, 100 - green, green).await);
    }
    let (mut local, mut fleet) = (Vec::new(), Vec::new());
    for _ in 0..TRIALS {
        let (l, f) = revert(&replicas, &g).await;
        local.push(l);
        fleet.push(f);
    }
    println!("fleet reaction: three replicas, one etcd on loopback, {TRIALS} trials");
    println!("| what | p50 ms | max ms | trials |");
    println!("|---|---|---|---|");
    summary("admin weights on A → served by all three", admin);
    summary("first failing response on A → A reverted", local);
    summary(
        "first failing response on A → revert served by all three",
        fleet,
    );
}
