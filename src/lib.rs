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
//! **The life of a change**: the control file is parsed and validated in full
//! (`config`), compiled into an immutable `route::RoutingTable` by the
//! `route::Registry` (which carries endpoint and tenant state across
//! tables), and swapped in whole through an `ArcSwap`. Requests see the old
//! table or the new one, never a mix.

pub mod admin;
pub mod app;
pub mod config;
pub mod demo;
pub mod metrics;
pub mod proxy;
pub mod route;
pub mod server;
pub mod upstream;
