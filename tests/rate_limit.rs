//! Rate limits per tenant and per client (SPEC section 16): 429 with
//! `Retry-After` once a burst is spent, recovery at the configured rate,
//! clients told apart by address or header, one tenant's limit never
//! touching another's, a bounded client table, buckets kept across a
//! reload, and refused requests kept out of the pools' windows.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A client whose connections come from `ip` (any 127.0.0.0/8 address is
/// this machine): another client, as far as the proxy can tell.
fn client_from(ip: &str) -> TestClient {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(ip.parse::<IpAddr>().unwrap()));
    Client::builder(TokioExecutor::new()).build(connector)
}

/// GET `/` on `host` with optional headers, from `client`.
async fn get(
    proxy: &TestProxy,
    client: &TestClient,
    host: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = get_request(proxy.running.http_addr, host, "/");
    for (name, value) in headers {
        let name = http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        req.headers_mut()
            .insert(name, http::HeaderValue::from_str(value).unwrap());
    }
    send_with(client, req).await
}

/// Statuses of `n` requests sent one after the other.
async fn statuses(proxy: &TestProxy, host: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(proxy.get(host, "/").await.status.as_u16());
    }
    out
}

fn retry_after(r: &Reply) -> u64 {
    r.headers["retry-after"].to_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_tenant_over_its_rate_gets_429_then_recovers_at_the_rate() {
    let up = spawn_upstream("blue").await;
    let proxy = Setup::shop()
        .on(&up)
        .extra("rate_limit = { rps = 4, burst = 5 }")
        .spawn()
        .await;
    // The burst passes (and the tokens added while it is sent: requests
    // may be slow on a busy machine), then the next is refused.
    let start = Instant::now();
    let mut burst = 0;
    let refused = loop {
        let r = proxy.get("shop.test", "/").await;
        if r.status != 200 {
            break r;
        }
        burst += 1;
        assert!(burst < 100, "never refused");
    };
    let emptied = Instant::now();
    let most = 5.0 + 4.0 * start.elapsed().as_secs_f64() + 1.0;
    assert!(burst >= 5 && f64::from(burst) <= most, "{burst} passed");
    assert_eq!(refused.status, 429);
    // A token every 250 ms: the next is under a second away, rounded up.
    assert_eq!(retry_after(&refused), 1);
    assert_eq!(
        proxy
            .metric(r#"turnout_rejected_total{tenant="shop",reason="rate_limit"}"#)
            .await,
        1.0
    );
    // Recovery at the rate: four more requests get through no sooner than
    // three token intervals after the bucket was found empty, and not
    // hopelessly later.
    let deadline = emptied + Duration::from_secs(10);
    let mut passed = 0;
    while passed < 4 {
        assert!(Instant::now() < deadline, "only {passed} through again");
        if proxy.get("shop.test", "/").await.status == 200 {
            passed += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let took = emptied.elapsed();
    assert!(
        took >= Duration::from_millis(700),
        "{took:?}: faster than 4 rps"
    );
    assert!(
        took <= Duration::from_secs(6),
        "{took:?}: far slower than 4 rps"
    );
    // Refused requests are not proxied requests.
    assert_eq!(
        proxy
            .metric(r#"turnout_requests_total{tenant="shop",pool="blue",code="2xx"}"#)
            .await,
        f64::from(burst + 4)
    );
    let four_xx = r#"turnout_requests_total{tenant="shop",pool="blue",code="4xx"}"#;
    assert_eq!(proxy.metric_or_absent(four_xx).await.unwrap_or(0.0), 0.0);
}

#[tokio::test]
async fn retry_after_is_the_time_to_a_token_rounded_up() {
    let up = spawn_upstream("blue").await;
    let proxy = Setup::shop()
        .on(&up)
        .extra("rate_limit = { rps = 0.2, burst = 1 }")
        .spawn()
        .await;
    assert_eq!(proxy.get("shop.test", "/").await.status, 200);
    let refused = proxy.get("shop.test", "/").await;
    assert_eq!(refused.status, 429);
    // One token every 5 s, one just taken: 5 s less the time since.
    assert!(
        (4..=5).contains(&retry_after(&refused)),
        "{:?}",
        refused.headers
    );
}

#[tokio::test]
async fn each_client_has_its_own_bucket() {
    let up = spawn_upstream("blue").await;
    let proxy = Setup::shop()
        .on(&up)
        .extra("client_rate_limit = { rps = 0.01, burst = 3 }")
        .spawn()
        .await;
    let (first, second) = (client_from("127.0.0.1"), client_from("127.0.0.2"));
    for _ in 0..3 {
        assert_eq!(get(&proxy, &first, "shop.test", &[]).await.status, 200);
    }
    // A forged X-Forwarded-For does not make another client.
    let forged = [("x-forwarded-for", "203.0.113.9")];
    let refused = get(&proxy, &first, "shop.test", &forged).await;
    assert_eq!(refused.status, 429);
    assert!(retry_after(&refused) >= 90, "{:?}", refused.headers);
    assert_eq!(
        proxy
            .metric(r#"turnout_rejected_total{tenant="shop",reason="client_rate_limit"}"#)
            .await,
        1.0
    );
    for _ in 0..3 {
        assert_eq!(get(&proxy, &second, "shop.test", &[]).await.status, 200);
    }
    assert_eq!(get(&proxy, &second, "shop.test", &[]).await.status, 429);
    let view = view(&proxy, "shop").await;
    assert_eq!(view["client_rate_limit"]["key"], "ip");
    assert_eq!(view["client_rate_limit"]["clients"], 2);
    assert_eq!(view["client_rate_limit"]["max_clients"], 100_000);
}

#[tokio::test]
async fn a_header_keys_clients_and_its_absence_falls_back_to_the_address() {
    let up = spawn_upstream("blue").await;
    let proxy = Setup::shop()
        .on(&up)
        .extra(r#"client_rate_limit = { rps = 0.01, burst = 2, key = { header = "x-api-key" } }"#)
        .spawn()
        .await;
    let c = client();
    let key = |k: &'static str| [("x-api-key", k)];
    for _ in 0..2 {
        assert_eq!(
            get(&proxy, &c, "shop.test", &key("alpha")).await.status,
            200
        );
    }
    assert_eq!(
        get(&proxy, &c, "shop.test", &key("alpha")).await.status,
        429
    );
    // Same address, another key: another client.
    assert_eq!(get(&proxy, &c, "shop.test", &key("beta")).await.status, 200);
    // No key: the address is the client.
    assert_eq!(get(&proxy, &c, "shop.test", &[]).await.status, 200);
    assert_eq!(get(&proxy, &c, "shop.test", &[]).await.status, 200);
    assert_eq!(get(&proxy, &c, "shop.test", &[]).await.status, 429);
    let view = view(&proxy, "shop").await;
    assert_eq!(view["client_rate_limit"]["key"]["header"], "x-api-key");
    assert_eq!(view["client_rate_limit"]["clients"], 3);
}

#[tokio::test]
async fn one_tenants_limit_never_touches_another() {
    let up = spawn_upstream("blue").await;
    // The same limit for both, from [defaults]: copied, not shared.
    let proxy = Setup::tenant("flood")
        .on(&up)
        .and_tenant("calm")
        .on(&up)
        .and_tenant("free")
        .on(&up)
        .extra("rate_limit = { rps = 1000, burst = 1000 }")
        .preamble("[defaults]\nrate_limit = { rps = 0.01, burst = 3 }\n")
        .spawn()
        .await;
    let flood = statuses(&proxy, "flood.test", 20).await;
    assert_eq!(flood.iter().filter(|s| **s == 200).count(), 3, "{flood:?}");
    assert_eq!(statuses(&proxy, "calm.test", 3).await, [200; 3]);
    assert_eq!(statuses(&proxy, "free.test", 50).await, [200; 50]);
    let rejected =
        |t: &str| format!(r#"turnout_rejected_total{{tenant="{t}",reason="rate_limit"}}"#);
    assert_eq!(proxy.metric(&rejected("flood")).await, 17.0);
    assert_eq!(proxy.metric(&rejected("calm")).await, 0.0);
    assert_eq!(view(&proxy, "free").await["rate_limit"]["burst"], 1000);
}

/// Sends `requests` pipelined on one connection and counts the answers
/// by status class: the way to put many requests through a test quickly.
async fn pipelined(addr: SocketAddr, requests: Vec<String>) -> (usize, usize) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let n = requests.len();
    let writer = tokio::spawn(async move {
        for chunk in requests.chunks(256) {
            wr.write_all(chunk.concat().as_bytes()).await.unwrap();
        }
        wr
    });
    let mut text = Vec::new();
    let mut buf = vec![0; 1 << 16];
    let count =
        |text: &[u8], prefix: &[u8]| text.windows(prefix.len()).filter(|w| *w == prefix).count();
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut ok, mut limited) = (0, 0);
    while ok + limited < n {
        assert!(Instant::now() < deadline, "{} of {n} answers", ok + limited);
        let got = tokio::time::timeout(Duration::from_secs(30), rd.read(&mut buf))
            .await
            .expect("answers stopped coming")
            .unwrap();
        assert!(got > 0, "closed after {} of {n} answers", ok + limited);
        text.extend_from_slice(&buf[..got]);
        // Count whole status lines only; keep a possibly cut one.
        let cut = text.len().saturating_sub(16);
        ok += count(&text[..cut], b"HTTP/1.1 200");
        limited += count(&text[..cut], b"HTTP/1.1 429");
        text.drain(..cut);
    }
    drop(writer.await.unwrap());
    (ok, limited)
}

#[tokio::test]
async fn the_client_table_stays_bounded_under_100_000_keys() {
    let up = spawn_upstream("blue").await;
    // The tenant's bucket refuses nearly all of them (cheaply, nothing
    // forwarded), after the client table has seen each key.
    let limits = "rate_limit = { rps = 0.01, burst = 1 }\n\
        client_rate_limit = { rps = 1, burst = 5, key = { header = \"x-api-key\" }, max_clients = 50 }";
    let proxy = Setup::shop().on(&up).extra(limits).spawn().await;
    let addr = proxy.running.http_addr;
    let request =
        |i: usize| format!("GET / HTTP/1.1\r\nhost: shop.test\r\nx-api-key: k{i}\r\n\r\n");
    let sent: usize = 100_000;
    let per_connection = sent / 4;
    let connections: Vec<_> = (0..4)
        .map(|c| {
            let requests = (c * per_connection..(c + 1) * per_connection)
                .map(request)
                .collect();
            tokio::spawn(pipelined(addr, requests))
        })
        .collect();
    let (mut ok, mut limited) = (0, 0);
    for c in connections {
        let (o, l) = c.await.unwrap();
        (ok, limited) = (ok + o, limited + l);
    }
    assert_eq!((ok, limited), (1, sent - 1));
    let view = view(&proxy, "shop").await;
    assert_eq!(view["client_rate_limit"]["clients"], 50, "{view}");
    // Each refusal was the tenant's: the clients got their tokens back.
    assert_eq!(
        proxy
            .metric(r#"turnout_rejected_total{tenant="shop",reason="rate_limit"}"#)
            .await,
        (sent - 1) as f64
    );
    assert_eq!(
        proxy
            .metric(r#"turnout_rejected_total{tenant="shop",reason="client_rate_limit"}"#)
            .await,
        0.0
    );
}

#[tokio::test]
async fn buckets_survive_a_reload_that_leaves_their_limits_alone() {
    let up = spawn_upstream("blue").await;
    let proxy = Setup::shop()
        .on(&up)
        .extra("rate_limit = { rps = 0.01, burst = 3 }\naccess_log = false")
        .spawn()
        .await;
    assert_eq!(statuses(&proxy, "shop.test", 4).await, [200, 200, 200, 429]);
    // The same file again, then another key changed: the bucket stays empty.
    proxy.reload().await;
    assert_eq!(proxy.get("shop.test", "/").await.status, 429);
    edit_file(&proxy.path, "access_log = false", "access_log = true");
    proxy.reload().await;
    assert_eq!(proxy.get("shop.test", "/").await.status, 429);
    // A bigger burst keeps the bucket's fill (none): no free tokens.
    edit_file(&proxy.path, "burst = 3", "burst = 30");
    proxy.reload().await;
    assert_eq!(view(&proxy, "shop").await["rate_limit"]["burst"], 30);
    assert_eq!(proxy.get("shop.test", "/").await.status, 429);
    // Removing the limit lifts it.
    edit_file(&proxy.path, "rate_limit = { rps = 0.01, burst = 30 }", "");
    proxy.reload().await;
    assert_eq!(statuses(&proxy, "shop.test", 5).await, [200; 5]);
    assert!(view(&proxy, "shop").await["rate_limit"].is_null());
}

#[tokio::test]
async fn refused_requests_leave_the_slo_window_alone() {
    let (blue, green) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let proxy = Setup::shop()
        .pools(&blue, &green)
        .weights(50, 50)
        .extra("rate_limit = { rps = 0.01, burst = 10 }")
        .spawn()
        .await;
    let sent = statuses(&proxy, "shop.test", 40).await;
    assert_eq!(sent.iter().filter(|s| **s == 200).count(), 10);
    assert_eq!(sent.iter().filter(|s| **s == 429).count(), 30);
    let view = view(&proxy, "shop").await;
    let window = |pool: &str| view["slo"][pool]["requests"].as_u64().unwrap();
    assert_eq!(window("blue") + window("green"), 10, "{view}");
    assert_eq!(view["slo"]["green"]["errors"], 0);
    assert_eq!(view["verdict"], "inconclusive");
}

#[tokio::test]
async fn a_refused_request_has_its_access_log_line() {
    let up = spawn_upstream("blue").await;
    let proxy = Setup::shop()
        .on(&up)
        .extra("access_log = true\nrate_limit = { rps = 0.01, burst = 1 }")
        .spawn_binary(&[])
        .await;
    assert_eq!(proxy.get("shop.test", "/a").await.status, 200);
    assert_eq!(proxy.get("shop.test", "/b").await.status, 429);
    let refused = || {
        proxy
            .log_lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["target"] == "turnout::access" && v["status"] == 429)
    };
    wait_until(Duration::from_secs(10), "the 429's access line", || async {
        refused().is_some()
    })
    .await;
    let line = refused().unwrap();
    assert_eq!(line["path"], "/b");
    assert_eq!(line["pool"], "-");
    assert_eq!(line["tenant"], "shop");
}

#[tokio::test]
async fn bad_limits_are_refused_with_their_place() {
    let up = spawn_upstream("blue").await;
    let proxy = Setup::shop()
        .on(&up)
        .extra("rate_limit = { rps = 5, burst = 5 }")
        .spawn()
        .await;
    edit_file(&proxy.path, "burst = 5", "burst = 0");
    let r = proxy.admin("POST", "/v1/config/reload", None, None).await;
    assert_ne!(r.status, 200);
    let error = config_view(&proxy).await["last_error"].to_string();
    assert!(error.contains("tenants.shop.rate_limit.burst"), "{error}");
    // The last good state keeps serving.
    assert_eq!(view(&proxy, "shop").await["rate_limit"]["burst"], 5);
}

#[test]
fn check_shows_the_limits_and_locates_a_bad_one() {
    let check = |path: &std::path::Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_turnout"))
            .args(["check", "--config"])
            .arg(path)
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/turnout.toml");
    let (ok, out, err) = check(&example);
    assert!(ok, "{err}");
    let acme = out.lines().find(|l| l.starts_with("acme: ")).unwrap();
    assert!(
        acme.ends_with(
            "; rate limit 500/s, burst 1000; client rate limit 20/s, burst 40 by header x-api-key, max 100000 clients"
        ),
        "{acme}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[tenants.a]\nhosts = [\"a.test\"]\nstable = \"blue\"\nweights = { blue = 1, green = 0 }\n\
         pools.blue = [\"127.0.0.1:1\"]\npools.green = []\nclient_rate_limit = { rps = 2.5, burst = 0 }\n",
    )
    .unwrap();
    let (ok, _, err) = check(&path);
    assert!(!ok);
    let expected = format!(
        "{}:7:34: tenants.a.client_rate_limit.burst: must be a whole number from 1 to {}",
        path.display(),
        u32::MAX
    );
    assert!(err.contains(&expected), "wanted {expected}\ngot {err}");
}
