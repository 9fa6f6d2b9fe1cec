//! Bearer tokens of the admin API and the tenants each may touch.
//!
//! Only SHA-256 digests of the tokens are held; a presented token is hashed
//! and compared with each digest in constant time.

use sha2::{Digest, Sha256};

use crate::config::TokenConfig;

/// Who is calling, once authenticated.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name; `None` when no tokens are configured (loopback only).
    pub actor: Option<String>,
    /// `None` means every tenant.
    scope: Option<Vec<String>>,
}

impl Caller {
    pub fn may_touch(&self, tenant: &str) -> bool {
        self.scope
            .as_ref()
            .is_none_or(|s| s.iter().any(|t| t == tenant))
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No or unknown token: 401.
    Unauthenticated,
}

/// Checks an `Authorization` header value against the configured tokens.
pub fn authenticate(
    tokens: &[TokenConfig],
    authorization: Option<&[u8]>,
) -> Result<Caller, AuthError> {
    if tokens.is_empty() {
        return Ok(Caller {
            actor: None,
            scope: None,
        });
    }
    let presented = authorization
        .and_then(|v| v.strip_prefix(b"Bearer "))
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
        .ok_or(AuthError::Unauthenticated)?;
    let digest: [u8; 32] = Sha256::digest(presented).into();
    tokens
        .iter()
        .find(|t| digest_eq(&t.sha256, &digest))
        .map(|t| Caller {
            actor: Some(t.name.clone()),
            scope: t.tenants.clone(),
        })
        .ok_or(AuthError::Unauthenticated)
}

fn digest_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, secret: &str, tenants: Option<Vec<&str>>) -> TokenConfig {
        TokenConfig {
            name: name.into(),
            sha256: Sha256::digest(secret.as_bytes()).into(),
            tenants: tenants.map(|v| v.into_iter().map(String::from).collect()),
        }
    }

    #[test]
    fn matches_tokens_and_scopes() {
        let tokens = [
            token("ops", "s3cret", None),
            token("acme-ci", "acme", Some(vec!["acme"])),
        ];
        let ops = authenticate(&tokens, Some(b"Bearer s3cret")).unwrap();
        assert_eq!(ops.actor.as_deref(), Some("ops"));
        assert!(ops.may_touch("anything"));
        let ci = authenticate(&tokens, Some(b"Bearer acme")).unwrap();
        assert!(ci.may_touch("acme") && !ci.may_touch("other"));
        assert_eq!(
            authenticate(&tokens, Some(b"Bearer nope")).unwrap_err(),
            AuthError::Unauthenticated
        );
        assert_eq!(
            authenticate(&tokens, None).unwrap_err(),
            AuthError::Unauthenticated
        );
        assert_eq!(
            authenticate(&tokens, Some(b"s3cret")).unwrap_err(),
            AuthError::Unauthenticated
        );
        assert!(authenticate(&[], None).unwrap().actor.is_none());
    }
}
