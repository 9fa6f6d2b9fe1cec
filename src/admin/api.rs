//! The JSON views of the admin API (SPEC section 8).

use serde::Serialize;

use crate::config::{Color, Weights};
use crate::route::{RoutingTable, Tenant};

#[derive(Serialize)]
pub struct TenantView<'a> {
    pub name: &'a str,
    pub hosts: Vec<String>,
    pub preview_hosts: Vec<String>,
    pub stable: Color,
    pub candidate: Color,
    pub weights: Weights,
    pub status: &'static str,
    pub pools: PoolsView,
    pub inflight: u32,
    pub generation: u64,
}

#[derive(Serialize)]
pub struct PoolsView {
    pub blue: PoolView,
    pub green: PoolView,
}

#[derive(Serialize)]
pub struct PoolView {
    /// Share of the tenant's traffic, in percent.
    pub share: f64,
    pub endpoints: Vec<EndpointView>,
}

#[derive(Serialize)]
pub struct EndpointView {
    pub address: String,
    pub healthy: bool,
    pub inflight: u32,
}

impl Serialize for Color {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

pub fn tenant_view<'a>(table: &RoutingTable, tenant: &'a Tenant) -> TenantView<'a> {
    let c = &tenant.config;
    let pool = |color: Color| PoolView {
        share: f64::from(c.weights.share_bp(color)) / 100.0,
        endpoints: tenant
            .endpoints(color)
            .iter()
            .map(|e| EndpointView {
                address: e.address.to_string(),
                healthy: e.is_healthy(),
                inflight: e.inflight(),
            })
            .collect(),
    };
    TenantView {
        name: tenant.name(),
        hosts: c.hosts.iter().map(ToString::to_string).collect(),
        preview_hosts: c.preview_hosts.iter().map(ToString::to_string).collect(),
        stable: c.stable,
        candidate: c.candidate(),
        weights: c.weights,
        status: if c.weights.of(c.candidate()) == 0 {
            "steady"
        } else {
            "split"
        },
        pools: PoolsView {
            blue: pool(Color::Blue),
            green: pool(Color::Green),
        },
        inflight: tenant.state.inflight(),
        generation: table.generation,
    }
}
