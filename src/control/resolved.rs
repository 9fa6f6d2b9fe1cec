//! Endpoint names in the change path (SPEC section 13): the addresses each
//! name resolves to are state the control task keeps beside the control
//! state, and a new answer rebuilds the routing table like a reload does —
//! so the table stays immutable and the swap stays the one way the data
//! plane changes.
//!
//! A name's answers come from its `dns` task as `Change::Resolved`; names a
//! new version of the state brings are resolved before it is applied
//! ([`ControlTask::resolve_new`]), so their pools have endpoints from the
//! first request on.

use std::net::IpAddr;
use std::sync::Arc;

use super::task::ControlTask;
use super::{ChangeError, Outcome};
use crate::config::Config;
use crate::config::dns::names;

impl ControlTask {
    /// Resolves the names of `config` that never resolved, before it is
    /// applied.
    pub(super) async fn resolve_new(&mut self, config: &Config) {
        for r in self.dns.resolve_new(config, &self.addresses).await {
            self.addresses.set(&r.name, r.addresses);
        }
    }

    /// `Change::Resolved`: records the answer and, when it is new for a
    /// name the running state lists, rebuilds the routing table at the same
    /// generation. Endpoints of addresses that stay keep their state; new
    /// addresses join healthy and are probed at once; vanished ones get no
    /// new request, finish those in flight, and their idle connections
    /// close.
    pub(super) fn resolved(
        &mut self,
        name: &str,
        addresses: Vec<IpAddr>,
    ) -> Result<Outcome, ChangeError> {
        if !names(&self.running).contains(name) {
            return Ok(self.outcome(false));
        }
        if !self.addresses.set(name, addresses) {
            return Ok(self.outcome(false));
        }
        let shown = self.addresses.get(name).unwrap_or_default();
        let shown = shown.iter().map(ToString::to_string).collect::<Vec<_>>();
        tracing::info!(%name, addresses = %shown.join(", "), "endpoint name resolves to new addresses");
        let table = self.build(Arc::clone(&self.running), self.generation);
        self.proxy.table.store(Arc::clone(&table));
        self.health.reconcile(&table);
        Ok(self.outcome(false))
    }

    /// After a new state is swapped in: one resolution task per name it
    /// lists, and no addresses kept for names it no longer lists.
    pub(super) fn reconcile_names(&mut self) {
        let listed = names(&self.running);
        self.addresses.retain(|name| listed.contains(name));
        self.dns.reconcile(&self.running, &self.addresses);
    }
}
