//! `turnout upstream --grpc`: a gRPC-only demo upstream, so the
//! playground can show a gRPC tenant (an `h2c://` endpoint probed with
//! `[defaults.health] grpc = true`) and its endpoint taken out.
//!
//! On one port, as Envoy's and Traefik's gRPC demos do:
//! - gRPC over h2c (HTTP/2 with prior knowledge): the standard
//!   `grpc.health.v1.Health` service (`tonic-health`) and server
//!   reflection v1 and v1alpha (`tonic-reflection`), so `grpcurl` needs
//!   no `.proto` file; every other method answers `UNIMPLEMENTED`;
//! - HTTP/1.1 `POST /admin/fail` and `POST /admin/heal`, the switch of the
//!   plain demo upstream: `Health/Check` then answers `NOT_SERVING` (or
//!   `SERVING` again) for the whole server (`service = ""`) and for
//!   `grpc.health.v1.Health`.
//!
//! The generated code ships in the crates: nothing here needs `protoc`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::server;

/// The services a gRPC demo upstream dispatches to by path.
#[derive(Clone)]
struct Services<H, R1, R2> {
    health: H,
    reflection_v1: R1,
    reflection_v1alpha: R2,
}

/// The health service's own name, also switched by `/admin/fail`.
const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// Starts a gRPC demo upstream named `name` on `addr` (see the module
/// doc) until `stop` turns true; returns the address it listens on.
///
/// # Errors
/// Binding `addr` fails, or the reflection service cannot decode the
/// shipped descriptors (`std::io::ErrorKind::InvalidData`).
pub async fn spawn_grpc_upstream(
    name: &str,
    addr: SocketAddr,
    stop: watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let invalid = |e: tonic_reflection::server::Error| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
    };
    let (reporter, health) = tonic_health::server::health_reporter();
    set_serving(&reporter, true).await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let services = Services {
        health,
        reflection_v1: reflection().build_v1().map_err(invalid)?,
        reflection_v1alpha: reflection().build_v1alpha().map_err(invalid)?,
    };
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let name: Arc<str> = Arc::from(name);
    let handler = move |req: Request<Incoming>, _info| {
        let (name, reporter, mut services) =
            (Arc::clone(&name), reporter.clone(), services.clone());
        async move {
            let path = req.uri().path().to_owned();
            let answered: Result<Response<Body>, Infallible> = match (req.method(), path.as_str()) {
                (&Method::POST, "/admin/fail") => {
                    set_serving(&reporter, false).await;
                    Ok(text(format!("{name} now answers NOT_SERVING\n")))
                }
                (&Method::POST, "/admin/heal") => {
                    set_serving(&reporter, true).await;
                    Ok(text(format!("{name} answers SERVING again\n")))
                }
                _ if path.starts_with("/grpc.health.v1.Health/") => services.health.call(req).await,
                _ if path.starts_with("/grpc.reflection.v1.ServerReflection/") => {
                    services.reflection_v1.call(req).await
                }
                _ if path.starts_with("/grpc.reflection.v1alpha.ServerReflection/") => {
                    services.reflection_v1alpha.call(req).await
                }
                _ => Ok(tonic::Status::unimplemented(format!(
                    "{name} serves only grpc.health.v1.Health"
                ))
                .into_http()),
            };
            match answered {
                Ok(resp) => resp,
                Err(never) => match never {},
            }
        }
    };
    tokio::spawn(server::serve(
        listener,
        server::Transport::Plain,
        handler,
        stop,
        super::serving(),
        None,
    ));
    Ok(addr)
}

/// Sets what `Health/Check` answers, for the server and the health
/// service by name.
async fn set_serving(reporter: &HealthReporter, serving: bool) {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for service in ["", HEALTH_SERVICE] {
        reporter.set_service_status(service, status).await;
    }
}

/// A plain-text answer to an HTTP/1.1 `/admin/...` request.
fn text(body: String) -> Response<Body> {
    Response::new(Body::new(Full::new(Bytes::from(body))))
}
