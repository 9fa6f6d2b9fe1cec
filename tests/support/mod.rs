//! Test kit: real upstream servers, a real proxy on ephemeral ports, a
//! client, and waiting on conditions with a deadline.
//!
//! A test reads like the SPEC's own example: the set-up in one line,
//!
//! ```ignore
//! let proxy = Setup::shop().pools(&b, &g).weights(90, 10).spawn().await;
//! ```
//!
//! then requests and assertions. The pieces, one file each:
//! - `setup`: the control file builder (`Setup`), one tenant table at a time;
//! - `upstream`: in-process HTTP upstreams (`spawn_upstream`, `spawn_ws_echo`);
//! - `raw`: raw-socket upstreams and clients, for what hyper will not send;
//! - `proxy`: turnout in-process (`TestProxy`), `Reply`, `Traffic`;
//! - `binary`: the turnout binary as a child process (`BinaryProxy`);
//! - `admin`: the admin API's JSON (`json`, `view`, `wait_event`);
//! - `metrics`: reading `/metrics` (`metric_value`, `metric_or_absent`);
//! - `sse`: the event stream (`open_stream`, `Sse::next_within`).
//! - `grpc`: a tonic gRPC upstream over h2c or (m)TLS, its client, test CAs.
#![allow(dead_code, unused_imports, clippy::unwrap_used)]

mod admin;
mod binary;
mod grpc;
mod metrics;
mod proxy;
mod raw;
mod setup;
mod sse;
mod upstream;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub use admin::*;
pub use binary::*;
pub use grpc::*;
pub use metrics::*;
pub use proxy::*;
pub use raw::*;
pub use setup::*;
pub use sse::*;
pub use upstream::*;

/// The HTTP client the tests use (plain HTTP/1.1, pooled).
pub type TestClient = Client<HttpConnector, Full<Bytes>>;

/// A fresh client.
pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// Polls `cond` until it holds or `within` passes.
pub async fn wait_until<F, Fut>(within: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Replaces `from` with `to` in the control file, in place.
pub fn edit_file(path: &std::path::Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "`{from}` not in the file:\n{text}");
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

/// Makes every write-through of the control file `turnout.toml` in `dir`
/// fail: a directory where its write lock file (`.turnout.toml.lock`) must
/// go. The proxy's start-up clean-up takes that lock too, beside readiness:
/// the lock file it may have made (and may still hold: the open file keeps
/// its lock once unlinked) is removed first, so this holds whether the
/// clean-up ran before, runs during or runs after; one that runs after
/// finds the directory and skips.
pub async fn block_write_through(dir: &std::path::Path) {
    let lock = dir.join(".turnout.toml.lock");
    wait_until(
        Duration::from_secs(5),
        "the write lock file replaced by a directory",
        || {
            let _ = std::fs::remove_file(&lock);
            let made = std::fs::create_dir(&lock).is_ok();
            async move { made }
        },
    )
    .await;
}

/// A loopback port that refuses connections: bound (so nothing else gets it
/// while the test runs) but never listening. Keep the socket alive.
pub fn refusing_port() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}
