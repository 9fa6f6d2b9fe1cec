//! `[store]`: where the runtime control state lives (SPEC section 12).
//!
//! Without the table the control file is the store (section 7). With it,
//! each tenant's runtime keys (weights, stable, rollout progress, bake
//! start) live in etcd under `prefix` and every replica follows them. The
//! etcd client is behind the `etcd` cargo feature (it needs `protoc` to
//! build), so a binary built without it refuses the table with a located
//! error rather than silently running every replica on its own.

use serde::Deserialize;

use super::locate::KeyPath;
use super::validate::Problems;

/// `[store]` as TOML spells it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// `etcd`: the etcd v3 client endpoints, `host:port` or
    /// `http://host:port`.
    pub etcd: Option<Vec<String>>,
    /// `prefix`: every key turnout writes is under it (`"/turnout"`).
    pub prefix: Option<String>,
}

/// The validated `[store]`: an etcd cluster and the key prefix turnout owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Client endpoints as given (`host:port` or `http://host:port`); at
    /// least one.
    pub endpoints: Vec<String>,
    /// Starts with `/`, no trailing `/`; turnout's keys are `PREFIX/...`.
    pub prefix: String,
}

/// The prefix when `[store]` names none.
pub const DEFAULT_PREFIX: &str = "/turnout";

/// Validates `[store]`; problems are added under `path`.
pub(super) fn store(p: &mut Problems, path: &KeyPath, raw: RawStore) -> Option<StoreConfig> {
    if !cfg!(feature = "etcd") {
        p.add(
            path.clone(),
            "this turnout was built without the etcd feature: rebuild it with `cargo build --release --features etcd` (the container image has it), or remove [store] to keep the state in this file",
        );
        return None;
    }
    let endpoints = raw.etcd.unwrap_or_default();
    let mut ok = true;
    if endpoints.is_empty() {
        p.add(
            path.key("etcd"),
            "name at least one etcd endpoint, such as [\"127.0.0.1:2379\"]",
        );
        ok = false;
    }
    for (i, e) in endpoints.iter().enumerate() {
        if let Err(problem) = endpoint(e) {
            p.add(path.key("etcd").index(i), problem);
            ok = false;
        }
    }
    let prefix = raw.prefix.unwrap_or_else(|| DEFAULT_PREFIX.to_owned());
    let prefix_ok = prefix.starts_with('/')
        && prefix.len() > 1
        && !prefix.ends_with('/')
        && prefix.chars().all(|c| c.is_ascii_graphic());
    if !prefix_ok {
        p.add(
            path.key("prefix"),
            format!("`{prefix}` is not a key prefix such as \"/turnout\" (starts with /, no trailing /, no spaces)"),
        );
        ok = false;
    }
    ok.then_some(StoreConfig { endpoints, prefix })
}

/// `host:port` or `http://host:port`, with a port.
fn endpoint(e: &str) -> Result<(), String> {
    let rest = e.strip_prefix("http://").unwrap_or(e);
    if e.starts_with("https://") {
        return Err(format!(
            "`{e}`: TLS to etcd is not supported yet; use a loopback or private-network endpoint"
        ));
    }
    let valid = rest
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if valid && !rest.contains('/') {
        Ok(())
    } else {
        Err(format!(
            "`{e}` is not an etcd endpoint such as \"127.0.0.1:2379\""
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
        assert!(endpoint("127.0.0.1:2379").is_ok());
        assert!(endpoint("http://etcd-0.etcd:2379").is_ok());
        assert!(endpoint("etcd").is_err());
        assert!(endpoint("https://etcd:2379").is_err());
        assert!(endpoint("etcd:0").is_err());
    }
}
