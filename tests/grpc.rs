//! gRPC end to end (SPEC section 15): a tonic server behind turnout over
//! `h2c://` and `https://` with mutual TLS — unary, server-streaming and
//! bidirectional calls, `grpc-status` judged as the pool's errors (a
//! candidate answering UNAVAILABLE with HTTP 200 is reverted), an upstream
//! certificate that does not verify is a 502 and an error of the pool, a
//! client certificate is presented when configured, and health probes
//! speak the gRPC health checking protocol.

mod support;

use std::time::Duration;

use support::*;

/// Probes about never: the gRPC upstream answers no `GET /healthz`, and a
/// probe's connection must not show in a count. The first probe comes at a
/// random point of the interval (see `RARE_PROBES`): 300 days, not an hour.
const NO_PROBES: &str = r#"health = { interval = "300d" }"#;

#[tokio::test]
async fn unary_streaming_and_bidi_calls_cross_an_h2c_upstream() {
    let up = spawn_grpc("blue").await;
    let proxy = Setup::shop().blue(&up).extra(NO_PROBES).spawn().await;
    let mut client = grpc_client(proxy.running.http_addr, "shop.test").await;

    assert_eq!(unary(&mut client, "hi").await.unwrap(), "blue:hi");
    assert_eq!(
        server_stream(&mut client, "s", 3).await.unwrap(),
        ["blue:s:0", "blue:s:1", "blue:s:2"]
    );
    assert_eq!(
        bidi(&mut client, &["a", "b", "c"]).await.unwrap(),
        ["blue:a", "blue:b", "blue:c"]
    );
    // A failing call's status comes through, trailers and all.
    let status = unary(&mut client, "fail").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.message(), "blue is unavailable");
    assert_eq!(
        proxy
            .metric(r#"turnout_upstream_errors_total{tenant="shop",pool="blue",kind="grpc"}"#)
            .await,
        1.0
    );
    // Many calls share one upstream connection.
    let many: Vec<_> = (0..20)
        .map(|i| {
            let mut c = client.clone();
            tokio::spawn(async move { unary(&mut c, &i.to_string()).await.unwrap() })
        })
        .collect();
    for call in many {
        assert!(call.await.unwrap().starts_with("blue:"));
    }
    // An HTTP/1.1 client's request crosses to the h2c upstream too: the
    // trailers-only answer's status arrives in the head.
    let r = proxy.get("shop.test", "/test.Echo/Nothing").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["grpc-status"], "12", "UNIMPLEMENTED");
    assert_eq!(r.pool(), Some("blue"));
    assert_eq!(up.calls(), 25);
    assert_eq!(up.connections(), 1, "one shared HTTP/2 connection");
}

#[tokio::test]
async fn a_candidate_answering_unavailable_with_http_200_is_reverted() {
    let (blue, green) = (spawn_grpc("blue").await, spawn_grpc("green").await);
    green.set_unavailable(true);
    let proxy = Setup::shop()
        .pools(&blue, &green)
        .weights(50, 50)
        .extra(NO_PROBES)
        .extra("slo = { min_requests = 5 }")
        .spawn()
        .await;
    let mut client = grpc_client(proxy.running.http_addr, "shop.test").await;
    let mut unavailable = 0;
    for i in 0..200 {
        match unary(&mut client, &i.to_string()).await {
            Ok(text) => assert!(text.starts_with("blue:"), "{text}"),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable);
                unavailable += 1;
            }
        }
        if proxy.weights("shop").await == (100, 0) {
            break;
        }
    }
    assert_eq!(proxy.weights("shop").await, (100, 0), "reverted");
    assert!(unavailable >= 5, "{unavailable}");
    let v = view(&proxy, "shop").await;
    assert_eq!(v["status"], "reverted");
    assert!(
        proxy
            .metric(r#"turnout_upstream_errors_total{tenant="shop",pool="green",kind="grpc"}"#)
            .await
            >= 5.0
    );
    // HTTP said 200 all along.
    assert_eq!(
        proxy
            .metric_or_absent(r#"turnout_requests_total{tenant="shop",pool="green",code="5xx"}"#)
            .await
            .unwrap_or(0.0),
        0.0
    );
    for i in 0..10 {
        assert!(unary(&mut client, &i.to_string()).await.is_ok());
    }
}

/// Writes `files` (name, text) into a fresh directory for the control file.
fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("a file in it");
    }
    dir
}

#[tokio::test]
async fn grpc_over_mutual_tls_presents_the_client_certificate() {
    let ca = TestCa::new("upstream-ca");
    let clients = TestCa::new("client-ca");
    let client = clients.issue("turnout.test");
    let up = spawn_grpc_tls(
        "blue",
        grpc_server_tls(ca.issue("localhost"), Some(&clients)),
    )
    .await;
    let dir = dir_with(&[
        ("ca.pem", &ca.pem),
        ("client.pem", &client.cert_pem),
        ("client-key.pem", &client.key_pem),
    ]);
    let proxy = Setup::shop()
        .in_dir(dir)
        .blue(&up)
        .extra(r#"health = { grpc = true, interval = "100ms" }"#)
        .extra(r#"upstream_tls = { ca = "ca.pem", cert = "client.pem", key = "client-key.pem", server_name = "localhost" }"#)
        .spawn()
        .await;
    let mut client = grpc_client(proxy.running.http_addr, "shop.test").await;
    assert_eq!(unary(&mut client, "hi").await.unwrap(), "blue:hi");
    assert_eq!(
        server_stream(&mut client, "s", 2).await.unwrap(),
        ["blue:s:0", "blue:s:1"]
    );
    assert_eq!(
        bidi(&mut client, &["a", "b"]).await.unwrap(),
        ["blue:a", "blue:b"]
    );
    // Probes speak gRPC over the same mutual TLS, on connections of their
    // own; every connection presents the client certificate.
    // (A connection is counted when accepted, its certificate after the
    // handshake: compare them between two.)
    wait_until(
        Duration::from_secs(10),
        "gRPC health checks over mTLS",
        || async {
            up.health_checks() >= 2
                && up.client_certs() >= 3
                && up.client_certs() == up.connections()
        },
    )
    .await;
    assert_eq!(
        view(&proxy, "shop").await["pools"]["blue"]["endpoints"][0]["healthy"],
        true
    );
}

#[tokio::test]
async fn grpc_health_checks_take_a_not_serving_endpoint_out_and_back() {
    let (a, b) = (spawn_grpc("a").await, spawn_grpc("b").await);
    let proxy = Setup::shop()
        .blue(&a)
        .blue(&b)
        .extra(r#"health = { grpc = true, interval = "100ms", healthy_after = 1, unhealthy_after = 1 }"#)
        .spawn()
        .await;
    let healthy = |i: usize| {
        let proxy = &proxy;
        async move { view(proxy, "shop").await["pools"]["blue"]["endpoints"][i]["healthy"] == true }
    };
    wait_until(Duration::from_secs(10), "probes of both", || async {
        a.health_checks() > 0 && b.health_checks() > 0
    })
    .await;
    a.set_serving(false).await;
    wait_until(Duration::from_secs(10), "a unhealthy", || async {
        !healthy(0).await
    })
    .await;
    assert!(healthy(1).await);
    let mut client = grpc_client(proxy.running.http_addr, "shop.test").await;
    for i in 0..10 {
        assert!(
            unary(&mut client, &i.to_string())
                .await
                .unwrap()
                .starts_with("b:")
        );
    }
    a.set_serving(true).await;
    wait_until(Duration::from_secs(10), "a healthy again", || async {
        healthy(0).await
    })
    .await;
}

#[tokio::test]
async fn an_upstream_certificate_that_does_not_verify_is_a_502_of_the_pool_until_the_ca_is_fixed() {
    let (trusted, rogue) = (TestCa::new("trusted"), TestCa::new("rogue"));
    let up = spawn_grpc_tls("blue", grpc_server_tls(rogue.issue("localhost"), None)).await;
    let proxy = Setup::shop()
        .in_dir(dir_with(&[("ca.pem", &trusted.pem)]))
        .blue(&up)
        .extra(NO_PROBES)
        .extra(r#"upstream_tls = { ca = "ca.pem", server_name = "localhost" }"#)
        .spawn()
        .await;
    let r = proxy.get("shop.test", "/").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.text(), "upstream connection failed\n");
    assert_eq!(
        proxy
            .metric(r#"turnout_upstream_errors_total{tenant="shop",pool="blue",kind="connect"}"#)
            .await,
        1.0
    );
    wait_until(
        Duration::from_secs(10),
        "the error in the window",
        || async { view(&proxy, "shop").await["slo"]["blue"]["errors"] == 1 },
    )
    .await;
    assert_eq!(up.calls(), 0);

    // The CA file is replaced: the change path reloads it and new
    // connections verify.
    let generation = json(&proxy.admin_get("/v1/config").await)["generation"].clone();
    std::fs::write(proxy.dir.path().join("ca.pem"), &rogue.pem).unwrap();
    wait_until(Duration::from_secs(10), "the CA to reload", || async {
        json(&proxy.admin_get("/v1/config").await)["generation"] != generation
    })
    .await;
    let mut client = grpc_client(proxy.running.http_addr, "shop.test").await;
    assert_eq!(unary(&mut client, "hi").await.unwrap(), "blue:hi");
}

/// An endpoint written out in full (`https://localhost:PORT`).
struct Listed(String, std::net::SocketAddr);

impl Endpoint for Listed {
    fn endpoint(&self) -> std::net::SocketAddr {
        self.1
    }

    fn endpoint_text(&self) -> String {
        self.0.clone()
    }
}

#[tokio::test]
async fn an_https_endpoint_choosing_http1_by_alpn_is_served_over_kept_alive_http1() {
    let ca = TestCa::new("upstream-ca");
    let tls = server_tls(ca.issue("localhost"), None, &[b"http/1.1"]);
    let (addr, connections) = spawn_tls_http1(tls).await;
    let endpoint = Listed(format!("https://localhost:{}", addr.port()), addr);
    let proxy = Setup::shop()
        .in_dir(dir_with(&[("ca.pem", &ca.pem)]))
        .blue(&endpoint)
        .extra(NO_PROBES)
        .extra(r#"upstream_tls = { ca = "ca.pem", server_name = "localhost" }"#)
        .spawn()
        .await;
    for _ in 0..5 {
        let r = proxy.get("shop.test", "/").await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "HTTP/1.1"));
    }
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "kept alive"
    );
}

#[tokio::test]
async fn upstream_tls_files_are_checked_where_they_are_named() {
    let dir = dir_with(&[("ca.pem", "not a certificate"), ("client.pem", "")]);
    let path = dir.path().join("turnout.toml");
    let text = control_file(
        "",
        "[defaults]\nupstream_tls = { ca = \"ca.pem\", cert = \"client.pem\" }\n\n[tenants.shop]\nhosts = [\"shop.test\"]\nstable = \"blue\"\nweights = { blue = 1, green = 0 }\npools.blue = [\"https://localhost:1\"]\npools.green = []\nupstream_tls = { server_name = \"bad name!\" }\n",
    );
    std::fs::write(&path, &text).unwrap();
    let checked = turnout::config::load(
        &path,
        &|_| None,
        &turnout::config::ListenOverrides::default(),
    );
    let shown = format!("{}", checked.config.expect_err("refused"));
    assert!(shown.contains("defaults.upstream_tls.ca: "), "{shown}");
    assert!(
        shown.contains("defaults.upstream_tls.key: `cert` needs its `key`"),
        "{shown}"
    );
    assert!(
        shown.contains("tenants.shop.upstream_tls.server_name: `bad name!` is not a DNS name"),
        "{shown}"
    );
}
