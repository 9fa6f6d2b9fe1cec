//! What a client connection may hold, and for how long (SPEC section 11):
//! silent and idle connections, slow heads, clients that stop reading (over
//! HTTP/1.1 and HTTP/2), rapid resets. Timings use generous bounds around
//! the limits under test; nothing here waits on a fixed sleep.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Waits until the proxy closes `stream` (EOF or reset), reading and
/// dropping whatever comes; returns how long that took.
async fn closed_after(stream: &mut TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the proxy did not close the connection");
    started.elapsed()
}

#[tokio::test]
async fn a_connection_that_sends_no_complete_head_is_closed_within_10_s() {
    let up = spawn_upstream("blue").await;
    let proxy = Setup::shop().on(&up).spawn().await;
    let addr = proxy.running.http_addr;
    let silent = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        closed_after(&mut s, Duration::from_secs(30)).await
    };
    let half_preface = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        closed_after(&mut s, Duration::from_secs(30)).await
    };
    let one_byte = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"G").await.unwrap();
        closed_after(&mut s, Duration::from_secs(30)).await
    };
    let (a, b, c) = tokio::join!(silent, half_preface, one_byte);
    for waited in [a, b, c] {
        assert!(
            waited >= Duration::from_secs(9) && waited < Duration::from_secs(16),
            "{waited:?}"
        );
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_closes_at_idle_timeout_and_a_slow_next_head_at_10_s() {
    let up = spawn_upstream("blue").await;
    let proxy = spawn_proxy_in(
        tempfile::tempdir().unwrap(),
        "idle_timeout = \"20s\"",
        &Setup::shop().on(&up).toml(),
    )
    .await;
    let addr = proxy.running.http_addr;
    let request = b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n";
    let answered = |mut s: TcpStream| async move {
        s.write_all(request).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"blue") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the answer");
            got.extend_from_slice(&buf[..n]);
        }
        s
    };
    let idle = async {
        let mut s = answered(TcpStream::connect(addr).await.unwrap()).await;
        closed_after(&mut s, Duration::from_secs(40)).await
    };
    let slow_head = async {
        let mut s = answered(TcpStream::connect(addr).await.unwrap()).await;
        s.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        closed_after(&mut s, Duration::from_secs(40)).await
    };
    let (idle, slow_head) = tokio::join!(idle, slow_head);
    assert!(
        idle >= Duration::from_secs(19) && idle < Duration::from_secs(27),
        "idle keep-alive closed after {idle:?}"
    );
    assert!(
        slow_head >= Duration::from_secs(9) && slow_head < Duration::from_secs(16),
        "slow next head cut after {slow_head:?}"
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_holds_nothing_past_request_timeout() {
    let up = spawn_upstream("blue").await;
    let proxy = Setup::shop()
        .on(&up)
        .extra("request_timeout = \"6s\"\nmax_inflight = 40")
        .spawn()
        .await;
    let addr = proxy.running.http_addr;
    // HTTP/1.1: read the head, then never again.
    let mut h1 = Vec::new();
    for _ in 0..10 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /big/268435456 HTTP/1.1\r\nHost: shop.test\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        assert!(s.read(&mut buf).await.unwrap() > 0);
        h1.push(s);
    }
    // HTTP/2: a zero window, so not a byte of any body can be sent.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    let h2_conn = tokio::spawn(conn);
    let mut h2_streams = Vec::new();
    for _ in 0..10 {
        let mut c = client.clone().ready().await.unwrap();
        let req = http::Request::get("http://shop.test/big/268435456")
            .body(())
            .unwrap();
        let (resp, _) = c.send_request(req, true).unwrap();
        h2_streams.push(tokio::spawn(resp));
    }
    wait_until(Duration::from_secs(10), "20 requests in flight", || async {
        proxy.inflight("shop") == 20
    })
    .await;
    let started = Instant::now();
    wait_until(Duration::from_secs(15), "every slot freed", || async {
        proxy.inflight("shop") == 0
    })
    .await;
    // 6 s of request_timeout from the start (here: less, the requests
    // began earlier), plus at most a second; slack for a loaded machine.
    // (A generous timeout: all 20 must be in flight before any expires.)
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(proxy.get("shop.test", "/").await.status, 200);
    let ended = tokio::time::timeout(Duration::from_secs(5), h2_conn).await;
    assert!(ended.is_ok(), "the stalled HTTP/2 connection was closed");
    drop(h1);
}

#[tokio::test]
async fn http2_resets_cost_no_upstream_connection_and_rapid_ones_are_cut_off() {
    // Answers every request at once; counts its connections.
    let up = RawUpstream::replying("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        .spawn()
        .await;
    let accepted = &up.accepted;
    let proxy = Setup::shop().blue(&up).extra(RARE_PROBES).spawn().await;
    let connect = || async {
        let tcp = TcpStream::connect(proxy.running.http_addr).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        (client, tokio::spawn(conn))
    };
    let get = || http::Request::get("http://shop.test/").body(()).unwrap();

    // A client that resets some of its streams among many it reads: never
    // cut off, and its resets open no new upstream connections.
    let (client, conn) = connect().await;
    for i in 0..120 {
        let mut c = client.clone().ready().await.unwrap();
        let (resp, mut stream) = c.send_request(get(), true).unwrap();
        if i % 3 == 0 {
            stream.send_reset(h2::Reason::CANCEL);
        } else {
            let resp = resp.await.unwrap();
            let mut body = resp.into_body();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                let _ = body.flow_control().release_capacity(chunk.len());
            }
        }
    }
    assert!(!conn.is_finished(), "a polite client was cut off");
    let polite = accepted.load(Ordering::Relaxed);
    assert!(
        polite <= 4,
        "{polite} upstream connections for 120 requests"
    );
    drop(client);

    // Rapid reset, one HEADERS + RST_STREAM pair at a time: cut off.
    let (client, conn) = connect().await;
    let mut sent = 0;
    for _ in 0..2000 {
        let Ok(mut c) = client.clone().ready().await else {
            break;
        };
        let Ok((_, mut stream)) = c.send_request(get(), true) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        sent += 1;
        // One pair per write: let the connection task flush it.
        tokio::task::yield_now().await;
        if conn.is_finished() {
            break;
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(
        ended.is_ok(),
        "the connection was not closed after {sent} resets"
    );
    assert!(sent < 2000, "all {sent} resets were taken");
    let total = accepted.load(Ordering::Relaxed);
    assert!(
        total <= polite + 4,
        "{} upstream connections opened for {sent} reset streams",
        total - polite
    );
}
