//! Long-lived and unusual connections (SPEC sections 4.5, 9 and 11): a
//! WebSocket tunnel is never timed as HTTP, an old connection still frees an
//! unread response's slot at `request_timeout`, abandoned HTTP/2 exchanges
//! stay within `max_inflight`, a drain does not wait for idle connections,
//! a long request outlives `idle_timeout`, pipelining works. Found by an
//! attacker's review of the connection limits (issue 11).
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A WebSocket where the client talks, pauses 12 s, talks again.
#[tokio::test]
async fn a_websocket_survives_a_pause_after_its_client_spoke() {
    let echo = spawn_ws_echo().await;
    let proxy = Setup::tenant("ws")
        .blue(&echo)
        .extra(RARE_PROBES)
        .spawn()
        .await;
    let tcp = TcpStream::connect(proxy.running.http_addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("ws://ws.test/chat", tcp)
        .await
        .unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::text("one"))
        .await
        .unwrap();
    let back = ws.next().await.unwrap().unwrap();
    assert_eq!(back.into_text().unwrap().as_str(), "one");
    let t = Instant::now();
    // Wait 12 s, watching for the tunnel closing.
    let r = tokio::time::timeout(Duration::from_secs(12), ws.next()).await;
    if let Ok(ended) = r {
        panic!("tunnel ended after {:?}: {ended:?}", t.elapsed());
    }
    ws.send(tokio_tungstenite::tungstenite::Message::text("two"))
        .await
        .unwrap();
    let back = ws.next().await.unwrap().unwrap();
    assert_eq!(back.into_text().unwrap().as_str(), "two");
}

/// Client keeps talking every second: killed anyway?
#[tokio::test]
async fn a_talking_websocket_is_never_timed_out() {
    let echo = spawn_ws_echo().await;
    let proxy = Setup::tenant("ws")
        .blue(&echo)
        .extra(RARE_PROBES)
        .spawn()
        .await;
    let tcp = TcpStream::connect(proxy.running.http_addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("ws://ws.test/chat", tcp)
        .await
        .unwrap();
    let t = Instant::now();
    for i in 0..15 {
        ws.send(tokio_tungstenite::tungstenite::Message::text(format!(
            "m{i}"
        )))
        .await
        .unwrap_or_else(|e| panic!("send {i} after {:?}: {e}", t.elapsed()));
        let back = ws.next().await.unwrap();
        assert!(back.is_ok(), "echo {i} after {:?}: {back:?}", t.elapsed());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// HTTP/2 streams reset against a slow upstream: do the rescued exchanges
/// escape max_inflight and open a connection each?
#[tokio::test]
async fn reset_streams_against_a_slow_upstream_stay_within_max_inflight() {
    let up = spawn_upstream("blue").await;
    up.set_delay(Duration::from_millis(1500));
    let config = Setup::shop().on(&up).extra("max_inflight = 4").toml();
    let proxy = spawn_proxy(&config).await;
    let tcp = TcpStream::connect(proxy.running.http_addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let get = || http::Request::get("http://shop.test/").body(()).unwrap();
    // 90 resets (< 100: the premature-reset rule never judges).
    for _ in 0..90 {
        let mut c = client.clone().ready().await.unwrap();
        let (_, mut stream) = c.send_request(get(), true).unwrap();
        // Give the proxy time to admit the stream and start the send.
        tokio::time::sleep(Duration::from_millis(5)).await;
        stream.send_reset(h2::Reason::CANCEL);
    }
    // Every abandoned exchange holds its tenant slot until it is over.
    let inflight = || proxy.inflight("shop");
    wait_until(Duration::from_secs(10), "the rescues to end", || async {
        inflight() == 0
    })
    .await;
    let conns = up.traffic_connections();
    assert!(
        conns <= 8,
        "{conns} upstream connections for 90 resets with max_inflight 4"
    );
    drop(conn);
}

#[tokio::test]
async fn an_unread_response_on_an_old_connection_frees_its_slot_at_request_timeout() {
    let up = spawn_upstream("blue").await;
    let proxy = Setup::shop()
        .on(&up)
        .extra("request_timeout = \"4s\"")
        .spawn()
        .await;
    let mut s = TcpStream::connect(proxy.running.http_addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let _ = s.read(&mut buf).await.unwrap();
    // Let the connection's timer fire once (10 s after opening).
    tokio::time::sleep(Duration::from_secs(11)).await;
    s.write_all(b"GET /big/50000000 HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        .await
        .unwrap();
    let inflight = || proxy.inflight("shop");
    wait_until(Duration::from_secs(5), "in flight", || async {
        inflight() == 1
    })
    .await;
    let t = Instant::now();
    // At request_timeout (4 s) plus the second of grace — far from the 49 s
    // the idle timer would take; slack for a loaded machine.
    wait_until(
        Duration::from_secs(15),
        "the slot freed at request_timeout",
        || async { inflight() == 0 },
    )
    .await;
    assert!(t.elapsed() < Duration::from_secs(12), "{:?}", t.elapsed());
}

#[tokio::test]
async fn a_drain_does_not_wait_for_idle_or_silent_connections() {
    let up = spawn_upstream("blue").await;
    let mut proc = Setup::shop()
        .on(&up)
        .preamble("[defaults]\ndrain_timeout = \"20s\"\n\n")
        .spawn_binary(&[])
        .await;
    let addr = proc.http_addr;
    // idle h1 keep-alive
    let mut h1 = TcpStream::connect(addr).await.unwrap();
    h1.write_all(b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let _ = h1.read(&mut buf).await.unwrap();
    // idle h2
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    let h2conn = tokio::spawn(conn);
    let (resp, _) = client
        .send_request(
            http::Request::get("http://shop.test/").body(()).unwrap(),
            true,
        )
        .unwrap();
    let _ = resp.await.unwrap();
    // silent + partial head
    let silent = TcpStream::connect(addr).await.unwrap();
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    let t = Instant::now();
    proc.signal("TERM");
    let st = tokio::time::timeout(Duration::from_secs(25), proc.child.wait()).await;
    assert!(
        st.as_ref().is_ok_and(|s| s.as_ref().unwrap().success()),
        "{st:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    drop((silent, partial, h2conn, client));
}

#[tokio::test]
async fn a_request_longer_than_idle_timeout_is_not_cut() {
    let up = spawn_upstream("blue").await;
    up.set_delay(Duration::from_millis(3500));
    let proxy = spawn_proxy_in(
        tempfile::tempdir().unwrap(),
        "idle_timeout = \"1s\"",
        &Setup::shop()
            .on(&up)
            .extra("request_timeout = \"10s\"")
            .toml(),
    )
    .await;
    let r = raw_exchange(
        proxy.running.http_addr,
        b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

#[tokio::test]
async fn pipelined_requests_are_all_answered() {
    let up = spawn_upstream("blue").await;
    up.set_delay(Duration::from_millis(300));
    let proxy = Setup::shop().on(&up).spawn().await;
    let mut s = TcpStream::connect(proxy.running.http_addr).await.unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nHost: shop.test\r\n\r\nPOST /echo HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 3\r\n\r\nabcGET /c HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 3, "{text}");
}
