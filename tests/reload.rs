//! The control file is live: each way of replacing it is picked up, bad
//! versions are refused without harm, and reloads drop no request.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::os::unix::fs::symlink;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use support::*;

/// How long a file change may take to apply in these tests. The promise is
/// "within a second"; the slack is for a loaded CI machine.
const APPLIED: Duration = Duration::from_secs(5);

async fn wait_weights(proxy: &TestProxy, tenant: &str, want: (u64, u64)) {
    wait_until(APPLIED, &format!("{tenant} weights {want:?}"), || async {
        proxy.weights(tenant).await == want
    })
    .await;
}

#[tokio::test]
async fn in_place_rewrite_is_applied() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let proxy = spawn_proxy(&tenant("shop", r#"["shop.test"]"#, &b, &g, (90, 10), "")).await;
    edit_file(
        &proxy.path,
        "blue = 90, green = 10",
        "blue = 40, green = 60",
    );
    wait_weights(&proxy, "shop", (40, 60)).await;
    let v: serde_json::Value =
        serde_json::from_slice(&proxy.admin_get("/v1/tenants/shop").await.body).unwrap();
    assert_eq!(v["generation"], 2);
    assert_eq!(
        proxy
            .metric(r#"turnout_config_reloads_total{result="ok"}"#)
            .await,
        2.0
    );
}

#[tokio::test]
async fn editor_write_then_rename_is_applied() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let proxy = spawn_proxy(&tenant("shop", r#"["shop.test"]"#, &b, &g, (90, 10), "")).await;
    let text = std::fs::read_to_string(&proxy.path)
        .unwrap()
        .replace("blue = 90, green = 10", "blue = 10, green = 90");
    let tmp = proxy.dir.path().join(".turnout.toml.swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &proxy.path).unwrap();
    wait_weights(&proxy, "shop", (10, 90)).await;
    // The watch survived the rename: a second edit is seen too.
    edit_file(
        &proxy.path,
        "blue = 10, green = 90",
        "blue = 20, green = 80",
    );
    wait_weights(&proxy, "shop", (20, 80)).await;
}

#[tokio::test]
async fn configmap_symlink_swap_is_applied() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let dir = tempfile::tempdir().unwrap();
    let base = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n{}",
        tenant("shop", r#"["shop.test"]"#, &b, &g, (90, 10), "")
    );
    // The layout kubelet makes: turnout.toml -> ..data/turnout.toml,
    // ..data -> ..<timestamp>/ holding the real file.
    let version = |name: &str, text: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("turnout.toml"), text).unwrap();
    };
    version("..2026_11_26_01", &base);
    symlink("..2026_11_26_01", dir.path().join("..data")).unwrap();
    symlink("..data/turnout.toml", dir.path().join("turnout.toml")).unwrap();
    let path = dir.path().join("turnout.toml");
    let running = turnout::app::start(&path, Default::default())
        .await
        .unwrap();
    let client = client();
    assert_eq!(
        tenant_weights(&client, running.admin_addr, "shop").await,
        (90, 10)
    );

    // A ConfigMap update: new directory, new ..data_tmp link, renamed over ..data.
    version(
        "..2026_11_26_02",
        &base.replace("blue = 90, green = 10", "blue = 30, green = 70"),
    );
    symlink("..2026_11_26_02", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    std::fs::remove_dir_all(dir.path().join("..2026_11_26_01")).unwrap();
    wait_until(APPLIED, "the swapped ConfigMap", || async {
        tenant_weights(&client, running.admin_addr, "shop").await == (30, 70)
    })
    .await;
    running.shutdown().await;
}

#[tokio::test]
async fn an_invalid_edit_keeps_the_last_good_state_and_is_reported() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let proxy = spawn_proxy(&tenant("shop", r#"["shop.test"]"#, &b, &g, (100, 0), "")).await;
    edit_file(&proxy.path, "blue = 100, green = 0", "blue = 0, green = 0");
    wait_until(APPLIED, "the reload error", || async {
        proxy
            .metric(r#"turnout_config_reloads_total{result="error"}"#)
            .await
            == 1.0
    })
    .await;
    // Still serving the old split.
    for _ in 0..20 {
        assert_eq!(proxy.get("shop.test", "/").await.text(), "blue");
    }
    let cfg: serde_json::Value =
        serde_json::from_slice(&proxy.admin_get("/v1/config").await.body).unwrap();
    let error = cfg["last_error"].as_str().unwrap();
    assert!(
        error.contains("turnout.toml:")
            && error.contains("tenants.shop.weights: weights must not both be 0"),
        "{error}"
    );
    assert_eq!(cfg["generation"], 1);
    // A valid edit then applies and clears the error.
    edit_file(&proxy.path, "blue = 0, green = 0", "blue = 0, green = 100");
    wait_weights(&proxy, "shop", (0, 100)).await;
    let cfg: serde_json::Value =
        serde_json::from_slice(&proxy.admin_get("/v1/config").await.body).unwrap();
    assert_eq!(cfg.get("last_error"), Some(&serde_json::Value::Null));
    assert_eq!(proxy.get("shop.test", "/").await.text(), "green");
}

#[tokio::test]
async fn rapid_reloads_drop_no_request() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let proxy =
        Arc::new(spawn_proxy(&tenant("shop", r#"["shop.test"]"#, &b, &g, (50, 50), "")).await);
    let done = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (proxy, done, sent, failed) = (
                Arc::clone(&proxy),
                Arc::clone(&done),
                Arc::clone(&sent),
                Arc::clone(&failed),
            );
            tokio::spawn(async move {
                while !done.load(Ordering::Relaxed) {
                    let r = proxy.get("shop.test", "/").await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    if r.status != 200 || !matches!(r.text().as_str(), "blue" | "green") {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let mut last = (50, 50);
    for i in 1..=20u64 {
        let next = (50 + i, 50 - i);
        edit_file(
            &proxy.path,
            &format!("blue = {}, green = {}", last.0, last.1),
            &format!("blue = {}, green = {}", next.0, next.1),
        );
        // Also force one through the admin API every few edits.
        if i % 5 == 0 {
            proxy.reload().await;
        }
        wait_weights(&proxy, "shop", next).await;
        last = next;
    }
    done.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert!(sent.load(Ordering::Relaxed) > 20);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
}

#[tokio::test]
async fn sighup_rereads_the_file() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let proc = spawn_binary(
        &tenant("shop", r#"["shop.test"]"#, &b, &g, (90, 10), ""),
        &[],
    )
    .await;
    let reloads = |admin| async move {
        let req = http::Request::get(format!("http://{admin}/metrics"))
            .body(http_body_util::Full::default())
            .unwrap();
        let resp = client().request(req).await.unwrap();
        let text = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        metric_value(
            &String::from_utf8_lossy(&text),
            r#"turnout_config_reloads_total{result="ok"}"#,
        )
    };
    assert_eq!(reloads(proc.admin_addr).await, 1.0);
    proc.signal("HUP");
    wait_until(APPLIED, "a reload counted after SIGHUP", || async {
        reloads(proc.admin_addr).await == 2.0
    })
    .await;
    // The process is still serving.
    assert_eq!(
        tenant_weights(&client(), proc.admin_addr, "shop").await,
        (90, 10)
    );
}
