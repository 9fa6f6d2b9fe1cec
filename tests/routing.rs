//! Host, pool and sticky routing through the real proxy.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::collections::HashMap;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;

#[tokio::test]
async fn splits_by_weight_and_names_the_pool() {
    let (blue, green) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let proxy = Setup::shop()
        .pools(&blue, &green)
        .weights(80, 20)
        .spawn()
        .await;
    let n = 2000;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..n {
        let r = proxy.get("shop.test", "/").await;
        assert_eq!(r.status, 200);
        // The header names the pool whose upstream actually answered.
        assert_eq!(
            r.pool(),
            r.upstream(),
            "X-Turnout-Pool must match the answering upstream"
        );
        *counts.entry(r.text()).or_default() += 1;
    }
    let green_share = counts.get("green").copied().unwrap_or(0) as f64 / n as f64;
    // Expect 0.20; binomial sd at n=2000 is 0.009, so ±0.06 is > 6 sd.
    assert!(
        (0.14..=0.26).contains(&green_share),
        "green share {green_share}, counts {counts:?}"
    );
}

#[tokio::test]
async fn zero_weight_pool_gets_nothing() {
    let (blue, green) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let proxy = Setup::shop()
        .pools(&blue, &green)
        .weights(100, 0)
        .spawn()
        .await;
    for _ in 0..200 {
        assert_eq!(proxy.get("shop.test", "/").await.text(), "blue");
    }
    assert_eq!(green.hits.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test]
async fn routes_exact_and_wildcard_hosts() {
    let ups = [
        spawn_upstream("exact").await,
        spawn_upstream("wild").await,
        spawn_upstream("deep").await,
    ];
    let config = Setup::tenant("exact")
        .hosts(r#"["a.test"]"#)
        .on(&ups[0])
        .and_tenant("wild")
        .hosts(r#"["*.a.test"]"#)
        .on(&ups[1])
        .and_tenant("deep")
        .hosts(r#"["*.eu.a.test"]"#)
        .on(&ups[2]);
    let proxy = config.spawn().await;
    assert_eq!(proxy.get("a.test", "/").await.text(), "exact");
    assert_eq!(proxy.get("www.a.test", "/").await.text(), "wild");
    assert_eq!(proxy.get("shop.eu.a.test", "/").await.text(), "deep");
    // Case, port and a trailing dot do not matter.
    assert_eq!(proxy.get("WWW.A.Test.:8080", "/").await.text(), "wild");
    // A wildcard does not match its bare suffix's look-alikes.
    let r = proxy.get("xa.test", "/").await;
    assert_eq!(r.status, 404);
    assert!(r.text().contains("xa.test"), "{}", r.text());
    assert_eq!(
        proxy
            .metric(r#"turnout_unrouted_total{reason="unknown_host"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn request_without_host_is_400() {
    let up = spawn_upstream("blue").await;
    let proxy = Setup::shop().on(&up).spawn().await;
    // HTTP/1.0 allows leaving Host out; send one raw.
    let reply = raw_exchange(proxy.running.http_addr, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(
        reply.starts_with("HTTP/1.0 400") || reply.starts_with("HTTP/1.1 400"),
        "{reply}"
    );
    assert_eq!(
        proxy
            .metric(r#"turnout_unrouted_total{reason="no_host"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn preview_host_reaches_candidate_only() {
    let (blue, green) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let extra = r#"preview_hosts = ["preview.shop.test"]"#;
    let proxy = Setup::shop()
        .pools(&blue, &green)
        .weights(100, 0)
        .extra(extra)
        .spawn()
        .await;
    for _ in 0..20 {
        let r = proxy.get("preview.shop.test", "/").await;
        assert_eq!((r.text().as_str(), r.pool()), ("green", Some("green")));
    }
}

#[tokio::test]
async fn preview_token_is_required_when_configured() {
    let (blue, green) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let extra =
        "preview_hosts = [\"preview.shop.test\"]\npreview_token_env = \"SHOP_PREVIEW_TOKEN\"";
    let config = Setup::shop()
        .pools(&blue, &green)
        .weights(100, 0)
        .extra(extra)
        .toml();
    // The token comes from the environment, so run the real binary with it.
    let proc = spawn_binary(&config, &[("SHOP_PREVIEW_TOKEN", "let-me-in")]).await;
    let c = client();
    let get = |token: Option<&str>| {
        let mut req =
            Request::get(format!("http://{}/", proc.http_addr)).header("host", "preview.shop.test");
        if let Some(t) = token {
            req = req.header("x-turnout-preview", t);
        }
        c.request(req.body(Full::<Bytes>::default()).unwrap())
    };
    assert_eq!(get(None).await.unwrap().status(), 403);
    assert_eq!(get(Some("wrong")).await.unwrap().status(), 403);
    let ok = get(Some("let-me-in")).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["x-turnout-pool"], "green");
}

#[tokio::test]
async fn sticky_header_keeps_each_user_in_one_pool() {
    let (blue, green) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let extra = r#"sticky = { header = "x-user-id" }"#;
    let proxy = Setup::shop()
        .pools(&blue, &green)
        .weights(50, 50)
        .extra(extra)
        .spawn()
        .await;
    let mut seen = HashMap::new();
    for user in 0..40 {
        for _ in 0..5 {
            let req = Request::get(proxy.http_url("/"))
                .header("host", "shop.test")
                .header("x-user-id", format!("user-{user}"))
                .body(Full::default())
                .unwrap();
            let pool = proxy.send(req).await.text();
            let first = seen.entry(user).or_insert_with(|| pool.clone());
            assert_eq!(*first, pool, "user-{user} moved between pools");
        }
    }
    // At 50/50 forty users cannot all land on one side (p = 2^-39).
    let greens = seen.values().filter(|p| *p == "green").count();
    assert!(greens > 0 && greens < 40, "{greens}");
}

#[tokio::test]
async fn sticky_cookie_is_issued_and_honoured() {
    let (blue, green) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let extra = r#"sticky = { cookie = "turnout_id" }"#;
    let proxy = Setup::shop()
        .pools(&blue, &green)
        .weights(50, 50)
        .extra(extra)
        .spawn()
        .await;
    for _ in 0..20 {
        let first = proxy.get("shop.test", "/").await;
        let set_cookie = first
            .headers
            .get("set-cookie")
            .expect("a cookie for a new user")
            .to_str()
            .unwrap();
        assert!(set_cookie.starts_with("turnout_id="), "{set_cookie}");
        assert!(
            set_cookie.contains("Path=/")
                && set_cookie.contains("HttpOnly")
                && set_cookie.contains("SameSite=Lax")
        );
        let cookie = set_cookie.split(';').next().unwrap().to_owned();
        for _ in 0..5 {
            let req = Request::get(proxy.http_url("/"))
                .header("host", "shop.test")
                .header("cookie", format!("other=1; {cookie}"))
                .body(Full::default())
                .unwrap();
            let again = proxy.send(req).await;
            assert!(
                again.headers.get("set-cookie").is_none(),
                "a returning user gets no new cookie"
            );
            assert_eq!(
                again.text(),
                first.text(),
                "the cookie must keep the user in the pool it was placed in"
            );
        }
    }
}
