//! Revert reaction: how fast the SLO guard takes a failing candidate out of
//! traffic, and how many client requests fail meanwhile.
//!
//! Real sockets, real upstreams and the real proxy, all in this process.
//! A paced client sends requests at a steady rate to a tenant split 50/50;
//! at some point the green candidate starts answering 500. Reported per run:
//! the time from the first failing candidate response the client saw to the
//! revert event (`at`, ms precision), and the failed requests in all.
//!
//! Run: `cargo bench --bench revert_reaction`

#![allow(clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::*;

const MIN_REQUESTS: u32 = 20;
const TRIALS: usize = 3;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

struct Trial {
    reaction_ms: u64,
    failed: usize,
}

async fn trial(rate: u64) -> Trial {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let slo = format!(
        "slo = {{ max_error_rate = 0.05, window = \"30s\", min_requests = {MIN_REQUESTS} }}"
    );
    let proxy =
        Arc::new(spawn_proxy(&tenant("shop", r#"["shop.test"]"#, &b, &g, (50, 50), &slo)).await);
    let failed = Arc::new(AtomicUsize::new(0));
    let first_failure_ms = Arc::new(AtomicU64::new(u64::MAX));
    // Paced open loop: one request every 1/rate s, each on its own task so a
    // slow answer does not slow the rate.
    let period = Duration::from_nanos(1_000_000_000 / rate);
    let run_for = Duration::from_secs(2);
    let flip_at = Duration::from_millis(500);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut flipped = false;
    let mut inflight = Vec::new();
    while started.elapsed() < run_for {
        tick.tick().await;
        if !flipped && started.elapsed() >= flip_at {
            g.set_failing(true);
            flipped = true;
        }
        let (proxy, failed, first) = (
            Arc::clone(&proxy),
            Arc::clone(&failed),
            Arc::clone(&first_failure_ms),
        );
        inflight.push(tokio::spawn(async move {
            let r = proxy.get("shop.test", "/").await;
            if r.status == 500 {
                first.fetch_min(now_ms(), Ordering::Relaxed);
                failed.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in inflight {
        let _ = t.await;
    }
    let events = proxy.admin_get("/v1/events?tenant=shop").await;
    let events: serde_json::Value = serde_json::from_slice(&events.body).unwrap();
    let revert = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["source"] == "slo")
        .expect("no revert happened");
    let at = humantime::parse_rfc3339(revert["at"].as_str().unwrap()).unwrap();
    let revert_ms = at.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    Trial {
        reaction_ms: revert_ms.saturating_sub(first_failure_ms.load(Ordering::Relaxed)),
        failed: failed.load(Ordering::Relaxed),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!(
        "revert reaction (min_requests = {MIN_REQUESTS}, candidate share 50 %), {TRIALS} trials per rate"
    );
    println!("| rate (req/s) | reaction ms (each trial) | failed requests (each trial) |");
    println!("|---|---|---|");
    for rate in [200, 1000] {
        let mut reactions = Vec::new();
        let mut failures = Vec::new();
        for _ in 0..TRIALS {
            let t = trial(rate).await;
            reactions.push(t.reaction_ms.to_string());
            failures.push(t.failed.to_string());
        }
        println!(
            "| {rate} | {} | {} |",
            reactions.join(", "),
            failures.join(", ")
        );
    }
}
