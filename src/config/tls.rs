//! Loading a tenant's certificate and key, as validation does: the files
//! must parse and the key must match the certificate.
//!
//! It lives in `config` rather than beside the listener (`crate::server::tls`)
//! because a certificate that does not load is a problem of the control
//! file, reported at its `tls.cert` or `tls.key` key like any other, and
//! the loaded key is part of the validated state the control task swaps in.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

/// The system's trust store (`rustls-native-certs`), read once per process:
/// reading it on every reload of a large file would be slow. The roots of
/// `https://` upstreams and etcd endpoints that name no `ca`.
pub fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    Arc::clone(ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if roots.is_empty() {
            tracing::warn!(
                "no system root certificates found: https:// upstreams without upstream_tls.ca and etcd endpoints without store.ca will not verify"
            );
        }
        Arc::new(roots)
    }))
}

/// The crypto provider turnout uses everywhere: *ring*, chosen for its
/// handshake speed and its small, C-toolchain-light build (see README).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A problem with one of the two files.
pub enum TlsProblem {
    /// The certificate file cannot be read, is not PEM, or holds no
    /// certificate; the message names the file. Located at `tls.cert`.
    Cert(String),
    /// The key file cannot be read or parsed, or does not fit the
    /// certificate; the message names the file. Located at `tls.key`.
    Key(String),
}

/// A loaded certificate chain and key, and a digest of both files' bytes
/// (so a changed file makes a changed control state).
pub struct Loaded {
    /// The chain (leaf first, as the file lists it) with its signing key,
    /// ready for rustls's SNI resolver.
    pub certified: Arc<CertifiedKey>,
    /// SHA-256 over the certificate file's bytes, then the key file's.
    pub fingerprint: [u8; 32],
}

/// Reads and checks a PEM certificate chain and a PEM private key (PKCS#1,
/// PKCS#8 or SEC1), and checks that the key fits the leaf certificate.
///
/// # Errors
///
/// [`TlsProblem::Cert`] or [`TlsProblem::Key`], naming the file at fault,
/// with a message fit for a `PATH:LINE:COL` report. Does not check expiry
/// or the chain's trust: a listener presents what the operator gave it, as
/// nginx does.
pub fn load(cert: &Path, key: &Path) -> Result<Loaded, TlsProblem> {
    let cert_pem = std::fs::read(cert)
        .map_err(|e| TlsProblem::Cert(format!("cannot read {}: {e}", cert.display())))?;
    let key_pem = std::fs::read(key)
        .map_err(|e| TlsProblem::Key(format!("cannot read {}: {e}", key.display())))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            TlsProblem::Cert(format!(
                "{} is not a PEM certificate chain: {e}",
                cert.display()
            ))
        })?;
    if chain.is_empty() {
        return Err(TlsProblem::Cert(format!(
            "{} holds no certificate",
            cert.display()
        )));
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| TlsProblem::Key(format!("{} is not a PEM private key: {e}", key.display())))?;
    let certified = CertifiedKey::from_der(chain, private, &provider()).map_err(|e| {
        TlsProblem::Key(format!(
            "{} does not fit {}: {e}",
            key.display(),
            cert.display()
        ))
    })?;
    let mut digest = Sha256::new();
    digest.update(&cert_pem);
    digest.update(&key_pem);
    Ok(Loaded {
        certified: Arc::new(certified),
        fingerprint: digest.finalize().into(),
    })
}
