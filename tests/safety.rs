//! Active health checks, failover, and the SLO guard's automatic revert.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::*;

const FAST_HEALTH: &str =
    r#"health = { interval = "100ms", timeout = "2s", healthy_after = 1, unhealthy_after = 3 }"#;
const WAIT: Duration = Duration::from_secs(10);

async fn endpoint_healthy(proxy: &TestProxy, tenant: &str, pool: &str, index: usize) -> bool {
    view(proxy, tenant).await["pools"][pool]["endpoints"][index]["healthy"]
        .as_bool()
        .unwrap()
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_and_comes_back() {
    let (a, b, g) = (
        spawn_upstream("a").await,
        spawn_upstream("b").await,
        spawn_upstream("green").await,
    );
    let proxy = Setup::shop()
        .blue(&a)
        .blue(&b)
        .green(&g)
        .extra(FAST_HEALTH)
        .spawn()
        .await;
    assert!(
        endpoint_healthy(&proxy, "shop", "blue", 1).await,
        "endpoints start healthy"
    );
    b.set_healthy(false);
    wait_until(WAIT, "b ejected", || async {
        !endpoint_healthy(&proxy, "shop", "blue", 1).await
    })
    .await;
    let gauge = format!(
        r#"turnout_endpoint_healthy{{tenant="shop",pool="blue",endpoint="{}"}}"#,
        b.addr
    );
    assert_eq!(proxy.metric(&gauge).await, 0.0);
    let before = b.hits.load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..40 {
        assert_eq!(proxy.get("shop.test", "/").await.text(), "a");
    }
    assert_eq!(
        b.hits.load(std::sync::atomic::Ordering::Relaxed),
        before,
        "an unhealthy endpoint got traffic"
    );
    b.set_healthy(true);
    wait_until(WAIT, "b back", || async {
        endpoint_healthy(&proxy, "shop", "blue", 1).await
    })
    .await;
    assert_eq!(proxy.metric(&gauge).await, 1.0);
    wait_until(WAIT, "b serving again", || async {
        proxy.get("shop.test", "/").await.text() == "b"
    })
    .await;
}

#[tokio::test]
async fn a_shared_endpoint_is_probed_once_per_interval() {
    let up = spawn_upstream("shared").await;
    let tenants: String = (0..5)
        .map(|i| {
            let health = r#"health = { interval = "200ms" }"#;
            Setup::tenant(&format!("t{i}"))
                .hosts(&format!("[\"t{i}.test\"]"))
                .on(&up)
                .extra(health)
                .toml()
        })
        .collect();
    // A reference endpoint of its own tenant, probed at the same interval,
    // is the clock: no wall-clock guess under a loaded machine.
    let reference = spawn_upstream("reference").await;
    let tenants = tenants
        + &Setup::tenant("reference")
            .on(&reference)
            .extra(r#"health = { interval = "200ms" }"#)
            .toml();
    let _proxy = spawn_proxy(&tenants).await;
    wait_until(WAIT, "the first probes", || async {
        up.health_hits() >= 1 && reference.health_hits() >= 1
    })
    .await;
    let (start, reference_start) = (up.health_hits(), reference.health_hits());
    wait_until(WAIT, "ten probes of the reference endpoint", || async {
        reference.health_hits() >= reference_start + 10
    })
    .await;
    let probes = up.health_hits() - start;
    let reference_probes = reference.health_hits() - reference_start;
    // One prober: about as many probes as the reference. Five (one per
    // tenant) would be about five times as many.
    assert!(
        (reference_probes / 2..=reference_probes * 2).contains(&probes),
        "{probes} probes of the shared endpoint while the reference had {reference_probes}"
    );
}

#[tokio::test]
async fn a_pool_with_no_healthy_endpoint_fails_over() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let extra = format!("{FAST_HEALTH}\npreview_hosts = [\"preview.shop.test\"]");
    let proxy = Setup::shop()
        .pools(&b, &g)
        .weights(100, 0)
        .extra(&extra)
        .spawn()
        .await;
    b.set_healthy(false);
    wait_until(WAIT, "blue ejected", || async {
        !endpoint_healthy(&proxy, "shop", "blue", 0).await
    })
    .await;
    for _ in 0..10 {
        let r = proxy.get("shop.test", "/").await;
        assert_eq!((r.text().as_str(), r.pool()), ("green", Some("green")));
    }
    assert_eq!(
        proxy
            .metric(r#"turnout_failovers_total{tenant="shop",from="blue"}"#)
            .await,
        10.0
    );
    // Preview never fails over; with both pools down everything is 503.
    g.set_healthy(false);
    wait_until(WAIT, "green ejected", || async {
        !endpoint_healthy(&proxy, "shop", "green", 0).await
    })
    .await;
    assert_eq!(proxy.get("shop.test", "/").await.status, 503);
    assert_eq!(proxy.get("preview.shop.test", "/").await.status, 503);
    // Raising the unhealthy candidate is refused unless forced.
    let put = |q: &'static str| {
        let proxy = &proxy;
        async move {
            proxy
                .admin(
                    "PUT",
                    &format!("/v1/tenants/shop/weights{q}"),
                    None,
                    Some(r#"{"blue": 90, "green": 10}"#),
                )
                .await
        }
    };
    assert_eq!(put("").await.status, 409);
    assert_eq!(put("?force=true").await.status, 200);
}

/// A tenant split 50/50 whose green candidate fails, guarded by `slo`.
fn guarded(b: &Upstream, g: &Upstream, slo: &str) -> String {
    Setup::shop()
        .pools(b, g)
        .weights(50, 50)
        .extra(&format!(
            "preview_hosts = [\"preview.shop.test\"]\nslo = {slo}"
        ))
        .toml()
}

#[tokio::test]
async fn a_failing_candidate_is_reverted_with_bounded_damage() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    g.set_failing(true);
    let proxy = spawn_proxy(&guarded(
        &b,
        &g,
        r#"{ max_error_rate = 0.05, window = "30s", min_requests = 10 }"#,
    ))
    .await;
    let mut errors = 0;
    for _ in 0..200 {
        if proxy.get("shop.test", "/").await.status == 500 {
            errors += 1;
        }
    }
    // The breach is judged on the 10th failed candidate request; a request
    // or two may be on its way while the revert applies.
    assert!(
        (10..=20).contains(&errors),
        "{errors} client-visible errors"
    );
    assert_eq!(proxy.weights("shop").await, (100, 0));
    // The revert's event is recorded once it is written through (file work
    // runs off the runtime, just after the swap).
    wait_event(&proxy, "shop", "the revert's event", |_| true).await;
    let text = std::fs::read_to_string(&proxy.path).unwrap();
    assert!(
        text.contains("weights = { blue = 100, green = 0 }"),
        "{text}"
    );
    let v = view(&proxy, "shop").await;
    assert_eq!(v["status"], "reverted");
    let events = json(&proxy.admin_get("/v1/events?tenant=shop").await);
    let revert = &events[0];
    assert_eq!(revert["source"], "slo");
    assert_eq!(revert["persisted"], true);
    assert_eq!(revert["to"], serde_json::json!({"blue": 100, "green": 0}));
    let reason = revert["reason"].as_str().unwrap();
    // SPEC 6: the figures and the bound that proves them.
    assert!(
        reason.starts_with("error rate 1.00 (at least 0.")
            && reason.contains(" at 99 %) > 0.05 over "),
        "{reason}"
    );
    assert_eq!(
        proxy
            .metric(r#"turnout_reverts_total{tenant="shop"}"#)
            .await,
        1.0
    );
    assert_eq!(
        proxy
            .metric(r#"turnout_pool_share{tenant="shop",pool="green"}"#)
            .await,
        0.0
    );
    // The candidate's window was cleared by the revert.
    assert_eq!(v["slo"]["green"]["requests"], 0);
}

#[tokio::test]
async fn a_revert_held_in_memory_latches_until_a_new_intent() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    g.set_failing(true);
    let proxy = spawn_proxy(&guarded(&b, &g, r#"{ min_requests = 5 }"#)).await;
    block_write_through(proxy.dir.path()).await;
    wait_until(WAIT, "the revert", || async {
        proxy.get("shop.test", "/").await;
        proxy.weights("shop").await == (100, 0)
    })
    .await;
    // Its event is recorded once the write-through was tried.
    wait_event(&proxy, "shop", "the revert's event", |_| true).await;
    let events = json(&proxy.admin_get("/v1/events").await);
    assert_eq!(events[0]["persisted"], false);
    // Reloading the unchanged file keeps the revert.
    proxy.reload().await;
    assert_eq!(proxy.weights("shop").await, (100, 0));
    // New weights from the operator are a new intent: they apply.
    g.set_failing(false);
    edit_file(
        &proxy.path,
        "blue = 50, green = 50",
        "blue = 80, green = 20",
    );
    wait_until(WAIT, "the operator's weights", || async {
        proxy.weights("shop").await == (80, 20)
    })
    .await;
    assert_eq!(view(&proxy, "shop").await["status"], "split");
}

#[tokio::test]
async fn baseline_stable_does_not_revert_when_both_pools_fail_alike() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    b.set_failing(true);
    g.set_failing(true);
    let proxy = spawn_proxy(&guarded(
        &b,
        &g,
        r#"{ min_requests = 5, baseline = "stable" }"#,
    ))
    .await;
    for _ in 0..100 {
        assert_eq!(proxy.get("shop.test", "/").await.status, 500);
    }
    assert_eq!(proxy.weights("shop").await, (50, 50));
    let v = view(&proxy, "shop").await;
    // Both failing alike is not the candidate's fault: never a breach (at
    // 100 requests the bounds of the difference are too wide for "ok").
    assert_ne!(v["verdict"], "breach", "{v}");
    assert_eq!(v["judgement"]["error_rate"]["value"], 0.0, "{v}");
    assert!(v["slo"]["green"]["error_rate"].as_f64().unwrap() > 0.99);
    assert!(
        proxy
            .metric(r#"turnout_slo_error_rate{tenant="shop",pool="blue"}"#)
            .await
            > 0.99
    );
    // When only the candidate fails, it is reverted.
    b.set_failing(false);
    wait_until(WAIT, "the revert", || async {
        proxy.get("shop.test", "/").await;
        proxy.weights("shop").await == (100, 0)
    })
    .await;
}

#[tokio::test]
async fn a_slow_candidate_breaks_max_p99() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    g.set_delay(Duration::from_millis(150));
    let proxy = Arc::new(
        spawn_proxy(&guarded(
            &b,
            &g,
            r#"{ min_requests = 5, max_p99 = "50ms" }"#,
        ))
        .await,
    );
    wait_until(WAIT, "the latency revert", || async {
        proxy.get("shop.test", "/").await;
        proxy.weights("shop").await == (100, 0)
    })
    .await;
    // Its event is recorded once it is written through.
    wait_event(&proxy, "shop", "the revert's event", |_| true).await;
    let events = json(&proxy.admin_get("/v1/events").await);
    let reason = events[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("share of requests slower than 50ms 1.00 (at least ")
            && reason.contains("at 99 %) > 0.01 over "),
        "{reason}"
    );
}

#[tokio::test]
async fn preview_traffic_at_weight_zero_reaches_the_candidate_and_is_not_judged() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    g.set_failing(true);
    let config = Setup::shop()
        .pools(&b, &g)
        .weights(100, 0)
        .extra("preview_hosts = [\"preview.shop.test\"]\nslo = { min_requests = 5 }")
        .toml();
    let proxy = spawn_proxy(&config).await;
    for _ in 0..20 {
        let r = proxy.get("preview.shop.test", "/").await;
        assert_eq!((r.status.as_u16(), r.pool()), (500, Some("green")));
    }
    // No share, no verdict that acts: nothing was reverted.
    assert_eq!(
        proxy
            .metric(r#"turnout_reverts_total{tenant="shop"}"#)
            .await,
        0.0
    );
    assert_eq!(
        json(&proxy.admin_get("/v1/events").await)
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(view(&proxy, "shop").await["slo"]["green"]["errors"], 20);
}
