//! Test kit: real upstream servers, a real proxy on ephemeral ports, a
//! client, and waiting on conditions with a deadline.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use turnout::app::{self, ListenOverrides, Running};

/// An in-process upstream. Its behaviour is chosen by the request path:
/// - `/healthz`: 200, or 503 while `health_ok` is false (counted in `health_hits`)
/// - `/headers`: answers the request headers as JSON (name → values)
/// - `/echo`: streams the request body back
/// - `/big/N`: N bytes of a fixed pattern, in 64 KiB chunks
/// - `/hang`: never answers
/// - `/status/NNN`: answers that status
/// - `/close`: the upstream's name with `Connection: close`
/// - anything else: the upstream's name — or 500 while `failing` is set —
///   after `delay_ms`
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: &'static str,
    pub hits: Arc<AtomicUsize>,
    pub controls: Arc<Controls>,
}

#[derive(Default)]
pub struct Controls {
    pub unhealthy: AtomicBool,
    pub failing: AtomicBool,
    pub delay_ms: AtomicU64,
    pub health_hits: AtomicUsize,
    /// Connections that carried at least one request other than a probe.
    pub traffic_connections: AtomicUsize,
}

impl Upstream {
    pub fn set_healthy(&self, healthy: bool) {
        self.controls.unhealthy.store(!healthy, Ordering::Relaxed);
    }

    pub fn set_failing(&self, failing: bool) {
        self.controls.failing.store(failing, Ordering::Relaxed);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.controls
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn health_hits(&self) -> usize {
        self.controls.health_hits.load(Ordering::Relaxed)
    }

    pub fn traffic_connections(&self) -> usize {
        self.controls.traffic_connections.load(Ordering::Relaxed)
    }
}

pub async fn spawn_upstream(name: &'static str) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let controls = Arc::new(Controls::default());
    let (counter, ctl) = (Arc::clone(&hits), Arc::clone(&controls));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (counter, ctl) = (Arc::clone(&counter), Arc::clone(&ctl));
            tokio::spawn(async move {
                let counted = AtomicBool::new(false);
                let svc = service_fn(move |req| {
                    let ctl = Arc::clone(&ctl);
                    if req.uri().path() != "/healthz" {
                        counter.fetch_add(1, Ordering::Relaxed);
                        if !counted.swap(true, Ordering::Relaxed) {
                            ctl.traffic_connections.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    upstream_answer(name, ctl, req)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        name,
        hits,
        controls,
    }
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn upstream_answer(
    name: &'static str,
    ctl: Arc<Controls>,
    req: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let full = |b: Bytes| Full::new(b).boxed();
    let resp = if path == "/healthz" {
        ctl.health_hits.fetch_add(1, Ordering::Relaxed);
        let mut r = Response::new(full(Bytes::from_static(b"ok")));
        if ctl.unhealthy.load(Ordering::Relaxed) {
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        r
    } else if path == "/headers" {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in req.headers() {
            map.entry(k.to_string())
                .or_default()
                .push(v.to_str().unwrap_or("?").to_owned());
        }
        Response::new(full(Bytes::from(serde_json::to_vec(&map).unwrap())))
    } else if path == "/echo" {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Response::new(full(body))
    } else if let Some(n) = path.strip_prefix("/big/") {
        let total: usize = n.parse().unwrap_or(0);
        let chunks = (0..total).step_by(64 * 1024).map(move |start| {
            let end = (start + 64 * 1024).min(total);
            Ok::<_, Infallible>(Frame::data(Bytes::from(pattern(start, end))))
        });
        Response::new(StreamBody::new(futures_stream(chunks)).boxed())
    } else if path == "/hang" {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Response::new(full(Bytes::new()))
    } else if path == "/close" {
        let mut r = Response::new(full(Bytes::from(name)));
        r.headers_mut()
            .insert(http::header::CONNECTION, "close".parse().unwrap());
        r
    } else if let Some(code) = path.strip_prefix("/status/") {
        let mut r = Response::new(full(Bytes::from(name)));
        *r.status_mut() = StatusCode::from_u16(code.parse().unwrap_or(500))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        r
    } else {
        let delay = ctl.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let mut r = Response::new(full(Bytes::from(name)));
        if ctl.failing.load(Ordering::Relaxed) {
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        }
        r
    };
    let mut resp = resp;
    resp.headers_mut()
        .insert("x-upstream", name.parse().unwrap());
    Ok(resp)
}

/// The byte at position i of a `/big/N` body.
pub fn pattern(start: usize, end: usize) -> Vec<u8> {
    (start..end).map(|i| (i % 251) as u8).collect()
}

fn futures_stream<I: Iterator + Send + 'static>(
    iter: I,
) -> impl futures_core::Stream<Item = I::Item> + Send {
    tokio_stream::iter(iter)
}

/// A turnout serving a control file written to a temp dir.
pub struct TestProxy {
    pub running: Running,
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub client: Client<HttpConnector, Full<Bytes>>,
}

/// Starts turnout on ephemeral ports with `tenants` (TOML) as its tenants.
pub async fn spawn_proxy(tenants: &str) -> TestProxy {
    spawn_proxy_in(tempfile::tempdir().unwrap(), "", tenants).await
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
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

impl TestProxy {
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.http_addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.admin_addr)
    }

    /// GET `path` with `Host: host`.
    pub async fn get(&self, host: &str, path: &str) -> Reply {
        self.send(
            Request::get(self.http_url(path))
                .header("host", host)
                .body(Full::default())
                .unwrap(),
        )
        .await
    }

    pub async fn send(&self, req: Request<Full<Bytes>>) -> Reply {
        let resp = self
            .client
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

    /// GET on the admin listener.
    pub async fn admin_get(&self, path: &str) -> Reply {
        self.send(
            Request::get(self.admin_url(path))
                .body(Full::default())
                .unwrap(),
        )
        .await
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
}

/// The value of `series` (`name` or `name{label="value",...}`, labels in
/// any order) in a Prometheus text exposition. A missing series fails the
/// test, naming the series and the similar ones present, so that a
/// misspelled name can never pass an "equals 0" assertion.
pub fn metric_value(text: &str, series: &str) -> f64 {
    metric_or_absent(text, series).unwrap_or_else(|| {
        panic!(
            "metric series `{series}` is not on /metrics; similar series present:\n  {}",
            similar_series(text, series).join("\n  ")
        )
    })
}

/// The value of `series` in a Prometheus text exposition, `None` if no
/// line carries it. Panics on a malformed `series` or value.
pub fn metric_or_absent(text: &str, series: &str) -> Option<f64> {
    let wanted = parse_series(series)
        .unwrap_or_else(|| panic!("`{series}` is not a series (name{{label=\"value\",...}})"));
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (s, value) = l.rsplit_once(' ')?;
            (parse_series(s)? == wanted).then_some(value)
        })
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("series `{series}` has a malformed value `{v}`"))
        })
}

/// A series name and its labels, sorted so that label order does not count.
type Series = (String, Vec<(String, String)>);

/// Parses `name` or `name{k="v",...}` (Prometheus text format escapes:
/// `\\`, `\"`, `\n`).
fn parse_series(s: &str) -> Option<Series> {
    let s = s.trim();
    let Some((name, rest)) = s.split_once('{') else {
        return (!s.is_empty()).then(|| (s.to_owned(), Vec::new()));
    };
    let mut labels = Vec::new();
    let mut chars = rest.strip_suffix('}')?.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if chars.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '"' => break,
                '\\' => value.push(match chars.next()? {
                    'n' => '\n',
                    c => c,
                }),
                c => value.push(c),
            }
        }
        labels.push((key.trim().to_owned(), value));
        match chars.next() {
            None => break,
            Some(',') => {}
            Some(_) => return None,
        }
    }
    labels.sort();
    Some((name.to_owned(), labels))
}

/// The series in `text` that look like `series`: those of the same metric
/// name, or else those whose names are close to it; every name present if
/// nothing is close.
fn similar_series(text: &str, series: &str) -> Vec<String> {
    let name = series.split_once('{').map_or(series, |(n, _)| n).trim();
    let present: Vec<(&str, &str)> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s))
        .map(|s| (s.split_once('{').map_or(s, |(n, _)| n), s))
        .collect();
    let same: Vec<String> = present
        .iter()
        .filter(|(n, _)| *n == name)
        .map(|(_, s)| (*s).to_owned())
        .collect();
    if !same.is_empty() {
        return same;
    }
    let mut names: Vec<&str> = present.iter().map(|(n, _)| *n).collect();
    names.sort_unstable();
    names.dedup();
    let close: Vec<String> = names
        .iter()
        .filter(|n| edit_distance(n, name) <= 3 || n.contains(name) || name.contains(**n))
        .flat_map(|n| present.iter().filter(move |(p, _)| p == n))
        .map(|(_, s)| (*s).to_owned())
        .collect();
    if close.is_empty() {
        names.into_iter().map(str::to_owned).collect()
    } else {
        close
    }
}

/// Levenshtein distance, for naming the series a misspelling meant.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Polls `cond` until it holds or `within` passes.
pub async fn wait_until<F, Fut>(within: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A tenant table with one endpoint per pool.
pub fn tenant(
    name: &str,
    hosts: &str,
    blue: &Upstream,
    green: &Upstream,
    weights: (u32, u32),
    extra: &str,
) -> String {
    format!(
        "[tenants.{name}]\nhosts = {hosts}\nstable = \"blue\"\nweights = {{ blue = {}, green = {} }}\npools.blue = [\"{}\"]\npools.green = [\"{}\"]\n{extra}\n",
        weights.0, weights.1, blue.addr, green.addr
    )
}

/// Writes `request` on a fresh connection and reads until the server closes
/// it or stops sending for a moment.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if response_complete(&out) {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `bytes` hold a whole response with a Content-Length body.
fn response_complete(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let Some(head_end) = text.find("\r\n\r\n") else {
        return false;
    };
    let len = text[..head_end].lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length:")
            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
    });
    len.is_some_and(|n| bytes.len() >= head_end + 4 + n)
}

/// The turnout binary, run as a child process.
pub struct BinaryProxy {
    pub child: tokio::process::Child,
    pub http_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The control file's directory, when this process owns it.
    pub dir: Option<tempfile::TempDir>,
    /// Every line the process wrote to stderr (its log), as it comes.
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl BinaryProxy {
    /// The log lines written so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

/// Runs `target/.../turnout` on a control file with `tenants`, with extra
/// environment variables; learns its ports from its JSON start-up log line.
pub async fn spawn_binary(tenants: &str, env: &[(&str, &str)]) -> BinaryProxy {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("turnout.toml");
    std::fs::write(
        &path,
        format!("[listen]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n{tenants}"),
    )
    .unwrap();
    spawn_binary_at(Some(dir), &path, &[], env).await
}

/// Runs the turnout binary on the control file at `path` with extra
/// arguments for `run`.
pub async fn spawn_binary_at(
    dir: Option<tempfile::TempDir>,
    path: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> BinaryProxy {
    use tokio::io::AsyncBufReadExt;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_turnout"));
    cmd.args(["--log-format", "json", "run", "--config"])
        .arg(path)
        .args(args)
        .env("TURNOUT_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let started = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            log.lock().unwrap().push(line.clone());
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["message"] == "turnout serving" {
                return Some(v);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .expect("turnout did not report that it is serving");
    // Keep reading stderr so the child never blocks on a full pipe.
    let kept = Arc::clone(&log);
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            kept.lock().unwrap().push(line);
        }
    });
    let addr = |k: &str| started[k].as_str().unwrap().parse().unwrap();
    BinaryProxy {
        child,
        http_addr: addr("http_addr"),
        admin_addr: addr("admin_addr"),
        dir,
        log,
    }
}

impl TestProxy {
    /// A call on the admin API with an optional bearer token and JSON body.
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(self.admin_url(path));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = body.map(|b| Bytes::from(b.to_owned())).unwrap_or_default();
        self.send(req.body(Full::new(body)).unwrap()).await
    }

    /// The tenant's weights as the admin API reports them.
    pub async fn weights(&self, tenant: &str) -> (u64, u64) {
        tenant_weights(&self.client, self.running.admin_addr, tenant).await
    }
}

/// A tenant's weights from any turnout's admin API (no token).
pub async fn tenant_weights(
    client: &Client<HttpConnector, Full<Bytes>>,
    admin: SocketAddr,
    tenant: &str,
) -> (u64, u64) {
    let req = Request::get(format!("http://{admin}/v1/tenants/{tenant}"))
        .body(Full::default())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    (
        v["weights"]["blue"].as_u64().unwrap(),
        v["weights"]["green"].as_u64().unwrap(),
    )
}

/// Replaces `from` with `to` in the control file, in place.
pub fn edit_file(path: &std::path::Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "`{from}` not in the file:\n{text}");
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

impl TestProxy {
    /// The tenant's weights, asked with a bearer token.
    pub async fn weights_with(&self, token: &str, tenant: &str) -> (u64, u64) {
        let r = self
            .admin("GET", &format!("/v1/tenants/{tenant}"), Some(token), None)
            .await;
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        (
            v["weights"]["blue"].as_u64().unwrap(),
            v["weights"]["green"].as_u64().unwrap(),
        )
    }
}

/// A loopback port that refuses connections: bound (so nothing else gets it
/// while the test runs) but never listening. Keep the socket alive.
pub fn refusing_port() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

impl TestProxy {
    /// `POST /v1/config/reload`, which must succeed.
    pub async fn reload(&self) -> Reply {
        let r = self.admin("POST", "/v1/config/reload", None, None).await;
        assert_eq!(r.status, 200, "reload failed: {}", r.text());
        r
    }
}

/// Like `spawn_proxy`, in a given directory (for TLS files beside the
/// control file) and with extra `[listen]` lines.
pub async fn spawn_proxy_in(
    dir: tempfile::TempDir,
    listen_extra: &str,
    tenants: &str,
) -> TestProxy {
    let path = dir.path().join("turnout.toml");
    let text = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n{listen_extra}\n{tenants}"
    );
    std::fs::write(&path, text).unwrap();
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

impl BinaryProxy {
    /// Sends the process a real signal (`"HUP"`, `"TERM"`, ...).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("the process is running").to_string();
        let status = std::process::Command::new("kill")
            .args([format!("-{name}").as_str(), &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} {pid} failed");
    }
}
