//! Upstream keep-alive in the cases a spawned connection task and the
//! idle queue must get right by themselves: an answer that arrives in
//! parts, far apart, while the client is being sent the first (the
//! connection must keep reading with no request in the handler), and an
//! idle connection the upstream closes without saying so (it must never be
//! lent to the next request).
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Reads one request head from `stream`; false when the peer closed.
async fn read_head(stream: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// Reads from `stream` until what it has read ends with `end`.
async fn read_until(stream: &mut TcpStream, seen: &mut Vec<u8>, end: &[u8]) {
    let mut buf = [0u8; 4096];
    while !seen.ends_with(end) {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(seen));
        seen.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn an_answer_in_parts_far_apart_streams_through_and_its_connection_is_reused() {
    // The upstream sends the head and a first chunk, then waits until the
    // client has that chunk before it sends the rest: the proxy must go on
    // reading the upstream connection while the response body is being
    // sent, with no request in the handler any more.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let go_on = Arc::new(Notify::new());
    {
        let (accepted, go_on) = (Arc::clone(&accepted), Arc::clone(&go_on));
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                accepted.fetch_add(1, Ordering::Relaxed);
                let go_on = Arc::clone(&go_on);
                tokio::spawn(async move {
                    while read_head(&mut stream).await {
                        let head =
                            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n";
                        stream.write_all(head.as_bytes()).await.unwrap();
                        go_on.notified().await;
                        stream.write_all(b"6\r\nsecond\r\n0\r\n\r\n").await.unwrap();
                    }
                });
            }
        });
    }
    let proxy = Setup::shop()
        .blue(&upstream)
        .extra(RARE_PROBES)
        .spawn()
        .await;
    let mut client = TcpStream::connect(proxy.running.http_addr).await.unwrap();
    for round in 0..3 {
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")
            .await
            .unwrap();
        let mut seen = Vec::new();
        read_until(&mut client, &mut seen, b"first\r\n").await;
        assert!(seen.starts_with(b"HTTP/1.1 200"), "round {round}");
        go_on.notify_one();
        read_until(&mut client, &mut seen, b"second\r\n0\r\n\r\n").await;
    }
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        1,
        "one upstream connection, reused"
    );
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_let_go_and_never_lent() {
    // The upstream answers one request per connection and then closes it,
    // without saying so (no `Connection: close`): the connection has gone
    // back to the idle queue by then. The next request must not fail on it,
    // however soon it comes, and no connection is opened in vain.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    {
        let (accepted, closed) = (Arc::clone(&accepted), Arc::clone(&closed));
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                accepted.fetch_add(1, Ordering::Relaxed);
                let closed = Arc::clone(&closed);
                tokio::spawn(async move {
                    if read_head(&mut stream).await {
                        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        stream.write_all(ok).await.unwrap();
                    }
                    drop(stream);
                    closed.fetch_add(1, Ordering::Relaxed);
                });
            }
        });
    }
    // `MAY_BE_STALE_AFTER` is 1 s: the requests below come sooner, so a
    // request sent on a closed connection would be a 502, not a retry.
    let proxy = Setup::shop()
        .blue(&upstream)
        .extra(RARE_PROBES)
        .spawn()
        .await;
    for i in 0..5 {
        let r = proxy.get("shop.test", "/").await;
        assert_eq!(
            (r.status.as_u16(), r.text().as_str()),
            (200, "ok"),
            "request {i}"
        );
        let want = i + 1;
        wait_until(Duration::from_secs(10), "the upstream closed", || async {
            closed.load(Ordering::Relaxed) == want
        })
        .await;
    }
    assert_eq!(accepted.load(Ordering::Relaxed), 5);
}
