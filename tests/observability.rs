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
    let config = [
        Setup::tenant("busy").on(&up).extra("access_log = true\nmax_inflight = 1\npreview_hosts = [\"preview.busy.test\"]\npreview_token_env = \"BUSY_PREVIEW\"").toml(),
        format!(
            "[tenants.dead]\nhosts = [\"dead.test\"]\nstable = \"blue\"\nweights = {{ blue = 1, green = 0 }}\n\
             pools.blue = [\"{}\"]\npools.green = []\naccess_log = true\nhealth = {{ interval = \"1h\" }}\n",
            dead.1
        ),
    ]
    .concat();
    let proxy = spawn_binary(&config, &[("BUSY_PREVIEW", "secret")]).await;
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
        let blue = if extra_endpoint {
            format!("[\"{}\", \"{}\"]", a.addr, b.addr)
        } else {
            format!("[\"{}\"]", a.addr)
        };
        format!(
            "[tenants.shop]\nhosts = [\"shop.test\"]\nstable = \"blue\"\nweights = {{ blue = 1, green = 0 }}\n\
             pools.blue = {blue}\npools.green = []\n"
        )
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
    use tokio::io::AsyncReadExt;
    let up = spawn_upstream("blue").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("turnout.toml");
    std::fs::write(
        &path,
        format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n{}",
            Setup::shop().on(&up).toml()
        ),
    )
    .unwrap();
    for no_color in [false, true] {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_turnout"));
        cmd.args(["run", "--config"])
            .arg(&path)
            .env("TURNOUT_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        let mut child = cmd.spawn().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let mut log = Vec::new();
        let mut buf = [0u8; 4096];
        tokio::time::timeout(Duration::from_secs(20), async {
            while !String::from_utf8_lossy(&log).contains("turnout serving") {
                let n = stderr.read(&mut buf).await.unwrap();
                assert!(n > 0, "turnout ended before serving");
                log.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("turnout started");
        let pid = child.id().unwrap().to_string();
        assert!(
            std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .unwrap()
            .unwrap();
        stderr.read_to_end(&mut log).await.unwrap();
        let log = String::from_utf8_lossy(&log);
        assert!(status.success(), "{status:?}\n{log}");
        assert!(log.contains("turnout stopped"), "{log}");
        assert!(!log.contains("WARN"), "a clean stop warned:\n{log}");
        assert!(
            !log.contains('\x1b'),
            "colour codes in a log file:\n{log:?}"
        );
    }
}
