//! The insiders' cohort (SPEC section 4.3, `candidate_match`): requests
//! matching a header or cookie rule go to the candidate whatever the
//! weights, count in its SLO, and after a revert go to stable until a new
//! intent (any weights call).
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::Full;
use support::*;

const RULES: &str = r#"candidate_match = [{ header = "x-canary", value = "always" }, { cookie = "canary", value = "always" }]"#;

async fn get_with(proxy: &TestProxy, name: &str, value: &str) -> Reply {
    proxy
        .send(
            Request::get(proxy.http_url("/"))
                .header("host", "shop.test")
                .header(name, value)
                .body(Full::default())
                .unwrap(),
        )
        .await
}

#[tokio::test]
async fn matched_requests_reach_the_candidate_at_any_weight_others_go_by_weight() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    for weights in [(100, 0), (90, 10)] {
        let proxy = Setup::shop()
            .pools(&b, &g)
            .weights(weights.0, weights.1)
            .extra(RULES)
            .spawn()
            .await;
        for (name, value) in [
            ("x-canary", "always"),
            ("cookie", "canary=always"),
            ("cookie", "session=abc; canary=always; lang=en"),
        ] {
            for _ in 0..20 {
                let r = get_with(&proxy, name, value).await;
                assert_eq!(r.pool(), Some("green"), "{name}: {value} at {weights:?}");
            }
        }
        // Not matching: another value, another cookie, a prefix.
        let mut blue = 0;
        for (name, value) in [
            ("x-canary", "never"),
            ("cookie", "canary=alwaysx"),
            ("cookie", "xcanary=always"),
        ] {
            for _ in 0..30 {
                if get_with(&proxy, name, value).await.pool() == Some("blue") {
                    blue += 1;
                }
            }
        }
        if weights == (100, 0) {
            assert_eq!(blue, 90, "non-matching requests go by weight");
        } else {
            assert!(blue >= 60, "{blue} of 90 on blue at 90/10");
        }
        let v = view(&proxy, "shop").await;
        assert_eq!(v["candidate_match"][0]["header"], "x-canary", "{v}");
        assert_eq!(v["candidate_match"][1]["cookie"], "canary", "{v}");
    }
}

#[tokio::test]
async fn split_http2_cookie_fields_match_too() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let proxy = Setup::shop()
        .pools(&b, &g)
        .weights(100, 0)
        .extra(RULES)
        .spawn()
        .await;
    let mut h2 = h2c(proxy.running.http_addr).await;
    let req = Request::get("http://shop.test/")
        .version(Version::HTTP_2)
        .header("cookie", "session=abc")
        .header("cookie", "canary=always")
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["x-turnout-pool"], "green");
}

#[tokio::test]
async fn a_failing_cohort_reverts_the_candidate_at_weight_0_until_a_new_intent() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    g.set_failing(true);
    let proxy = Setup::shop()
        .pools(&b, &g)
        .weights(100, 0)
        .extra(&format!("{RULES}\nslo = {{ min_requests = 5 }}"))
        .spawn()
        .await;
    let failed = std::sync::atomic::AtomicUsize::new(0);
    wait_until(Duration::from_secs(20), "the cohort's revert", || async {
        if get_with(&proxy, "x-canary", "always").await.status == 500 {
            failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        view(&proxy, "shop").await["status"] == "reverted"
    })
    .await;
    let failed = failed.into_inner();
    assert!(
        failed <= 40,
        "{failed} failed cohort requests before the revert"
    );
    assert_eq!(
        proxy
            .metric(r#"turnout_reverts_total{tenant="shop"}"#)
            .await,
        1.0
    );
    let events = events(&proxy, "shop").await;
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["source"] == "slo"),
        "{events}"
    );
    // While reverted, the cohort goes to stable.
    for _ in 0..10 {
        assert_eq!(
            get_with(&proxy, "x-canary", "always").await.pool(),
            Some("blue")
        );
    }
    // A weights call, even with the same values, is a new intent.
    g.set_failing(false);
    let r = proxy
        .admin(
            "PUT",
            "/v1/tenants/shop/weights",
            None,
            Some(r#"{"blue":100,"green":0}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_ne!(view(&proxy, "shop").await["status"], "reverted");
    assert_eq!(
        get_with(&proxy, "x-canary", "always").await.pool(),
        Some("green")
    );
}

#[tokio::test]
async fn candidate_match_rules_are_validated_with_their_location() {
    let up = spawn_upstream("blue").await;
    let text = Setup::shop()
        .on(&up)
        .extra(
            r#"candidate_match = [{ header = "x a", value = "v" }, { header = "h", cookie = "c", value = "v" }, { cookie = "", value = "v" }, { header = "x-ok", value = "" }]"#,
        )
        .toml();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("turnout.toml");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_turnout"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for key in [
        "candidate_match[0].header",
        "candidate_match[1]",
        "candidate_match[2].cookie",
        "candidate_match[3].value",
    ] {
        assert!(stderr.contains(key), "{key} not reported:\n{stderr}");
    }
}
