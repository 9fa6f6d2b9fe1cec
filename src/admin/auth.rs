//! Bearer tokens of the admin API and the tenants each may touch.
//!
//! Only SHA-256 digests of the tokens are held; a presented token is hashed
//! and compared with each digest in constant time.
//!
//! The `Authorization` value is read by the grammar of RFC 9110 §11.4 and
//! RFC 6750 §2.1, `credentials = auth-scheme 1*SP token68`: the scheme is
//! matched case-insensitively (RFC 9110 §11.1), any number of spaces may
//! separate it from the token, and the token must be `token68`. Leading and
//! trailing whitespace is not part of a field value (RFC 9110 §5.5).

use sha2::{Digest, Sha256};

use crate::config::TokenConfig;
use crate::config::secrets::is_token68;

/// Who is calling, once authenticated.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name; `None` when no tokens are configured (loopback only).
    pub actor: Option<String>,
    /// `None` means every tenant.
    scope: Option<Vec<String>>,
}

impl Caller {
    /// Whether the caller's token covers `tenant` (exact name; `["*"]` and
    /// the token-less loopback case cover every tenant). Outside its scope
    /// a call gets 403.
    pub fn may_touch(&self, tenant: &str) -> bool {
        self.scope
            .as_ref()
            .is_none_or(|s| s.iter().any(|t| t == tenant))
    }
}

/// Why a request was not authenticated.
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
        .and_then(bearer_token)
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

/// The token of a `Bearer` credential, or `None` when `value` is not one.
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let value = trim_ows(value);
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    // `1*SP`: spaces only; a tab here is not in the grammar.
    let token = &rest[rest.iter().position(|&b| b != b' ')?..];
    is_token68(token).then_some(token)
}

/// Strips optional whitespace (`OWS = *( SP / HTAB )`) from both ends.
fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
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

    #[test]
    fn reads_the_bearer_scheme_as_rfc_9110_writes_it() {
        let tok = |v: &[u8]| bearer_token(v).map(|t| String::from_utf8_lossy(t).into_owned());
        for accepted in [
            &b"Bearer s3cret"[..],
            b"bearer s3cret",
            b"BEARER s3cret",
            b"bEaReR s3cret",
            b"Bearer    s3cret",
            b" \tBearer s3cret \t",
        ] {
            assert_eq!(tok(accepted).as_deref(), Some("s3cret"), "{accepted:?}");
        }
        assert_eq!(tok(b"Bearer a-._~+/Z9==").as_deref(), Some("a-._~+/Z9=="));
        for refused in [
            &b"Bearer"[..],
            b"Bearer ",
            b"Bearers3cret",
            b"Bearer\ts3cret",
            b"Basic s3cret",
            b"Bearer s3 cret",
            b"Bearer s3cret!",
            b"Bearer =abc",
            b"Bearer ab=c",
            b"Bearer ===",
            b"Bearer s3cret\r\nX: y",
            b"Bearerx s3cret",
            b"",
        ] {
            assert_eq!(tok(refused), None, "{refused:?}");
        }
    }
}
