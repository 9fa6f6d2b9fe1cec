//! Loading a tenant's certificate and key, as validation does: the files
//! must parse and the key must match the certificate.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

/// The crypto provider turnout uses everywhere: *ring*, chosen for its
/// handshake speed and its small, C-toolchain-light build (see README).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A problem with one of the two files.
pub enum TlsProblem {
    Cert(String),
    Key(String),
}

/// A loaded certificate chain and key, and a digest of both files' bytes
/// (so a changed file makes a changed control state).
pub struct Loaded {
    pub certified: Arc<CertifiedKey>,
    pub fingerprint: [u8; 32],
}

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
