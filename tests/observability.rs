//! What operators read: one access-log line per request whatever its
//! outcome, metric series that leave with their tenant or endpoint, text
//! logs without colour codes off a terminal, no false warning on a clean
//! stop (SPEC sections 2 and 10).
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::*;

fn access_lines(proxy: &BinaryProxy) -> Vec<serde_json::Value> {
    proxy
        .log_lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "turnout::access")
        .collect()
}

#[tokio::test]
async fn every_request_has_an_access_log_line_whatever_its_outcome() {
    let (up, dead) = (spawn_upstream("blue").await, refusing_port());
    let busy = "access_log = true\nmax_inflight = 1\n\
        preview_hosts = [\"preview.busy.test\"]\npreview_token_env = \"BUSY_PREVIEW\"";
    let proxy = Setup::tenant("busy")
        .on(&up)
        .extra(busy)
        .and_tenant("dead")
        .blue(&dead.1)
        .extra("access_log = true\nhealth = { interval = \"1h\" }")
        .spawn_binary(&[("BUSY_PREVIEW", "secret")])
        .await;
    let client = client();
    let get = |host: &'static str, path: &'static str| {
        let req = http::Request::get(format!("http://{}{path}", proxy.http_addr))
            .header("host", host)
            .body(http_body_util::Full::<bytes::Bytes>::default())
            .unwrap();
        client.request(req)
    };
    assert_eq!(get("preview.busy.test", "/").await.unwrap().status(), 403);
    assert_eq!(get("dead.test", "/").await.unwrap().status(), 502);
    let hanging = tokio::spawn(get("busy.test", "/hang"));
    wait_until(Duration::from_secs(10), "the hanging request", || async {
        up.hits.load(std::sync::atomic::Ordering::Relaxed) >= 1
    })
    .await;
    assert_eq!(get("busy.test", "/").await.unwrap().status(), 503);
    hanging.abort();

    wait_until(Duration::from_secs(10), "three access lines", || async {
        access_lines(&proxy).len() >= 3
    })
    .await;
    let lines = access_lines(&proxy);
    let of = |status: u64| {
        lines
            .iter()
            .find(|l| l["status"] == status)
            .unwrap_or_else(|| panic!("no access line with status {status}: {lines:?}"))
    };
    assert_eq!(of(403)["tenant"], "busy");
    assert_eq!(of(403)["pool"], "-");
    assert_eq!(of(503)["tenant"], "busy");
    let failed = of(502);
    assert_eq!(failed["tenant"], "dead");
    assert_eq!(failed["endpoint"], dead.1.to_string(), "the endpoint tried");
    drop(dead.0);
}

#[tokio::test]
async fn series_of_removed_tenants_and_endpoints_leave_metrics() {
    let (a, b, c) = (
        spawn_upstream("a").await,
        spawn_upstream("b").await,
        spawn_upstream("c").await,
    );
    let shop = |extra_endpoint: bool| {
        let shop = Setup::shop().blue(&a);
        let shop = if extra_endpoint { shop.blue(&b) } else { shop };
        shop.toml()
    };
    let gone = Setup::tenant("gone").on(&c).toml();
    let proxy = spawn_proxy(&format!("{}{gone}", shop(true))).await;
    assert_eq!(proxy.get("gone.test", "/").await.status, 200);
    let removed_endpoint = format!(
        r#"turnout_endpoint_healthy{{tenant="shop",pool="blue",endpoint="{}"}}"#,
        b.addr
    );
    let gone_series = r#"turnout_requests_total{tenant="gone",pool="blue",code="2xx"}"#;
    assert_eq!(proxy.metric(&removed_endpoint).await, 1.0);
    assert_eq!(proxy.metric(gone_series).await, 1.0);

    let text = std::fs::read_to_string(&proxy.path).unwrap();
    let kept = text.split("[tenants.").next().unwrap().to_owned();
    std::fs::write(&proxy.path, format!("{kept}{}", shop(false))).unwrap();
    assert_eq!(proxy.reload().await.status, 200);
    let metrics = proxy.admin_get("/metrics").await.text();
    assert_eq!(metric_or_absent(&metrics, &removed_endpoint), None);
    assert_eq!(metric_or_absent(&metrics, gone_series), None);
    assert!(!metrics.contains("tenant=\"gone\""), "{metrics}");
    let kept_endpoint = format!(
        r#"turnout_endpoint_healthy{{tenant="shop",pool="blue",endpoint="{}"}}"#,
        a.addr
    );
    assert_eq!(metric_value(&metrics, &kept_endpoint), 1.0);

    // A tenant that comes back is exported again.
    std::fs::write(&proxy.path, format!("{kept}{}{gone}", shop(false))).unwrap();
    assert_eq!(proxy.reload().await.status, 200);
    assert!(proxy.metric_or_absent(gone_series).await.is_some());
}

#[tokio::test]
async fn a_clean_stop_warns_of_nothing_and_text_logs_carry_no_colour() {
    let up = spawn_upstream("blue").await;
    let file = Setup::shop().on(&up).write();
    for no_color in [false, true] {
        let env: &[(&str, &str)] = if no_color { &[("NO_COLOR", "1")] } else { &[] };
        let mut proc = spawn_binary_with(LogFormat::Default, None, &file.path, &[], env).await;
        proc.signal("TERM");
        let (status, log) = proc.exit(Duration::from_secs(20)).await;
        assert!(status.success(), "{status:?}\n{log}");
        assert!(log.contains("turnout stopped"), "{log}");
        assert!(!log.contains("WARN"), "a clean stop warned:\n{log}");
        assert!(
            !log.contains('\x1b'),
            "colour codes in a log file:\n{log:?}"
        );
    }
}
