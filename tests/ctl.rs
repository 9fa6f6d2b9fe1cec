//! `turnout ctl` against a real proxy: every subcommand and the exit codes a
//! pipeline gates on.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};
use support::*;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn ctl(admin: std::net::SocketAddr, token: Option<&str>, args: &[&str]) -> Out {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_turnout"));
    cmd.arg("ctl")
        .arg("--admin")
        .arg(format!("http://{admin}"))
        .args(args)
        .env_remove("TURNOUT_TOKEN");
    if let Some(t) = token {
        cmd.env("TURNOUT_TOKEN", t);
    }
    let out = cmd.output().await.unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn token_table(secret: &str) -> String {
    format!(
        "[admin.tokens.ci]\ntoken_sha256 = \"{}\"\ntenants = [\"*\"]\n\n",
        hex::encode(Sha256::digest(secret.as_bytes()))
    )
}

fn ramped(b: &Upstream, g: &Upstream) -> String {
    let extra = "slo = { min_requests = 5 }\n\n[tenants.shop.rollout]\nsteps = [50, 100]\ninterval = \"300ms\"\nbake = \"300ms\"\n";
    format!(
        "{}{}",
        token_table("s3cret"),
        tenant("shop", r#"["shop.test"]"#, b, g, (100, 0), extra)
    )
}

/// Requests to shop until dropped.
fn traffic(proxy: &Arc<TestProxy>) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let (p, s) = (Arc::clone(proxy), Arc::clone(&stop));
    tokio::spawn(async move {
        while !s.load(Ordering::Relaxed) {
            p.get("shop.test", "/").await;
        }
    });
    stop
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_works() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let proxy = spawn_proxy(&ramped(&b, &g)).await;
    let admin = proxy.running.admin_addr;
    let t = Some("s3cret");

    assert_eq!(ctl(admin, None, &["ready"]).await.code, 0);
    let out = ctl(admin, t, &["status"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("TENANT")
            && out.stdout.contains("shop")
            && out.stdout.contains("steady"),
        "{}",
        out.stdout
    );
    let out = ctl(admin, t, &["status", "shop", "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v[0]["name"], "shop");

    let out = ctl(
        admin,
        t,
        &["weights", "shop", "90", "10", "--reason", "canary"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("weights blue 90 / green 10"),
        "{}",
        out.stdout
    );
    assert_eq!(proxy.weights_with("s3cret", "shop").await, (90, 10));
    // A stale If-Match is refused.
    let out = ctl(
        admin,
        t,
        &["weights", "shop", "80", "20", "--if-match", "1"],
    )
    .await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("412"), "{}", out.stderr);

    let out = ctl(admin, t, &["rollback", "shop", "--reason", "bad release"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(proxy.weights_with("s3cret", "shop").await, (100, 0));

    let out = ctl(admin, t, &["events", "shop"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("canary")
            && out.stdout.contains("bad release")
            && out.stdout.contains("ci"),
        "{}",
        out.stdout
    );
    let out = ctl(admin, t, &["events", "--json", "--limit", "1"]).await;
    let events: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(events.as_array().unwrap().len(), 1);

    // Promote without waiting: starts the bake and returns.
    let out = ctl(admin, t, &["promote", "shop"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(proxy.weights_with("s3cret", "shop").await, (0, 100));
}

/// `turnout ctl rollout shop --wait` while traffic flows; `green_fails`
/// makes the candidate answer 500.
async fn rollout_and_wait(green_fails: bool) -> Out {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    g.set_failing(green_fails);
    let proxy = Arc::new(spawn_proxy(&ramped(&b, &g)).await);
    let stop = traffic(&proxy);
    let out = ctl(
        proxy.running.admin_addr,
        Some("s3cret"),
        &["rollout", "shop", "--wait"],
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_wait_exits_zero_when_promoted() {
    let out = rollout_and_wait(false).await;
    assert_eq!(
        out.code, 0,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    assert!(
        out.stdout
            .contains("promoted, green is now the stable pool"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("ramping"),
        "each step is printed: {}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_wait_fails_the_pipeline_when_reverted() {
    let out = rollout_and_wait(true).await;
    assert_eq!(
        out.code, 2,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    assert!(
        out.stderr.contains("reverted: error rate"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn a_bad_token_or_an_unreachable_admin_is_a_clear_error() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let proxy = spawn_proxy(&ramped(&b, &g)).await;
    let out = ctl(proxy.running.admin_addr, Some("wrong"), &["status"]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("401") && out.stderr.contains("TURNOUT_TOKEN"),
        "{}",
        out.stderr
    );
    let out = ctl(proxy.running.admin_addr, None, &["status"]).await;
    assert_eq!(out.code, 1);
    let (_held, dead) = refusing_port();
    let out = ctl(dead, Some("s3cret"), &["status"]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("cannot reach the admin API"),
        "{}",
        out.stderr
    );
    // Weights that can never be applied are refused before any call.
    let out = ctl(dead, Some("s3cret"), &["weights", "shop", "0", "0"]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("shop: weights must not both be 0"),
        "{}",
        out.stderr
    );
}
