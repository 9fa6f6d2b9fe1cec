//! The one host a request names, or why it is refused.
//!
//! A request can name a host in up to three places: the `Host` header, the
//! authority of an absolute-form target (`GET http://a.test/ HTTP/1.1`),
//! and HTTP/2's `:authority`. Tenant isolation depends on all of them
//! ending in one answer that both routing and the upstream see, so this
//! module decides it once (SPEC section 4.1):
//!
//! - HTTP/1.x: the absolute-form authority wins over `Host` and becomes the
//!   `Host` forwarded (RFC 9112 §3.2.2: the server "MUST ignore the received
//!   Host header field"). More than one `Host` line, or a `Host` or
//!   authority that is not a valid `host[:port]`, is 400 (RFC 9112 §3.2); an
//!   HTTP/1.1 request without `Host` is 400 too.
//! - HTTP/2: `:authority` wins; a `host` field naming another host is a
//!   malformed request (RFC 9113 §8.3.1), 400.
//! - Targets a reverse proxy does not forward: `CONNECT` (405), the
//!   asterisk form `*` and the authority form outside `CONNECT` (400), and
//!   absolute forms with a scheme other than `http`/`https` or with
//!   userinfo (RFC 9110 §4.2.4).

use http::header::{HOST, HeaderValue};
use http::{Method, Request, Version};

/// Why a request names no usable host, or a target turnout refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No host anywhere (HTTP/1.1 without `Host`, HTTP/2 without either).
    NoHost,
    /// Two `Host` lines, two different hosts, or an invalid one.
    InvalidHost,
    /// `CONNECT`: turnout is not a forward proxy.
    Connect,
    /// Asterisk or authority form, or an absolute form turnout cannot
    /// forward (another scheme, userinfo).
    InvalidTarget,
}

/// The authoritative `host[:port]` of `req`, exactly as it is to be
/// forwarded in `Host` and `X-Forwarded-Host`.
pub fn of<B>(req: &Request<B>) -> Result<HeaderValue, Refusal> {
    if req.method() == Method::CONNECT {
        return Err(Refusal::Connect);
    }
    let uri = req.uri();
    let target = uri.authority();
    if uri.path() == "*" || (uri.scheme().is_none() && target.is_some()) {
        // Asterisk form (`OPTIONS *`) or authority form (`GET a.test:80`).
        return Err(Refusal::InvalidTarget);
    }
    if let Some(scheme) = uri.scheme_str()
        && !scheme.eq_ignore_ascii_case("http")
        && !scheme.eq_ignore_ascii_case("https")
    {
        return Err(Refusal::InvalidTarget);
    }
    let mut hosts = req.headers().get_all(HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(Refusal::InvalidHost);
    }
    if let Some(h) = header
        && !valid(h.as_bytes())
    {
        return Err(Refusal::InvalidHost);
    }
    if header.is_none() && req.version() == Version::HTTP_11 {
        // RFC 9112 §3.2: even with an absolute-form target.
        return Err(Refusal::NoHost);
    }
    match target {
        Some(authority) => {
            let a = authority.as_str();
            if !valid(a.as_bytes()) {
                return Err(Refusal::InvalidTarget);
            }
            if req.version() == Version::HTTP_2
                && header.is_some_and(|h| !h.as_bytes().eq_ignore_ascii_case(a.as_bytes()))
            {
                return Err(Refusal::InvalidHost);
            }
            if let Some(h) = header
                && h.as_bytes() == a.as_bytes()
            {
                return Ok(h.clone());
            }
            HeaderValue::from_str(a).map_err(|_| Refusal::InvalidTarget)
        }
        None => header.cloned().ok_or(Refusal::NoHost),
    }
}

/// Whether `value` is a valid `uri-host [ ":" port ]` (RFC 3986 §3.2.2,
/// RFC 9110 §7.2), narrowed to what names a host in practice: letters,
/// digits, `-`, `.` and `_` (DNS names, IPv4 addresses), or a bracketed IPv6
/// literal; a port up to 65535. RFC 3986 also allows sub-delimiters and
/// percent-encoding in a reg-name; turnout refuses them, because `,` `;`
/// and `%00` let one `Host` read as two hosts to a framework downstream
/// (`X-Forwarded-Host` lists). No userinfo, path or space.
pub fn valid(value: &[u8]) -> bool {
    let (host, port) = if value.first() == Some(&b'[') {
        let Some(end) = value.iter().position(|&b| b == b']') else {
            return false;
        };
        let inside = &value[1..end];
        if inside.is_empty()
            || !inside
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        (&value[..=end], &value[end + 1..])
    } else {
        // One pass over a lookup table (this runs for every request): the
        // host is the longest run of host bytes, and whatever follows must
        // be the port.
        let end = value
            .iter()
            .position(|&b| !HOST_BYTE[usize::from(b)])
            .unwrap_or(value.len());
        (&value[..end], &value[end..])
    };
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => {
            digits.is_empty()
                || (digits.len() <= 5
                    && digits.iter().all(u8::is_ascii_digit)
                    && std::str::from_utf8(digits)
                        .ok()
                        .and_then(|d| d.parse::<u16>().ok())
                        .is_some())
        }
        Some(_) => false,
    };
    // A bracketed literal was checked above; a name is all host bytes by
    // construction.
    port_ok && !host.is_empty()
}

/// The bytes a host name or IPv4 address may hold in [`valid`]: ASCII
/// letters and digits, `-`, `.` and `_`.
static HOST_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_';
        b += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, method: Method, target: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder()
            .version(version)
            .method(method)
            .uri(target);
        for h in hosts {
            b = b.header(HOST, *h);
        }
        b.body(()).unwrap()
    }

    fn h1(target: &str, hosts: &[&str]) -> Result<HeaderValue, Refusal> {
        of(&req(Version::HTTP_11, Method::GET, target, hosts))
    }

    #[test]
    fn the_absolute_form_authority_wins_over_host() {
        assert_eq!(
            h1("http://alpha.test/orders", &["beta.test"]).unwrap(),
            "alpha.test"
        );
        assert_eq!(
            h1("http://alpha.test:8080/", &["alpha.test:8080"]).unwrap(),
            "alpha.test:8080"
        );
        assert_eq!(h1("/orders", &["beta.test"]).unwrap(), "beta.test");
    }

    #[test]
    fn two_hosts_or_invalid_ones_are_refused() {
        assert_eq!(h1("/", &["a.test", "b.test"]), Err(Refusal::InvalidHost));
        assert_eq!(h1("/", &["a.test", "a.test"]), Err(Refusal::InvalidHost));
        for bad in [
            "a.test@b.test",
            "a.test/x",
            "a b",
            "a.test:80:90",
            "a.test:x",
            "[::1",
            "",
        ] {
            assert_eq!(h1("/", &[bad]), Err(Refusal::InvalidHost), "{bad:?}");
        }
        assert_eq!(h1("/", &[]), Err(Refusal::NoHost));
        assert_eq!(h1("http://a.test/", &[]), Err(Refusal::NoHost));
        // An invalid Host is refused even when the target names a host.
        assert_eq!(h1("http://a.test/", &["a b"]), Err(Refusal::InvalidHost));
        assert_eq!(
            h1("http://u@a.test/", &["a.test"]),
            Err(Refusal::InvalidTarget)
        );
        assert_eq!(
            h1("ftp://a.test/", &["a.test"]),
            Err(Refusal::InvalidTarget)
        );
    }

    #[test]
    fn http2_authority_and_host_must_agree() {
        let h2 = |hosts: &[&str]| of(&req(Version::HTTP_2, Method::GET, "https://a.test/", hosts));
        assert_eq!(h2(&[]).unwrap(), "a.test");
        assert_eq!(h2(&["A.test"]).unwrap(), "a.test");
        assert_eq!(h2(&["b.test"]), Err(Refusal::InvalidHost));
    }

    #[test]
    fn connect_asterisk_and_authority_forms_are_refused() {
        let connect = req(Version::HTTP_11, Method::CONNECT, "a.test:443", &["a.test"]);
        assert_eq!(of(&connect), Err(Refusal::Connect));
        let star = req(Version::HTTP_11, Method::OPTIONS, "*", &["a.test"]);
        assert_eq!(of(&star), Err(Refusal::InvalidTarget));
        assert_eq!(h1("*", &["a.test"]), Err(Refusal::InvalidTarget));
        assert_eq!(h1("a.test:80", &["a.test"]), Err(Refusal::InvalidTarget));
    }

    #[test]
    fn valid_hosts() {
        for ok in [
            "a.test",
            "A.Test:8080",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:443",
            "x_y.test:",
        ] {
            assert!(valid(ok.as_bytes()), "{ok}");
        }
    }

    #[test]
    fn every_byte_is_judged_as_the_rule_says() {
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
        for b in 0..=255u8 {
            for (before, after) in [
                (&b"a"[..], &b"c"[..]),
                (b"a", b"c:80"),
                (b"", b""),
                (b"x", b""),
            ] {
                let host = [before, &[b], after].concat();
                let expected = allowed(b) || (b == b':' && !before.is_empty() && after.is_empty());
                assert_eq!(
                    valid(&host),
                    expected,
                    "{:?}",
                    String::from_utf8_lossy(&host)
                );
            }
        }
        assert!(!valid(b"a.test:80x"));
        assert!(!valid(b"a.test:65536"));
        assert!(!valid(b"a.test::80"));
    }
}
