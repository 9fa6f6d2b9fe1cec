//! The edge: TLS with per-tenant certificates, HTTP/2 over ALPN, 421,
//! certificate reloads, WebSocket, drain, and hostile clients.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use support::*;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const WAIT: Duration = Duration::from_secs(10);

/// A test certificate authority that issues tenant certificates.
struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Writes a certificate for `names` and its key as `<stem>.pem` and
    /// `<stem>-key.pem` in `dir`, replacing any by rename.
    fn issue(
        &self,
        dir: &Path,
        stem: &str,
        names: &[&str],
    ) -> (PathBuf, PathBuf, CertificateDer<'static>) {
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}-key.pem")),
        );
        replace(&cert_path, &cert.pem());
        replace(&key_path, &key.serialize_pem());
        (cert_path, key_path, cert.der().clone())
    }

    fn connector(&self, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }
}

fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// turnout with an HTTPS listener and two TLS tenants, shop and blog, plus
/// a plain tenant `plain`.
struct TlsSetup {
    proxy: TestProxy,
    ca: TestCa,
    shop_cert: CertificateDer<'static>,
    https: std::net::SocketAddr,
}

async fn tls_setup() -> TlsSetup {
    let up = spawn_upstream("blue").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (_, _, shop_cert) = ca.issue(dir.path(), "shop", &["shop.test", "*.shop.test"]);
    ca.issue(dir.path(), "blog", &["blog.test"]);
    let tenants = Setup::shop()
        .hosts(r#"["shop.test", "*.shop.test"]"#)
        .on(&up)
        .extra(r#"tls = { cert = "shop.pem", key = "shop-key.pem" }"#)
        .and_tenant("blog")
        .on(&up)
        .extra(r#"tls = { cert = "blog.pem", key = "blog-key.pem" }"#)
        .and_tenant("plain")
        .on(&up);
    let proxy = tenants
        .in_dir(dir)
        .listen("https = \"127.0.0.1:0\"\n")
        .spawn()
        .await;
    let https = proxy.running.https_addr.unwrap();
    TlsSetup {
        proxy,
        ca,
        shop_cert,
        https,
    }
}

async fn handshake(
    connector: &TlsConnector,
    addr: std::net::SocketAddr,
    name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
}

fn peer_cert(tls: &tokio_rustls::client::TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// One HTTP/1.1 request over an established TLS stream.
async fn h1_over(tls: tokio_rustls::client::TlsStream<TcpStream>, host: &str, path: &str) -> Reply {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", host)
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

#[tokio::test]
async fn sni_picks_each_tenants_certificate_and_refuses_unknown_names() {
    let s = tls_setup().await;
    let c = s.ca.connector(&[b"http/1.1"]);
    // The client verifies the name against the certificate: success proves
    // each name got its own tenant's certificate.
    for name in ["shop.test", "www.shop.test", "blog.test"] {
        let tls = handshake(&c, s.https, name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let r = h1_over(tls, name, "/headers").await;
        assert_eq!(r.status, 200, "{name}");
        let seen: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(seen["x-forwarded-proto"][0], "https");
    }
    let shop = handshake(&c, s.https, "shop.test").await.unwrap();
    assert_eq!(peer_cert(&shop), s.shop_cert);
    // No tenant with a certificate owns these names: no handshake.
    assert!(handshake(&c, s.https, "unknown.test").await.is_err());
    assert!(handshake(&c, s.https, "plain.test").await.is_err());
}

#[tokio::test]
async fn alpn_negotiates_h2() {
    let s = tls_setup().await;
    let tls = handshake(&s.ca.connector(&[b"h2", b"http/1.1"]), s.https, "shop.test")
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            Request::get("https://shop.test/")
                .body(Full::<Bytes>::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(
        (
            resp.status().as_u16(),
            resp.headers()["x-turnout-pool"].to_str().unwrap()
        ),
        (200, "blue")
    );
    // Without h2 offered, HTTP/1.1.
    let tls = handshake(&s.ca.connector(&[b"http/1.1"]), s.https, "shop.test")
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[tokio::test]
async fn a_host_of_another_tenant_than_the_sni_is_421() {
    let s = tls_setup().await;
    let c = s.ca.connector(&[b"http/1.1"]);
    let r = h1_over(
        handshake(&c, s.https, "shop.test").await.unwrap(),
        "blog.test",
        "/",
    )
    .await;
    assert_eq!(r.status, 421);
    let r = h1_over(
        handshake(&c, s.https, "shop.test").await.unwrap(),
        "plain.test",
        "/",
    )
    .await;
    assert_eq!(r.status, 421);
    assert_eq!(
        s.proxy
            .metric(r#"turnout_unrouted_total{reason="misdirected"}"#)
            .await,
        2.0
    );
    // Same tenant, other name of it: fine.
    let r = h1_over(
        handshake(&c, s.https, "shop.test").await.unwrap(),
        "api.shop.test",
        "/",
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_replaced_certificate_is_used_without_restart_and_a_bad_one_is_refused() {
    let s = tls_setup().await;
    let c = s.ca.connector(&[b"http/1.1"]);
    let dir = s.proxy.dir.path();
    let (_, _, renewed) = s.ca.issue(dir, "shop", &["shop.test", "*.shop.test"]);
    assert_ne!(renewed, s.shop_cert);
    wait_until(WAIT, "the renewed certificate", || async {
        peer_cert(&handshake(&c, s.https, "shop.test").await.unwrap()) == renewed
    })
    .await;
    // A broken certificate file is not applied: the last good one serves on.
    replace(&dir.join("shop.pem"), "not a certificate");
    wait_until(WAIT, "the reported error", || async {
        let cfg: serde_json::Value =
            serde_json::from_slice(&s.proxy.admin_get("/v1/config").await.body).unwrap();
        cfg["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("tenants.shop.tls.cert"))
    })
    .await;
    assert_eq!(
        peer_cert(&handshake(&c, s.https, "shop.test").await.unwrap()),
        renewed
    );
}

#[tokio::test]
async fn a_websocket_echoes_through_the_proxy() {
    let echo = spawn_ws_echo().await;
    let proxy = Setup::tenant("ws")
        .blue(&echo)
        .extra(RARE_PROBES)
        .spawn()
        .await;
    let tcp = TcpStream::connect(proxy.running.http_addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://ws.test/chat", tcp)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["x-turnout-pool"], "blue");
    for text in ["hello", "turnout"] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), text);
    }
    // The open tunnel holds one of the tenant's in-flight slots.
    let inflight = || async { proxy.inflight("ws") };
    assert_eq!(inflight().await, 1);
    ws.close(None).await.unwrap();
    drop(ws);
    wait_until(WAIT, "the tunnel to close", || async {
        inflight().await == 0
    })
    .await;
    assert_eq!(
        proxy
            .metric(r#"turnout_requests_total{tenant="ws",pool="blue",code="1xx"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn drain_lets_a_slow_request_finish_and_exits_zero() {
    let up = spawn_upstream("blue").await;
    // The request in flight is the window in which the drain is seen
    // (`readyz` 503): seconds, not a moment, on a loaded machine.
    up.set_delay(Duration::from_secs(3));
    let mut proc = Setup::shop()
        .on(&up)
        .preamble("[defaults]\ndrain_timeout = \"10s\"\n\n")
        .spawn_binary(&[])
        .await;
    let c = client();
    let url = format!("http://{}/", proc.http_addr);
    let slow = tokio::spawn({
        let c = c.clone();
        async move {
            let req = Request::get(url)
                .header("host", "shop.test")
                .body(Full::<Bytes>::default())
                .unwrap();
            let resp = c.request(req).await.unwrap();
            let status = resp.status();
            (status, resp.into_body().collect().await.unwrap().to_bytes())
        }
    });
    wait_until(WAIT, "the request in flight", || async {
        up.hits.load(std::sync::atomic::Ordering::Relaxed) == 1
    })
    .await;
    proc.signal("TERM");
    // Draining: not ready any more, but the request in flight finishes.
    let readyz = format!("http://{}/readyz", proc.admin_addr);
    wait_until(WAIT, "readyz to turn 503", || async {
        let req = Request::get(&readyz)
            .body(Full::<Bytes>::default())
            .unwrap();
        matches!(c.request(req).await, Ok(r) if r.status() == 503)
    })
    .await;
    let (status, body) = slow.await.unwrap();
    assert_eq!((status.as_u16(), &body[..]), (200, &b"blue"[..]));
    let exit = tokio::time::timeout(WAIT, proc.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn an_oversized_head_is_431_and_a_slow_head_is_cut_off() {
    let up = spawn_upstream("blue").await;
    let proxy = Setup::shop().on(&up).spawn().await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: shop.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let reply = raw_exchange(proxy.running.http_addr, big.as_bytes()).await;
    assert!(
        reply.starts_with("HTTP/1.1 431"),
        "{}",
        &reply[..reply.len().min(200)]
    );

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut slow = TcpStream::connect(proxy.running.http_addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: shop.test\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    // The head never completes: the proxy closes the connection after 10 s.
    let read = tokio::time::timeout(Duration::from_secs(30), slow.read(&mut buf))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(
        matches!(read, Ok(0) | Err(_)) || String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 408")
    );
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(25),
        "{waited:?}"
    );
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_tenant_does_not_delay_another() {
    let (slow, fast) = (spawn_upstream("slow").await, spawn_upstream("fast").await);
    slow.set_delay(Duration::from_secs(3));
    let config = Setup::tenant("busy")
        .on(&slow)
        .extra("max_inflight = 100")
        .and_tenant("calm")
        .on(&fast);
    let proxy = Arc::new(config.spawn().await);
    let flood: Vec<_> = (0..300)
        .map(|_| {
            let p = Arc::clone(&proxy);
            tokio::spawn(async move { p.get("busy.test", "/").await.status })
        })
        .collect();
    wait_until(WAIT, "the flood to fill busy's slots", || async {
        proxy.inflight("busy") == 100
    })
    .await;
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(proxy.get("calm.test", "/").await.text(), "fast");
        worst = worst.max(started.elapsed());
    }
    assert!(
        worst < Duration::from_millis(500),
        "calm's worst latency during busy's flood: {worst:?}"
    );
    let statuses: Vec<u16> = futures_util::future::join_all(flood)
        .await
        .into_iter()
        .map(|s| s.unwrap().as_u16())
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 100);
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 200);
}

#[tokio::test]
async fn a_smuggled_request_never_reaches_the_upstream() {
    let up = spawn_upstream("blue").await;
    let proxy = Setup::shop().on(&up).spawn().await;
    // CL.TE desync attempt: a front end trusting Content-Length would see one
    // request; one trusting chunked framing sees a second, smuggled one.
    let attack = b"POST /echo HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 44\r\n\
        Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /headers HTTP/1.1\r\nHost: shop.test\r\n\r\n";
    let reply = raw_exchange(proxy.running.http_addr, attack).await;
    // hyper applies RFC 9112 §6.1: chunked wins, Content-Length is dropped,
    // and the connection is closed after the answer, so the trailing bytes
    // are never read as a request.
    assert_eq!(reply.matches("HTTP/1.1 ").count(), 1, "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("connection: close"),
        "{reply}"
    );
    assert_eq!(
        up.hits.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the smuggled request reached the upstream"
    );
}

#[tokio::test]
async fn an_idle_tls_keep_alive_connection_parks_and_serves_its_next_request() {
    let setup = tls_setup().await;
    let connector = setup.ca.connector(&[b"http/1.1"]);
    let tls = handshake(&connector, setup.https, "shop.test")
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = || {
        Request::get("/")
            .header("host", "shop.test")
            .body(Full::<Bytes>::default())
            .unwrap()
    };
    let parked = r#"turnout_client_connections{state="parked"}"#;
    for _ in 0..2 {
        let resp = sender.send_request(request()).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "blue");
        // Idle: parked, TLS session and all, and woken by the next request.
        wait_until(WAIT, "the TLS connection parked", || async {
            setup.proxy.metric(parked).await == 1.0
        })
        .await;
    }
    assert!(!sender.is_closed());
}
