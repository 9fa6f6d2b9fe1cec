//! turnout in-process on ephemeral ports (`TestProxy`), a response read
//! whole (`Reply`), and steady background traffic (`Traffic`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};

use turnout::app::{self, ListenOverrides, Running};

use crate::support::{TestClient, client, control_file, metric_or_absent, metric_value};

/// A turnout serving a control file written to a temp dir.
pub struct TestProxy {
    pub running: Running,
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub client: TestClient,
}

/// Starts turnout on ephemeral ports with `tenants` (TOML) as its tenants.
pub async fn spawn_proxy(tenants: &str) -> TestProxy {
    spawn_proxy_in(tempfile::tempdir().unwrap(), "", tenants).await
}

/// Like `spawn_proxy`, in a given directory (for TLS files beside the
/// control file) and with extra `[listen]` lines.
pub async fn spawn_proxy_in(
    dir: tempfile::TempDir,
    listen_extra: &str,
    tenants: &str,
) -> TestProxy {
    let path = dir.path().join("turnout.toml");
    std::fs::write(&path, control_file(listen_extra, tenants)).unwrap();
    start_at(dir, path).await
}

/// Starts turnout on the control file already at `path` in `dir`.
pub async fn start_at(dir: tempfile::TempDir, path: PathBuf) -> TestProxy {
    let running = app::start(&path, ListenOverrides::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    TestProxy {
        running,
        dir,
        path,
        client: client(),
    }
}

/// A response read whole.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn pool(&self) -> Option<&str> {
        self.headers
            .get("x-turnout-pool")
            .and_then(|v| v.to_str().ok())
    }

    pub fn upstream(&self) -> Option<&str> {
        self.headers.get("x-upstream").and_then(|v| v.to_str().ok())
    }
}

/// Sends `req` with `client` and reads the whole response.
pub async fn send_with(client: &TestClient, req: Request<Full<Bytes>>) -> Reply {
    let resp = client
        .request(req)
        .await
        .expect("request to the proxy failed");
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .expect("response body failed")
        .to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// A GET of `http://{addr}{path}` with `Host: host`.
pub fn get_request(addr: SocketAddr, host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://{addr}{path}"))
        .header("host", host)
        .body(Full::default())
        .unwrap()
}

/// A call on an admin API: `method path` with an optional bearer token and
/// body.
pub fn admin_request(
    admin: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Request<Full<Bytes>> {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{admin}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = body.map(|b| Bytes::from(b.to_owned())).unwrap_or_default();
    req.body(Full::new(body)).unwrap()
}

impl TestProxy {
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.http_addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.admin_addr)
    }

    /// GET `path` with `Host: host`.
    pub async fn get(&self, host: &str, path: &str) -> Reply {
        self.send(get_request(self.running.http_addr, host, path))
            .await
    }

    pub async fn send(&self, req: Request<Full<Bytes>>) -> Reply {
        send_with(&self.client, req).await
    }

    /// GET on the admin listener.
    pub async fn admin_get(&self, path: &str) -> Reply {
        self.admin("GET", path, None, None).await
    }

    /// A call on the admin API with an optional bearer token and JSON body.
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Reply {
        let req = admin_request(self.running.admin_addr, method, path, token, body);
        self.send(req).await
    }

    /// `POST /v1/config/reload`, which must succeed.
    pub async fn reload(&self) -> Reply {
        let r = self.admin("POST", "/v1/config/reload", None, None).await;
        assert_eq!(r.status, 200, "reload failed: {}", r.text());
        r
    }

    /// The value of one metric series on `/metrics`; panics if the series
    /// is missing (see `metric_value`).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.admin_get("/metrics").await.text();
        metric_value(&text, series)
    }

    /// The value of one metric series on `/metrics`, `None` if absent: for
    /// tests where absence is an allowed (or the expected) answer.
    pub async fn metric_or_absent(&self, series: &str) -> Option<f64> {
        let text = self.admin_get("/metrics").await.text();
        metric_or_absent(&text, series)
    }

    /// The tenant's requests in flight, read from the routing table itself
    /// (what `max_inflight` admits against).
    pub fn inflight(&self, tenant: &str) -> u32 {
        self.running
            .proxy
            .table
            .load()
            .tenant(tenant)
            .unwrap()
            .state
            .inflight()
    }

    /// Stops this turnout and starts another on the same file and directory,
    /// as a restart does.
    pub async fn restart(self) -> TestProxy {
        let TestProxy {
            running, dir, path, ..
        } = self;
        running.shutdown().await;
        start_at(dir, path).await
    }
}

/// Requests without pause, from two clients, until dropped.
pub struct Traffic(Arc<AtomicBool>);

impl Traffic {
    /// Traffic to `shop.test`.
    pub fn start(proxy: &Arc<TestProxy>) -> Traffic {
        Traffic::to(proxy, "shop.test")
    }

    /// Traffic to `host`.
    pub fn to(proxy: &Arc<TestProxy>, host: &'static str) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        for _ in 0..2 {
            let (proxy, stop) = (Arc::clone(proxy), Arc::clone(&stop));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    proxy.get(host, "/").await;
                }
            });
        }
        Traffic(stop)
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// An HTTP/2 client with prior knowledge (h2c) on a new TCP connection to
/// `addr`, its connection driven in the background.
pub async fn h2c(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}
