//! What reaches the upstream and what comes back: headers, bodies, failures.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Full};
use support::*;

#[tokio::test]
async fn hop_by_hop_headers_are_removed_and_forwarded_headers_set() {
    let up = spawn_upstream("blue").await;
    let proxy = Setup::shop().on(&up).spawn().await;
    let request = b"GET /headers HTTP/1.1\r\nHost: shop.test:8080\r\n\
        Connection: keep-alive, x-secret-hop\r\nX-Secret-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
        Proxy-Connection: keep-alive\r\nTE: deflate;q=0.5, trailers\r\nTrailer: x-t\r\nUpgrade: h2c\r\n\
        X-Forwarded-For: 203.0.113.7\r\nX-Kept: yes\r\nX-Forwarded-For: 198.51.100.2\r\n\r\n";
    let reply = raw_exchange(proxy.running.http_addr, request).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("x-turnout-pool: blue"),
        "{reply}"
    );
    let body = &reply[reply.find("\r\n\r\n").unwrap() + 4..];
    let seen: BTreeMap<String, Vec<String>> = serde_json::from_str(body).unwrap();
    for hop in ["x-secret-hop", "keep-alive", "proxy-connection", "upgrade"] {
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
    // SPEC 4.5: of `TE` only `trailers` goes on (gRPC needs it); `Trailer`
    // names end-to-end fields and is kept.
    assert_eq!(seen["te"], ["trailers"]);
    assert_eq!(seen["trailer"], ["x-t"]);
}

#[tokio::test]
async fn large_bodies_stream_intact_both_ways() {
    let up = spawn_upstream("blue").await;
    let proxy = Setup::shop().on(&up).spawn().await;

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
    let proxy = Setup::tenant("dead")
        .blue(&dead)
        .extra("connect_timeout = \"1s\"")
        .and_tenant("slow")
        .blue(&hang)
        .extra("request_timeout = \"300ms\"")
        .spawn()
        .await;

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
    let proxy = Setup::shop().blue(&dead).blue(&live).spawn().await;
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
    let proxy = Setup::shop().on(&up).spawn().await;
    // Speak HTTP/2 directly on a TCP connection to the proxy, so the tenant's
    // host travels in `:authority` as a browser would send it.
    let mut sender = h2c(proxy.running.http_addr).await;
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
    let proxy = Setup::shop().on(&up).spawn().await;
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

/// The status and body of the next response on `client`.
async fn status_and_body(client: &mut tokio::net::TcpStream) -> (u16, String) {
    let (head, body) = read_response(client).await;
    (head[9..12].parse().unwrap(), body)
}

/// The requests of one HTTP/1.1 connection share their upstream timer
/// (`proxy::timer`): each request's own `request_timeout` still holds,
/// whether it is shorter than the last one's or comes after one that ran
/// out.
#[tokio::test]
async fn each_request_on_a_connection_gets_its_own_timeout() {
    use tokio::io::AsyncWriteExt;
    let (fast, hang) = (spawn_upstream("blue").await, spawn_upstream("hang").await);
    let proxy = Setup::tenant("fast")
        .blue(&fast)
        .extra("request_timeout = \"60s\"")
        .and_tenant("slow")
        .blue(&hang)
        .extra("request_timeout = \"300ms\"")
        .spawn()
        .await;
    let mut client = tokio::net::TcpStream::connect(proxy.running.http_addr)
        .await
        .unwrap();
    for round in 0..2 {
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: fast.test\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(
            status_and_body(&mut client).await,
            (200, "blue".into()),
            "{round}"
        );
        // A deadline earlier than the one the timer was set to last.
        let started = Instant::now();
        client
            .write_all(b"GET /hang HTTP/1.1\r\nHost: slow.test\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(status_and_body(&mut client).await.0, 504, "{round}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300),
            "{round}: early, {waited:?}"
        );
        assert!(waited < Duration::from_secs(10), "{round}: took {waited:?}");
    }
    // After a timer that fired, a slow answer within the limit still comes.
    fast.controls
        .delay_ms
        .store(200, std::sync::atomic::Ordering::Relaxed);
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: fast.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status_and_body(&mut client).await, (200, "blue".into()));
}

const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

#[tokio::test]
async fn an_answer_before_the_upload_ends_does_not_hold_up_the_next_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Answers at once, without reading the body, and keeps the connection
    // open: it stays busy with the rest of the upload.
    let up = RawUpstream::replying(OK).spawn().await;
    let proxy = Setup::shop()
        .blue(&up)
        .extra(RARE_PROBES)
        .extra("request_timeout = \"3s\"")
        .spawn()
        .await;
    let mut client = tokio::net::TcpStream::connect(proxy.running.http_addr)
        .await
        .unwrap();
    client
        .write_all(b"POST / HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 10\r\n\r\nhello")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.ends_with(b"\r\n\r\nok") {
        let n = client.read(&mut buf).await.unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&head));
        head.extend_from_slice(&buf[..n]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"));
    // That connection must not be lent to the next request (which would
    // wait behind the upload until its 504).
    let r = proxy.get("shop.test", "/").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"));
    drop(client);
}

#[tokio::test]
async fn a_response_with_trailers_hands_its_connection_back() {
    use std::sync::atomic::Ordering;
    // Raw, because hyper's own server sends trailers only when asked.
    let up = RawUpstream::replying(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n\
         2\r\nok\r\n0\r\nx-sum: 1\r\n\r\n",
    )
    .spawn()
    .await;
    let accepted = &up.accepted;
    let proxy = Setup::shop().blue(&up).extra(RARE_PROBES).spawn().await;
    for _ in 0..5 {
        let r = proxy.get("shop.test", "/").await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"));
    }
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        1,
        "one connection, reused"
    );
}

/// Longer than `upstream::MAY_BE_STALE_AFTER` (1 s): a pooled connection
/// idle this long may have been closed by the upstream's keep-alive timer.
const IDLE_PAST_STALE: Duration = Duration::from_millis(1100);

#[tokio::test]
async fn an_idle_connection_closed_under_a_get_is_retried_once() {
    use std::sync::atomic::Ordering;
    let up = RawUpstream::replying(OK).closing_after(1).spawn().await;
    let accepted = &up.accepted;
    let proxy = Setup::shop().blue(&up).extra(RARE_PROBES).spawn().await;
    let r = proxy.get("shop.test", "/").await;
    assert_eq!(r.status.as_u16(), 200);
    // Idle long enough for an upstream keep-alive timer to be the cause
    // (upstream::MAY_BE_STALE_AFTER is 1 s); the upstream then drops the
    // connection as the request arrives: the GET goes again on a new one.
    // The idle time is the input under test, not a wait for something.
    tokio::time::sleep(IDLE_PAST_STALE).await;
    let r = proxy.get("shop.test", "/").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"));
    let before = accepted.load(Ordering::Relaxed);

    // A POST is not idempotent: it is not sent twice, although its
    // connection idled just as long.
    tokio::time::sleep(IDLE_PAST_STALE).await;
    let req = Request::post(proxy.http_url("/"))
        .header("host", "shop.test")
        .body(Full::default())
        .unwrap();
    assert_eq!(proxy.send(req).await.status.as_u16(), 502);
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        before,
        "no new connection for it"
    );
}
