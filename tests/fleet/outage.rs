//! The fleet when etcd is away: a frozen etcd, a killed one, and a replica
//! cut off while the history it missed is compacted (SPEC section 12).

use std::sync::Arc;

use super::etcd::{self, Etcd};
use super::kit::*;
use super::support::*;

#[tokio::test]
async fn an_outage_keeps_traffic_refuses_writes_and_holds_reverts() {
    let etcd = Etcd::start().await;
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let setup = || {
        Setup::shop()
            .preamble(&etcd.store("outage"))
            .pools(&b, &g)
            .weights(50, 50)
            .extra("slo = { min_requests = 5 }")
    };
    let a = replica(setup()).await;
    let other = replica(setup()).await;

    etcd.pause();
    wait_until(WAIT, "A to notice etcd is gone", || async {
        config_view(&a).await["store"]["connected"] == false
    })
    .await;
    assert_eq!(a.metric("turnout_store_up").await, 0.0);
    let store = config_view(&a).await["store"].clone();
    assert!(store["error"].is_string(), "why it is away: {store}");
    // Traffic keeps flowing on the last applied state.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..40 {
        let reply = a.get("shop.test", "/").await;
        assert_eq!(reply.status, 200);
        seen.insert(reply.upstream().unwrap().to_owned());
    }
    assert_eq!(seen.len(), 2, "both pools still served: {seen:?}");
    // Admin writes are refused with a clear error.
    let r = a
        .admin(
            "PUT",
            "/v1/tenants/shop/weights",
            None,
            Some(r#"{"blue": 100, "green": 0}"#),
        )
        .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        json(&r)["error"].as_str().unwrap().contains("etcd"),
        "{}",
        r.text()
    );
    // A replica started now is not ready, and serves no candidate.
    let late = Arc::new(setup().spawn().await);
    assert_eq!(late.admin_get("/readyz").await.status, 503);
    assert_eq!(late.weights("shop").await, (100, 0));
    // A breach reverts locally at once.
    g.set_failing(true);
    wait_until(WAIT, "the local revert on A", || async {
        a.get("shop.test", "/").await;
        a.weights("shop").await == (100, 0)
    })
    .await;
    assert_eq!(other.weights("shop").await, (50, 50));

    etcd.resume().await;
    wait_until(WAIT, "the late replica to be ready", || async {
        late.admin_get("/readyz").await.status == 200
    })
    .await;
    // The held revert is committed once etcd answers, and reaches everyone.
    for replica in [&other, &late] {
        wait_until(WAIT, "the revert everywhere", || async {
            replica.weights("shop").await == (100, 0)
        })
        .await;
    }
    // Exactly one event, whichever replica committed the revert.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let events = history(&other, "shop").await;
        if count(&events, "slo") == 1 {
            // The write refused while etcd was away never lands later.
            assert_eq!(count(&events, "admin"), 0, "{events:#?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for the revert's event; the history: {events:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(config_view(&a).await["store"]["connected"], true);
    let g_a = generation(&view(&a, "shop").await);
    wait_until(WAIT, "one generation", || async {
        generation(&view(&late, "shop").await) == g_a
            && generation(&view(&other, "shop").await) == g_a
    })
    .await;
}

#[tokio::test]
async fn a_killed_etcd_is_reconnected_after_its_restart() {
    let mut etcd = Etcd::start().await;
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let setup = || {
        Setup::shop()
            .preamble(&etcd.store("restart"))
            .pools(&b, &g)
            .weights(100, 0)
    };
    let a = replica(setup()).await;
    let other = replica(setup()).await;
    etcd.kill();
    wait_until(WAIT, "A to notice etcd is gone", || async {
        config_view(&a).await["store"]["connected"] == false
    })
    .await;
    etcd.restart().await;
    wait_until(WAIT, "A to reconnect", || async {
        config_view(&a).await["store"]["connected"] == true
    })
    .await;
    put_weights(&a, 70, 30).await;
    wait_until(WAIT, "the other replica to follow again", || async {
        other.weights("shop").await == (70, 30)
    })
    .await;
}

#[tokio::test]
async fn a_replica_behind_a_compaction_reads_the_whole_state_again() {
    let etcd = Etcd::start().await;
    let relay = etcd::Relay::start(etcd.client).await;
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let setup = |store: String| Setup::shop().preamble(&store).pools(&b, &g).weights(100, 0);
    let cut_off = replica(setup(etcd.store_via(relay.addr, "compact"))).await;
    let other = replica(setup(etcd.store("compact"))).await;
    relay.set_cut(true);
    wait_until(WAIT, "the cut-off replica to notice", || async {
        config_view(&cut_off).await["store"]["connected"] == false
    })
    .await;
    // Changes it does not see, then their history compacted away.
    for green in [10, 20, 30] {
        put_weights(&other, 100 - green, green).await;
    }
    etcd.compact().await;
    assert_eq!(cut_off.weights("shop").await, (100, 0));
    relay.set_cut(false);
    wait_until(WAIT, "the cut-off replica to catch up", || async {
        cut_off.weights("shop").await == (70, 30)
    })
    .await;
    let (va, vb) = (view(&cut_off, "shop").await, view(&other, "shop").await);
    assert_eq!(generation(&va), generation(&vb));
    // The watch could not replay the revisions it missed: the events of
    // the three changes come from reading the history again, each once.
    wait_until(WAIT, "the missed events", || async {
        count(&history(&cut_off, "shop").await, "admin") == 3
    })
    .await;
    // And it follows again.
    put_weights(&other, 50, 50).await;
    wait_until(WAIT, "the next change and its event", || async {
        cut_off.weights("shop").await == (50, 50)
            && count(&history(&cut_off, "shop").await, "admin") == 4
    })
    .await;
}
