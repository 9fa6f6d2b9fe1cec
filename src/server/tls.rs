//! TLS termination: a strict SNI resolver over the routing table.
//!
//! The certificate for a handshake is found the way a request finds its
//! tenant — exact name first, then the longest wildcard suffix — in the
//! routing table current at that moment, so a reloaded certificate is used
//! by the next handshake without restarting anything. A name no tenant with
//! a certificate owns gets no certificate: the handshake fails.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::tls::provider;
use crate::route::RoutingTable;
use crate::route::host;

struct SniResolver {
    table: Arc<ArcSwap<RoutingTable>>,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SniResolver")
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut buf = String::new();
        let name = host::normalize(hello.server_name()?, &mut buf)?;
        let table = self.table.load();
        let (tenant, _) = table.route(name)?;
        tenant.config.tls.as_ref().map(|t| Arc::clone(&t.certified))
    }
}

/// The acceptor of the HTTPS listener: TLS 1.2 and 1.3, ALPN `h2` and
/// `http/1.1`, certificates by SNI.
pub fn acceptor(table: Arc<ArcSwap<RoutingTable>>) -> Result<TlsAcceptor, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { table }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
