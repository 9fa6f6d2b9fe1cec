//! turnout: a traffic-shifting edge proxy for blue/green delivery.
//!
//! **The life of a request** (`proxy::Proxy::handle`): the host picks a
//! tenant (`route::host`), the tenant admits it under `max_inflight`, the
//! pool is chosen by preview host, sticky key or weighted draw
//! (`route::pool`, `route::sticky`), an endpoint by power of two choices
//! (`route::endpoint`), and the request is forwarded over a pooled
//! keep-alive connection (`proxy::forward`, `upstream`). The response streams
//! back; when its last byte has gone, the exchange settles its metrics
//! (`proxy::body`).
//!
//! **The life of a change**: every source — a file edit seen by the watcher,
//! SIGHUP, an admin call, an SLO revert, a rollout tick, a certificate
//! replaced — is a `control::Change` handled by the one control task.
//! It validates the new state in full (`config`), commits it to the store
//! (`control::store`; the control file, edited by `config::write`), merges
//! file edits with the running state (`control::merge`), compiles the
//! result into an immutable
//! `route::RoutingTable` through the `route::TableBuilder` (which carries endpoint
//! and tenant state across tables), swaps it in whole through an `ArcSwap`,
//! and records an event. Requests see the old table or the new one, never a
//! mix.

#![deny(missing_docs)]

pub mod admin;
pub mod app;
pub mod config;
pub mod control;
pub mod ctl;
pub mod demo;
pub mod dns;
pub mod health;
pub mod metrics;
pub mod notify;
pub mod proxy;
pub mod route;
pub mod server;
pub mod slo;
pub mod upstream;
