//! The fleet tests' helpers: a ready replica, a tenant's history, a
//! webhook receiver.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::support::*;

pub const WAIT: Duration = Duration::from_secs(20);

/// Starts one replica on `setup` and waits until it is ready.
pub async fn replica(setup: Setup) -> Arc<TestProxy> {
    let proxy = Arc::new(setup.spawn().await);
    wait_until(WAIT, "the replica to be ready", || async {
        proxy.admin_get("/readyz").await.status == 200
    })
    .await;
    proxy
}

/// The events of `tenant` on `proxy`.
pub async fn history(proxy: &TestProxy, tenant: &str) -> Vec<Value> {
    events(proxy, tenant).await.as_array().unwrap().clone()
}

/// `PUT /v1/tenants/shop/weights` on `proxy` (no token); it must succeed.
/// The JSON answer.
pub async fn put_weights(proxy: &TestProxy, blue: u32, green: u32) -> Value {
    let body = format!(r#"{{"blue": {blue}, "green": {green}}}"#);
    let r = proxy
        .admin("PUT", "/v1/tenants/shop/weights", None, Some(&body))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    json(&r)
}

pub fn count(events: &[Value], source: &str) -> usize {
    events.iter().filter(|e| e["source"] == source).count()
}

pub fn generation(v: &Value) -> u64 {
    v["generation"].as_u64().unwrap()
}

/// A webhook receiver: records each POSTed body.
pub async fn spawn_receiver() -> (std::net::SocketAddr, Arc<Mutex<Vec<Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&got);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let sink = Arc::clone(&sink);
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let sink = Arc::clone(&sink);
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        sink.lock()
                            .unwrap()
                            .push(serde_json::from_slice(&body).unwrap());
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::new(),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, got)
}
