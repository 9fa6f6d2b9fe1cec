//! The secrets `*_env` keys name, and the admin tokens made from them.
//!
//! Secrets never sit in the control file: a `*_env` key names an environment
//! variable. Where files are checked (a CI job) the secrets are usually
//! absent, so an unset variable is kept apart from other problems: `run` and
//! reload refuse the file for it, `check` only warns (SPEC §2).

use sha2::{Digest, Sha256};

use super::locate::KeyPath;
use super::model::*;
use super::raw::*;
use super::validate::{EnvLookup, Problems, log_unsafe_char};

/// Reads the secret a `*_env` key names from `env`. Every `*_env` key goes
/// through here, so all of them are treated alike: a malformed variable name
/// is an error, an unset or empty variable is an unset secret.
pub(super) fn secret(
    p: &mut Problems,
    key: KeyPath,
    var: &str,
    env: EnvLookup<'_>,
) -> Option<String> {
    // POSIX: a name is not empty and contains neither `=` nor NUL; anything
    // else cannot be set in any environment.
    if var.is_empty() || var.contains(['=', '\0']) {
        p.add(
            key,
            format!(
                "`{}` is not an environment variable name",
                var.escape_debug()
            ),
        );
        return None;
    }
    match env(var) {
        Some(v) if !v.is_empty() => Some(v),
        Some(_) => {
            p.unset_secrets
                .push((key, format!("environment variable {var} is empty")));
            None
        }
        None => {
            p.unset_secrets
                .push((key, format!("environment variable {var} is not set")));
            None
        }
    }
}

/// `token68 = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`
/// (RFC 9110 §11.2): what a bearer token may be (RFC 6750 §2.1 `b64token`),
/// so what an `Authorization: Bearer` header can carry.
pub fn is_token68(token: &[u8]) -> bool {
    let body_len = token.len() - token.iter().rev().take_while(|&&b| b == b'=').count();
    body_len > 0
        && token[..body_len]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// Validates `[admin.tokens]`: a secret (`token_env`) or its digest
/// (`token_sha256`) each, a log-safe name, tenants that exist.
pub(super) fn tokens(
    p: &mut Problems,
    path: &KeyPath,
    raw: RawAdmin,
    tenants: &[std::sync::Arc<TenantConfig>],
    env: EnvLookup<'_>,
) -> Vec<TokenConfig> {
    let mut out = Vec::new();
    for (name, t) in raw.tokens {
        let tp = path.key(&name);
        // The name is the `actor` of every event the token makes, and so
        // part of log lines.
        if let Some((_, c)) = log_unsafe_char(&name) {
            p.add(
                tp.clone(),
                format!("a token name must not contain U+{:04X}", u32::from(c)),
            );
        }
        let sha256 = match (t.token_env, t.token_sha256) {
            (Some(var), None) => match secret(p, tp.key("token_env"), &var, env) {
                Some(v) if !is_token68(v.as_bytes()) => {
                    p.add(
                        tp.key("token_env"),
                        format!(
                            "the token in {var} cannot be sent as a bearer token: use only A-Z a-z 0-9 - . _ ~ + / and trailing = (RFC 6750 §2.1)"
                        ),
                    );
                    None
                }
                v => v.map(|v| Sha256::digest(v.as_bytes()).into()),
            },
            (None, Some(hex_digest)) => {
                let parsed = hex::decode(hex_digest.trim())
                    .ok()
                    .and_then(|v| <[u8; 32]>::try_from(v).ok());
                if parsed.is_none() {
                    p.add(tp.key("token_sha256"), "must be 64 hexadecimal digits");
                }
                parsed
            }
            _ => {
                p.add(
                    tp.clone(),
                    "set exactly one of `token_env` or `token_sha256`",
                );
                None
            }
        };
        let scope = if t.tenants.iter().any(|s| s == "*") {
            None
        } else {
            for (i, s) in t.tenants.iter().enumerate() {
                if tenants
                    .binary_search_by(|x| x.name.as_str().cmp(s))
                    .is_err()
                {
                    p.add(tp.key("tenants").index(i), format!("no tenant named `{s}`"));
                }
            }
            if t.tenants.is_empty() {
                p.add(tp.key("tenants"), "list at least one tenant, or \"*\"");
            }
            Some(t.tenants)
        };
        if let Some(sha256) = sha256 {
            out.push(TokenConfig {
                name,
                sha256,
                tenants: scope,
            });
        }
    }
    out
}
