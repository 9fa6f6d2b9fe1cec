//! Changes in flight when etcd goes away: a revert held while a replica
//! was cut off, and a fleet that moved on meanwhile (SPEC section 12:
//! committed when etcd answers again "unless the state moved on
//! meanwhile"); an operator's write sent to an etcd that froze before the
//! replica noticed.

use super::etcd::{self, Etcd};
use super::kit::*;
use super::support::*;

#[tokio::test]
async fn a_held_revert_the_fleet_overrode_meanwhile_gives_way_to_the_stored_state() {
    let etcd = Etcd::start().await;
    let relay = etcd::Relay::start(etcd.client).await;
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let setup = |store: String| {
        Setup::shop()
            .preamble(&store)
            .pools(&b, &g)
            .weights(50, 50)
            .extra("slo = { min_requests = 5 }")
    };
    let cut_off = replica(setup(etcd.store_via(relay.addr, "held"))).await;
    let other = replica(setup(etcd.store("held"))).await;
    relay.set_cut(true);
    wait_until(WAIT, "the cut-off replica to notice", || async {
        config_view(&cut_off).await["store"]["connected"] == false
    })
    .await;
    g.set_failing(true);
    wait_until(WAIT, "the local revert", || async {
        cut_off.get("shop.test", "/").await;
        cut_off.weights("shop").await == (100, 0)
    })
    .await;
    g.set_failing(false);
    // Meanwhile an operator restates the split: the same weights, a new
    // intent, a newer tenant key than the one the breach was judged on.
    put_weights(&other, 50, 50).await;
    relay.set_cut(false);
    wait_until(
        WAIT,
        "the cut-off replica to serve the stored split",
        || async { cut_off.weights("shop").await == (50, 50) },
    )
    .await;
    assert_ne!(view(&cut_off, "shop").await["status"], "reverted");
    let (va, vb) = (view(&cut_off, "shop").await, view(&other, "shop").await);
    assert_eq!(generation(&va), generation(&vb));
    // The dropped revert was never committed: no event, no count.
    assert_eq!(count(&history(&other, "shop").await, "slo"), 0);
    assert_eq!(count(&history(&cut_off, "shop").await, "slo"), 0);
    let reverts = r#"turnout_reverts_total{tenant="shop"}"#;
    assert_eq!(cut_off.metric_or_absent(reverts).await.unwrap_or(0.0), 0.0);
}

#[tokio::test]
async fn a_write_etcd_froze_on_says_it_may_still_be_applied_and_the_fleet_converges() {
    let etcd = Etcd::start().await;
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let setup = || {
        Setup::shop()
            .preamble(&etcd.store("frozen"))
            .pools(&b, &g)
            .weights(100, 0)
    };
    let a = replica(setup()).await;
    let other = replica(setup()).await;
    // Sent at once, before the replica can notice the freeze (about 2 s:
    // its keep-alive's interval and timeout). On a loaded machine it may
    // notice first, or a keep-alive to a starved etcd may fail just before:
    // then the write is refused unsent ("not connected"), as it should be,
    // and the case under test did not happen — again, from a replica that
    // is connected. (Seen once in 12 runs under load.)
    let mut attempts = 0;
    let error = loop {
        attempts += 1;
        wait_until(WAIT, "A connected to etcd", || async {
            config_view(&a).await["store"]["connected"] == true
        })
        .await;
        etcd.pause();
        let r = a
            .admin(
                "PUT",
                "/v1/tenants/shop/weights",
                None,
                Some(r#"{"blue": 70, "green": 30}"#),
            )
            .await;
        assert_eq!(r.status, 503, "{}", r.text());
        let error = json(&r)["error"].as_str().unwrap().to_owned();
        if !error.contains("not connected") || attempts == 5 {
            break error;
        }
        etcd.resume().await;
    };
    assert!(error.contains("may still be applied"), "{error}");
    etcd.resume().await;
    // Applied after all or not, every replica serves the same state.
    wait_until(WAIT, "the replicas to agree", || async {
        let (va, vb) = (view(&a, "shop").await, view(&other, "shop").await);
        config_view(&a).await["store"]["connected"] == true
            && va["weights"] == vb["weights"]
            && generation(&va) == generation(&vb)
    })
    .await;
}
