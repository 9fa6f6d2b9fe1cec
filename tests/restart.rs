//! Zero-downtime binary upgrade: two generations of turnout on one port.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Linux (5.14+) hands connections still queued on a closing listener to
/// another listener of the same `SO_REUSEPORT` group instead of resetting
/// them. The README asks operators to enable it; so does this test, where
/// it can (as root in its own network namespace).
fn enable_listener_handover() {
    let _ = std::fs::write("/proc/sys/net/ipv4/tcp_migrate_req", "1");
}

/// One request on a fresh connection; true on a whole 200 answer.
async fn one_request(addr: std::net::SocketAddr) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let req = b"GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n";
    if s.write_all(req).await.is_err() {
        return false;
    }
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    matches!(read, Ok(Ok(_))) && out.starts_with(b"HTTP/1.1 200") && out.ends_with(b"blue")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_generations_hand_over_without_dropping_a_request() {
    enable_listener_handover();
    let up = spawn_upstream("blue").await;
    let old = Setup::shop().on(&up).spawn_binary(&[]).await;
    let port = old.http_addr;
    let path = old.dir.as_ref().unwrap().path().join("turnout.toml");

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let counter = if one_request(port).await {
                        &ok
                    } else {
                        &failed
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    wait_until(
        Duration::from_secs(10),
        "load on the old generation",
        || async { ok.load(Ordering::Relaxed) > 200 },
    )
    .await;

    // The new generation binds the same port beside the old one...
    let listen = port.to_string();
    let mut new = spawn_binary_at(
        None,
        &path,
        &["--listen-http", &listen, "--listen-admin", "127.0.0.1:0"],
        &[],
    )
    .await;
    let served_before = ok.load(Ordering::Relaxed);
    // ...then the old one drains and exits.
    let mut old = old;
    old.signal("TERM");
    let exit = tokio::time::timeout(Duration::from_secs(20), old.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    wait_until(
        Duration::from_secs(10),
        "load on the new generation alone",
        || async { ok.load(Ordering::Relaxed) > served_before + 300 },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed across the hand-over ({} served)",
        ok.load(Ordering::Relaxed)
    );
    let _ = new.child.kill().await;
}
