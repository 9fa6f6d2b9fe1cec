//! The rate limits in the tenant view (SPEC section 16): each limit as
//! configured, with its buckets now, so an operator can see a flood being
//! held back and the client table staying within `max_clients`.

use serde::Serialize;

use crate::config::{ClientKey, Settings};
use crate::route::Tenant;

/// `rate_limit` of the tenant view.
#[derive(Serialize)]
pub struct RateLimitView {
    /// Tokens added per second (per replica).
    pub rps: f64,
    /// The bucket's size.
    pub burst: u32,
    /// Tokens in the bucket now (fractional).
    pub tokens: f64,
}

/// `client_rate_limit` of the tenant view.
#[derive(Serialize)]
pub struct ClientRateLimitView {
    /// Tokens added per second to each client's bucket.
    pub rps: f64,
    /// Each client's bucket size.
    pub burst: u32,
    /// `"ip"`, or `{"header": NAME}` as the control file writes it.
    pub key: serde_json::Value,
    /// Client keys held at most.
    pub max_clients: u32,
    /// Client keys held now; never above `max_clients`.
    pub clients: usize,
}

/// The two views of `tenant`'s limits; `None` for a limit not set.
pub fn views(tenant: &Tenant) -> (Option<RateLimitView>, Option<ClientRateLimitView>) {
    let Settings {
        rate_limit,
        client_rate_limit,
        ..
    } = &tenant.config.settings;
    let limits = &tenant.limits;
    let tenant_view = rate_limit.map(|l| RateLimitView {
        rps: l.rps,
        burst: l.burst,
        tokens: limits.tenant_tokens().unwrap_or(f64::from(l.burst)),
    });
    let client_view = client_rate_limit.as_ref().map(|c| ClientRateLimitView {
        rps: c.limit.rps,
        burst: c.limit.burst,
        key: match &c.key {
            ClientKey::Ip => serde_json::json!("ip"),
            ClientKey::Header(name) => serde_json::json!({ "header": name.as_str() }),
        },
        max_clients: c.max_clients,
        clients: limits.clients().unwrap_or(0),
    });
    (tenant_view, client_view)
}
