//! The fleet tests' helpers: a ready replica, a tenant's history, an
//! admin weights change (the webhook receiver is the shared kit's).

use std::sync::Arc;
use std::time::Duration;

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
