//! Per-tenant admission, and metrics that match the traffic sent.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::time::Duration;

use support::*;

#[tokio::test]
async fn over_max_inflight_is_503_with_retry_after() {
    let (slow, other) = (spawn_upstream("slow").await, spawn_upstream("other").await);
    let config = Setup::tenant("busy")
        .on(&slow)
        .extra("max_inflight = 2\nrequest_timeout = \"4s\"")
        .and_tenant("calm")
        .on(&other);
    let proxy = std::sync::Arc::new(config.spawn().await);
    // Two requests that hang hold both slots.
    let hanging: Vec<_> = (0..2)
        .map(|_| {
            let p = std::sync::Arc::clone(&proxy);
            tokio::spawn(async move { p.get("busy.test", "/hang").await })
        })
        .collect();
    wait_until(Duration::from_secs(10), "both slots taken", || async {
        proxy.inflight("busy") == 2
    })
    .await;
    let r = proxy.get("busy.test", "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(
        proxy
            .metric(r#"turnout_rejected_total{tenant="busy",reason="max_inflight"}"#)
            .await,
        1.0
    );
    assert_eq!(
        proxy
            .metric(r#"turnout_inflight_requests{tenant="busy"}"#)
            .await,
        2.0
    );
    // Another tenant is not affected.
    assert_eq!(proxy.get("calm.test", "/").await.status, 200);
    for h in hanging {
        h.abort();
    }
    // When the clients go away, the slots come back: at once over HTTP/2;
    // over HTTP/1.1 a client that closed its side may only have half-closed
    // it (and still wait for the answer, RFC 9112 §9.6), so the slot is
    // held until `request_timeout` at the latest.
    wait_until(Duration::from_secs(10), "slots freed", || async {
        proxy.inflight("busy") == 0
    })
    .await;
    assert_eq!(proxy.get("busy.test", "/").await.status, 200);
}

#[tokio::test]
async fn metrics_count_the_traffic_sent() {
    let (blue, green) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let proxy = Setup::shop()
        .pools(&blue, &green)
        .weights(70, 30)
        .spawn()
        .await;
    let (mut b, mut g) = (0, 0);
    for _ in 0..100 {
        match proxy.get("shop.test", "/").await.pool() {
            Some("blue") => b += 1,
            Some("green") => g += 1,
            other => panic!("{other:?}"),
        }
    }
    for _ in 0..7 {
        assert_eq!(proxy.get("shop.test", "/status/404").await.status, 404);
    }
    let text = proxy.admin_get("/metrics").await.text();
    let m = |s: &str| metric_value(&text, s);
    let blue_4xx = m(r#"turnout_requests_total{tenant="shop",pool="blue",code="4xx"}"#);
    let green_4xx = m(r#"turnout_requests_total{tenant="shop",pool="green",code="4xx"}"#);
    assert_eq!(
        m(r#"turnout_requests_total{tenant="shop",pool="blue",code="2xx"}"#),
        f64::from(b)
    );
    assert_eq!(
        m(r#"turnout_requests_total{tenant="shop",pool="green",code="2xx"}"#),
        f64::from(g)
    );
    assert_eq!(blue_4xx + green_4xx, 7.0);
    let count_blue = m(r#"turnout_request_duration_seconds_count{tenant="shop",pool="blue"}"#);
    let count_green = m(r#"turnout_request_duration_seconds_count{tenant="shop",pool="green"}"#);
    assert_eq!(count_blue + count_green, 107.0);
    assert!(text.contains(
        r#"turnout_request_duration_seconds_bucket{tenant="shop",pool="blue",le="0.005"}"#
    ));
    assert_eq!(m(r#"turnout_pool_share{tenant="shop",pool="blue"}"#), 70.0);
    assert_eq!(m(r#"turnout_pool_share{tenant="shop",pool="green"}"#), 30.0);
    let healthy = format!(
        r#"turnout_endpoint_healthy{{tenant="shop",pool="green",endpoint="{}"}}"#,
        green.addr
    );
    assert_eq!(m(&healthy), 1.0);
    assert_eq!(m("turnout_config_generation"), 1.0);
    assert_eq!(m(r#"turnout_inflight_requests{tenant="shop"}"#), 0.0);
}

#[tokio::test]
async fn admin_probes_and_tenant_views() {
    let (blue, green) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let proxy = Setup::shop()
        .hosts(r#"["shop.test", "*.shop.test"]"#)
        .pools(&blue, &green)
        .weights(90, 10)
        .spawn()
        .await;
    assert_eq!(proxy.admin_get("/healthz").await.status, 200);
    assert_eq!(proxy.admin_get("/readyz").await.status, 200);
    let all: serde_json::Value =
        serde_json::from_slice(&proxy.admin_get("/v1/tenants").await.body).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 1);
    let r = proxy.admin_get("/v1/tenants/shop").await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["name"], "shop");
    assert_eq!(v["hosts"], serde_json::json!(["shop.test", "*.shop.test"]));
    assert_eq!(v["stable"], "blue");
    assert_eq!(v["candidate"], "green");
    assert_eq!(v["weights"], serde_json::json!({"blue": 90, "green": 10}));
    assert_eq!(v["status"], "split");
    assert_eq!(v["generation"], 1);
    assert_eq!(
        v["pools"]["green"]["endpoints"][0]["address"],
        green.addr.to_string()
    );
    assert_eq!(v["pools"]["green"]["endpoints"][0]["healthy"], true);
    let missing = proxy.admin_get("/v1/tenants/nope").await;
    assert_eq!(missing.status, 404);
    let err: serde_json::Value = serde_json::from_slice(&missing.body).unwrap();
    assert!(err["error"].as_str().unwrap().contains("nope"));
}

#[tokio::test]
async fn every_series_of_the_contract_is_exported_from_the_start() {
    let (blue, green) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let proxy = Setup::shop()
        .pools(&blue, &green)
        .weights(90, 10)
        .spawn()
        .await;
    wait_until(
        Duration::from_secs(10),
        "the first health probes",
        || async { blue.health_hits() >= 1 && green.health_hits() >= 1 },
    )
    .await;
    let text = proxy.admin_get("/metrics").await.text();
    // SPEC section 10, before any traffic: every series a dashboard or an
    // alert reads is there (at 0), so "equals 0" means "nothing happened".
    let mut zero = vec![
        r#"turnout_config_reloads_total{result="error"}"#.to_owned(),
        "turnout_notify_failures_total".to_owned(),
        r#"turnout_inflight_requests{tenant="shop"}"#.to_owned(),
        r#"turnout_reverts_total{tenant="shop"}"#.to_owned(),
    ];
    for reason in ["no_host", "unknown_host", "misdirected", "invalid_request"] {
        zero.push(format!(r#"turnout_unrouted_total{{reason="{reason}"}}"#));
    }
    for reason in ["fd_exhausted", "out_of_memory", "ephemeral_ports"] {
        zero.push(format!(
            r#"turnout_local_errors_total{{reason="{reason}"}}"#
        ));
    }
    for reason in ["max_inflight", "preview_token"] {
        zero.push(format!(
            r#"turnout_rejected_total{{tenant="shop",reason="{reason}"}}"#
        ));
    }
    for pool in ["blue", "green"] {
        zero.push(format!(
            r#"turnout_failovers_total{{tenant="shop",from="{pool}"}}"#
        ));
        zero.push(format!(
            r#"turnout_slo_error_rate{{tenant="shop",pool="{pool}"}}"#
        ));
        for code in ["2xx", "3xx", "4xx", "5xx"] {
            zero.push(format!(
                r#"turnout_requests_total{{tenant="shop",pool="{pool}",code="{code}"}}"#
            ));
        }
        for kind in ["connect", "timeout", "protocol", "body"] {
            zero.push(format!(
                r#"turnout_upstream_errors_total{{tenant="shop",pool="{pool}",kind="{kind}"}}"#
            ));
        }
    }
    for series in &zero {
        assert_eq!(metric_value(&text, series), 0.0, "{series}");
    }
    assert_eq!(metric_value(&text, "turnout_config_generation"), 1.0);
    // The first load counts as a reload.
    assert_eq!(
        metric_value(&text, r#"turnout_config_reloads_total{result="ok"}"#),
        1.0
    );
    for (pool, share, up) in [("blue", 90.0, &blue), ("green", 10.0, &green)] {
        let share_series = format!(r#"turnout_pool_share{{tenant="shop",pool="{pool}"}}"#);
        assert_eq!(metric_value(&text, &share_series), share);
        let healthy = format!(
            r#"turnout_endpoint_healthy{{tenant="shop",pool="{pool}",endpoint="{}"}}"#,
            up.addr
        );
        assert_eq!(metric_value(&text, &healthy), 1.0);
    }
}

#[tokio::test]
async fn a_missing_series_fails_the_test_and_names_the_similar_ones() {
    let (blue, green) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let proxy = Setup::shop()
        .pools(&blue, &green)
        .weights(90, 10)
        .spawn()
        .await;
    let text = proxy.admin_get("/metrics").await.text();
    // Labels match in any order.
    assert_eq!(
        metric_or_absent(&text, r#"turnout_pool_share{pool="blue",tenant="shop"}"#),
        Some(90.0)
    );
    // Absence is an answer only when asked for.
    let misspelled = r#"turnout_reject_total{tenant="shop",reason="max_inflight"}"#;
    assert_eq!(metric_or_absent(&text, misspelled), None);
    assert_eq!(proxy.metric_or_absent(misspelled).await, None);
    let unknown_tenant = r#"turnout_rejected_total{tenant="shpo",reason="max_inflight"}"#;
    assert_eq!(metric_or_absent(&text, unknown_tenant), None);
    for (series, similar) in [
        (
            misspelled,
            r#"turnout_rejected_total{tenant="shop",reason="max_inflight"}"#,
        ),
        (
            unknown_tenant,
            r#"turnout_rejected_total{tenant="shop",reason="preview_token"}"#,
        ),
    ] {
        let text = text.clone();
        let panic = std::panic::catch_unwind(move || metric_value(&text, series))
            .expect_err("a missing series must fail the test");
        let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            message.contains(series) && message.contains(similar),
            "{message}"
        );
    }
}
