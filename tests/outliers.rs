//! Passive outlier ejection (SPEC section 15): an endpoint failing
//! `consecutive_errors` requests in a row is ejected while its healthy
//! sibling serves, comes back once its ejection ends and a probe passes,
//! and `max_ejected` keeps part of the pool — while every failure still
//! counts against the pool's SLO window.

mod support;

use std::time::Duration;

use support::*;

const FAST_PROBES: &str = r#"health = { interval = "100ms", healthy_after = 1 }"#;

fn ejected(view: &serde_json::Value, pool: &str, i: usize) -> bool {
    view["pools"][pool]["endpoints"][i]["ejected"]
        .as_bool()
        .expect("an endpoint's `ejected`")
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_while_its_sibling_serves_and_comes_back() {
    let (bad, good) = (spawn_upstream("bad").await, spawn_upstream("good").await);
    let proxy = Setup::shop()
        .blue(&bad)
        .blue(&good)
        .extra(FAST_PROBES)
        // Long enough for the checks and 20 requests below to fit in it on
        // a loaded machine (after it, the still failing endpoint is back).
        .extra(r#"outlier = { consecutive_errors = 5, ejection = "3s" }"#)
        .spawn()
        .await;
    bad.set_failing(true);
    let series = format!(
        r#"turnout_outlier_ejections_total{{tenant="shop",pool="blue",endpoint="{}"}}"#,
        bad.addr
    );
    assert_eq!(
        proxy.metric(&series).await,
        0.0,
        "registered before any ejection"
    );

    let mut failures = 0;
    for _ in 0..200 {
        if proxy.get("shop.test", "/").await.status == 500 {
            failures += 1;
        }
        if failures == 4 {
            assert!(!ejected(&view(&proxy, "shop").await, "blue", 0), "not at 4");
        }
        if failures == 5 {
            break;
        }
    }
    assert_eq!(failures, 5);
    // Ejected at the fifth error in a row (recorded as its response ends).
    wait_until(Duration::from_secs(10), "the ejection", || async {
        ejected(&view(&proxy, "shop").await, "blue", 0)
    })
    .await;
    let v = view(&proxy, "shop").await;
    assert!(v["pools"]["blue"]["endpoints"][0]["ejected_until"].is_string());
    assert!(!ejected(&v, "blue", 1));
    assert_eq!(proxy.metric(&series).await, 1.0);
    // Ejection hides nothing from the SLO guard.
    assert_eq!(v["slo"]["blue"]["errors"], 5);

    // Only the sibling serves while the endpoint is out.
    for _ in 0..20 {
        let r = proxy.get("shop.test", "/").await;
        assert_eq!((r.status.as_u16(), r.upstream()), (200, Some("good")));
    }

    // Mended, it comes back once its ejection ended and a probe passed.
    bad.set_failing(false);
    wait_until(Duration::from_secs(10), "the ejection to end", || async {
        !ejected(&view(&proxy, "shop").await, "blue", 0)
    })
    .await;
    let v = view(&proxy, "shop").await;
    assert!(v["pools"]["blue"]["endpoints"][0]["ejected_until"].is_null());
    wait_until(
        Duration::from_secs(10),
        "traffic to the mended endpoint",
        || async { proxy.get("shop.test", "/").await.upstream() == Some("bad") },
    )
    .await;
}

#[tokio::test]
async fn max_ejected_keeps_part_of_the_pool() {
    // Alone in its pool: 0.5 of 1 rounds down to none, so it keeps serving.
    let lone = spawn_upstream("lone").await;
    let proxy = Setup::shop()
        .blue(&lone)
        .extra(FAST_PROBES)
        .extra(r#"outlier = { ejection = "1h" }"#)
        .spawn()
        .await;
    lone.set_failing(true);
    for _ in 0..12 {
        assert_eq!(proxy.get("shop.test", "/").await.status, 500);
    }
    assert!(!ejected(&view(&proxy, "shop").await, "blue", 0));

    // Two failing of two: one is ejected, the other keeps answering, and
    // its errors stay the pool's.
    let (a, b) = (spawn_upstream("a").await, spawn_upstream("b").await);
    let proxy = Setup::shop()
        .blue(&a)
        .blue(&b)
        .extra(FAST_PROBES)
        .extra(r#"outlier = { ejection = "1h", max_ejected = 0.5 }"#)
        .spawn()
        .await;
    a.set_failing(true);
    b.set_failing(true);
    for _ in 0..40 {
        assert_eq!(proxy.get("shop.test", "/").await.status, 500);
    }
    wait_until(Duration::from_secs(10), "every error counted", || async {
        view(&proxy, "shop").await["slo"]["blue"]["errors"] == 40
    })
    .await;
    let v = view(&proxy, "shop").await;
    let out = (0..2).filter(|&i| ejected(&v, "blue", i)).count();
    assert_eq!(out, 1, "{v}");
}

#[tokio::test]
async fn outlier_settings_are_validated_where_they_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("turnout.toml");
    let text = control_file(
        "",
        "[defaults.outlier]\nconsecutive_errors = 0\nmax_ejected = 1.5\n\n[tenants.shop]\nhosts = [\"shop.test\"]\nstable = \"blue\"\nweights = { blue = 1, green = 0 }\npools.blue = [\"grpc://127.0.0.1:1\"]\npools.green = []\n",
    );
    std::fs::write(&path, &text).unwrap();
    let err = turnout::config::load(
        &path,
        &|_| None,
        &turnout::config::ListenOverrides::default(),
    );
    let shown = format!("{}", err.config.expect_err("refused"));
    assert!(
        shown.contains(":6:1: defaults.outlier.consecutive_errors: must be"),
        "{shown}"
    );
    assert!(
        shown.contains("defaults.outlier.max_ejected: must be between 0 and 1"),
        "{shown}"
    );
    assert!(
        shown.contains(":13:15: tenants.shop.pools.blue[0]: `grpc://127.0.0.1:1`: unknown scheme"),
        "{shown}"
    );
}

#[tokio::test]
async fn a_grpc_endpoint_answering_unavailable_with_http_200_is_ejected() {
    let (bad, good) = (spawn_grpc("bad").await, spawn_grpc("good").await);
    bad.set_unavailable(true);
    let proxy = Setup::shop()
        .blue(&bad)
        .blue(&good)
        .extra(r#"health = { grpc = true, interval = "100ms" }"#)
        .extra(r#"outlier = { consecutive_errors = 3, ejection = "1h" }"#)
        .spawn()
        .await;
    let mut client = grpc_client(proxy.running.http_addr, "shop.test").await;
    let mut unavailable = 0;
    for i in 0..100 {
        if unary(&mut client, &i.to_string()).await.is_err() {
            unavailable += 1;
        }
        if unavailable == 3 {
            break;
        }
    }
    assert_eq!(unavailable, 3);
    wait_until(Duration::from_secs(10), "the ejection", || async {
        ejected(&view(&proxy, "shop").await, "blue", 0)
    })
    .await;
    for i in 0..10 {
        assert!(
            unary(&mut client, &i.to_string())
                .await
                .unwrap()
                .starts_with("good:")
        );
    }
}
