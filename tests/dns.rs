//! Endpoints by name (SPEC section 13): a pool entry naming a host expands
//! into one endpoint per address, re-resolved every `[dns] refresh`.
//!
//! A tiny DNS server on loopback (hickory's own message types, via
//! `hickory_resolver::proto`) answers what each test sets; upstreams listen
//! on one port of 127.0.0.2, 127.0.0.3, ... so a name's addresses are
//! distinct endpoints. turnout asks that server through `[dns] servers`.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::A;
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use support::*;
use tokio::net::UdpSocket;

/// Answers A queries for the names it was given (TTL 0), an empty answer
/// to their AAAA queries, NXDOMAIN for any other name; while `down`, no
/// answer at all (a dead server).
struct DnsServer {
    addr: SocketAddr,
    names: Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>>,
    down: Arc<AtomicBool>,
    queries: Arc<AtomicUsize>,
}

impl DnsServer {
    async fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server = DnsServer {
            addr: socket.local_addr().unwrap(),
            names: Arc::default(),
            down: Arc::default(),
            queries: Arc::default(),
        };
        let (names, down, queries) = (
            Arc::clone(&server.names),
            Arc::clone(&server.down),
            Arc::clone(&server.queries),
        );
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                if down.load(Ordering::Relaxed) {
                    continue;
                }
                let Ok(query) = Message::from_vec(&buf[..len]) else {
                    continue;
                };
                queries.fetch_add(1, Ordering::Relaxed);
                let answer = answer(&query, &names.lock().unwrap());
                let _ = socket.send_to(&answer.to_vec().unwrap(), from).await;
            }
        });
        server
    }

    fn set(&self, name: &str, ips: &[Ipv4Addr]) {
        self.names
            .lock()
            .unwrap()
            .insert(name.to_owned(), ips.to_vec());
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
    }
}

fn answer(query: &Message, names: &HashMap<String, Vec<Ipv4Addr>>) -> Message {
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.message_type = MessageType::Response;
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    let Some(q) = query.queries.first() else {
        reply.metadata.response_code = ResponseCode::FormErr;
        return reply;
    };
    reply.add_query(q.clone());
    let asked = q.name().to_ascii().trim_end_matches('.').to_lowercase();
    match names.get(&asked) {
        None => reply.metadata.response_code = ResponseCode::NXDomain,
        Some(ips) if q.query_type() == RecordType::A => {
            for ip in ips {
                let record = Record::from_rdata(q.name().clone(), 0, RData::A(A(*ip)));
                reply.add_answer(record);
            }
        }
        // AAAA and anything else: the name exists, with no such record.
        Some(_) => {}
    }
    reply
}

fn loopback(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// Upstreams named `names` on 127.0.0.2, 127.0.0.3, ... all on one port.
async fn upstreams(names: &[&'static str]) -> (u16, Vec<Upstream>) {
    'attempt: for _ in 0..20 {
        let first = spawn_upstream_at(names[0], SocketAddr::from((loopback(2), 0)))
            .await
            .unwrap();
        let port = first.addr.port();
        let mut all = vec![first];
        for (i, name) in names.iter().enumerate().skip(1) {
            let at = SocketAddr::from((loopback(2 + i as u8), port));
            match spawn_upstream_at(name, at).await {
                Ok(up) => all.push(up),
                Err(_) => continue 'attempt,
            }
        }
        return (port, all);
    }
    panic!("no port free on every loopback address");
}

/// A control file asking `dns` every 200 ms, with `pools` (TOML lines) and
/// quick health checks.
fn control(dns: &DnsServer, pools: &str, weights: (u32, u32)) -> String {
    format!(
        "[dns]\nservers = [\"{}\"]\nrefresh = \"200ms\"\n\n[tenants.shop]\nhosts = [\"shop.test\"]\nstable = \"blue\"\nweights = {{ blue = {}, green = {} }}\n{pools}\nhealth = {{ interval = \"100ms\", unhealthy_after = 1, healthy_after = 1 }}\n",
        dns.addr, weights.0, weights.1
    )
}

async fn spawn(text: &str) -> TestProxy {
    spawn_proxy_in(tempfile::tempdir().unwrap(), "", text).await
}

/// The `address` of each endpoint of `pool` in the tenant view, sorted.
async fn endpoints(proxy: &TestProxy, pool: &str) -> Vec<String> {
    let v = view(proxy, "shop").await;
    let mut list: Vec<String> = v["pools"][pool]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["address"].as_str().unwrap().to_owned())
        .collect();
    list.sort();
    list
}

fn hits(up: &Upstream) -> usize {
    up.hits.load(Ordering::Relaxed)
}

#[tokio::test]
async fn a_name_with_two_addresses_is_two_endpoints_and_both_get_traffic() {
    let dns = DnsServer::start().await;
    let (port, ups) = upstreams(&["two", "three"]).await;
    dns.set("app.test", &[loopback(2), loopback(3)]);
    let pools = format!("pools.blue = [\"app.test:{port}\"]\npools.green = []");
    let proxy = spawn(&control(&dns, &pools, (1, 0))).await;

    // Resolved before generation 1 was built: both from the first request.
    let view = view(&proxy, "shop").await;
    let listed = &view["pools"]["blue"]["endpoints"];
    assert_eq!(listed.as_array().unwrap().len(), 2, "{view}");
    assert_eq!(
        listed[0]["address"],
        format!("app.test:{port}/127.0.0.2").as_str()
    );
    assert_eq!(
        listed[1]["address"],
        format!("app.test:{port}/127.0.0.3").as_str()
    );
    assert_eq!(listed[0]["name"], format!("app.test:{port}").as_str());

    for _ in 0..40 {
        let r = proxy.get("shop.test", "/").await;
        assert_eq!(r.status, 200);
    }
    assert!(
        hits(&ups[0]) > 0 && hits(&ups[1]) > 0,
        "both addresses serve"
    );
    assert_eq!(hits(&ups[0]) + hits(&ups[1]), 40);

    // Proxied requests keep their own Host; metrics label each address.
    let echoed = json(&proxy.get("shop.test", "/headers").await);
    assert_eq!(echoed["host"][0], "shop.test");
    for ip in ["127.0.0.2", "127.0.0.3"] {
        let series = format!(
            "turnout_endpoint_healthy{{tenant=\"shop\",pool=\"blue\",endpoint=\"app.test:{port}/{ip}\"}}"
        );
        assert_eq!(proxy.metric(&series).await, 1.0, "{series}");
    }
}

/// Requests without pause, from two clients, until dropped; counts those
/// not answered 200, and each client's answered requests.
struct Load {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicUsize>,
    sent: Arc<[AtomicUsize; 2]>,
}

impl Load {
    fn start(proxy: &Arc<TestProxy>) -> Load {
        let load = Load {
            stop: Arc::default(),
            failed: Arc::default(),
            sent: Arc::default(),
        };
        for client in 0..2 {
            let proxy = Arc::clone(proxy);
            let (stop, failed, sent) = (
                Arc::clone(&load.stop),
                Arc::clone(&load.failed),
                Arc::clone(&load.sent),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if proxy.get("shop.test", "/").await.status != 200 {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    sent[client].fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        load
    }

    /// Requests answered so far, per client.
    fn each(&self) -> [usize; 2] {
        [0, 1].map(|c| self.sent[c].load(Ordering::Relaxed))
    }

    /// Requests answered so far, all clients.
    fn sent(&self) -> usize {
        self.each().iter().sum()
    }

    /// Waits until each client has had one more request answered than at
    /// `at`: the one it had on its way then is over.
    async fn each_past(&self, at: [usize; 2]) {
        wait_until(
            Duration::from_secs(10),
            "each client's request on its way answered",
            || async { self.each().iter().zip(at).all(|(now, then)| *now > then) },
        )
        .await;
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[tokio::test]
async fn traffic_follows_a_changed_answer_with_no_failed_request() {
    let dns = DnsServer::start().await;
    let (port, ups) = upstreams(&["two", "three", "four"]).await;
    dns.set("app.test", &[loopback(2), loopback(3)]);
    let pools = format!("pools.blue = [\"app.test:{port}\"]\npools.green = []");
    let proxy = Arc::new(spawn(&control(&dns, &pools, (1, 0))).await);
    let generation = json(&proxy.admin_get("/v1/config").await)["generation"].clone();

    let load = Load::start(&proxy);
    wait_until(Duration::from_secs(10), "traffic on .2 and .3", || async {
        hits(&ups[0]) > 0 && hits(&ups[1]) > 0
    })
    .await;

    // .2 leaves the answer and .4 joins: within a refresh or two.
    dns.set("app.test", &[loopback(3), loopback(4)]);
    wait_until(Duration::from_secs(10), "traffic on .4", || async {
        hits(&ups[2]) > 0
    })
    .await;
    let expected = vec![
        format!("app.test:{port}/127.0.0.3"),
        format!("app.test:{port}/127.0.0.4"),
    ];
    assert_eq!(endpoints(&proxy, "blue").await, expected);
    // .2 gets no new request once the table without it is in. A client's
    // request routed just before may still be on its way to .2: each
    // client's request in flight ends first.
    load.each_past(load.each()).await;
    let before = hits(&ups[0]);
    let sent = load.sent();
    wait_until(Duration::from_secs(10), "more traffic", || async {
        load.sent() > sent + 50
    })
    .await;
    assert_eq!(hits(&ups[0]), before, "a vanished address got requests");
    assert_eq!(
        load.failed.load(Ordering::Relaxed),
        0,
        "no request failed while the answer changed"
    );
    drop(load);
    assert_eq!(
        json(&proxy.admin_get("/v1/config").await)["generation"],
        generation,
        "a new answer is not a new generation of the control state"
    );
}

/// An upstream on 127.0.0.2 (a port of its own, bound before it is
/// handed out) answering `ok` to everything that counts its open
/// connections that carried a request other than a health probe
/// (`/probe`); its port and the count.
async fn counting_upstream() -> (u16, Arc<AtomicUsize>) {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind((loopback(2), 0))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let open: Arc<AtomicUsize> = Arc::default();
    let count = Arc::clone(&open);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let carried = Arc::new(AtomicBool::new(false));
                let (seen, counted) = (Arc::clone(&carried), Arc::clone(&count));
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    if req.uri().path() != "/probe" && !seen.swap(true, Ordering::SeqCst) {
                        counted.fetch_add(1, Ordering::SeqCst);
                    }
                    async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                        ))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
                if carried.load(Ordering::SeqCst) {
                    count.fetch_sub(1, Ordering::SeqCst);
                }
            });
        }
    });
    (port, open)
}

#[tokio::test]
async fn a_vanished_address_has_its_idle_connections_closed() {
    let dns = DnsServer::start().await;
    let (port, open) = counting_upstream().await;
    dns.set("app.test", &[loopback(2)]);
    // Probes (on their own client) are not counted: only the proxy's
    // keep-alive connections that carried requests.
    let text = format!(
        "[dns]\nservers = [\"{}\"]\nrefresh = \"200ms\"\n\n[tenants.shop]\nhosts = [\"shop.test\"]\nstable = \"blue\"\nweights = {{ blue = 1, green = 0 }}\npools.blue = [\"app.test:{port}\"]\npools.green = []\nhealth = {{ path = \"/probe\" }}\n",
        dns.addr
    );
    let proxy = spawn(&text).await;
    for _ in 0..5 {
        assert_eq!(proxy.get("shop.test", "/").await.status, 200);
    }
    assert!(open.load(Ordering::SeqCst) >= 1, "a kept-alive connection");

    // The name moves elsewhere: .2 is no endpoint any more, and the idle
    // connection to it closes.
    dns.set("app.test", &[loopback(9)]);
    wait_until(
        Duration::from_secs(10),
        "the idle connection closed",
        || async { open.load(Ordering::SeqCst) == 0 },
    )
    .await;
    assert_eq!(
        endpoints(&proxy, "blue").await,
        vec![format!("app.test:{port}/127.0.0.9")]
    );
}

#[tokio::test]
async fn dns_down_keeps_the_last_addresses() {
    let dns = DnsServer::start().await;
    let (port, ups) = upstreams(&["two", "three"]).await;
    dns.set("app.test", &[loopback(2), loopback(3)]);
    let pools = format!("pools.blue = [\"app.test:{port}\"]\npools.green = []");
    let proxy = spawn(&control(&dns, &pools, (1, 0))).await;

    dns.set_down(true);
    let failures = "turnout_dns_failures_total{name=\"app.test\"}";
    wait_until(Duration::from_secs(30), "a failed resolution", || async {
        proxy.metric_or_absent(failures).await.unwrap_or(0.0) >= 1.0
    })
    .await;
    assert_eq!(endpoints(&proxy, "blue").await.len(), 2);
    for _ in 0..40 {
        assert_eq!(proxy.get("shop.test", "/").await.status, 200);
    }
    assert!(hits(&ups[0]) > 0 && hits(&ups[1]) > 0, "both still serve");

    // Back up with another answer: it applies.
    dns.set("app.test", &[loopback(3)]);
    dns.set_down(false);
    wait_until(Duration::from_secs(30), "the new answer", || async {
        endpoints(&proxy, "blue").await == vec![format!("app.test:{port}/127.0.0.3")]
    })
    .await;
}

#[tokio::test]
async fn a_name_that_never_resolved_leaves_its_pool_empty_until_it_does() {
    let dns = DnsServer::start().await;
    let (port, ups) = upstreams(&["two", "green"]).await;
    // blue is the name, green the literal address of the second upstream.
    let pools =
        format!("pools.blue = [\"late.test:{port}\"]\npools.green = [\"127.0.0.3:{port}\"]");
    let proxy = spawn(&control(&dns, &pools, (1, 0))).await;
    assert!(endpoints(&proxy, "blue").await.is_empty());
    // Blue has no endpoint: its requests fail over to green (SPEC 4.4).
    for _ in 0..5 {
        let r = proxy.get("shop.test", "/").await;
        assert_eq!((r.status.as_u16(), r.pool()), (200, Some("green")));
    }
    let failovers = "turnout_failovers_total{tenant=\"shop\",from=\"blue\"}";
    assert_eq!(proxy.metric(failovers).await, 5.0);
    assert!(
        proxy
            .metric("turnout_dns_failures_total{name=\"late.test\"}")
            .await
            >= 1.0
    );

    dns.set("late.test", &[loopback(2)]);
    wait_until(Duration::from_secs(10), "blue serving", || async {
        proxy.get("shop.test", "/").await.pool() == Some("blue")
    })
    .await;
    assert!(hits(&ups[0]) > 0);
}

#[tokio::test]
async fn an_unhealthy_address_is_ejected_while_the_other_serves() {
    let dns = DnsServer::start().await;
    let (port, ups) = upstreams(&["two", "three"]).await;
    dns.set("app.test", &[loopback(2), loopback(3)]);
    let pools = format!("pools.blue = [\"app.test:{port}\"]\npools.green = []");
    let proxy = spawn(&control(&dns, &pools, (1, 0))).await;

    ups[0].set_healthy(false);
    wait_until(Duration::from_secs(10), ".2 ejected", || async {
        let v = view(&proxy, "shop").await;
        v["pools"]["blue"]["endpoints"][0]["healthy"] == false
    })
    .await;
    let before = hits(&ups[0]);
    for _ in 0..30 {
        let r = proxy.get("shop.test", "/").await;
        assert_eq!((r.status.as_u16(), r.upstream()), (200, Some("three")));
    }
    assert_eq!(hits(&ups[0]), before);
    let v = view(&proxy, "shop").await;
    assert_eq!(v["pools"]["blue"]["endpoints"][1]["healthy"], true);
}

/// An upstream on 127.0.0.2 (a port of its own, bound before it is
/// handed out) that records the `Host` of each health probe; its port and
/// the record.
async fn probe_recorder() -> (u16, Arc<Mutex<Vec<String>>>) {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind((loopback(2), 0))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let hosts: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = Arc::clone(&hosts);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    if req.uri().path() == "/healthz" {
                        let host = req.headers().get(http::header::HOST);
                        let host = host.map_or("-".into(), |h| h.to_str().unwrap().to_owned());
                        seen.lock().unwrap().push(host);
                    }
                    async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                        ))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    (port, hosts)
}

#[tokio::test]
async fn probes_carry_the_name_as_host() {
    let dns = DnsServer::start().await;
    let (port, hosts) = probe_recorder().await;
    dns.set("app.test", &[loopback(2)]);
    let pools = format!("pools.blue = [\"app.test:{port}\"]\npools.green = []");
    let _proxy = spawn(&control(&dns, &pools, (1, 0))).await;
    wait_until(Duration::from_secs(10), "a probe", || async {
        !hosts.lock().unwrap().is_empty()
    })
    .await;
    let seen = hosts.lock().unwrap().clone();
    assert!(
        seen.iter().all(|h| *h == format!("app.test:{port}")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn check_warns_about_names_that_do_not_resolve() {
    let dns = DnsServer::start().await;
    dns.set("known.test", &[loopback(2)]);
    let text = control(
        &dns,
        "pools.blue = [\"known.test:80\"]\npools.green = [\"nowhere.test:80\"]",
        (1, 0),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("turnout.toml");
    std::fs::write(&path, control_file("", &text)).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_turnout"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let expected = format!(
        "{}:14:16: warning: tenants.shop.pools.green[0]: cannot resolve `nowhere.test`",
        path.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!stderr.contains("known.test"), "{stderr}");
}
