//! What reaches the upstream and what comes back: headers, bodies, failures.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;

#[tokio::test]
async fn hop_by_hop_headers_are_removed_and_forwarded_headers_set() {
    let up = spawn_upstream("blue").await;
    let proxy = spawn_proxy(&tenant("shop", r#"["shop.test"]"#, &up, &up, (1, 0), "")).await;
    let request = b"GET /headers HTTP/1.1\r\nHost: shop.test:8080\r\n\
        Connection: keep-alive, x-secret-hop\r\nX-Secret-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
        Proxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: x-t\r\nUpgrade: h2c\r\n\
        X-Forwarded-For: 203.0.113.7\r\nX-Kept: yes\r\nX-Forwarded-For: 198.51.100.2\r\n\r\n";
    let reply = raw_exchange(proxy.running.http_addr, request).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("x-turnout-pool: blue"),
        "{reply}"
    );
    let body = &reply[reply.find("\r\n\r\n").unwrap() + 4..];
    let seen: BTreeMap<String, Vec<String>> = serde_json::from_str(body).unwrap();
    for hop in [
        "x-secret-hop",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ] {
        assert!(
            !seen.contains_key(hop),
            "{hop} reached the upstream: {seen:?}"
        );
    }
    // `connection` may be re-added by the upstream client for keep-alive,
    // but never with the client's tokens.
    assert!(
        !seen
            .get("connection")
            .is_some_and(|v| v.iter().any(|c| c.contains("x-secret-hop")))
    );
    assert_eq!(
        seen["x-forwarded-for"],
        ["203.0.113.7, 198.51.100.2, 127.0.0.1"]
    );
    assert_eq!(seen["x-forwarded-proto"], ["http"]);
    assert_eq!(seen["x-forwarded-host"], ["shop.test:8080"]);
    assert_eq!(seen["host"], ["shop.test:8080"]);
    assert_eq!(seen["x-kept"], ["yes"]);
}

#[tokio::test]
async fn large_bodies_stream_intact_both_ways() {
    let up = spawn_upstream("blue").await;
    let proxy = spawn_proxy(&tenant("shop", r#"["shop.test"]"#, &up, &up, (1, 0), "")).await;

    let upload: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 256) as u8).collect();
    let req = Request::post(proxy.http_url("/echo"))
        .header("host", "shop.test")
        .body(Full::new(Bytes::from(upload.clone())))
        .unwrap();
    let r = proxy.send(req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), upload.len());
    assert!(r.body == upload, "the 1 MiB request body came back changed");

    let size = 8 * 1024 * 1024;
    let r = proxy.get("shop.test", &format!("/big/{size}")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), size);
    assert!(
        r.body == pattern(0, size),
        "the 8 MiB response body arrived changed"
    );
}

#[tokio::test]
async fn dead_upstream_is_502_and_hanging_one_is_504() {
    let (_held, dead) = refusing_port();
    let hang = spawn_upstream("hang").await;
    let config = format!(
        "[tenants.dead]\nhosts = [\"dead.test\"]\nstable = \"blue\"\nweights = {{ blue = 1, green = 0 }}\n\
         pools.blue = [\"{dead}\"]\npools.green = []\nconnect_timeout = \"1s\"\n\n\
         [tenants.slow]\nhosts = [\"slow.test\"]\nstable = \"blue\"\nweights = {{ blue = 1, green = 0 }}\n\
         pools.blue = [\"{}\"]\npools.green = []\nrequest_timeout = \"300ms\"\n",
        hang.addr
    );
    let proxy = spawn_proxy(&config).await;

    let started = Instant::now();
    let r = proxy.get("dead.test", "/").await;
    assert_eq!(r.status, 502);
    assert!(r.text().contains("connection failed"), "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(5));

    let started = Instant::now();
    let r = proxy.get("slow.test", "/hang").await;
    assert_eq!(r.status, 504);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "answered before the timeout: {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "took {waited:?}");

    assert_eq!(
        proxy
            .metric(r#"turnout_upstream_errors_total{tenant="dead",pool="blue",kind="connect"}"#)
            .await,
        1.0
    );
    assert_eq!(
        proxy
            .metric(r#"turnout_upstream_errors_total{tenant="slow",pool="blue",kind="timeout"}"#)
            .await,
        1.0
    );
    assert_eq!(
        proxy
            .metric(r#"turnout_requests_total{tenant="dead",pool="blue",code="5xx"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn connect_failure_is_retried_on_another_endpoint() {
    let (_held, dead) = refusing_port();
    let live = spawn_upstream("live").await;
    let config = format!(
        "[tenants.shop]\nhosts = [\"shop.test\"]\nstable = \"blue\"\nweights = {{ blue = 1, green = 0 }}\n\
         pools.blue = [\"{dead}\", \"{}\"]\npools.green = []\n",
        live.addr
    );
    let proxy = spawn_proxy(&config).await;
    for _ in 0..30 {
        let r = proxy.get("shop.test", "/").await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "live"));
    }
    // Some requests were first sent to the dead endpoint, then retried.
    assert!(
        proxy
            .metric(r#"turnout_upstream_errors_total{tenant="shop",pool="blue",kind="connect"}"#)
            .await
            >= 1.0
    );

    // A request with a body is not retried: it may fail, but never twice.
    let mut failed = 0;
    for _ in 0..30 {
        let req = Request::post(proxy.http_url("/echo"))
            .header("host", "shop.test")
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        let r = proxy.send(req).await;
        match r.status.as_u16() {
            200 => assert_eq!(r.text(), "payload"),
            502 => failed += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        failed > 0,
        "with two endpoints, some POSTs must have drawn the dead one"
    );
}

#[tokio::test]
async fn h2c_prior_knowledge_works() {
    let up = spawn_upstream("blue").await;
    let proxy = spawn_proxy(&tenant("shop", r#"["shop.test"]"#, &up, &up, (1, 0), "")).await;
    // Speak HTTP/2 directly on a TCP connection to the proxy, so the tenant's
    // host travels in `:authority` as a browser would send it.
    let tcp = tokio::net::TcpStream::connect(proxy.running.http_addr)
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = Request::get("http://shop.test/headers")
            .body(Full::<Bytes>::default())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.version(), Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-turnout-pool"], "blue");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let seen: BTreeMap<String, Vec<String>> = serde_json::from_slice(&body).unwrap();
        assert_eq!(seen["host"], ["shop.test"]);
        assert_eq!(seen["x-forwarded-host"], ["shop.test"]);
    }
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let up = spawn_upstream("blue").await;
    let proxy = spawn_proxy(&tenant("shop", r#"["shop.test"]"#, &up, &up, (1, 0), "")).await;
    // Bodies of every shape hand the connection back: sized, empty (204,
    // HEAD) and streamed.
    for i in 0..40 {
        let (method, path, status) = match i % 4 {
            0 => ("GET", "/", 200),
            1 => ("GET", "/status/204", 204),
            2 => ("HEAD", "/", 200),
            _ => ("GET", "/big/200000", 200),
        };
        let req = Request::builder()
            .method(method)
            .uri(proxy.http_url(path))
            .header("host", "shop.test")
            .body(Full::default())
            .unwrap();
        let r = proxy.send(req).await;
        assert_eq!(r.status.as_u16(), status, "{method} {path}");
        if path == "/big/200000" {
            assert_eq!(r.body.len(), 200_000);
        }
    }
    assert_eq!(
        up.traffic_connections(),
        1,
        "one upstream connection, reused"
    );

    // An upstream that says `Connection: close` is believed: the next request
    // opens a new connection and nothing fails.
    for _ in 0..5 {
        let r = proxy.get("shop.test", "/close").await;
        assert_eq!(r.status.as_u16(), 200);
        assert!(r.headers.get("connection").is_none(), "hop-by-hop removed");
        let r = proxy.get("shop.test", "/").await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "blue"));
    }
    assert_eq!(up.traffic_connections(), 6);
}
