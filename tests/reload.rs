//! The control file is live: each way of replacing it is picked up, bad
//! versions are refused without harm, and reloads drop no request. Its
//! file work never stalls requests, and what a killed writer leaves behind
//! is cleaned up.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::os::unix::fs::symlink;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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
    let proxy = Setup::shop().pools(&b, &g).weights(90, 10).spawn().await;
    edit_file(
        &proxy.path,
        "blue = 90, green = 10",
        "blue = 40, green = 60",
    );
    wait_weights(&proxy, "shop", (40, 60)).await;
    let v = view(&proxy, "shop").await;
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
    let proxy = Setup::shop().pools(&b, &g).weights(90, 10).spawn().await;
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
    let base = control_file("", &Setup::shop().pools(&b, &g).weights(90, 10).toml());
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
    let proxy = Setup::shop().pools(&b, &g).weights(100, 0).spawn().await;
    edit_file(&proxy.path, "blue = 100, green = 0", "blue = 0, green = 0");
    // The edit is in place (truncate, then write): a reload that reads the
    // file between the two fails on an empty file first, a failed reload of
    // its own. The edit's own error is the one that stays.
    let weights_error = "tenants.shop.weights: weights must not both be 0";
    wait_until(APPLIED, "the reload error", || async {
        last_error(&proxy)
            .await
            .is_some_and(|e| e.contains(weights_error))
    })
    .await;
    assert!(
        proxy
            .metric(r#"turnout_config_reloads_total{result="error"}"#)
            .await
            >= 1.0
    );
    // Still serving the old split.
    for _ in 0..20 {
        assert_eq!(proxy.get("shop.test", "/").await.text(), "blue");
    }
    let cfg = config_view(&proxy).await;
    let error = cfg["last_error"].as_str().unwrap();
    assert!(
        error.contains("turnout.toml:") && error.contains(weights_error),
        "{error}"
    );
    assert_eq!(cfg["generation"], 1);
    // A valid edit then applies and clears the error.
    edit_file(&proxy.path, "blue = 0, green = 0", "blue = 0, green = 100");
    wait_weights(&proxy, "shop", (0, 100)).await;
    let cfg = config_view(&proxy).await;
    assert_eq!(cfg.get("last_error"), Some(&serde_json::Value::Null));
    assert_eq!(proxy.get("shop.test", "/").await.text(), "green");
}

#[tokio::test]
async fn rapid_reloads_drop_no_request() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let proxy = Arc::new(Setup::shop().pools(&b, &g).weights(50, 50).spawn().await);
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
    let proc = Setup::shop()
        .pools(&b, &g)
        .weights(90, 10)
        .spawn_binary(&[])
        .await;
    let reloads = || proc.metric(r#"turnout_config_reloads_total{result="ok"}"#);
    assert_eq!(reloads().await, 1.0);
    proc.signal("HUP");
    wait_until(APPLIED, "a reload counted after SIGHUP", || async {
        reloads().await == 2.0
    })
    .await;
    // The process is still serving.
    assert_eq!(
        tenant_weights(&client(), proc.admin_addr, "shop").await,
        (90, 10)
    );
}

async fn last_error(proxy: &TestProxy) -> Option<String> {
    config_view(proxy).await["last_error"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test]
async fn the_good_file_back_after_an_unreadable_or_empty_one_clears_the_error() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let proxy = Setup::shop().pools(&b, &g).weights(90, 10).spawn().await;
    let good = std::fs::read_to_string(&proxy.path).unwrap();
    let aside = proxy.dir.path().join("aside.toml");
    let ok = r#"turnout_config_reloads_total{result="ok"}"#;
    // The same text comes back each time: only the failure in between differs.
    let breakages: [(&str, &dyn Fn()); 2] = [
        ("cannot read", &|| {
            std::fs::rename(&proxy.path, &aside).unwrap()
        }),
        ("the control file is empty", &|| {
            std::fs::write(&proxy.path, "").unwrap()
        }),
    ];
    for (round, (error, break_it)) in breakages.into_iter().enumerate() {
        break_it();
        wait_until(APPLIED, error, || async {
            last_error(&proxy).await.is_some_and(|e| e.contains(error))
        })
        .await;
        std::fs::write(&proxy.path, &good).unwrap();
        wait_until(APPLIED, "the error cleared by the good file", || async {
            last_error(&proxy).await.is_none()
        })
        .await;
        // Counted as the successful reload it is.
        assert_eq!(proxy.metric(ok).await, 2.0 + round as f64);
        assert_eq!(proxy.weights("shop").await, (90, 10));
    }
}

#[tokio::test]
async fn temporary_files_of_killed_writers_are_removed_and_live_ones_kept() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let ControlFile { dir, path } = Setup::shop().pools(&b, &g).weights(100, 0).write();
    // What `kill -9` between write and rename leaves: `.NAME.PID.RAND.tmp`.
    // No PID above 2^22 ever runs on Linux; this test's own process does.
    let at = |name: String| dir.path().join(name);
    let dead = at(".turnout.toml.9999999.0badc0de.tmp".into());
    let live = at(format!(".turnout.toml.{}.00c0ffee.tmp", std::process::id()));
    let other = at(".notes.toml.9999999.0badc0de.tmp".into());
    for f in [&dead, &live, &other] {
        std::fs::write(f, "[tenants.half").unwrap();
    }
    let proc = spawn_binary_at(None, &path, &[], &[]).await;
    wait_until(
        APPLIED,
        "the stale temporary file removed at start",
        || async { !dead.exists() },
    )
    .await;
    assert!(
        live.exists(),
        "the temporary file of a live writer was removed"
    );
    assert!(other.exists(), "another file's temporary file was removed");

    // Before each write-through too.
    let dead_again = at(".turnout.toml.9999998.12345678.tmp".into());
    std::fs::write(&dead_again, "[tenants.half").unwrap();
    let (status, change) = admin_call(
        proc.admin_addr,
        "PUT",
        "/v1/tenants/shop/weights?force=true",
        r#"{"blue": 60, "green": 40}"#,
    )
    .await;
    assert_eq!(status, 200, "{change}");
    assert_eq!(change["persisted"], true);
    assert!(!dead_again.exists(), "left behind by the write-through");
    assert!(live.exists() && other.exists());
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .contains("blue = 60, green = 40")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_flow_while_a_write_through_waits_for_the_lock() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    // One runtime worker: file work done on it would stall every request.
    let proc = Setup::shop()
        .pools(&b, &g)
        .weights(100, 0)
        .spawn_binary(&[("TOKIO_WORKER_THREADS", "1")])
        .await;
    let dir = proc.dir.as_ref().unwrap().path();
    // Another replica in the middle of its write: the lock is taken. The
    // proxy's own start-up clean-up holds it for a moment; wait for that.
    let lock = std::fs::File::create(dir.join(".turnout.toml.lock")).unwrap();
    wait_until(APPLIED, "the write lock", || {
        let taken = lock.try_lock().is_ok();
        async move { taken }
    })
    .await;
    let admin = proc.admin_addr;
    let change = tokio::spawn(async move {
        admin_call(
            admin,
            "PUT",
            "/v1/tenants/shop/weights?force=true",
            r#"{"blue": 0, "green": 100}"#,
        )
        .await
    });
    // Traffic moves first; then the control task waits for the lock.
    wait_until(APPLIED, "the new split", || async {
        proc.get("shop.test", "/").await.text() == "green"
    })
    .await;
    let mut answered = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !change.is_finished() && Instant::now() < deadline {
        assert_eq!(proc.get("shop.test", "/").await.text(), "green");
        answered += 1;
    }
    let (status, outcome) = change.await.unwrap();
    assert_eq!(status, 200, "{outcome}");
    // It did wait for the lock, and gave up: the change is in memory only.
    assert_eq!(outcome["persisted"], false);
    assert!(
        answered >= 20,
        "only {answered} requests answered while the write-through waited"
    );
    drop(lock);
}
