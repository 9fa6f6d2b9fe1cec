//! The runtime turnout runs on, chosen by `TOKIO_WORKER_THREADS`
//! (src/main.rs): with `1`, one thread does everything (tokio's
//! current-thread scheduler), so everything the process awaits besides
//! traffic — signals, the control file's reloads, the drain — must share
//! that thread without stalling it (so does
//! `reload::requests_flow_while_a_write_through_waits_for_the_lock`, which
//! runs on one thread and keeps requests flowing while a write-through
//! waits for the file's lock). A count that is not a number from 1 to 1024
//! is refused with a message, where tokio itself would panic or start as
//! many threads as asked.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(10);

/// The `workers` and `scheduler` of the process's start-up line.
fn runtime_of(proc: &BinaryProxy) -> (u64, String) {
    let lines = proc.log_lines();
    let line = lines
        .iter()
        .find(|l| l.contains("turnout serving"))
        .expect("the start-up line");
    let json: serde_json::Value = serde_json::from_str(line).unwrap();
    (
        json["workers"]
            .as_u64()
            .expect("workers in the start-up line"),
        json["scheduler"]
            .as_str()
            .expect("scheduler in the start-up line")
            .to_owned(),
    )
}

#[tokio::test]
async fn one_worker_thread_serves_while_it_reloads_and_drains() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let mut proc = Setup::shop()
        .pools(&b, &g)
        .weights(90, 10)
        .preamble("[defaults]\ndrain_timeout = \"10s\"\n\n")
        .spawn_binary(&[("TOKIO_WORKER_THREADS", "1")])
        .await;
    assert_eq!(runtime_of(&proc), (1, "current_thread".to_owned()));

    // Traffic throughout the reloads: the file work runs on the blocking
    // pool while the one thread keeps serving.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            let addr = proc.http_addr;
            tokio::spawn(async move {
                let c = client();
                while !stop.load(Ordering::Relaxed) {
                    let reply = send_with(&c, get_request(addr, "shop.test", "/")).await;
                    if reply.status == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let path = proc.dir.as_ref().unwrap().path().join("turnout.toml");
    let c = client();
    for (from, to) in [((90, 10), (50, 50)), ((50, 50), (0, 100))] {
        edit_file(
            &path,
            &format!("blue = {}, green = {}", from.0, from.1),
            &format!("blue = {}, green = {}", to.0, to.1),
        );
        wait_until(WAIT, &format!("weights {to:?} from the file"), || async {
            tenant_weights(&c, proc.admin_addr, "shop").await == to
        })
        .await;
    }
    let reloads = || proc.metric(r#"turnout_config_reloads_total{result="ok"}"#);
    let before = reloads().await;
    proc.signal("HUP");
    wait_until(WAIT, "a reload counted after SIGHUP", || async {
        reloads().await > before
    })
    .await;
    let served = ok.load(Ordering::Relaxed);
    wait_until(WAIT, "traffic after the reloads", || async {
        ok.load(Ordering::Relaxed) > served + 50
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed");
    assert_eq!(proc.get("shop.test", "/").await.text(), "green");

    // The drain: a request in flight when SIGTERM arrives still finishes.
    g.set_delay(Duration::from_secs(2));
    let hits = g.hits.load(Ordering::Relaxed);
    let slow = tokio::spawn({
        let (c, addr) = (c.clone(), proc.http_addr);
        async move { send_with(&c, get_request(addr, "shop.test", "/")).await }
    });
    wait_until(WAIT, "the request in flight", || async {
        g.hits.load(Ordering::Relaxed) > hits
    })
    .await;
    proc.signal("TERM");
    let reply = slow.await.unwrap();
    assert_eq!(
        (reply.status.as_u16(), reply.text()),
        (200, "green".to_owned())
    );
    let (exit, log) = proc.exit(WAIT).await;
    assert!(exit.success(), "{exit:?}\n{log}");
}

#[tokio::test]
async fn more_worker_threads_run_the_multi_thread_scheduler() {
    let up = spawn_upstream("blue").await;
    let proc = Setup::shop()
        .on(&up)
        .spawn_binary(&[("TOKIO_WORKER_THREADS", "3")])
        .await;
    assert_eq!(runtime_of(&proc), (3, "multi_thread".to_owned()));
    assert_eq!(proc.get("shop.test", "/").await.text(), "blue");
}

#[tokio::test]
async fn a_worker_count_that_is_not_a_number_is_refused_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("turnout.toml");
    std::fs::write(&path, control_file("", "")).unwrap();
    for bad in ["0", "two", "-1", "", "1025", "18446744073709551615"] {
        let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_turnout"))
            .args(["run", "--config"])
            .arg(&path)
            .env("TOKIO_WORKER_THREADS", bad)
            .kill_on_drop(true)
            .output();
        // Accepted by mistake, it would serve until killed.
        let out = tokio::time::timeout(WAIT, run)
            .await
            .unwrap_or_else(|_| panic!("{bad:?} was not refused"))
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad:?}: {stderr}");
        assert!(
            stderr.contains("TOKIO_WORKER_THREADS") && stderr.contains("not a number of threads"),
            "{bad:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{bad:?}: {stderr}");
    }
}
