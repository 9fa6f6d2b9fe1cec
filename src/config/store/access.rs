//! How turnout reaches etcd: TLS (`ca`, `cert` + `key`, `server_name`,
//! the key names of `[defaults.upstream_tls]`) and an etcd user whose
//! password comes from the environment (`password_env`), never the file.
//!
//! The PEM files are checked when the control file is validated (a located
//! error) and read again each time the store connects, so a rotated client
//! certificate is taken up on the next connection; the password is never
//! shown (`Debug`, `turnout check`, `GET /v1/config` name its variable).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::ServerName;

use super::super::locate::KeyPath;
use super::super::secrets::secret;
use super::super::tls::{TlsProblem, load, system_roots};
use super::super::validate::{EnvLookup, Problems, ca_bundle};
use super::{RawStore, StoreConfig};

/// TLS to etcd's `https://` endpoints. Verification is always on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreTls {
    /// The CA bundle (resolved against the control file's directory);
    /// `None`: the system's roots.
    pub ca: Option<PathBuf>,
    /// The client certificate chain and its key (resolved likewise), for
    /// an etcd run with `--client-cert-auth`; `None`: none is presented.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The name verified in etcd's certificate instead of the endpoint's
    /// host (a DNS name or an IP address).
    pub server_name: Option<String>,
}

/// What TLS to etcd needs, read from the files of a [`StoreTls`].
pub struct TlsMaterial {
    /// The roots etcd's certificate must chain to.
    pub roots: Arc<RootCertStore>,
    /// The client certificate chain and key as PEM text (both checked: the
    /// key fits the certificate).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// Which key of `[store]` a TLS file problem belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsFileProblem {
    /// `ca`: unreadable, not PEM, no usable certificate.
    Ca(String),
    /// `cert`: unreadable, not PEM, no certificate.
    Cert(String),
    /// `key`: unreadable, not a private key, or not the key of `cert`.
    Key(String),
}

impl std::fmt::Display for TlsFileProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsFileProblem::Ca(m) => write!(f, "store.ca: {m}"),
            TlsFileProblem::Cert(m) => write!(f, "store.cert: {m}"),
            TlsFileProblem::Key(m) => write!(f, "store.key: {m}"),
        }
    }
}

impl StoreTls {
    /// Reads and checks the files: what the store connects with, or which
    /// file is wrong and why (the message names the file).
    pub fn read(&self) -> Result<TlsMaterial, TlsFileProblem> {
        let roots = match &self.ca {
            Some(file) => {
                let bundle = ca_bundle(file).map_err(TlsFileProblem::Ca)?;
                let mut roots = RootCertStore::empty();
                roots.add_parsable_certificates(bundle.roots.iter().cloned());
                Arc::new(roots)
            }
            None => system_roots(),
        };
        let identity = match &self.identity {
            Some((cert, key)) => {
                load(cert, key).map_err(|e| match e {
                    TlsProblem::Cert(m) => TlsFileProblem::Cert(m),
                    TlsProblem::Key(m) => TlsFileProblem::Key(m),
                })?;
                let read = |file: &Path| {
                    std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))
                };
                Some((
                    read(cert).map_err(TlsFileProblem::Cert)?,
                    read(key).map_err(TlsFileProblem::Key)?,
                ))
            }
            None => None,
        };
        Ok(TlsMaterial { roots, identity })
    }
}

/// The etcd user turnout authenticates as.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreAuth {
    /// The etcd user name.
    pub user: String,
    /// The environment variable the password came from (shown instead of
    /// the password).
    pub password_env: String,
    /// The password, read from that variable at load; never shown.
    pub password: String,
}

impl std::fmt::Debug for StoreAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreAuth")
            .field("user", &self.user)
            .field("password_env", &self.password_env)
            .finish_non_exhaustive()
    }
}

impl StoreConfig {
    /// How turnout reaches etcd, for `turnout check` and `GET /v1/config`:
    /// the TLS files and the user, never the password.
    pub fn access(&self) -> serde_json::Value {
        let tls = self.tls.as_ref().map(|t| {
            serde_json::json!({
                "ca": t.ca.as_ref().map_or_else(|| "system roots".to_owned(), |c| c.display().to_string()),
                "cert": t.identity.as_ref().map(|(c, _)| c.display().to_string()),
                "server_name": t.server_name,
            })
        });
        let auth = self
            .auth
            .as_ref()
            .map(|a| serde_json::json!({"user": a.user, "password_env": a.password_env}));
        serde_json::json!({"tls": tls, "auth": auth})
    }

    /// One line for `turnout check`: endpoints, prefix, TLS and user.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "store: etcd {} (prefix {})",
            self.endpoints.join(", "),
            self.prefix
        );
        match &self.tls {
            Some(t) => {
                let ca = t.ca.as_ref().map_or_else(
                    || "the system roots".to_owned(),
                    |c| c.display().to_string(),
                );
                out.push_str(&format!("; TLS verified against {ca}"));
                if let Some(name) = &t.server_name {
                    out.push_str(&format!(" as {name}"));
                }
                if let Some((cert, _)) = &t.identity {
                    out.push_str(&format!(", client certificate {}", cert.display()));
                }
            }
            None => out.push_str("; plain http, no TLS"),
        }
        match &self.auth {
            Some(a) => out.push_str(&format!(
                "; user {} (password from {})",
                a.user, a.password_env
            )),
            None => out.push_str("; no etcd user"),
        }
        out.push('\n');
        out
    }
}

/// The TLS keys: allowed with `https://` endpoints only, `cert` and `key`
/// together, every file readable and valid.
pub(super) fn store_tls(
    p: &mut Problems,
    path: &KeyPath,
    raw: &RawStore,
    base_dir: &Path,
    https: bool,
) -> Option<StoreTls> {
    if !https {
        for (key, set) in [
            ("ca", raw.ca.is_some()),
            ("cert", raw.cert.is_some()),
            ("key", raw.key.is_some()),
            ("server_name", raw.server_name.is_some()),
        ] {
            if set {
                p.add(
                    path.key(key),
                    "TLS keys need https:// endpoints: write store.etcd as [\"https://host:2379\", …]",
                );
            }
        }
        return None;
    }
    let identity = match (&raw.cert, &raw.key) {
        (Some(cert), Some(key)) => Some((base_dir.join(cert), base_dir.join(key))),
        (None, None) => None,
        (Some(_), None) => {
            p.add(path.key("key"), "`cert` needs its `key`");
            None
        }
        (None, Some(_)) => {
            p.add(path.key("cert"), "`key` needs its `cert`");
            None
        }
    };
    let server_name = raw.server_name.clone().filter(|name| {
        let ok = ServerName::try_from(name.as_str()).is_ok();
        if !ok {
            p.add(
                path.key("server_name"),
                format!("`{name}` is not a DNS name or IP address"),
            );
        }
        ok
    });
    let tls = StoreTls {
        ca: raw.ca.as_ref().map(|ca| base_dir.join(ca)),
        identity,
        server_name,
    };
    if let Err(problem) = tls.read() {
        let (key, message) = match problem {
            TlsFileProblem::Ca(m) => ("ca", m),
            TlsFileProblem::Cert(m) => ("cert", m),
            TlsFileProblem::Key(m) => ("key", m),
        };
        p.add(path.key(key), message);
    }
    Some(tls)
}

/// `user` and `password_env`: both or neither; the password from the
/// environment (an unset or empty variable is an unset secret: `run`
/// refuses the file, `check` warns).
pub(super) fn store_auth(
    p: &mut Problems,
    path: &KeyPath,
    raw: &RawStore,
    env: EnvLookup<'_>,
) -> Option<StoreAuth> {
    match (&raw.user, &raw.password_env) {
        (Some(user), Some(var)) => {
            if user.is_empty() {
                p.add(path.key("user"), "an etcd user name is not empty");
                return None;
            }
            // Unset: `run` refuses the file for it, `check` warns and still
            // shows the user.
            let password = secret(p, path.key("password_env"), var, env).unwrap_or_default();
            Some(StoreAuth {
                user: user.clone(),
                password_env: var.clone(),
                password,
            })
        }
        (None, None) => None,
        (Some(_), None) => {
            p.add(
                path.key("password_env"),
                "`user` needs `password_env`: the name of the environment variable holding its password (never the password itself)",
            );
            None
        }
        (None, Some(_)) => {
            p.add(path.key("user"), "`password_env` needs its `user`");
            None
        }
    }
}

#[cfg(test)]
#[cfg(feature = "etcd")]
mod tests {
    use super::*;

    /// A CA and a client certificate it signed, as PEM files in a
    /// temporary directory: (dir, ca.pem, client.pem, client-key.pem).
    fn pem_files() -> tempfile::TempDir {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["turnout".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let other = KeyPair::generate().unwrap();
        for (name, text) in [
            ("ca.pem", ca_cert.pem()),
            ("client.pem", cert.pem()),
            ("client-key.pem", key.serialize_pem()),
            ("other-key.pem", other.serialize_pem()),
            ("junk.pem", "not pem\n".to_owned()),
        ] {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    /// Parses `store` as the `[store]` of a control file in `dir`, with
    /// `env` as the environment.
    fn parse_in(
        dir: &Path,
        store: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<crate::config::Config, String> {
        let text = format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\n\n{store}\n[tenants.t]\nhosts = [\"t\"]\nstable = \"blue\"\nweights = {{ blue = 1, green = 0 }}\npools.blue = [\"a:1\"]\npools.green = []\n"
        );
        crate::config::parse(&text, &dir.join("t.toml"), env).map_err(|e| e.to_string())
    }

    #[test]
    fn tls_and_a_user_are_validated_and_never_show_the_password() {
        let dir = pem_files();
        let env = |var: &str| (var == "ETCD_PASSWORD").then(|| "s3cret".to_owned());
        let store = parse_in(
            dir.path(),
            "[store]\netcd = [\"https://127.0.0.1:2379\", \"https://etcd-1:2379\"]\nca = \"ca.pem\"\ncert = \"client.pem\"\nkey = \"client-key.pem\"\nserver_name = \"etcd.internal\"\nuser = \"turnout\"\npassword_env = \"ETCD_PASSWORD\"\n",
            &env,
        )
        .unwrap()
        .store
        .unwrap();
        let tls = store.tls.as_ref().unwrap();
        assert_eq!(tls.ca.as_deref(), Some(dir.path().join("ca.pem").as_path()));
        assert_eq!(tls.server_name.as_deref(), Some("etcd.internal"));
        let material = tls.read().unwrap();
        assert_eq!(material.roots.len(), 1);
        assert!(material.identity.is_some());
        let auth = store.auth.as_ref().unwrap();
        assert_eq!(
            (auth.user.as_str(), auth.password.as_str()),
            ("turnout", "s3cret")
        );
        // Shown everywhere with its variable, never the password.
        for shown in [
            format!("{store:?}"),
            store.summary(),
            store.access().to_string(),
        ] {
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(shown.contains("ETCD_PASSWORD"), "{shown}");
        }
        assert!(
            store.summary().contains("client certificate"),
            "{}",
            store.summary()
        );
        assert_eq!(store.access()["tls"]["server_name"], "etcd.internal");
        assert_eq!(store.access()["auth"]["user"], "turnout");
        // Without `ca`: the system's roots.
        let store = parse_in(
            dir.path(),
            "[store]\netcd = [\"https://etcd:2379\"]\n",
            &env,
        )
        .unwrap()
        .store
        .unwrap();
        assert_eq!(store.tls.as_ref().unwrap().ca, None);
        assert_eq!(store.auth, None);
        assert!(
            store.summary().contains("system roots"),
            "{}",
            store.summary()
        );
        assert_eq!(store.access()["tls"]["ca"], "system roots");
        let plain = parse_in(dir.path(), "[store]\netcd = [\"etcd:2379\"]\n", &env)
            .unwrap()
            .store
            .unwrap();
        assert_eq!(plain.tls, None);
        assert!(
            plain.summary().contains("plain http"),
            "{}",
            plain.summary()
        );
    }

    #[test]
    fn bad_tls_and_auth_keys_are_located_errors() {
        let dir = pem_files();
        let env = |var: &str| match var {
            "EMPTY" => Some(String::new()),
            "SET" => Some("pw".to_owned()),
            _ => None,
        };
        let error = |store: &str| parse_in(dir.path(), store, &env).unwrap_err();
        // Line 5 is `etcd`, the keys follow one a line.
        let e = error("[store]\netcd = [\"https://a:2379\", \"http://b:2379\"]\n");
        assert!(
            e.contains("t.toml:5:") && e.contains("mix of https://"),
            "{e}"
        );
        let e = error("[store]\netcd = [\"a:2379\"]\nca = \"ca.pem\"\nserver_name = \"x\"\n");
        assert!(e.contains("t.toml:6:") && e.contains("store.ca"), "{e}");
        assert!(
            e.contains("t.toml:7:") && e.contains("TLS keys need https://"),
            "{e}"
        );
        let e = error("[store]\netcd = [\"https://a:2379\"]\ncert = \"client.pem\"\n");
        assert!(
            e.contains("store.key") && e.contains("`cert` needs its `key`"),
            "{e}"
        );
        let e = error("[store]\netcd = [\"https://a:2379\"]\nca = \"missing.pem\"\n");
        assert!(
            e.contains("t.toml:6:") && e.contains("cannot read") && e.contains("missing.pem"),
            "{e}"
        );
        let e = error("[store]\netcd = [\"https://a:2379\"]\nca = \"junk.pem\"\n");
        assert!(e.contains("store.ca") && e.contains("junk.pem"), "{e}");
        let e = error(
            "[store]\netcd = [\"https://a:2379\"]\ncert = \"client.pem\"\nkey = \"other-key.pem\"\n",
        );
        assert!(e.contains("t.toml:7:") && e.contains("store.key"), "{e}");
        let e = error("[store]\netcd = [\"https://a:2379\"]\nserver_name = \"not a name\"\n");
        assert!(
            e.contains("store.server_name") && e.contains("not a DNS name"),
            "{e}"
        );
        let e = error("[store]\netcd = [\"a:2379\"]\nuser = \"turnout\"\n");
        assert!(
            e.contains("store.password_env") && e.contains("never the password"),
            "{e}"
        );
        let e = error("[store]\netcd = [\"a:2379\"]\npassword_env = \"SET\"\n");
        assert!(e.contains("store.user"), "{e}");
        let e =
            error("[store]\netcd = [\"a:2379\"]\nuser = \"turnout\"\npassword_env = \"UNSET\"\n");
        assert!(
            e.contains("t.toml:7:") && e.contains("UNSET is not set"),
            "{e}"
        );
        let e =
            error("[store]\netcd = [\"a:2379\"]\nuser = \"turnout\"\npassword_env = \"EMPTY\"\n");
        assert!(e.contains("EMPTY is empty"), "{e}");
        // A password in the file is not a key at all.
        let e = error("[store]\netcd = [\"a:2379\"]\nuser = \"turnout\"\npassword = \"pw\"\n");
        assert!(e.contains("password"), "{e}");
    }

    #[test]
    fn check_warns_of_an_unset_password_and_still_shows_the_user() {
        let dir = pem_files();
        let text = "[listen]\nhttp = \"127.0.0.1:0\"\n\n[store]\netcd = [\"a:2379\"]\nuser = \"turnout\"\npassword_env = \"UNSET\"\n";
        let checked = crate::config::parse_for_check(text, &dir.path().join("t.toml"), &|_| None);
        assert!(checked.warnings().unwrap().contains("UNSET is not set"));
        let store = checked.config.unwrap().store.unwrap();
        assert!(
            store
                .summary()
                .contains("user turnout (password from UNSET)"),
            "{}",
            store.summary()
        );
    }
}
