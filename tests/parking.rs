//! Idle HTTP/1.1 client connections are parked: hyper's connection and its
//! buffers are given back while the socket stays open, and the client's
//! next bytes are served as if nothing happened (`server::served`). Each
//! test waits for `turnout_client_connections{state="parked"}` to show the
//! park, then checks that nothing the client sent is lost.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const PARKED: &str = r#"turnout_client_connections{state="parked"}"#;
const OPEN: &str = r#"turnout_client_connections{state="open"}"#;
const WAIT: Duration = Duration::from_secs(15);

async fn parked_count(proxy: &TestProxy) -> f64 {
    proxy.metric(PARKED).await
}

async fn wait_parked(proxy: &TestProxy, n: f64) {
    wait_until(WAIT, &format!("{n} parked connections"), || async {
        parked_count(proxy).await == n
    })
    .await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_parks_and_serves_its_next_requests() {
    let up = spawn_upstream("blue").await;
    let proxy = Setup::shop().on(&up).spawn().await;
    let mut s = TcpStream::connect(proxy.running.http_addr).await.unwrap();
    s.write_all(b"GET /one HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "blue");
    wait_parked(&proxy, 1.0).await;
    assert_eq!(proxy.metric(OPEN).await, 1.0);

    // The next request wakes it; a pipelined pair is answered in order.
    s.write_all(
        b"GET /status/201 HTTP/1.1\r\nHost: shop.test\r\n\r\nGET /status/202 HTTP/1.1\r\nHost: shop.test\r\n\r\n",
    )
    .await
    .unwrap();
    for status in ["201", "202"] {
        let (head, body) = read_response(&mut s).await;
        assert!(head.starts_with(&format!("HTTP/1.1 {status}")), "{head}");
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
        assert_eq!(body, "blue");
    }
    // Idle again: parked again, and a client that closes is gone.
    wait_parked(&proxy, 1.0).await;
    drop(s);
    wait_until(WAIT, "the closed connection uncounted", || async {
        parked_count(&proxy).await == 0.0 && proxy.metric(OPEN).await == 0.0
    })
    .await;
}

#[tokio::test]
async fn a_head_begun_before_or_after_parking_loses_no_byte() {
    let up = spawn_upstream("blue").await;
    let proxy = Setup::shop().on(&up).spawn().await;
    let addr = proxy.running.http_addr;

    // A: a pipelined request's head half sent, stalling: hyper holds those
    // bytes when the connection is looked at for parking.
    let mut a = TcpStream::connect(addr).await.unwrap();
    a.write_all(
        b"GET /status/201 HTTP/1.1\r\nHost: shop.test\r\n\r\nGET /status/202 HTTP/1.1\r\nHo",
    )
    .await
    .unwrap();
    let (head, _) = read_response(&mut a).await;
    assert!(head.starts_with("HTTP/1.1 201"), "{head}");

    // B: idle after one request, so it parks; A has idled longer and was
    // looked at first.
    let mut b = TcpStream::connect(addr).await.unwrap();
    b.write_all(b"GET /b1 HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        .await
        .unwrap();
    read_response(&mut b).await;
    wait_parked(&proxy, 1.0).await;

    // A's held bytes were kept: the rest of its head completes it.
    a.write_all(b"st: shop.test\r\n\r\n").await.unwrap();
    let (head, body) = read_response(&mut a).await;
    assert!(head.starts_with("HTTP/1.1 202"), "{head}");
    assert_eq!(body, "blue");

    // B, parked, gets its next head in two pieces.
    b.write_all(b"GET /status/203 HTTP/1.1\r\nHo")
        .await
        .unwrap();
    wait_parked(&proxy, 0.0).await;
    b.write_all(b"st: shop.test\r\n\r\n").await.unwrap();
    let (head, _) = read_response(&mut b).await;
    assert!(head.starts_with("HTTP/1.1 203"), "{head}");
}

#[tokio::test]
async fn http2_connections_are_never_parked() {
    let up = spawn_upstream("blue").await;
    let proxy = Setup::shop().on(&up).spawn().await;
    let addr = proxy.running.http_addr;
    let mut h2 = h2c(addr).await;
    let req = || {
        http::Request::get("http://shop.test/")
            .body(http_body_util::Full::<bytes::Bytes>::default())
            .unwrap()
    };
    assert_eq!(h2.send_request(req()).await.unwrap().status(), 200);
    // An HTTP/1.1 connection idling beside it parks; the HTTP/2 one does not.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        .await
        .unwrap();
    read_response(&mut s).await;
    wait_parked(&proxy, 1.0).await;
    wait_until(WAIT, "both connections counted", || async {
        proxy.metric(OPEN).await == 2.0
    })
    .await;
    assert_eq!(h2.send_request(req()).await.unwrap().status(), 200);
    assert_eq!(parked_count(&proxy).await, 1.0);
}
