//! Which pool serves a request: preview, sticky key, or weighted draw
//! (SPEC section 4.3), tried in that order.
//!
//! A pure function of the tenant and the request headers, answering with a
//! [`PoolChoice`] rather than a response: the caller owns what follows (a
//! 403, a `Set-Cookie`, failover or not), and the choice is tested without
//! a server. The sticky bucket comes from `sticky`, so every replica and
//! restart puts a user in the same pool.

use http::HeaderMap;
use http::header::COOKIE;

use super::{Tenant, sticky};
use crate::config::{MatchRule, Pool, StickyKey};

/// The header a preview request carries its token in.
pub const PREVIEW_TOKEN_HEADER: &str = "x-turnout-preview";

/// The outcome of pool choice.
#[derive(Debug, PartialEq, Eq)]
pub enum PoolChoice {
    /// Serve from this pool; `preview` requests must not fail over.
    Pool {
        /// The pool chosen.
        pool: Pool,
        /// The request came in on a preview host (so `pool` is the
        /// candidate, and a 503 rather than a failover when it is down).
        preview: bool,
    },
    /// A cookie-sticky request without its cookie: serve from `pool` and set
    /// the cookie to `key` so the user stays there.
    NewCookie {
        /// The pool `key`'s bucket picks.
        pool: Pool,
        /// The fresh key (`sticky::fresh_key`: 32 hex digits) for the
        /// `Set-Cookie` of the response.
        key: String,
    },
    /// A request of the insiders' cohort (`candidate_match`): the
    /// candidate, whatever the weights, never failing over.
    Cohort {
        /// The candidate pool.
        pool: Pool,
    },
    /// A preview request without the right token.
    PreviewForbidden,
}

/// Chooses the pool for a request to `tenant`.
pub fn choose(tenant: &Tenant, preview: bool, headers: &HeaderMap) -> PoolChoice {
    if preview {
        if let Some(token) = &tenant.config.preview_token {
            let given = headers.get(PREVIEW_TOKEN_HEADER).map(|v| v.as_bytes());
            if !given.is_some_and(|g| constant_time_eq(g, token.as_bytes())) {
                return PoolChoice::PreviewForbidden;
            }
        }
        return PoolChoice::Pool {
            pool: tenant.candidate(),
            preview: true,
        };
    }
    let rules = &tenant.config.settings.candidate_match;
    if !rules.is_empty() && rules.iter().any(|rule| matches(rule, headers)) {
        // While the tenant is reverted the cohort goes to stable too, until
        // a new intent (SPEC section 4.3).
        if tenant
            .state
            .reverted
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return PoolChoice::Pool {
                pool: tenant.stable(),
                preview: false,
            };
        }
        return PoolChoice::Cohort {
            pool: tenant.candidate(),
        };
    }
    match &tenant.config.sticky {
        Some(StickyKey::Header(name)) => {
            if let Some(key) = headers.get(name) {
                let pool = tenant.pool_for_key(key.as_bytes());
                return PoolChoice::Pool {
                    pool,
                    preview: false,
                };
            }
        }
        Some(StickyKey::Cookie(name)) => {
            return match cookie(headers, name) {
                Some(key) => PoolChoice::Pool {
                    pool: tenant.pool_for_key(key),
                    preview: false,
                },
                None => {
                    let key = sticky::fresh_key();
                    PoolChoice::NewCookie {
                        pool: tenant.pool_for_key(key.as_bytes()),
                        key,
                    }
                }
            };
        }
        None => {}
    }
    PoolChoice::Pool {
        pool: tenant.draw(),
        preview: false,
    }
}

/// Whether a request carries what `rule` asks for: a header lookup, or one
/// scan of the `Cookie` fields; no allocation.
fn matches(rule: &MatchRule, headers: &HeaderMap) -> bool {
    match rule {
        MatchRule::Header { name, value } => headers
            .get_all(name)
            .iter()
            .any(|v| v.as_bytes() == value.as_bytes()),
        MatchRule::Cookie { name, value } => {
            cookie(headers, name).is_some_and(|v| v == value.as_bytes())
        }
    }
}

/// The value of cookie `name` among the request's `Cookie` headers.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers.get_all(COOKIE).iter().find_map(|value| {
        value.as_bytes().split(|b| *b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            (&pair[..eq] == name.as_bytes() && eq + 1 < pair.len()).then(|| &pair[eq + 1..])
        })
    })
}

/// Compares secrets without leaking where they differ through timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn finds_cookie_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_static("a=1; turnout_id=abc ; b=2"),
        );
        assert_eq!(cookie(&h, "turnout_id"), Some(&b"abc"[..]));
        assert_eq!(cookie(&h, "b"), Some(&b"2"[..]));
        assert_eq!(cookie(&h, "turnout"), None);
        h.append(COOKIE, HeaderValue::from_static("c=3"));
        assert_eq!(cookie(&h, "c"), Some(&b"3"[..]));
    }

    #[test]
    fn compares_tokens() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
