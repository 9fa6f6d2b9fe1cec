//! `[store]`: where the runtime control state lives (SPEC section 12).
//!
//! Without the table the control file is the store (section 7). With it,
//! each tenant's runtime keys (weights, stable, rollout progress, bake
//! start) live in etcd under `prefix` and every replica follows them. The
//! etcd client is behind the `etcd` cargo feature (it needs `protoc` to
//! build), so a binary built without it refuses the table with a located
//! error rather than silently running every replica on its own.
//!
//! Production etcds (Kubernetes', managed ones) want client TLS, usually
//! mutual, or a user and password: `https://` endpoints with `ca`, `cert`
//! and `key`, `server_name`, and `user` with `password_env` — the same key
//! names as `[defaults.upstream_tls]`, and a password never in the file.
//! The PEM files are checked here (a located error) and read again each
//! time the store connects, so a rotated client certificate is taken up on
//! the next connection.

mod access;

use std::path::Path;

use serde::Deserialize;

use super::locate::KeyPath;
use super::validate::{EnvLookup, Problems};
use access::{store_auth, store_tls};

pub use access::{StoreAuth, StoreTls, TlsFileProblem, TlsMaterial};

/// `[store]` as TOML spells it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// `etcd`: the etcd v3 client endpoints, `host:port`,
    /// `http://host:port` or `https://host:port` (all plain or all TLS).
    pub etcd: Option<Vec<String>>,
    /// `prefix`: every key turnout writes is under it (`"/turnout"`).
    pub prefix: Option<String>,
    /// `ca`: a PEM bundle etcd's certificate must chain to, relative to the
    /// control file's directory; the system's roots when absent.
    pub ca: Option<String>,
    /// `cert`: the client certificate chain presented to etcd (mutual TLS).
    pub cert: Option<String>,
    /// `key`: the private key of `cert`.
    pub key: Option<String>,
    /// `server_name`: the name verified in etcd's certificate (and sent as
    /// SNI) instead of each endpoint's host.
    pub server_name: Option<String>,
    /// `user`: the etcd user turnout authenticates as.
    pub user: Option<String>,
    /// `password_env`: the NAME of the environment variable holding that
    /// user's password.
    pub password_env: Option<String>,
}

/// The validated `[store]`: an etcd cluster and the key prefix turnout owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Client endpoints as given (`host:port`, `http://host:port` or
    /// `https://host:port`); at least one, all plain or all `https://`.
    pub endpoints: Vec<String>,
    /// Starts with `/`, no trailing `/`; turnout's keys are `PREFIX/...`.
    pub prefix: String,
    /// TLS to etcd: `Some` exactly when the endpoints are `https://`.
    pub tls: Option<StoreTls>,
    /// The etcd user and password; `None`: no authentication.
    pub auth: Option<StoreAuth>,
}

/// The prefix when `[store]` names none.
pub const DEFAULT_PREFIX: &str = "/turnout";

/// Validates `[store]`; problems are added under `path`. TLS files are
/// relative to `base_dir`; the password is read through `env`.
pub(super) fn store(
    p: &mut Problems,
    path: &KeyPath,
    raw: RawStore,
    base_dir: &Path,
    env: EnvLookup<'_>,
) -> Option<StoreConfig> {
    if !cfg!(feature = "etcd") {
        p.add(
            path.clone(),
            "this turnout was built without the etcd feature: rebuild it with `cargo build --release --features etcd` (the container image has it), or remove [store] to keep the state in this file",
        );
        return None;
    }
    let before = p.errors.len();
    let endpoints = raw.etcd.clone().unwrap_or_default();
    if endpoints.is_empty() {
        p.add(
            path.key("etcd"),
            "name at least one etcd endpoint, such as [\"127.0.0.1:2379\"]",
        );
    }
    let mut schemes = Vec::new();
    for (i, e) in endpoints.iter().enumerate() {
        match endpoint(e) {
            Ok(tls) => schemes.push(tls),
            Err(problem) => p.add(path.key("etcd").index(i), problem),
        }
    }
    let tls = if schemes.iter().all(|&tls| tls) && !schemes.is_empty() {
        true
    } else if schemes.iter().any(|&tls| tls) {
        p.add(
            path.key("etcd"),
            "mix of https:// and plain endpoints: one etcd cluster is reached one way, write every endpoint with https:// or none",
        );
        false
    } else {
        false
    };
    let prefix = raw
        .prefix
        .clone()
        .unwrap_or_else(|| DEFAULT_PREFIX.to_owned());
    let prefix_ok = prefix.starts_with('/')
        && prefix.len() > 1
        && !prefix.ends_with('/')
        && prefix.chars().all(|c| c.is_ascii_graphic());
    if !prefix_ok {
        p.add(
            path.key("prefix"),
            format!("`{prefix}` is not a key prefix such as \"/turnout\" (starts with /, no trailing /, no spaces)"),
        );
    }
    let tls = store_tls(p, path, &raw, base_dir, tls);
    let auth = store_auth(p, path, &raw, env);
    (p.errors.len() == before).then_some(StoreConfig {
        endpoints,
        prefix,
        tls,
        auth,
    })
}

/// `host:port`, `http://host:port` or `https://host:port`, with a port;
/// whether it is `https://`.
fn endpoint(e: &str) -> Result<bool, String> {
    let (tls, rest) = match (e.strip_prefix("https://"), e.strip_prefix("http://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        (None, None) => (false, e),
    };
    let valid = rest
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if valid && !rest.contains('/') {
        Ok(tls)
    } else {
        Err(format!(
            "`{e}` is not an etcd endpoint such as \"127.0.0.1:2379\" or \"https://etcd-0.etcd:2379\""
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(store: &str) -> Result<crate::config::Config, String> {
        let text = format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\n\n{store}\n[tenants.t]\nhosts = [\"t\"]\nstable = \"blue\"\nweights = {{ blue = 1, green = 0 }}\npools.blue = [\"a:1\"]\npools.green = []\n"
        );
        crate::config::parse(&text, Path::new("t.toml"), &|_| None).map_err(|e| e.to_string())
    }

    #[cfg(not(feature = "etcd"))]
    #[test]
    fn without_the_feature_a_store_is_a_located_error() {
        let error = parse("[store]\netcd = [\"127.0.0.1:2379\"]\n").unwrap_err();
        assert!(error.contains("t.toml:4:"), "{error}");
        assert!(error.contains("built without the etcd feature"), "{error}");
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn a_store_is_validated_and_located() {
        let store = parse("[store]\netcd = [\"127.0.0.1:2379\"]\n")
            .unwrap()
            .store
            .unwrap();
        assert_eq!(store.prefix, DEFAULT_PREFIX);
        let error = parse("[store]\netcd = [\"etcd\"]\nprefix = \"turnout/\"\n").unwrap_err();
        assert!(
            error.contains("t.toml:5:") && error.contains("store.etcd[0]"),
            "{error}"
        );
        assert!(
            error.contains("t.toml:6:") && error.contains("store.prefix"),
            "{error}"
        );
        let error = parse("[store]\nprefix = \"/x\"\n").unwrap_err();
        assert!(error.contains("at least one etcd endpoint"), "{error}");
    }

    #[test]
    fn no_store_keeps_the_state_in_the_file() {
        assert_eq!(parse("").unwrap().store, None);
    }

    #[test]
    fn endpoints_need_a_host_and_port() {
        assert_eq!(endpoint("127.0.0.1:2379"), Ok(false));
        assert_eq!(endpoint("http://etcd-0.etcd:2379"), Ok(false));
        assert_eq!(endpoint("https://etcd-0.etcd:2379"), Ok(true));
        assert!(endpoint("etcd").is_err());
        assert!(endpoint("https://etcd").is_err());
        assert!(endpoint("etcd:0").is_err());
    }
}
