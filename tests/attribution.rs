//! Whose fault an outcome is (SPEC section 6): what the client caused and
//! what the proxy itself failed at is never a pool's error, a client that
//! went away before the answer is no evidence of health, and an upstream
//! that breaks its body after the head is the pool's error.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn a_release_that_answers_nobody_is_never_promoted() {
    let ok = spawn_upstream("blue").await;
    let mute = RawUpstream::silent().spawn().await;
    let rollout =
        "slo = { min_requests = 5 }\nrollout = { steps = [100], interval = \"1s\", bake = \"1s\" }";
    let config = Setup::tenant("mute")
        .pools(&ok, &mute)
        .weights(100, 0)
        .extra(rollout)
        // The same ramp on a candidate that answers: the clock this test
        // reads instead of sleeping.
        .and_tenant("clock")
        .on(&ok)
        .weights(100, 0)
        .extra(rollout);
    let proxy = Arc::new(config.spawn().await);
    for t in ["mute", "clock"] {
        let r = proxy
            .admin("POST", &format!("/v1/tenants/{t}/rollout"), None, None)
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // HTTP/2 clients that give up after 0.3 s: their streams are reset.
    let tcp = TcpStream::connect(proxy.running.http_addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let impatient = async {
        for _ in 0..20 {
            let mut c = client.clone().ready().await.unwrap();
            let req = http::Request::get("http://mute.test/").body(()).unwrap();
            let (resp, _) = c.send_request(req, true).unwrap();
            assert!(
                tokio::time::timeout(Duration::from_millis(300), resp)
                    .await
                    .is_err()
            );
        }
    };
    let clock_traffic = async {
        while view(&proxy, "clock").await["stable"] != "green" {
            proxy.get("clock.test", "/").await;
        }
    };
    tokio::join!(impatient, clock_traffic);
    wait_until(Duration::from_secs(10), "20 abandoned requests", || async {
        view(&proxy, "mute").await["slo"]["green"]["abandoned"] == 20
    })
    .await;
    let v = view(&proxy, "mute").await;
    assert_eq!(v["stable"], "blue", "a release that answered nobody: {v}");
    assert_eq!(v["slo"]["green"]["requests"], 0, "{v}");
    assert_eq!(v["verdict"], "inconclusive", "{v}");
    let abandoned = proxy
        .metric(r#"turnout_requests_total{tenant="mute",pool="green",code="4xx"}"#)
        .await;
    assert_eq!(abandoned, 20.0);
    let as_1xx = proxy
        .metric(r#"turnout_requests_total{tenant="mute",pool="green",code="1xx"}"#)
        .await;
    assert_eq!(as_1xx, 0.0);
}

/// Sends `head` then `body` on a fresh connection and reads the answer's
/// status line (empty if none came within 10 s).
async fn send_raw(addr: SocketAddr, head: &str, body: &[u8], close_after: bool) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    if close_after {
        return String::new();
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while !got.windows(2).any(|w| w == b"\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn bad_or_stalled_uploads_are_the_clients_fault_and_revert_nothing() {
    let (blue, green) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let proxy = Setup::shop()
        .pools(&blue, &green)
        .weights(50, 50)
        .extra("request_timeout = \"1s\"\nslo = { min_requests = 5 }")
        .spawn()
        .await;
    let addr = proxy.running.http_addr;
    let chunked = "POST /echo HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\n\r\n";
    let sized = "POST /echo HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 100\r\n\r\n";
    let mut statuses = Vec::new();
    for _ in 0..40 {
        statuses.push(send_raw(addr, chunked, b"zz\r\n\r\n", false).await);
    }
    // Cut uploads: the client leaves mid-body.
    for _ in 0..10 {
        send_raw(addr, sized, b"0123456789", true).await;
    }
    // Stalled uploads: 10 of 100 bytes, then nothing until request_timeout.
    let stalled = futures_util::future::join_all(
        (0..10).map(|_| send_raw(addr, sized, b"0123456789", false)),
    )
    .await;
    for line in &statuses {
        assert!(line.contains(" 400 "), "{line:?}");
    }
    for line in &stalled {
        assert!(line.contains(" 408 "), "{line:?}");
    }
    wait_until(
        Duration::from_secs(10),
        "the cut uploads settled",
        || async { proxy.inflight("shop") == 0 },
    )
    .await;
    let v = view(&proxy, "shop").await;
    assert_eq!(v["status"], "split", "clients reverted the release: {v}");
    assert_eq!(v["slo"]["green"]["errors"], 0, "{v}");
    for pool in ["blue", "green"] {
        for kind in ["connect", "timeout", "protocol", "body"] {
            let series = format!(
                r#"turnout_upstream_errors_total{{tenant="shop",pool="{pool}",kind="{kind}"}}"#
            );
            assert_eq!(proxy.metric(&series).await, 0.0, "{series}");
        }
    }
}

#[tokio::test]
async fn a_body_broken_after_the_head_is_the_pools_error() {
    let blue = spawn_upstream("blue").await;
    // Promises 100 bytes, sends 5, closes.
    let cut = RawUpstream::replying("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello")
        .closing_each()
        .spawn()
        .await;
    let proxy = Setup::shop()
        .pools(&blue, &cut)
        .weights(50, 50)
        .extra("slo = { min_requests = 5 }")
        .spawn()
        .await;
    let client = client();
    for _ in 0..200 {
        let req = http::Request::get(proxy.http_url("/"))
            .header("host", "shop.test")
            .body(http_body_util::Full::<bytes::Bytes>::default())
            .unwrap();
        if let Ok(resp) = client.request(req).await {
            let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
        }
        if view(&proxy, "shop").await["status"] == "reverted" {
            break;
        }
    }
    let v = view(&proxy, "shop").await;
    assert_eq!(v["status"], "reverted", "a release cutting its bodies: {v}");
    let body_errors = proxy
        .metric(r#"turnout_upstream_errors_total{tenant="shop",pool="green",kind="body"}"#)
        .await;
    assert!(body_errors >= 5.0, "{body_errors}");
}
