//! A real gRPC upstream (tonic's server machinery and codec, prost
//! messages written by hand — no protoc) over h2c or TLS with optional
//! client-certificate checks, the `grpc.health.v1` service from
//! `tonic-health`, and a tonic client for calls through turnout.
//!
//! The service `test.Echo`, answering `NAME:TEXT`:
//! - `Unary`: one answer; `UNAVAILABLE` (HTTP 200, trailers-only) while
//!   `unavailable` is set, and for the text `"fail"`;
//! - `Stream`: `count` answers `NAME:TEXT:i`;
//! - `Bidi`: one answer per message, as each arrives.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::net::TcpListener;
use tokio_stream::{Stream, StreamExt};
use tonic::codegen::Service;
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use crate::support::Endpoint;

/// The one message of `test.Echo`, both ways.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Echo {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(uint32, tag = "2")]
    pub count: u32,
}

type Answers = Pin<Box<dyn Stream<Item = Result<Echo, Status>> + Send>>;

/// What a test sees of and does to a gRPC upstream.
#[derive(Default)]
pub struct GrpcControls {
    /// Every `Unary` call answers `UNAVAILABLE` (with HTTP 200).
    pub unavailable: AtomicBool,
    /// `test.Echo` calls received.
    pub calls: AtomicUsize,
    /// TLS connections whose client presented a certificate.
    pub client_certs: AtomicUsize,
    /// `grpc.health.v1.Health/Check` calls received.
    pub health_checks: AtomicUsize,
    /// Connections accepted.
    pub connections: AtomicUsize,
}

/// A gRPC upstream on loopback.
pub struct GrpcUpstream {
    pub addr: SocketAddr,
    pub name: &'static str,
    pub controls: Arc<GrpcControls>,
    /// Sets the `grpc.health.v1` status of the whole server (`""`).
    pub health: tonic_health::server::HealthReporter,
    tls: bool,
}

impl GrpcUpstream {
    pub fn set_unavailable(&self, on: bool) {
        self.controls.unavailable.store(on, Ordering::Relaxed);
    }

    pub fn calls(&self) -> usize {
        self.controls.calls.load(Ordering::Relaxed)
    }

    pub fn client_certs(&self) -> usize {
        self.controls.client_certs.load(Ordering::Relaxed)
    }

    pub fn connections(&self) -> usize {
        self.controls.connections.load(Ordering::Relaxed)
    }

    pub fn health_checks(&self) -> usize {
        self.controls.health_checks.load(Ordering::Relaxed)
    }

    /// Sets what `grpc.health.v1.Health/Check` answers for the server.
    pub async fn set_serving(&self, serving: bool) {
        use tonic_health::ServingStatus;
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.health.set_service_status("", status).await;
    }
}

impl Endpoint for GrpcUpstream {
    fn endpoint(&self) -> SocketAddr {
        self.addr
    }

    fn endpoint_text(&self) -> String {
        if self.tls {
            // By address: the certificate names `localhost`, which the
            // tests give as `upstream_tls.server_name` (a name would be
            // resolved by turnout to every loopback address, ::1 too).
            format!("https://{}", self.addr)
        } else {
            format!("h2c://{}", self.addr)
        }
    }
}

/// A gRPC upstream speaking h2c (HTTP/2 with prior knowledge).
pub async fn spawn_grpc(name: &'static str) -> GrpcUpstream {
    spawn(name, None).await
}

/// A gRPC upstream behind TLS with `config` (ALPN `h2`); a certificate
/// its client presents is counted.
pub async fn spawn_grpc_tls(name: &'static str, config: Arc<rustls::ServerConfig>) -> GrpcUpstream {
    spawn(name, Some(tokio_rustls::TlsAcceptor::from(config))).await
}

async fn spawn(name: &'static str, tls: Option<tokio_rustls::TlsAcceptor>) -> GrpcUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let controls = Arc::new(GrpcControls::default());
    let (health, health_service) = tonic_health::server::health_reporter();
    let ctl = Arc::clone(&controls);
    let is_tls = tls.is_some();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            ctl.connections.fetch_add(1, Ordering::Relaxed);
            let (ctl, health_service, tls) =
                (Arc::clone(&ctl), health_service.clone(), tls.clone());
            tokio::spawn(async move {
                let counts = Arc::clone(&ctl);
                let svc = service_fn(move |req: http::Request<Incoming>| {
                    let (ctl, mut health_service) = (Arc::clone(&ctl), health_service.clone());
                    async move {
                        if req.uri().path().starts_with("/grpc.health.v1.Health/") {
                            ctl.health_checks.fetch_add(1, Ordering::Relaxed);
                            return health_service.call(req).await;
                        }
                        Ok::<_, Infallible>(echo(name, ctl, req).await)
                    }
                });
                let server = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                match tls {
                    None => {
                        let _ = server.serve_connection(TokioIo::new(stream), svc).await;
                    }
                    Some(acceptor) => {
                        let Ok(stream) = acceptor.accept(stream).await else {
                            return;
                        };
                        if stream.get_ref().1.peer_certificates().is_some() {
                            counts.client_certs.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = server.serve_connection(TokioIo::new(stream), svc).await;
                    }
                }
            });
        }
    });
    GrpcUpstream {
        addr,
        name,
        controls,
        health,
        tls: is_tls,
    }
}

/// `test.Echo`, dispatched by path with tonic's server machinery.
async fn echo(
    name: &'static str,
    ctl: Arc<GrpcControls>,
    req: http::Request<Incoming>,
) -> http::Response<tonic::body::Body> {
    ctl.calls.fetch_add(1, Ordering::Relaxed);
    let mut grpc = tonic::server::Grpc::new(ProstCodec::<Echo, Echo>::default());
    match req.uri().path() {
        "/test.Echo/Unary" => grpc.unary(UnaryEcho(name, ctl), req).await,
        "/test.Echo/Stream" => grpc.server_streaming(StreamEcho(name), req).await,
        "/test.Echo/Bidi" => grpc.streaming(BidiEcho(name), req).await,
        _ => Status::unimplemented("no such method").into_http(),
    }
}

struct UnaryEcho(&'static str, Arc<GrpcControls>);

impl Service<Request<Echo>> for UnaryEcho {
    type Response = Response<Echo>;
    type Error = Status;
    type Future = std::future::Ready<Result<Response<Echo>, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Echo>) -> Self::Future {
        let text = req.into_inner().text;
        std::future::ready(
            if self.1.unavailable.load(Ordering::Relaxed) || text == "fail" {
                Err(Status::unavailable(format!("{} is unavailable", self.0)))
            } else {
                Ok(Response::new(Echo {
                    text: format!("{}:{text}", self.0),
                    count: 1,
                }))
            },
        )
    }
}

struct StreamEcho(&'static str);

impl Service<Request<Echo>> for StreamEcho {
    type Response = Response<Answers>;
    type Error = Status;
    type Future = std::future::Ready<Result<Response<Answers>, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Echo>) -> Self::Future {
        let (name, asked) = (self.0, req.into_inner());
        let answers = (0..asked.count).map(move |i| {
            Ok(Echo {
                text: format!("{name}:{}:{i}", asked.text),
                count: i,
            })
        });
        let stream: Answers = Box::pin(tokio_stream::iter(answers));
        std::future::ready(Ok(Response::new(stream)))
    }
}

struct BidiEcho(&'static str);

impl Service<Request<Streaming<Echo>>> for BidiEcho {
    type Response = Response<Answers>;
    type Error = Status;
    type Future = std::future::Ready<Result<Response<Answers>, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Streaming<Echo>>) -> Self::Future {
        let name = self.0;
        let stream: Answers = Box::pin(req.into_inner().map(move |m| {
            m.map(|e| Echo {
                text: format!("{name}:{}", e.text),
                count: e.count,
            })
        }));
        std::future::ready(Ok(Response::new(stream)))
    }
}

/// An HTTP/1.1-only upstream behind TLS (ALPN `http/1.1`), answering each
/// request with its protocol version; counts its connections.
pub async fn spawn_tls_http1(config: Arc<rustls::ServerConfig>) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&connections);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::Relaxed);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = service_fn(|req: http::Request<Incoming>| async move {
                    let body = format!("{:?}", req.version());
                    Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from(body),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, connections)
}

/// A gRPC client of turnout's plain listener (h2c) for `host`.
pub async fn grpc_client(
    proxy: SocketAddr,
    host: &str,
) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{proxy}"))
        .unwrap()
        .origin(format!("http://{host}").parse().unwrap())
        .connect()
        .await
        .unwrap();
    tonic::client::Grpc::new(channel)
}

fn path(method: &'static str) -> http::uri::PathAndQuery {
    http::uri::PathAndQuery::from_static(method)
}

/// `test.Echo/Unary` with `text`: the answer's text, or the status.
pub async fn unary(
    client: &mut tonic::client::Grpc<tonic::transport::Channel>,
    text: &str,
) -> Result<String, Status> {
    client.ready().await.unwrap();
    let req = Request::new(Echo {
        text: text.to_owned(),
        count: 1,
    });
    let codec = ProstCodec::<Echo, Echo>::default();
    let resp = client.unary(req, path("/test.Echo/Unary"), codec).await?;
    Ok(resp.into_inner().text)
}

/// `test.Echo/Stream`: `count` answers, collected with the final status.
pub async fn server_stream(
    client: &mut tonic::client::Grpc<tonic::transport::Channel>,
    text: &str,
    count: u32,
) -> Result<Vec<String>, Status> {
    client.ready().await.unwrap();
    let req = Request::new(Echo {
        text: text.to_owned(),
        count,
    });
    let codec = ProstCodec::<Echo, Echo>::default();
    let mut answers = client
        .server_streaming(req, path("/test.Echo/Stream"), codec)
        .await?
        .into_inner();
    let mut texts = Vec::new();
    while let Some(answer) = answers.message().await? {
        texts.push(answer.text);
    }
    Ok(texts)
}

/// `test.Echo/Bidi`: sends each of `texts` only after the answer to the
/// one before has come back (so both directions stream at once).
pub async fn bidi(
    client: &mut tonic::client::Grpc<tonic::transport::Channel>,
    texts: &[&str],
) -> Result<Vec<String>, Status> {
    client.ready().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<Echo>(1);
    let outgoing = tokio_stream::wrappers::ReceiverStream::new(rx);
    let codec = ProstCodec::<Echo, Echo>::default();
    let first = Echo {
        text: texts[0].to_owned(),
        count: 0,
    };
    tx.send(first).await.unwrap();
    let mut answers = client
        .streaming(Request::new(outgoing), path("/test.Echo/Bidi"), codec)
        .await?
        .into_inner();
    let mut got = Vec::new();
    for (i, next) in texts.iter().enumerate().skip(1) {
        let answer = answers.message().await?.expect("an answer per message");
        got.push(answer.text);
        tx.send(Echo {
            text: (*next).to_owned(),
            count: i as u32,
        })
        .await
        .unwrap();
    }
    drop(tx);
    while let Some(answer) = answers.message().await? {
        got.push(answer.text);
    }
    Ok(got)
}

/// A certificate authority made for one test (rcgen), issuing server and
/// client certificates.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

/// A certificate and its key, as PEM text and as rustls wants them.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub key: rustls::pki_types::PrivateKeyDer<'static>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `name` (a DNS name), signed by this CA.
    pub fn issue(&self, name: &str) -> Issued {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            chain: vec![cert.der().clone()],
            key: rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        }
    }

    /// The CA as a rustls root store.
    pub fn roots(&self) -> rustls::RootCertStore {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(self.pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        roots
    }
}

/// A TLS server configuration for a gRPC upstream: `server`'s certificate,
/// ALPN `h2`, and — when `clients` is given — client certificates required
/// to chain to that CA (mutual TLS).
pub fn grpc_server_tls(server: Issued, clients: Option<&TestCa>) -> Arc<rustls::ServerConfig> {
    server_tls(server, clients, &[b"h2"])
}

/// A TLS server configuration offering the ALPN protocols `alpn`, with
/// `server`'s certificate and, given `clients`, mutual TLS.
pub fn server_tls(
    server: Issued,
    clients: Option<&TestCa>,
    alpn: &[&[u8]],
) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match clients {
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(ca.roots()),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(server.chain, server.key).unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}
