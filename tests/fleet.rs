//! The fleet on etcd (SPEC section 12): several replicas — real turnouts in
//! this process, each on its own copy of the control file — sharing one
//! real etcd.
//!
//! Built only with `--features etcd` (`.ci/run` runs it with
//! `TURNOUT_REQUIRE_ETCD=1`); it fails, never skips, without etcd.
#![cfg(feature = "etcd")]
#![allow(clippy::unwrap_used)] // tests fail loudly by design

#[path = "fleet/cohort.rs"]
mod cohort;
#[path = "fleet/etcd.rs"]
mod etcd;
#[path = "fleet/file.rs"]
mod file;
#[path = "fleet/held.rs"]
mod held;
#[path = "fleet/kit.rs"]
mod kit;
#[path = "fleet/outage.rs"]
mod outage;
#[path = "fleet/secure.rs"]
mod secure;
mod support;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use serde_json::Value;

use etcd::Etcd;
use kit::*;
use support::*;

#[tokio::test]
async fn an_admin_change_on_one_replica_is_served_by_another() {
    let etcd = Etcd::start().await;
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let setup = || {
        Setup::shop()
            .preamble(&etcd.store("admin"))
            .pools(&b, &g)
            .weights(100, 0)
    };
    let a = replica(setup()).await;
    let other = replica(setup()).await;

    let answer = put_weights(&a, 0, 100).await;
    // The answer is what the fleet serves: A serves it at once.
    assert_eq!(a.get("shop.test", "/").await.upstream(), Some("green"));
    wait_until(WAIT, "the other replica to serve the change", || async {
        other.get("shop.test", "/").await.upstream() == Some("green")
    })
    .await;
    let (va, vb) = (view(&a, "shop").await, view(&other, "shop").await);
    assert_eq!(
        generation(&va),
        generation(&vb),
        "one generation fleet-wide"
    );
    assert_eq!(generation(&answer), generation(&va));

    // The fleet's history on either replica: the seed from the file, once,
    // then the admin change.
    wait_until(WAIT, "both histories", || async {
        count(&history(&other, "shop").await, "admin") == 1
            && count(&history(&a, "shop").await, "admin") == 1
    })
    .await;
    for replica in [&a, &other] {
        let events = history(replica, "shop").await;
        assert_eq!(count(&events, "file"), 1, "{events:?}");
        assert_eq!(events.last().unwrap()["source"], "admin");
    }
    let config = config_view(&other).await;
    assert_eq!(config["store"]["kind"], "etcd");
    assert_eq!(config["store"]["connected"], true);
    assert_eq!(config["generation"], va["generation"]);
    assert_eq!(other.metric("turnout_store_up").await, 1.0);
    // The control file, GitOps-owned, is not written: the state is in etcd.
    let text = std::fs::read_to_string(&a.path).unwrap();
    assert!(
        text.contains("weights = { blue = 100, green = 0 }"),
        "{text}"
    );
}

#[tokio::test]
async fn if_match_is_judged_fleet_wide() {
    let etcd = Etcd::start().await;
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let setup = || {
        Setup::shop()
            .preamble(&etcd.store("ifmatch"))
            .pools(&b, &g)
            .weights(100, 0)
    };
    let a = replica(setup()).await;
    let other = replica(setup()).await;
    let seen = generation(&view(&a, "shop").await);
    assert_eq!(generation(&view(&other, "shop").await), seen);

    let put = |proxy: Arc<TestProxy>, body: &'static str| async move {
        let req = http::Request::put(proxy.admin_url("/v1/tenants/shop/weights"))
            .header("if-match", format!("\"{seen}\""))
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        proxy.send(req).await
    };
    let first = put(Arc::clone(&a), r#"{"blue": 90, "green": 10}"#).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let second = put(Arc::clone(&other), r#"{"blue": 50, "green": 50}"#).await;
    assert_eq!(second.status, 412, "{}", second.text());
    let now = generation(&json(&first));
    assert!(
        json(&second)["error"]
            .as_str()
            .unwrap()
            .contains(&now.to_string()),
        "the 412 names the current generation {now}: {}",
        second.text()
    );
    wait_until(WAIT, "the first write everywhere", || async {
        other.weights("shop").await == (90, 10) && a.weights("shop").await == (90, 10)
    })
    .await;
}

#[tokio::test]
async fn a_revert_on_one_replica_is_served_by_all_once() {
    let etcd = Etcd::start().await;
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    g.set_failing(true);
    let (hook, got) = spawn_receiver().await;
    let preamble = format!(
        "{}[notify]\nwebhook = \"http://{hook}/hook\"\n\n",
        etcd.store("revert")
    );
    let setup = || {
        Setup::shop()
            .preamble(&preamble)
            .pools(&b, &g)
            .weights(50, 50)
            .extra("slo = { min_requests = 5 }")
    };
    let a = replica(setup()).await;
    let quiet = replica(setup()).await;
    wait_until(WAIT, "the revert on A", || async {
        a.get("shop.test", "/").await;
        a.weights("shop").await == (100, 0)
    })
    .await;
    // B saw no traffic at all, and serves the revert.
    wait_until(WAIT, "the revert on B", || async {
        quiet.weights("shop").await == (100, 0)
    })
    .await;
    assert_eq!(view(&quiet, "shop").await["status"], "reverted");
    for _ in 0..10 {
        assert_eq!(quiet.get("shop.test", "/").await.upstream(), Some("blue"));
    }
    wait_until(WAIT, "the revert's event on both", || async {
        count(&history(&a, "shop").await, "slo") == 1
            && count(&history(&quiet, "shop").await, "slo") == 1
    })
    .await;
    wait_until(WAIT, "the webhook", || async {
        !got.lock().unwrap().is_empty()
    })
    .await;
    // More failures on A change nothing: the candidate has no traffic.
    for _ in 0..5 {
        a.get("shop.test", "/").await;
    }
    let sent = got.lock().unwrap().clone();
    assert_eq!(sent.len(), 1, "one webhook per revert: {sent:?}");
    assert_eq!(sent[0]["source"], "slo");
    let reverts = r#"turnout_reverts_total{tenant="shop"}"#;
    assert_eq!(a.metric(reverts).await, 1.0);
    assert_eq!(quiet.metric_or_absent(reverts).await.unwrap_or(0.0), 0.0);
    assert_eq!(count(&history(&quiet, "shop").await, "slo"), 1);
}

#[tokio::test]
async fn a_ramp_over_three_replicas_takes_each_step_once() {
    let etcd = Etcd::start().await;
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let setup = || {
        ramped(
            &b,
            &g,
            "{ min_requests = 5 }",
            "steps = [25, 50, 100]\ninterval = \"300ms\"\nbake = \"300ms\"\n",
        )
        .preamble(&etcd.store("ramp"))
    };
    let replicas = [
        replica(setup()).await,
        replica(setup()).await,
        replica(setup()).await,
    ];
    let r = replicas[1]
        .admin("POST", "/v1/tenants/shop/rollout", None, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let _traffic: Vec<Traffic> = replicas.iter().map(Traffic::start).collect();
    for replica in &replicas {
        wait_until(WAIT, "green to become stable everywhere", || async {
            view(replica, "shop").await["stable"] == "green"
        })
        .await;
    }
    wait_until(WAIT, "the promotion's event everywhere", || async {
        let mut all = true;
        for replica in &replicas {
            all &= history(replica, "shop")
                .await
                .iter()
                .any(|e| e["reason"].as_str().unwrap().starts_with("promoted"));
        }
        all
    })
    .await;
    for replica in &replicas {
        let events = history(replica, "shop").await;
        let reasons: Vec<&str> = events
            .iter()
            .filter(|e| e["source"] == "rollout")
            .map(|e| e["reason"].as_str().unwrap())
            .collect();
        // Steps 2 and 3 and the promotion, each exactly once.
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(reasons[0].starts_with("rollout step 2/3"), "{reasons:?}");
        assert!(reasons[1].starts_with("rollout step 3/3"), "{reasons:?}");
        assert!(reasons[2].starts_with("promoted"), "{reasons:?}");
        assert_eq!(count(&events, "admin"), 1, "{events:?}");
        assert_eq!(count(&events, "slo"), 0, "{events:?}");
    }
}

#[tokio::test]
async fn a_file_edit_seen_by_two_replicas_is_applied_once() {
    let etcd = Etcd::start().await;
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let setup = || {
        Setup::shop()
            .preamble(&etcd.store("file"))
            .pools(&b, &g)
            .weights(100, 0)
    };
    let a = replica(setup()).await;
    let other = replica(setup()).await;
    // An operator's admin change, then the ConfigMap rollout reaches the
    // replicas seconds apart.
    put_weights(&a, 90, 10).await;
    let (from, to) = (
        "weights = { blue = 100, green = 0 }",
        "weights = { blue = 70, green = 30 }",
    );
    edit_file(&a.path, from, to);
    for replica in [&a, &other] {
        wait_until(WAIT, "the file's edit everywhere", || async {
            replica.weights("shop").await == (70, 30)
        })
        .await;
    }
    edit_file(&other.path, from, to);
    other.reload().await;
    // An unrelated change after it: B's late copy of the edit took nothing back.
    put_weights(&other, 60, 40).await;
    a.reload().await;
    wait_until(WAIT, "the last admin change everywhere", || async {
        a.weights("shop").await == (60, 40) && other.weights("shop").await == (60, 40)
    })
    .await;
    wait_until(WAIT, "the history", || async {
        count(&history(&a, "shop").await, "admin") == 2
    })
    .await;
    let events = history(&a, "shop").await;
    let edits: Vec<&Value> = events
        .iter()
        .filter(|e| e["reason"] == "the control file changed")
        .collect();
    assert_eq!(edits.len(), 1, "{events:?}");
    assert_eq!(edits[0]["to"], serde_json::json!({"blue": 70, "green": 30}));
}

#[tokio::test]
async fn a_promote_bake_begun_on_one_replica_is_finished_by_another() {
    let etcd = Etcd::start().await;
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let setup = || {
        Setup::shop()
            .preamble(&etcd.store("bake"))
            .pools(&b, &g)
            .weights(90, 10)
            .extra(r#"slo = { min_requests = 5, window = "1s" }"#)
    };
    let a = replica(setup()).await;
    let other = replica(setup()).await;
    let r = a
        .admin("POST", "/v1/tenants/shop/promote", None, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The bake's start is in etcd: the other replica shows it baking...
    wait_until(WAIT, "the bake on the other replica", || async {
        view(&other, "shop").await["status"] == "baking"
    })
    .await;
    // ...and finishes it after A is gone.
    let Ok(a) = Arc::try_unwrap(a) else {
        panic!("A is still shared")
    };
    a.running.shutdown().await;
    let _traffic = Traffic::start(&other);
    wait_until(WAIT, "the promotion by the other replica", || async {
        view(&other, "shop").await["stable"] == "green"
    })
    .await;
    wait_until(WAIT, "the promotion's event", || async {
        history(&other, "shop")
            .await
            .iter()
            .any(|e| e["reason"] == "promoted: green is now the stable pool")
    })
    .await;
}

#[tokio::test]
async fn a_promotion_is_judged_on_the_fleets_pooled_counts() {
    let etcd = Etcd::start().await;
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    // 30 candidate requests are needed; each replica will see 25.
    let setup = || {
        Setup::shop()
            .preamble(&etcd.store("pooled"))
            .pools(&b, &g)
            .weights(100, 0)
            .extra(r#"slo = { min_requests = 30, max_error_rate = 0.5, window = "1s" }"#)
    };
    let a = replica(setup()).await;
    let other = replica(setup()).await;
    let r = a
        .admin("POST", "/v1/tenants/shop/promote", None, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_until(
        WAIT,
        "the candidate at 100 on the other replica",
        || async { other.weights("shop").await == (0, 100) },
    )
    .await;
    for replica in [&a, &other] {
        for _ in 0..25 {
            assert_eq!(
                replica.get("shop.test", "/").await.upstream(),
                Some("green")
            );
        }
    }
    wait_until(WAIT, "the promotion on the pooled counts", || async {
        view(&a, "shop").await["stable"] == "green"
            && view(&other, "shop").await["stable"] == "green"
    })
    .await;
}
