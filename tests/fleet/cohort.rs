//! The fleet's shared judgement beyond the weights (SPEC sections 4.3, 6
//! and 12): a cohort's revert at weight 0 latched by every replica once,
//! and a replica started while the candidate is exposed pooling its counts
//! with the fleet's at once.

use std::sync::atomic::{AtomicUsize, Ordering};

use http::Request;
use http_body_util::Full;

use super::etcd::Etcd;
use super::kit::*;
use super::support::*;

const COHORT: &str = r#"candidate_match = [{ header = "x-canary", value = "always" }]"#;

/// A request of the insiders' cohort.
async fn insider(proxy: &TestProxy) -> Reply {
    proxy
        .send(
            Request::get(proxy.http_url("/"))
                .header("host", "shop.test")
                .header("x-canary", "always")
                .body(Full::default())
                .unwrap(),
        )
        .await
}

async fn status(proxy: &TestProxy) -> String {
    view(proxy, "shop").await["status"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_cohort_revert_on_one_replica_is_latched_by_all_once() {
    let etcd = Etcd::start().await;
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    g.set_failing(true);
    let (hook, got) = spawn_receiver().await;
    let preamble = format!(
        "{}[notify]\nwebhook = \"http://{hook}/hook\"\n\n",
        etcd.store("latch")
    );
    let setup = || {
        Setup::shop()
            .preamble(&preamble)
            .pools(&b, &g)
            .weights(100, 0)
            .extra(&format!("{COHORT}\nslo = {{ min_requests = 5 }}"))
    };
    let a = replica(setup()).await;
    let quiet = replica(setup()).await;
    assert_eq!(insider(&quiet).await.pool(), Some("green"));
    let failed = AtomicUsize::new(0);
    wait_until(WAIT, "the cohort's revert on A", || async {
        if insider(&a).await.status == 500 {
            failed.fetch_add(1, Ordering::Relaxed);
        }
        status(&a).await == "reverted"
    })
    .await;
    assert!(failed.into_inner() > 0);
    // B saw one cohort request, none failing: it follows A's latch.
    wait_until(WAIT, "the latch on B", || async {
        status(&quiet).await == "reverted"
    })
    .await;
    for _ in 0..10 {
        assert_eq!(insider(&quiet).await.pool(), Some("blue"));
        assert_eq!(insider(&a).await.pool(), Some("blue"));
    }
    assert_eq!(quiet.weights("shop").await, (100, 0), "no weights moved");
    wait_until(
        WAIT,
        "the latch's event on both, and its webhook",
        || async {
            count(&history(&a, "shop").await, "slo") == 1
                && count(&history(&quiet, "shop").await, "slo") == 1
                && !got.lock().unwrap().is_empty()
        },
    )
    .await;
    let sent = got.lock().unwrap().clone();
    assert_eq!(sent.len(), 1, "one webhook per revert: {sent:?}");
    assert_eq!(sent[0]["source"], "slo");
    let reverts = r#"turnout_reverts_total{tenant="shop"}"#;
    assert_eq!(a.metric(reverts).await, 1.0);
    assert_eq!(quiet.metric_or_absent(reverts).await.unwrap_or(0.0), 0.0);

    // A weights call on B, even with the same values, is a new intent: it
    // lifts the latch on every replica.
    g.set_failing(false);
    put_weights(&quiet, 100, 0).await;
    wait_until(WAIT, "the latch lifted on A", || async {
        status(&a).await != "reverted"
    })
    .await;
    assert_eq!(insider(&a).await.pool(), Some("green"));
    assert_eq!(insider(&quiet).await.pool(), Some("green"));
}

#[tokio::test]
async fn a_replica_started_mid_exposure_pools_its_counts_with_the_fleet() {
    let etcd = Etcd::start().await;
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    // 30 candidate requests are needed; each replica will see 20.
    let setup = || {
        Setup::shop()
            .preamble(&etcd.store("late"))
            .pools(&b, &g)
            .weights(100, 0)
            .extra(r#"slo = { min_requests = 30, max_error_rate = 0.5, window = "1s" }"#)
    };
    let a = replica(setup()).await;
    let r = a
        .admin("POST", "/v1/tenants/shop/promote", None, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(a.weights("shop").await, (0, 100));
    // The candidate's exposure began before this replica started.
    let late = replica(setup()).await;
    assert_eq!(late.weights("shop").await, (0, 100));
    for replica in [&a, &late] {
        for _ in 0..20 {
            assert_eq!(
                replica.get("shop.test", "/").await.upstream(),
                Some("green")
            );
        }
    }
    // Neither replica's own 20 reach 30: only the pooled counts promote.
    wait_until(WAIT, "the promotion on the pooled counts", || async {
        view(&a, "shop").await["stable"] == "green"
            && view(&late, "shop").await["stable"] == "green"
    })
    .await;
}
