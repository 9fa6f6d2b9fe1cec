//! `turnout upstream --grpc`, the playground's gRPC upstream, as the real
//! binary: behind turnout on an `h2c://` endpoint probed with
//! `health = { grpc = true }`, `grpc.health.v1.Health/Check` and
//! server reflection answer through turnout, and its `/admin/fail` switch
//! takes the endpoint out of the pool until `/admin/heal`.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::AsyncBufReadExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use support::*;

/// The binary's `upstream --grpc` on an ephemeral port, and that port
/// from its first line on stdout.
async fn spawn_grpc_upstream(name: &str) -> (tokio::process::Child, SocketAddr) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_turnout"))
        .args([
            "upstream",
            "--grpc",
            "--name",
            name,
            "--listen",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the gRPC upstream reports where it listens")
        .unwrap()
        .unwrap();
    let addr = line
        .split(" on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (child, addr)
}

/// An `h2c://` endpoint.
struct H2c(SocketAddr);

impl Endpoint for H2c {
    fn endpoint(&self) -> SocketAddr {
        self.0
    }

    fn endpoint_text(&self) -> String {
        format!("h2c://{}", self.0)
    }
}

async fn channel(to: SocketAddr, host: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{to}"))
        .unwrap()
        .origin(format!("http://{host}").parse().unwrap())
        .connect()
        .await
        .unwrap()
}

async fn check(channel: &tonic::transport::Channel) -> Result<i32, tonic::Status> {
    let request = HealthCheckRequest {
        service: String::new(),
    };
    let answer = HealthClient::new(channel.clone()).check(request).await?;
    Ok(answer.into_inner().status)
}

async fn admin(upstream: SocketAddr, path: &str) -> Reply {
    let req = http::Request::post(format!("http://{upstream}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    send_with(&client(), req).await
}

#[tokio::test]
async fn the_grpc_demo_upstream_answers_health_and_reflection_through_turnout_and_fails_on_demand()
{
    let (_child, upstream) = spawn_grpc_upstream("grpc").await;
    let proxy = Setup::shop()
        .blue(&H2c(upstream))
        .extra(r#"health = { grpc = true, interval = "100ms", healthy_after = 1, unhealthy_after = 1 }"#)
        .spawn()
        .await;
    let healthy =
        || async { view(&proxy, "shop").await["pools"]["blue"]["endpoints"][0]["healthy"] == true };
    wait_until(Duration::from_secs(10), "the endpoint healthy", healthy).await;

    // Health/Check through turnout, as `grpcurl` sends it.
    let through = channel(proxy.running.http_addr, "shop.test").await;
    assert_eq!(
        check(&through).await.unwrap(),
        ServingStatus::Serving as i32
    );

    // Server reflection through turnout (a bidirectional stream): what
    // lets `grpcurl` call the server without a .proto file.
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(through.clone())
        .server_reflection_info(tokio_stream::iter([list]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers
        .message()
        .await
        .unwrap()
        .expect("a reflection answer");
    let Some(MessageResponse::ListServicesResponse(listed)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<_> = listed.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");

    // Any other method: UNIMPLEMENTED, relayed with its trailers.
    let r = proxy.get("shop.test", "/test.Echo/Unary").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["grpc-status"], "12", "UNIMPLEMENTED");

    // The playground's switch: NOT_SERVING, and turnout's gRPC probe
    // takes the endpoint out; healed, it comes back.
    let r = admin(upstream, "/admin/fail").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let direct = channel(upstream, "grpc.example").await;
    assert_eq!(
        check(&direct).await.unwrap(),
        ServingStatus::NotServing as i32
    );
    wait_until(
        Duration::from_secs(10),
        "the endpoint unhealthy",
        || async { !healthy().await },
    )
    .await;
    // No healthy endpoint left in either pool: turnout's own 503, told to
    // a gRPC client as UNAVAILABLE (a trailers-only answer, as Envoy does).
    let status = check(&through).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("no healthy upstream endpoint"),
        "{status:?}"
    );
    let r = admin(upstream, "/admin/heal").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(check(&direct).await.unwrap(), ServingStatus::Serving as i32);
    wait_until(
        Duration::from_secs(10),
        "the endpoint healthy again",
        healthy,
    )
    .await;
    assert_eq!(
        check(&through).await.unwrap(),
        ServingStatus::Serving as i32
    );
}
