//! In-process upstreams: a hyper HTTP/1.1 server whose behaviour the
//! request path picks (`spawn_upstream`), and a WebSocket echo
//! (`spawn_ws_echo`), and a webhook receiver (`spawn_receiver`). Each binds `127.0.0.1:0` before it is handed out, so
//! a test never races its own upstream.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

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
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    spawn_upstream_at(name, any).await.unwrap()
}

/// [`spawn_upstream`] on `addr` (another loopback address, a given port):
/// an error when it cannot be bound there.
pub async fn spawn_upstream_at(name: &'static str, addr: SocketAddr) -> std::io::Result<Upstream> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
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
    Ok(Upstream {
        addr,
        name,
        hits,
        controls,
    })
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
        let chunks = (0..total).step_by(CHUNK).map(move |start| {
            let end = (start + CHUNK).min(total);
            Ok::<_, Infallible>(Frame::data(pattern_chunk(start, end)))
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

/// The size of a `/big/N` body's chunks.
const CHUNK: usize = 64 * 1024;

/// `pattern(start, end)` for a chunk (`end - start <= CHUNK`), without
/// making it: a slice of one block made once. A client that stops reading
/// has tens of megabytes of a body buffered on its way (socket buffers
/// grow to `tcp_rmem`'s maximum); made byte by byte in a debug build, that
/// was seconds of CPU, enough on a loaded machine to let the first of
/// twenty stalled requests time out before the last was sent.
fn pattern_chunk(start: usize, end: usize) -> Bytes {
    static BLOCK: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    let block = BLOCK.get_or_init(|| Bytes::from(pattern(0, CHUNK + 251)));
    let from = start % 251;
    block.slice(from..from + (end - start))
}

fn futures_stream<I: Iterator + Send + 'static>(
    iter: I,
) -> impl futures_core::Stream<Item = I::Item> + Send {
    tokio_stream::iter(iter)
}

/// An upstream that speaks WebSocket and echoes every message.
pub async fn spawn_ws_echo() -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() || ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A webhook receiver: records each POSTed JSON body, in arrival order.
pub async fn spawn_receiver() -> (SocketAddr, Arc<std::sync::Mutex<Vec<serde_json::Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Arc::clone(&got);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let sink = Arc::clone(&sink);
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let sink = Arc::clone(&sink);
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        sink.lock()
                            .unwrap()
                            .push(serde_json::from_slice(&body).unwrap());
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, got)
}
