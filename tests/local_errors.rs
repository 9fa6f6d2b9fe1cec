//! The proxy's own failures (SPEC sections 6 and 10): out of file
//! descriptors, turnout answers 503, counts a local error, blames no
//! upstream, and recovers as soon as descriptors are free again.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends a GET on an open keep-alive connection and reads the whole
/// answer (its body framed by `Content-Length`).
async fn get_on(stream: &mut TcpStream, host: &str, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    let whole = |got: &[u8]| {
        let text = String::from_utf8_lossy(got);
        let end = text.find("\r\n\r\n")?;
        let length = text[..end].lines().find_map(|l| {
            let l = l.to_ascii_lowercase();
            l.strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap())
        })?;
        (got.len() >= end + 4 + length).then(|| text.into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(text) = whole(&got) {
                return text;
            }
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed mid-answer");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("an answer");
    let status = text[9..12].parse().unwrap();
    (status, text)
}

fn open_fds(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The process's soft limit on open files (`RLIMIT_NOFILE`), as
/// `/proc/PID/limits` shows it (`unlimited` is none: `None`).
fn fd_limit(pid: u32) -> Option<u32> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a `Max open files` line");
    let soft = line["Max open files".len()..].split_whitespace().next();
    soft.and_then(|v| v.parse().ok())
}

fn set_fd_limit(pid: u32, soft: u32) {
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={soft}:")])
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success());
}

#[tokio::test]
async fn out_of_file_descriptors_is_a_local_503_that_blames_no_upstream_and_recovers() {
    let up = spawn_upstream("blue").await;
    let proxy = spawn_binary(
        &tenant(
            "shop",
            r#"["shop.test"]"#,
            &up,
            &up,
            (1, 0),
            // `/close` answers with `Connection: close`: every probe needs a
            // new connection, so probes meet the exhausted descriptors too.
            "health = { path = \"/close\", interval = \"200ms\", unhealthy_after = 2 }",
        ),
        &[],
    )
    .await;
    let pid = proxy.child.id().unwrap();
    // Connections opened while descriptors are plentiful.
    let mut data = TcpStream::connect(proxy.http_addr).await.unwrap();
    let mut admin = TcpStream::connect(proxy.admin_addr).await.unwrap();
    let (status, _) = get_on(&mut admin, "admin", "/healthz").await;
    assert_eq!(status, 200);
    // Both accepted (the admin one answered; wait for the other: the
    // proxy's listener counts it once its accept loop took it, which may
    // lag the admin listener's on a loaded machine). Not yet accepted when
    // the limit is set, it would never be.
    let open = r#"turnout_client_connections{state="open"}"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = get_on(&mut admin, "admin", "/metrics").await;
        if metric_value(&text[text.find("\r\n\r\n").unwrap() + 4..], open) >= 1.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the data connection was not accepted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // No descriptor left: the next socket the proxy opens fails.
    let highest = open_fds(pid).into_iter().max().unwrap();
    // Given back as it was: the hard limit may be below any number picked
    // here (`ulimit -n 1024` sets both).
    let limit_before = fd_limit(pid).expect("a finite limit on open files");
    set_fd_limit(pid, highest + 1);
    // Clients keep coming: they fill any free descriptor below the limit,
    // then the accept loop meets the limit (a local error of its own).
    let mut hogs = Vec::new();
    let free_below_limit = (highest as usize + 1) - open_fds(pid).len();
    for _ in 0..free_below_limit + 16 {
        hogs.push(TcpStream::connect(proxy.http_addr).await.unwrap());
    }
    let local = r#"turnout_local_errors_total{reason="fd_exhausted"}"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = get_on(&mut admin, "admin", "/metrics").await;
        if metric_value(&text[text.find("\r\n\r\n").unwrap() + 4..], local) >= 1.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "accept never ran out of descriptors: {} open, highest {highest}, {}",
            open_fds(pid).len(),
            std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap()
        );
    }
    let exhausted_at = std::time::Instant::now();
    // A descriptor the proxy held when the limit was set (a probe's
    // connection, the control file read) may come free: until the accept
    // loop, pausing between tries, takes it for a waiting client, a request
    // can have it and be served. `/close`: a request served so keeps no
    // upstream connection for the next; each opens its own. (Seen: all of
    // five requests served on `/`, the first one's connection kept.)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no request met the exhausted descriptors"
        );
        let (status, text) = get_on(&mut data, "shop.test", "/close").await;
        if status == 503 {
            assert!(text.contains("retry-after: 1"), "{text}");
            break;
        }
        assert_eq!(status, 200, "{text}");
    }
    // Probes that could not be sent say nothing of the endpoint; they are
    // counted as local errors too. Wait for more than `unhealthy_after`.
    let failed_before_probes = {
        let (_, text) = get_on(&mut admin, "admin", "/metrics").await;
        metric_value(&text[text.find("\r\n\r\n").unwrap() + 4..], local)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let (_, text) = get_on(&mut admin, "admin", "/metrics").await;
        let metrics = text[text.find("\r\n\r\n").unwrap() + 4..].to_owned();
        // Five probe intervals (more than `unhealthy_after` probes) with
        // descriptors still exhausted, and failures still being counted.
        if metric_value(&metrics, local) >= failed_before_probes + 3.0
            && exhausted_at.elapsed() >= Duration::from_secs(1)
        {
            break metrics;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no probe met the exhausted descriptors"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let body = metrics.as_str();
    for kind in ["connect", "timeout", "protocol"] {
        let series =
            format!(r#"turnout_upstream_errors_total{{tenant="shop",pool="blue",kind="{kind}"}}"#);
        assert_eq!(metric_value(body, &series), 0.0, "{series}");
    }
    let healthy = format!(
        r#"turnout_endpoint_healthy{{tenant="shop",pool="blue",endpoint="{}"}}"#,
        up.addr
    );
    assert_eq!(metric_value(body, &healthy), 1.0);

    // Descriptors back: new connections are accepted and every request
    // is served at once.
    set_fd_limit(pid, limit_before);
    drop(hogs);
    for _ in 0..20 {
        let mut fresh = TcpStream::connect(proxy.http_addr).await.unwrap();
        let (status, text) = get_on(&mut fresh, "shop.test", "/").await;
        assert_eq!(status, 200, "{text}");
    }
}
