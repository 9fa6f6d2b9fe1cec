//! Webhooks over TLS: an `https://` receiver gets the event when its
//! certificate verifies (against `[notify] ca`, or the system's roots), and
//! a certificate that does not verify is a counted delivery failure.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use support::*;
use tokio_rustls::TlsAcceptor;

const WAIT: Duration = Duration::from_secs(20);

/// A certificate authority made for one test.
struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server configuration for a certificate naming `name`.
    fn server(&self, name: &str) -> rustls::ServerConfig {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .unwrap()
    }

    fn write(&self, path: &Path) {
        std::fs::write(path, &self.pem).unwrap();
    }
}

/// A TLS webhook receiver: counts connections, records the SNI of each
/// completed handshake and each POSTed JSON body.
struct Receiver {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    sni: Arc<Mutex<Vec<Option<String>>>>,
    got: Arc<Mutex<Vec<serde_json::Value>>>,
}

async fn spawn_receiver(config: rustls::ServerConfig) -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver = Receiver {
        addr: listener.local_addr().unwrap(),
        connections: Arc::default(),
        sni: Arc::default(),
        got: Arc::default(),
    };
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (connections, sni, got) = (
        Arc::clone(&receiver.connections),
        Arc::clone(&receiver.sni),
        Arc::clone(&receiver.got),
    );
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            connections.fetch_add(1, Ordering::Relaxed);
            let (acceptor, sni, got) = (acceptor.clone(), Arc::clone(&sni), Arc::clone(&got));
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                sni.lock()
                    .unwrap()
                    .push(tls.get_ref().1.server_name().map(str::to_owned));
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let got = Arc::clone(&got);
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        got.lock()
                            .unwrap()
                            .push(serde_json::from_slice(&body).unwrap());
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::new(),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    receiver
}

/// A tenant at 50/50 whose failing candidate the SLO guard reverts, and a
/// `[notify]` table with `notify` in it.
fn reverting(b: &Upstream, g: &Upstream, notify: &str) -> String {
    let guarded = Setup::shop()
        .pools(b, g)
        .weights(50, 50)
        .extra("slo = { min_requests = 5 }")
        .toml();
    format!("[notify]\n{notify}\n\n{guarded}")
}

/// Starts a proxy in `dir` and sends traffic until the candidate is
/// reverted (an `slo` event, which is notified).
async fn revert_with(dir: tempfile::TempDir, notify: &str) -> (TestProxy, Upstream, Upstream) {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    g.set_failing(true);
    let proxy = spawn_proxy_in(dir, "", &reverting(&b, &g, notify)).await;
    wait_until(WAIT, "the revert", || async {
        proxy.get("shop.test", "/").await;
        proxy.weights("shop").await == (100, 0)
    })
    .await;
    (proxy, b, g)
}

#[tokio::test]
async fn an_https_webhook_gets_the_revert_with_the_url_host_as_sni() {
    let ca = TestCa::new();
    let receiver = spawn_receiver(ca.server("localhost")).await;
    let dir = tempfile::tempdir().unwrap();
    ca.write(&dir.path().join("hook-ca.pem"));
    let notify = format!(
        "webhook = \"https://localhost:{}/hook\"\nca = \"hook-ca.pem\"",
        receiver.addr.port()
    );
    let (proxy, _b, _g) = revert_with(dir, &notify).await;
    wait_until(WAIT, "the notification", || async {
        !receiver.got.lock().unwrap().is_empty()
    })
    .await;
    let event = receiver.got.lock().unwrap()[0].clone();
    assert_eq!(event["source"], "slo");
    assert_eq!(event["tenant"], "shop");
    assert_eq!(event["to"]["blue"], 100);
    assert!(event["reason"].as_str().unwrap().starts_with("error rate"));
    assert_eq!(
        receiver.sni.lock().unwrap()[0].as_deref(),
        Some("localhost")
    );
    assert_eq!(proxy.metric("turnout_notify_failures_total").await, 0.0);
}

#[tokio::test]
async fn a_changed_ca_bundle_is_read_again() {
    let (right, wrong) = (TestCa::new(), TestCa::new());
    let receiver = spawn_receiver(right.server("localhost")).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("hook-ca.pem");
    wrong.write(&ca_file);
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let notify = format!(
        "webhook = \"https://localhost:{}/hook\"\nca = \"hook-ca.pem\"",
        receiver.addr.port()
    );
    let proxy = spawn_proxy_in(dir, "", &reverting(&b, &g, &notify)).await;
    // The bundle is replaced as certificate tools do: written beside, renamed.
    let tmp = ca_file.with_extension("new");
    right.write(&tmp);
    std::fs::rename(&tmp, &ca_file).unwrap();
    wait_until(WAIT, "the new bundle applied", || async {
        let cfg: serde_json::Value =
            serde_json::from_slice(&proxy.admin_get("/v1/config").await.body).unwrap();
        cfg["generation"] == 2
    })
    .await;
    g.set_failing(true);
    wait_until(WAIT, "the revert", || async {
        proxy.get("shop.test", "/").await;
        proxy.weights("shop").await == (100, 0)
    })
    .await;
    wait_until(WAIT, "the notification", || async {
        !receiver.got.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(proxy.metric("turnout_notify_failures_total").await, 0.0);
}

/// Reverts with `notify` and expects the delivery to `receiver` to fail on
/// its certificate: tried, never delivered, counted once.
async fn expect_refused(receiver: &Receiver, dir: tempfile::TempDir, notify: &str) {
    let (proxy, _b, _g) = revert_with(dir, notify).await;
    wait_until(WAIT, "the counted failure", || async {
        proxy.metric("turnout_notify_failures_total").await == 1.0
    })
    .await;
    assert!(receiver.connections.load(Ordering::Relaxed) >= 1);
    assert!(
        receiver.sni.lock().unwrap().is_empty(),
        "a handshake passed"
    );
    assert!(receiver.got.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_receiver_certificate_from_another_ca_is_a_counted_failure() {
    let (trusted, other) = (TestCa::new(), TestCa::new());
    let receiver = spawn_receiver(other.server("localhost")).await;
    let dir = tempfile::tempdir().unwrap();
    trusted.write(&dir.path().join("hook-ca.pem"));
    let notify = format!(
        "webhook = \"https://localhost:{}/hook\"\nca = \"hook-ca.pem\"",
        receiver.addr.port()
    );
    expect_refused(&receiver, dir, &notify).await;
}

#[tokio::test]
async fn a_receiver_certificate_for_another_name_is_a_counted_failure() {
    let ca = TestCa::new();
    let receiver = spawn_receiver(ca.server("hooks.example.com")).await;
    let dir = tempfile::tempdir().unwrap();
    ca.write(&dir.path().join("hook-ca.pem"));
    let notify = format!(
        "webhook = \"https://localhost:{}/hook\"\nca = \"hook-ca.pem\"",
        receiver.addr.port()
    );
    expect_refused(&receiver, dir, &notify).await;
}

#[tokio::test]
async fn without_ca_the_system_roots_decide_and_a_private_ca_is_refused() {
    let ca = TestCa::new();
    let receiver = spawn_receiver(ca.server("localhost")).await;
    let notify = format!(
        "webhook = \"https://localhost:{}/hook\"",
        receiver.addr.port()
    );
    expect_refused(&receiver, tempfile::tempdir().unwrap(), &notify).await;
}

#[tokio::test]
async fn without_ca_the_system_store_is_used_as_ssl_cert_file_sets_it() {
    // rustls-native-certs reads SSL_CERT_FILE instead of the platform store:
    // the real binary, with the test's CA as its whole system store.
    let ca = TestCa::new();
    let receiver = spawn_receiver(ca.server("localhost")).await;
    let store = tempfile::tempdir().unwrap();
    let ca_file = store.path().join("roots.pem");
    ca.write(&ca_file);
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    g.set_failing(true);
    let notify = format!(
        "webhook = \"https://localhost:{}/hook\"",
        receiver.addr.port()
    );
    let proc = spawn_binary(
        &reverting(&b, &g, &notify),
        &[("SSL_CERT_FILE", ca_file.to_str().unwrap())],
    )
    .await;
    let client = client();
    wait_until(WAIT, "the revert", || async {
        let req = http::Request::get(format!("http://{}/", proc.http_addr))
            .header("host", "shop.test")
            .body(Full::default())
            .unwrap();
        let _ = client
            .request(req)
            .await
            .unwrap()
            .into_body()
            .collect()
            .await;
        tenant_weights(&client, proc.admin_addr, "shop").await == (100, 0)
    })
    .await;
    wait_until(WAIT, "the notification", || async {
        !receiver.got.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(receiver.got.lock().unwrap()[0]["source"], "slo");
}

#[test]
fn notify_keys_are_validated_with_their_location() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("turnout.toml");
    std::fs::write(dir.path().join("junk.pem"), "not a certificate\n").unwrap();
    let check = |notify: &str| {
        let text = format!(
            "[notify]\n{notify}\n\n[tenants.shop]\nhosts = [\"shop.test\"]\nstable = \"blue\"\nweights = {{ blue = 100, green = 0 }}\npools.blue = [\"127.0.0.1:1\"]\npools.green = [\"127.0.0.1:2\"]\n"
        );
        turnout::config::parse(&text, &path, &|_| None)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let expect = |notify: &str, want: &str| {
        let error = check(notify).unwrap_err();
        assert!(error.contains(want), "{notify}: {error}");
    };
    expect(
        "webhook = \"https://h.test/x\"\nca = \"missing.pem\"",
        "turnout.toml:3:1: notify.ca: cannot read",
    );
    expect(
        "webhook = \"https://h.test/x\"\nca = \"junk.pem\"",
        "notify.ca: ",
    );
    expect(
        "webhook = \"http://h.test/x\"\nca = \"junk.pem\"",
        "notify.ca: applies to https:// webhooks only",
    );
    expect(
        "webhook = \"https:///x\"",
        "turnout.toml:2:1: notify.webhook: must be an http:// or https:// URL with a host",
    );
    expect(
        "webhook = \"ftp://h.test/x\"",
        "notify.webhook: must be an http:// or https:// URL",
    );
    let ca = TestCa::new();
    ca.write(&dir.path().join("hook-ca.pem"));
    check("webhook = \"https://h.test/x\"\nca = \"hook-ca.pem\"").unwrap();
    check("webhook = \"http://h.test/x\"").unwrap();
}
