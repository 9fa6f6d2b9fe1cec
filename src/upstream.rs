//! The pooled HTTP/1.1 client requests are forwarded with.
//!
//! One client per distinct `connect_timeout` (the connector carries it);
//! tenants with the same timeout share one client and so one keep-alive pool
//! per upstream address. Clients are created when a routing table is built
//! and reused by every later table.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// A request body on its way upstream: the client's stream, or nothing for a
/// bodiless request (which can then be sent again on a retry).
pub type UpstreamBody = Either<Incoming, Empty<Bytes>>;

pub type UpstreamClient = Client<HttpConnector, UpstreamBody>;

/// How long an idle upstream connection is kept for reuse.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

fn new_client(connect_timeout: Duration) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(connector)
}

/// Clients by connect timeout, kept for the life of the process.
#[derive(Default)]
pub struct Clients(Mutex<HashMap<Duration, UpstreamClient>>);

impl Clients {
    pub fn get(&self, connect_timeout: Duration) -> UpstreamClient {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(connect_timeout)
            .or_insert_with(|| new_client(connect_timeout))
            .clone()
    }
}
