//! The "plain hyper + hyper-util proxy" that issue 6 and the shared bench
//! harness use as a reference point, written the obvious way: hyper-util's
//! server and pooled legacy client, a `Host` check, a 90/10 weighted draw.
//! No health checks, metrics, SLO windows, timeouts or header hygiene.
//! It exists only to be measured beside turnout in the same harness run
//! (`benches/naive-peer.sh`), so the cost of turnout's own work can be told
//! apart from the cost of the HTTP stack both are built on.
//!
//!   cargo run --release --example naive_proxy -- LISTEN HOST BLUE GREEN

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

type Body = BoxBody<Bytes, hyper::Error>;

struct Naive {
    host: String,
    blue: Authority,
    green: Authority,
    client: Client<HttpConnector, Incoming>,
}

impl Naive {
    async fn handle(&self, mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.split(':').next());
        if host != Some(self.host.as_str()) {
            return Ok(status(StatusCode::NOT_FOUND));
        }
        let upstream = if fastrand::u32(0..100) < 90 {
            &self.blue
        } else {
            &self.green
        };
        let mut uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(upstream.clone());
        if let Some(pq) = req.uri().path_and_query() {
            uri = uri.path_and_query(pq.clone());
        }
        match uri.build() {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => return Ok(status(StatusCode::BAD_REQUEST)),
        }
        Ok(match self.client.request(req).await {
            Ok(resp) => resp.map(BodyExt::boxed),
            Err(_) => status(StatusCode::BAD_GATEWAY),
        })
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()).map_err(|n| match n {}).boxed());
    *resp.status_mut() = code;
    resp
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, host, blue, green] = args.as_slice() else {
        return Err("usage: naive_proxy LISTEN HOST BLUE GREEN".into());
    };
    let listen: SocketAddr = listen.parse()?;
    let naive = Arc::new(Naive {
        host: host.clone(),
        blue: blue.parse()?,
        green: green.parse()?,
        client: Client::builder(TokioExecutor::new()).build_http(),
    });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let naive = Arc::clone(&naive);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let naive = Arc::clone(&naive);
                async move { naive.handle(req).await }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
