//! Hostile and odd requests (SPEC sections 4 and 11): every way of naming
//! two hosts, tunnels around the proxy, HTTP/2 → HTTP/1.1 translation,
//! trailers, framing, methods and targets a reverse proxy refuses, and
//! half-closed clients. Each case was a fault found by replaying real
//! traffic (issue 11); variants of each are here too.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Full};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn every_way_of_naming_two_hosts_ends_in_one_host_or_a_400() {
    let alpha = RawUpstream::answering(ok_with_head).spawn().await;
    let beta = RawUpstream::answering(ok_with_head).spawn().await;
    let (alpha_heads, beta_heads) = (&alpha.heads, &beta.heads);
    let proxy = Setup::tenant("alpha")
        .blue(&alpha)
        .and_tenant("beta")
        .blue(&beta)
        .spawn()
        .await;
    let addr = proxy.running.http_addr;

    // The absolute form's authority wins, and is the Host the upstream sees.
    let reply = raw_exchange(
        addr,
        b"GET http://alpha.test/orders HTTP/1.1\r\nHost: beta.test\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&reply), "200", "{reply}");
    let head = alpha_heads.lock().unwrap().pop().expect("alpha served it");
    assert!(head.starts_with("GET /orders HTTP/1.1"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("host: alpha.test\r\n"),
        "{head}"
    );
    assert!(!head.contains("beta.test"), "{head}");

    // Two hosts, invalid hosts, userinfo: 400, nothing forwarded.
    for request in [
        "GET / HTTP/1.1\r\nHost: alpha.test\r\nHost: beta.test\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: beta.test\r\nHost: beta.test\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: alpha.test@beta.test\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: beta.test/alpha\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: beta.test:80:81\r\n\r\n",
        "GET http://user@alpha.test/ HTTP/1.1\r\nHost: alpha.test\r\n\r\n",
        "GET http://alpha.test/ HTTP/1.1\r\nHost: bad host\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
        "GET http://alpha.test/ HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: alpha.test,beta.test\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: alpha.test;.beta.test\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: alpha.test%00.beta.test\r\n\r\n",
        "GET http://alpha.test:99999/ HTTP/1.1\r\nHost: alpha.test\r\n\r\n",
    ] {
        let reply = raw_exchange(addr, request.as_bytes()).await;
        assert_eq!(status_of(&reply), "400", "{request:?} → {reply}");
    }

    // HTTP/2: `:authority` wins; a `host` naming another host is malformed.
    let mut h2 = h2c(addr).await;
    let mut send = |req: Request<Full<Bytes>>| {
        let fut = h2.send_request(req);
        async move { fut.await.map(|r| r.status().as_u16()) }
    };
    let good = Request::get("http://alpha.test/x")
        .version(Version::HTTP_2)
        .body(Full::default())
        .unwrap();
    assert_eq!(send(good).await.unwrap(), 200);
    let two = Request::get("http://alpha.test/x")
        .version(Version::HTTP_2)
        .header("host", "beta.test")
        .body(Full::default())
        .unwrap();
    assert_eq!(send(two).await.unwrap(), 400);

    assert!(
        beta_heads.lock().unwrap().is_empty(),
        "beta got a request meant for alpha"
    );
    assert_eq!(
        alpha_heads.lock().unwrap().len(),
        1,
        "only the good HTTP/2 request"
    );
    assert!(
        proxy
            .metric(r#"turnout_unrouted_total{reason="invalid_request"}"#)
            .await
            >= 7.0
    );
}

/// Answers 101 to anything that asks for an upgrade, as an h2c-capable
/// upstream would; 200 with the head otherwise.
fn upgrades_anything(head: &str) -> String {
    if head.to_ascii_lowercase().contains("\r\nupgrade:") {
        "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n".to_owned()
    } else {
        ok_with_head(head)
    }
}

#[tokio::test]
async fn h2c_is_never_a_tunnel_and_an_unasked_101_is_a_502() {
    let up = RawUpstream::answering(upgrades_anything).spawn().await;
    let (heads, proxy) = (&up.heads, Setup::shop().blue(&up).spawn().await);
    let addr = proxy.running.http_addr;
    for upgrade in ["h2c", "H2C", " h2c "] {
        let request = format!(
            "GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: Upgrade, HTTP2-Settings\r\n\
             Upgrade: {upgrade}\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        );
        let reply = raw_exchange(addr, request.as_bytes()).await;
        assert_eq!(status_of(&reply), "200", "{reply}");
        let head = heads.lock().unwrap().pop().unwrap().to_ascii_lowercase();
        assert!(!head.contains("upgrade"), "{head}");
        assert!(!head.contains("http2-settings"), "{head}");
    }
    // An upstream that switches protocols unasked, or to another protocol
    // than asked: 502, never a tunnel.
    let rogue = RawUpstream::answering(|_| {
        "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
            .to_owned()
    })
    .spawn()
    .await;
    let proxy = Setup::shop().blue(&rogue).spawn().await;
    for request in [
        "GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n",
    ] {
        let reply = raw_exchange(proxy.running.http_addr, request.as_bytes()).await;
        assert_eq!(status_of(&reply), "502", "{request:?} → {reply}");
    }
}

#[tokio::test]
async fn a_101_naming_no_protocol_is_a_502() {
    let empty = RawUpstream::answering(|_| {
        "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: \r\n\r\n".to_owned()
    })
    .spawn()
    .await;
    let proxy = Setup::shop().blue(&empty).spawn().await;
    let request =
        "GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
    let reply = raw_exchange(proxy.running.http_addr, request.as_bytes()).await;
    assert_eq!(status_of(&reply), "502", "{reply}");
}

#[tokio::test]
async fn connect_and_asterisk_targets_are_refused_not_forwarded() {
    let up = RawUpstream::answering(ok_with_head).spawn().await;
    let (heads, proxy) = (&up.heads, Setup::shop().blue(&up).spawn().await);
    for (request, status) in [
        (
            "CONNECT shop.test:443 HTTP/1.1\r\nHost: shop.test:443\r\n\r\n",
            "405",
        ),
        ("OPTIONS * HTTP/1.1\r\nHost: shop.test\r\n\r\n", "400"),
        ("GET * HTTP/1.1\r\nHost: shop.test\r\n\r\n", "400"),
        (
            "GET shop.test:80 HTTP/1.1\r\nHost: shop.test\r\n\r\n",
            "400",
        ),
        (
            "GET ftp://shop.test/ HTTP/1.1\r\nHost: shop.test\r\n\r\n",
            "400",
        ),
    ] {
        let reply = raw_exchange(proxy.running.http_addr, request.as_bytes()).await;
        assert_eq!(status_of(&reply), status, "{request:?} → {reply}");
    }
    assert!(heads.lock().unwrap().is_empty());
    // Refused requests are no tenant's traffic.
    let served = proxy
        .metric(r#"turnout_requests_total{tenant="shop",pool="blue",code="2xx"}"#)
        .await;
    assert_eq!(served, 0.0);
}

#[tokio::test]
async fn http2_cookie_fields_reach_http1_as_one_cookie() {
    let up = spawn_upstream("blue").await;
    let proxy = Setup::shop().on(&up).spawn().await;
    let mut h2 = h2c(proxy.running.http_addr).await;
    let req = Request::get("http://shop.test/headers")
        .version(Version::HTTP_2)
        .header("cookie", "session=abc")
        .header("cookie", "csrf=xyz")
        .header("cookie", "lang=en")
        .header("te", "trailers")
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let seen: std::collections::BTreeMap<String, Vec<String>> =
        serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["cookie"], ["session=abc; csrf=xyz; lang=en"]);
    assert_eq!(seen["host"], ["shop.test"]);
    assert_eq!(seen["te"], ["trailers"]);
}

fn chunked_with_trailer(_: &str) -> String {
    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: X-Checksum\r\n\r\n\
     5\r\nhello\r\n0\r\nx-checksum: abc123\r\n\r\n"
        .to_owned()
}

/// Reads from `stream` until `done` holds for what arrived, or 5 s pass.
async fn read_until(stream: &mut tokio::net::TcpStream, done: impl Fn(&str) -> bool) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
            if done(&String::from_utf8_lossy(&out)) {
                return;
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn trailers_reach_an_http1_client_that_asked_for_them() {
    let up = RawUpstream::answering(chunked_with_trailer).spawn().await;
    let proxy = Setup::shop().blue(&up).spawn().await;
    let mut client = tokio::net::TcpStream::connect(proxy.running.http_addr)
        .await
        .unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: shop.test\r\nTE: trailers\r\n\r\n")
        .await
        .unwrap();
    let reply = read_until(&mut client, |r| {
        r.ends_with("\r\n\r\n") && r.contains("\r\n0\r\n")
    })
    .await;
    let lower = reply.to_ascii_lowercase();
    assert!(lower.contains("hello"), "{reply}");
    assert!(
        lower.contains("\r\n0\r\nx-checksum: abc123\r\n\r\n"),
        "{reply}"
    );
}

#[tokio::test]
async fn a_length_beside_chunked_framing_is_never_passed_on() {
    for (answer, body) in [
        (
            (|_: &str| {
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                    .to_owned()
            }) as fn(&str) -> String,
            "hello",
        ),
        (
            |_: &str| {
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhe\r\n0\r\n\r\n"
                    .to_owned()
            },
            "he",
        ),
    ] {
        let up = RawUpstream::answering(answer).spawn().await;
        let proxy = Setup::shop().blue(&up).spawn().await;
        let client = client();
        let resp = tokio::time::timeout(
            Duration::from_secs(5),
            client.request(
                Request::get(proxy.http_url("/"))
                    .header("host", "shop.test")
                    .body(Full::default())
                    .unwrap(),
            ),
        )
        .await
        .expect("the response head came")
        .unwrap();
        let length = resp.headers().get("content-length").cloned();
        let got = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
            .await
            .expect("the body ended: no client hangs on a length the body does not have")
            .unwrap()
            .to_bytes();
        assert_eq!(got, body);
        assert!(
            length
                .as_ref()
                .is_none_or(|l| l.to_str().unwrap() == body.len().to_string()),
            "{length:?}"
        );
    }
}

#[tokio::test]
async fn an_agreeing_list_or_repeated_length_is_passed_on_as_one_value() {
    for answer in [
        (|_: &str| "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\nhello".to_owned())
            as fn(&str) -> String,
        |_: &str| {
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello".to_owned()
        },
    ] {
        let up = RawUpstream::answering(answer).spawn().await;
        let proxy = Setup::shop().blue(&up).spawn().await;
        let reply = raw_exchange(
            proxy.running.http_addr,
            b"GET / HTTP/1.1\r\nhost: shop.test\r\nconnection: close\r\n\r\n",
        )
        .await;
        let lengths: Vec<&str> = reply
            .lines()
            .filter_map(|l| l.strip_prefix("content-length: "))
            .collect();
        assert_eq!(lengths, ["5"], "one plain length (RFC 9110 8.6): {reply}");
        assert!(reply.ends_with("hello"), "{reply}");
    }
}

#[tokio::test]
async fn a_half_closed_client_still_gets_its_response() {
    let up = spawn_upstream("blue").await;
    up.set_delay(Duration::from_millis(200));
    let proxy = Setup::shop().on(&up).spawn().await;
    let mut client = tokio::net::TcpStream::connect(proxy.running.http_addr)
        .await
        .unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        .await
        .unwrap();
    client.shutdown().await.unwrap();
    let reply = read_until(&mut client, |r| r.ends_with("\r\n\r\nblue")).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
    assert!(reply.ends_with("\r\n\r\nblue"), "{reply:?}");
}
