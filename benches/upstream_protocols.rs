//! What an upstream request costs by protocol (issue 18): through turnout
//! in-process, a GET to an HTTP/1.1 keep-alive upstream against the same
//! GET to an `h2c://` upstream on its shared HTTP/2 connection; and a gRPC
//! unary call straight to a tonic server, through turnout (`h2c://`), and
//! through nginx's `grpc_pass` when an `nginx` binary is on the PATH.
//!
//! Each iteration is one request at a time on a kept-alive client
//! connection, so the figure is latency per request on loopback, client,
//! proxy and upstream sharing this process's runtime (nginx runs as a
//! child process with one worker). Results: benches/RESULTS.md.
//!
//! Run: `cargo bench --bench upstream_protocols`

#![allow(clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;

/// The allocator the `turnout` binary uses (src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A plain upstream answering `ok` to everything, over HTTP/1.1 or h2c.
async fn plain_upstream(h2: bool) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            stream.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let io = TokioIo::new(stream);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                }
            });
        }
    });
    addr
}

/// nginx with `grpc_pass` to `upstream` on a port of its own, or `None`
/// when no nginx binary runs here.
fn nginx_grpc_pass(
    upstream: SocketAddr,
    dir: &std::path::Path,
) -> Option<(std::process::Child, SocketAddr)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = dir.display();
    let conf = format!(
        "daemon off;\nuser root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n access_log off;\n keepalive_requests 10000000;\n client_body_temp_path {d};\n upstream up {{ server {upstream}; keepalive 16; keepalive_requests 10000000; }}\n server {{\n  listen 127.0.0.1:{port} http2;\n  location / {{ grpc_pass grpc://up; }}\n }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = std::process::Command::new("nginx")
        .args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Some((child, addr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn upstream_protocols(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (proxy, grpc_up, http1, h2c) = rt.block_on(async {
        let (h1, h2) = (plain_upstream(false).await, plain_upstream(true).await);
        let grpc_up = spawn_grpc("grpc").await;
        let probes = r#"health = { interval = "1h" }"#;
        let h2_endpoint = format!("h2c://{h2}");
        let proxy = Setup::tenant("h1")
            .blue(&h1)
            .extra(probes)
            .and_tenant("h2")
            .blue(&EndpointText(h2_endpoint))
            .extra(probes)
            .and_tenant("grpc")
            .blue(&grpc_up)
            .extra(probes)
            .spawn()
            .await;
        (proxy, grpc_up, h1, h2)
    });
    let client = client_empty();
    let proxy_addr = proxy.running.http_addr;
    let get = |host: &'static str| {
        let req = Request::get(format!("http://{proxy_addr}/"))
            .header("host", host)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let client = client.clone();
        async move {
            let resp = client.request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.unwrap();
        }
    };
    let mut group = c.benchmark_group("upstream_get");
    group.bench_function("http1_upstream", |b| b.iter(|| rt.block_on(get("h1.test"))));
    group.bench_function("h2c_upstream", |b| b.iter(|| rt.block_on(get("h2.test"))));
    group.finish();
    let _ = (http1, h2c);

    let mut group = c.benchmark_group("grpc_unary");
    let mut direct = rt.block_on(grpc_client(grpc_up.addr, "grpc.test"));
    group.bench_function("direct", |b| {
        b.iter(|| rt.block_on(unary(&mut direct, "x")).unwrap())
    });
    let mut through = rt.block_on(grpc_client(proxy_addr, "grpc.test"));
    group.bench_function("turnout_h2c", |b| {
        b.iter(|| rt.block_on(unary(&mut through, "x")).unwrap())
    });
    let dir = tempfile::tempdir().unwrap();
    match nginx_grpc_pass(grpc_up.addr, dir.path()) {
        Some((mut nginx, addr)) => {
            let mut via_nginx = rt.block_on(grpc_client(addr, "grpc.test"));
            match rt.block_on(unary(&mut via_nginx, "x")) {
                Ok(_) => {
                    group.bench_function("nginx_grpc_pass", |b| {
                        b.iter(|| rt.block_on(unary(&mut via_nginx, "x")).unwrap())
                    });
                }
                Err(status) => {
                    let log = std::fs::read_to_string(dir.path().join("error.log"));
                    eprintln!("nginx grpc_pass failed ({status}); error.log: {log:?}");
                }
            }
            let _ = nginx.kill();
            let _ = nginx.wait();
        }
        None => eprintln!("no nginx on the PATH: grpc_pass not measured"),
    }
    group.finish();
}

/// An endpoint written out in full (`h2c://…`) for `Setup`.
struct EndpointText(String);

impl Endpoint for EndpointText {
    fn endpoint(&self) -> SocketAddr {
        self.0.rsplit("//").next().unwrap().parse().unwrap()
    }

    fn endpoint_text(&self) -> String {
        self.0.clone()
    }
}

/// A pooled HTTP/1.1 client sending bodiless requests.
fn client_empty() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Empty<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new())
}

criterion_group!(benches, upstream_protocols);
criterion_main!(benches);
