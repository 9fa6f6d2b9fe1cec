//! `[defaults.upstream_tls]` (or a tenant's `upstream_tls`): how turnout
//! verifies — and, for mutual TLS, presents itself to — `https://`
//! endpoints (SPEC section 15).
//!
//! Loaded and checked at validation, like a listener's certificate: a CA
//! bundle that does not parse or a client key that does not fit its
//! certificate is a located error of the control file, and the rustls
//! client configuration is part of the validated state, so a changed file
//! (watched like the listener's, SPEC section 7) is a changed control
//! state that new upstream connections use. Verification is always on:
//! there is no key to turn it off.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::RootCertStore;
use serde::Deserialize;

use super::locate::KeyPath;
use super::model::{CaBundle, TlsFiles};
use super::tls::{TlsProblem, load, provider, system_roots};
use super::validate::{Problems, ca_bundle};

/// The `upstream_tls` table as the file writes it. Absent keys inherit.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// `ca`: a PEM bundle the endpoints' certificates must chain to,
    /// relative to the control file's directory; the system's roots when
    /// absent.
    pub ca: Option<String>,
    /// `cert`: the client certificate chain presented for mutual TLS.
    pub cert: Option<String>,
    /// `key`: the private key of `cert`.
    pub key: Option<String>,
    /// `server_name`: the name sent as SNI and verified in the endpoint's
    /// certificate; the endpoint's host when absent.
    pub server_name: Option<String>,
}

/// TLS to a tenant's `https://` endpoints, loaded.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// The roots endpoints must chain to; `None`: the system's.
    pub ca: Option<CaBundle>,
    /// The client certificate and key presented when the endpoint asks
    /// (mutual TLS); `None`: none is presented.
    pub identity: Option<TlsFiles>,
    /// The name to verify instead of the endpoint's host.
    pub server_name: Option<rustls::pki_types::ServerName<'static>>,
    /// The rustls client configuration new connections use: those roots,
    /// that identity, ALPN `h2` then `http/1.1`.
    pub client: Arc<rustls::ClientConfig>,
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.ca == other.ca
            && self.identity == other.identity
            && self.server_name == other.server_name
    }
}

/// The client configuration of an `https://` endpoint without any
/// `upstream_tls` table: system roots, no client certificate.
pub fn default_client() -> Arc<rustls::ClientConfig> {
    static DEFAULT: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    Arc::clone(DEFAULT.get_or_init(|| client_config(system_roots(), None)))
}

fn client_config(
    roots: Arc<RootCertStore>,
    identity: Option<Arc<rustls::sign::CertifiedKey>>,
) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports rustls' default protocol versions")
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(key) => {
            builder.with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)))
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Resolves a layer's `upstream_tls` over `base` (the `[defaults]` value):
/// absent, the base holds; present, its keys over the base's. Every file
/// is loaded and checked here.
pub(super) fn resolve(
    p: &mut Problems,
    path: &KeyPath,
    base: Option<&UpstreamTls>,
    raw: Option<&RawUpstreamTls>,
    base_dir: &Path,
) -> Option<UpstreamTls> {
    let Some(raw) = raw else {
        return base.cloned();
    };
    let before = p.errors.len();
    let ca = match &raw.ca {
        Some(file) => match ca_bundle(&base_dir.join(file)) {
            Ok(bundle) => Some(bundle),
            Err(message) => {
                p.add(path.key("ca"), message);
                None
            }
        },
        None => base.and_then(|b| b.ca.clone()),
    };
    let identity = match (&raw.cert, &raw.key) {
        (Some(cert), Some(key)) => {
            let (cert, key) = (base_dir.join(cert), base_dir.join(key));
            match load(&cert, &key) {
                Ok(loaded) => Some(TlsFiles {
                    cert,
                    key,
                    certified: loaded.certified,
                    fingerprint: loaded.fingerprint,
                }),
                Err(TlsProblem::Cert(m)) => {
                    p.add(path.key("cert"), m);
                    None
                }
                Err(TlsProblem::Key(m)) => {
                    p.add(path.key("key"), m);
                    None
                }
            }
        }
        (None, None) => base.and_then(|b| b.identity.clone()),
        (Some(_), None) => {
            p.add(path.key("key"), "`cert` needs its `key`");
            None
        }
        (None, Some(_)) => {
            p.add(path.key("cert"), "`key` needs its `cert`");
            None
        }
    };
    let server_name = match &raw.server_name {
        Some(name) => match rustls::pki_types::ServerName::try_from(name.as_str()) {
            Ok(n) => Some(n.to_owned()),
            Err(_) => {
                p.add(
                    path.key("server_name"),
                    format!("`{name}` is not a DNS name or IP address"),
                );
                None
            }
        },
        None => base.and_then(|b| b.server_name.clone()),
    };
    if p.errors.len() != before {
        return None;
    }
    let roots = match &ca {
        Some(bundle) => {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(bundle.roots.iter().cloned());
            Arc::new(roots)
        }
        None => system_roots(),
    };
    let client = client_config(roots, identity.as_ref().map(|i| Arc::clone(&i.certified)));
    Some(UpstreamTls {
        ca,
        identity,
        server_name,
        client,
    })
}
