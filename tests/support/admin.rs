//! The admin API's answers as the tests read them.
//!
//! The views stay `serde_json::Value`: the server's view types
//! (`turnout::admin::api::TenantView` and the rest) borrow `&'static str`
//! fields and are `Serialize` only, and `ctl` reads the same JSON as
//! `Value` too, so there is no typed view to share yet. What is shared is
//! the way in: one helper per question a test asks.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::BodyExt;
use serde_json::Value;

use crate::support::{Reply, TestClient, TestProxy, admin_request, client, wait_until};

/// How long an event may take to be written through and recorded.
pub const EVENT_WAIT: Duration = Duration::from_secs(20);

/// The reply's body as JSON; fails the test, showing the body, if it is not.
pub fn json(r: &Reply) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|_| panic!("not JSON: {}", r.text()))
}

/// `GET /v1/tenants/{tenant}` (no token).
pub async fn view(proxy: &TestProxy, tenant: &str) -> Value {
    json(&proxy.admin_get(&format!("/v1/tenants/{tenant}")).await)
}

/// `GET /v1/config` (no token).
pub async fn config_view(proxy: &TestProxy) -> Value {
    json(&proxy.admin_get("/v1/config").await)
}

/// `GET /v1/events?tenant={tenant}` (no token).
pub async fn events(proxy: &TestProxy, tenant: &str) -> Value {
    json(
        &proxy
            .admin_get(&format!("/v1/events?tenant={tenant}"))
            .await,
    )
}

/// Waits until the last of the tenant's events satisfies `done`. An
/// automatic change is visible in the view at once, its event once it is
/// written through (file work runs off the runtime, just after the swap).
pub async fn wait_event(
    proxy: &TestProxy,
    tenant: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) {
    wait_until(EVENT_WAIT, what, || async {
        let events = events(proxy, tenant).await;
        events.as_array().unwrap().last().is_some_and(&done)
    })
    .await;
}

/// `(blue, green)` of a tenant view.
fn weights_of(v: &Value) -> (u64, u64) {
    (
        v["weights"]["blue"].as_u64().unwrap(),
        v["weights"]["green"].as_u64().unwrap(),
    )
}

impl TestProxy {
    /// `GET /v1/tenants/{tenant}` with a bearer token.
    pub async fn view_with(&self, token: &str, tenant: &str) -> Value {
        let r = self
            .admin("GET", &format!("/v1/tenants/{tenant}"), Some(token), None)
            .await;
        serde_json::from_slice(&r.body).unwrap()
    }

    /// The tenant's weights as the admin API reports them.
    pub async fn weights(&self, tenant: &str) -> (u64, u64) {
        tenant_weights(&self.client, self.running.admin_addr, tenant).await
    }

    /// The tenant's weights, asked with a bearer token.
    pub async fn weights_with(&self, token: &str, tenant: &str) -> (u64, u64) {
        weights_of(&self.view_with(token, tenant).await)
    }
}

/// A tenant's weights from any turnout's admin API (no token).
pub async fn tenant_weights(client: &TestClient, admin: SocketAddr, tenant: &str) -> (u64, u64) {
    let (_, v) = admin_call_with(client, admin, "GET", &format!("/v1/tenants/{tenant}"), "").await;
    weights_of(&v)
}

/// `METHOD path` with a JSON body on any turnout's admin API (no token);
/// the status and the JSON answer.
pub async fn admin_call(admin: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    admin_call_with(&client(), admin, method, path, body).await
}

async fn admin_call_with(
    client: &TestClient,
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, Value) {
    let req = admin_request(admin, method, path, None, Some(body));
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}
