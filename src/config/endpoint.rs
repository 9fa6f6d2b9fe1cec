//! An endpoint as the control file writes it: `[scheme://]host:port`
//! (SPEC section 15). The scheme says how turnout speaks to it — HTTP/1.1,
//! HTTP/2 with prior knowledge, or TLS with ALPN — and is parsed here, once,
//! so the rest of the proxy works on a [`Protocol`] and a bare `host:port`.

use std::fmt;
use std::str::FromStr;

/// How turnout talks to an endpoint (the scheme of its address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `http://` or no scheme: HTTP/1.1 over pooled keep-alive connections.
    Http1,
    /// `h2c://`: HTTP/2 with prior knowledge (RFC 9113 §3.3), one
    /// multiplexed connection shared by many requests — what gRPC needs.
    H2c,
    /// `https://`: TLS, ALPN offering `h2` then `http/1.1`; the server's
    /// choice decides HTTP/2 or HTTP/1.1.
    Https,
}

impl Protocol {
    /// The scheme as written in the control file.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http",
            Protocol::H2c => "h2c",
            Protocol::Https => "https",
        }
    }

    /// The `:scheme` an HTTP/2 request to it carries (RFC 9113 §8.3.1).
    pub fn uri_scheme(self) -> http::uri::Scheme {
        match self {
            Protocol::Https => http::uri::Scheme::HTTPS,
            Protocol::Http1 | Protocol::H2c => http::uri::Scheme::HTTP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An endpoint address split into its protocol and its `host:port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointAddress<'a> {
    /// From the scheme; [`Protocol::Http1`] without one.
    pub protocol: Protocol,
    /// `host:port`, what is dialled (and, for TLS, the default server name
    /// is its host).
    pub authority: &'a str,
}

impl EndpointAddress<'_> {
    /// The host part of the authority, without brackets for IPv6.
    pub fn host(&self) -> &str {
        let host = match self.authority.rsplit_once(':') {
            Some((host, _)) => host,
            None => self.authority,
        };
        host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// Parses `[http://|h2c://|https://]host:port` (a port above 0, no user
/// info, no path).
///
/// # Errors
///
/// A message fit for a located config error: an unknown scheme, a path
/// after the authority, or an authority that is not `host:port`.
pub fn parse(text: &str) -> Result<EndpointAddress<'_>, String> {
    let (protocol, authority, form) = match text.split_once("://") {
        None => (Protocol::Http1, text, "host:port"),
        Some(("http", rest)) => (Protocol::Http1, rest, "scheme://host:port"),
        Some(("h2c", rest)) => (Protocol::H2c, rest, "scheme://host:port"),
        Some(("https", rest)) => (Protocol::Https, rest, "scheme://host:port"),
        Some((scheme, _)) => {
            return Err(format!(
                "`{text}`: unknown scheme `{scheme}://` (use http://, h2c:// or https://)"
            ));
        }
    };
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    let valid = match http::uri::Authority::from_str(authority) {
        Ok(a) => {
            a.port_u16().is_some_and(|p| p > 0) && !a.host().is_empty() && !authority.contains('@')
        }
        Err(_) => false,
    };
    if !valid {
        return Err(format!("`{text}` is not {form}"));
    }
    Ok(EndpointAddress {
        protocol,
        authority,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_and_bare_addresses() {
        let plain = parse("10.0.0.1:80").unwrap();
        assert_eq!(
            (plain.protocol, plain.authority),
            (Protocol::Http1, "10.0.0.1:80")
        );
        let http = parse("http://a.svc:8080").unwrap();
        assert_eq!(
            (http.protocol, http.authority),
            (Protocol::Http1, "a.svc:8080")
        );
        let h2c = parse("h2c://a.svc:50051").unwrap();
        assert_eq!((h2c.protocol, h2c.host()), (Protocol::H2c, "a.svc"));
        let tls = parse("https://[::1]:8443/").unwrap();
        assert_eq!(
            (tls.protocol, tls.authority),
            (Protocol::Https, "[::1]:8443")
        );
        assert_eq!(tls.host(), "::1");
    }

    #[test]
    fn bad_endpoints_say_why() {
        assert!(
            parse("grpc://a:1")
                .unwrap_err()
                .contains("unknown scheme `grpc://`")
        );
        for bad in ["a", "a:0", "h2c://a", "https://u@a:1", "http://a:1/x", ""] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
