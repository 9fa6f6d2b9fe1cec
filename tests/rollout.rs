//! Rollouts, promotion, and webhook notifications.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

const WAIT: Duration = Duration::from_secs(20);

/// Starts turnout on `config` and its tenant's ramp.
async fn start_ramp(config: Setup) -> Arc<TestProxy> {
    let proxy = Arc::new(config.spawn().await);
    let r = proxy
        .admin("POST", "/v1/tenants/shop/rollout", None, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    proxy
}

#[tokio::test]
async fn a_healthy_candidate_is_ramped_and_promoted() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let config = ramped(
        &b,
        &g,
        "{ min_requests = 5 }",
        "steps = [50, 100]\ninterval = \"300ms\"\nbake = \"300ms\"\n",
    );
    let proxy = Arc::new(config.spawn().await);
    let r = proxy
        .admin(
            "POST",
            "/v1/tenants/shop/rollout",
            None,
            Some(r#"{"reason": "release 42"}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = view(&proxy, "shop").await;
    assert_eq!(
        (v["status"].as_str(), v["rollout"]["step"].as_u64()),
        (Some("ramping"), Some(1))
    );
    assert_eq!(v["weights"], serde_json::json!({"blue": 50, "green": 50}));
    assert!(
        std::fs::read_to_string(&proxy.path)
            .unwrap()
            .contains("progress = { step = 0, since = ")
    );

    let traffic = Traffic::start(&proxy);
    wait_until(WAIT, "green to become stable", || async {
        view(&proxy, "shop").await["stable"] == "green"
    })
    .await;
    drop(traffic);
    let v = view(&proxy, "shop").await;
    assert_eq!(v["status"], "steady");
    assert_eq!(v["weights"], serde_json::json!({"blue": 0, "green": 100}));
    assert_eq!(v.get("rollout"), Some(&serde_json::Value::Null));
    wait_event(&proxy, "shop", "the promotion's event", |e| {
        e["reason"] == "promoted: green is now the stable pool"
    })
    .await;
    let text = std::fs::read_to_string(&proxy.path).unwrap();
    assert!(
        text.contains("stable = \"green\"") && !text.contains("progress"),
        "{text}"
    );
    let events = json(&proxy.admin_get("/v1/events?tenant=shop").await);
    let reasons: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        [
            "release 42",
            "rollout step 2/2 at 100%",
            "promoted: green is now the stable pool"
        ],
        "{events}"
    );
    assert_eq!(events[1]["source"], "rollout");
}

#[tokio::test]
async fn a_failing_candidate_aborts_the_rollout() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    g.set_failing(true);
    let config = ramped(
        &b,
        &g,
        "{ min_requests = 5 }",
        "steps = [20, 100]\ninterval = \"300ms\"\nbake = \"300ms\"\n",
    );
    let proxy = start_ramp(config).await;
    let traffic = Traffic::start(&proxy);
    wait_until(WAIT, "the revert", || async {
        view(&proxy, "shop").await["status"] == "reverted"
    })
    .await;
    drop(traffic);
    let v = view(&proxy, "shop").await;
    assert_eq!(
        (v["stable"].as_str(), v["weights"].clone()),
        (Some("blue"), serde_json::json!({"blue": 100, "green": 0}))
    );
    assert_eq!(v.get("rollout"), Some(&serde_json::Value::Null));
    wait_event(&proxy, "shop", "the revert's event", |e| {
        e["source"] == "slo"
    })
    .await;
    let text = std::fs::read_to_string(&proxy.path).unwrap();
    assert!(
        !text.contains("progress") && text.contains("stable = \"blue\""),
        "{text}"
    );
    let events = json(&proxy.admin_get("/v1/events?tenant=shop").await);
    assert_eq!(events.as_array().unwrap().last().unwrap()["source"], "slo");
}

#[tokio::test]
async fn a_restart_mid_rollout_resumes_it() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let config = ramped(
        &b,
        &g,
        "{ min_requests = 5 }",
        "steps = [20, 100]\ninterval = \"1s\"\nbake = \"300ms\"\n",
    );
    let proxy = config.spawn().await;
    assert_eq!(
        proxy
            .admin("POST", "/v1/tenants/shop/rollout", None, None)
            .await
            .status,
        200
    );
    let proxy = Arc::new(proxy.restart().await);
    let v = view(&proxy, "shop").await;
    assert_eq!(
        (v["status"].as_str(), v["rollout"]["step"].as_u64()),
        (Some("ramping"), Some(1))
    );
    assert_eq!(v["weights"], serde_json::json!({"blue": 80, "green": 20}));
    let traffic = Traffic::start(&proxy);
    wait_until(WAIT, "the resumed ramp to finish", || async {
        view(&proxy, "shop").await["stable"] == "green"
    })
    .await;
    drop(traffic);
}

#[tokio::test]
async fn an_inconclusive_verdict_holds_the_ramp() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let steps = "steps = [10, 100]\ninterval = \"100ms\"\nbake = \"100ms\"\n";
    // A reference tenant with the same ramp and a reachable `min_requests`,
    // started after shop's: once it is promoted, shop's ramp has been
    // judged on several ticks with its interval long past.
    let config = ramped(&b, &g, "{ min_requests = 100000 }", steps)
        .and_tenant("reference")
        .pools(&b, &g)
        .weights(100, 0)
        .ramp("{ min_requests = 5 }", steps);
    let proxy = start_ramp(config).await;
    let r = proxy
        .admin("POST", "/v1/tenants/reference/rollout", None, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let traffic = (
        Traffic::start(&proxy),
        Traffic::to(&proxy, "reference.test"),
    );
    wait_until(WAIT, "the reference ramp to be promoted", || async {
        view(&proxy, "reference").await["stable"] == "green"
    })
    .await;
    // Meanwhile shop, with traffic, is still at step 1.
    let v = view(&proxy, "shop").await;
    drop(traffic);
    assert_eq!(v["verdict"], "inconclusive");
    assert_eq!(
        (v["status"].as_str(), v["rollout"]["step"].as_u64()),
        (Some("ramping"), Some(1))
    );
}

#[tokio::test]
async fn promote_without_a_rollout_table_bakes_for_the_slo_window() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let config = Setup::shop()
        .pools(&b, &g)
        .weights(90, 10)
        .extra(r#"slo = { min_requests = 5, window = "1s" }"#)
        .toml();
    let proxy = Arc::new(spawn_proxy(&config).await);
    let r = proxy
        .admin("POST", "/v1/tenants/shop/promote", None, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = view(&proxy, "shop").await;
    assert_eq!(
        (v["status"].as_str(), v["weights"].clone()),
        (Some("baking"), serde_json::json!({"blue": 0, "green": 100}))
    );
    let traffic = Traffic::start(&proxy);
    wait_until(WAIT, "the promotion", || async {
        view(&proxy, "shop").await["stable"] == "green"
    })
    .await;
    drop(traffic);
    wait_event(&proxy, "shop", "the promotion's event", |e| {
        e["reason"] == "promoted: green is now the stable pool"
    })
    .await;
    assert!(
        std::fs::read_to_string(&proxy.path)
            .unwrap()
            .contains("stable = \"green\"")
    );
    // Without a table there is no ramp to start.
    assert_eq!(
        proxy
            .admin("POST", "/v1/tenants/shop/rollout", None, None)
            .await
            .status,
        409
    );
}

fn notified(b: &Upstream, g: &Upstream, webhook: &str) -> String {
    let guarded = Setup::shop()
        .pools(b, g)
        .weights(50, 50)
        .extra("slo = { min_requests = 5 }")
        .toml();
    format!("[notify]\nwebhook = \"{webhook}\"\n\n{guarded}")
}

#[tokio::test]
async fn the_webhook_receives_the_revert() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    g.set_failing(true);
    let (addr, got) = spawn_receiver().await;
    let proxy = spawn_proxy(&notified(&b, &g, &format!("http://{addr}/hook"))).await;
    wait_until(WAIT, "the revert", || async {
        proxy.get("shop.test", "/").await;
        proxy.weights("shop").await == (100, 0)
    })
    .await;
    wait_until(WAIT, "the notification", || async {
        !got.lock().unwrap().is_empty()
    })
    .await;
    let event = got.lock().unwrap()[0].clone();
    assert_eq!(event["source"], "slo");
    assert_eq!(event["tenant"], "shop");
    assert!(event["reason"].as_str().unwrap().starts_with("error rate"));
    assert_eq!(proxy.metric("turnout_notify_failures_total").await, 0.0);
}

#[tokio::test]
async fn a_dead_webhook_neither_blocks_nor_slows_requests() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    g.set_failing(true);
    let (_held, dead) = refusing_port();
    let proxy = spawn_proxy(&notified(&b, &g, &format!("http://{dead}/hook"))).await;
    wait_until(WAIT, "the revert", || async {
        proxy.get("shop.test", "/").await;
        proxy.weights("shop").await == (100, 0)
    })
    .await;
    // While the notifier retries in the background, requests go on at full speed.
    let started = Instant::now();
    for _ in 0..50 {
        assert_eq!(proxy.get("shop.test", "/").await.text(), "blue");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    wait_until(WAIT, "the counted failure", || async {
        proxy.metric("turnout_notify_failures_total").await == 1.0
    })
    .await;
}
