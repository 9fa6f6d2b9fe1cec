//! `turnout ctl` against a real proxy: every subcommand and the exit codes a
//! pipeline gates on.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::sync::Arc;

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

/// shop ramping 50, 100 every 300 ms, behind the token `s3cret`.
fn ramped_ci(b: &Upstream, g: &Upstream) -> Setup {
    let steps = "steps = [50, 100]\ninterval = \"300ms\"\nbake = \"300ms\"\n";
    ramped(b, g, "{ min_requests = 5 }", steps).preamble(&token_table("s3cret"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_works() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let proxy = ramped_ci(&b, &g).spawn().await;
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
    let proxy = Arc::new(ramped_ci(&b, &g).spawn().await);
    let traffic = Traffic::start(&proxy);
    let out = ctl(
        proxy.running.admin_addr,
        Some("s3cret"),
        &["rollout", "shop", "--wait"],
    )
    .await;
    drop(traffic);
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
    let proxy = ramped_ci(&b, &g).spawn().await;
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

/// `turnout` with `args` and no admin API behind it.
async fn turnout(args: &[&str]) -> Out {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_turnout"))
        .args(args)
        .env_remove("TURNOUT_TOKEN")
        .env_remove("TURNOUT_ADMIN")
        .output()
        .await
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test]
async fn a_usage_error_has_its_own_exit_code_never_the_revert_code() {
    let (_held, dead) = refusing_port();
    let admin = format!("http://{dead}");
    for args in [
        &["ctl", "--admin", &admin, "rollout", "shop", "--wiat"][..],
        &["ctl", "--admin", &admin, "rollout"],
        &["ctl", "--admin", &admin, "weights", "shop", "ninety", "10"],
        &[
            "ctl",
            "--admin",
            &admin,
            "rollout",
            "shop",
            "--timeout",
            "5s",
        ],
        &[
            "ctl",
            "--admin",
            &admin,
            "rollout",
            "shop",
            "--wait",
            "--timeout",
            "soon",
        ],
        &[
            "ctl",
            "--admin",
            &admin,
            "promote",
            "shop",
            "--wait",
            "--timeout",
            "0s",
        ],
        &["ctl", "--admin", "ftp://127.0.0.1:9901", "status"],
        &["ctl", "--admin", &admin],
        &["ctl", "--admin", &admin, "stauts"],
        &["check", "--confg", "x.toml"],
        &["run", "--listen-http", "not-an-address"],
        &["--bogus"],
        &["upstream"],
    ] {
        let out = turnout(args).await;
        assert_eq!(out.code, 64, "{args:?}: {}", out.stderr);
        assert!(!out.stderr.is_empty(), "{args:?} explains itself");
    }
    // Help is not an error; it lists every exit code.
    let out = turnout(&["ctl", "--help"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    for line in [
        "0    done",
        "1    error",
        "2    --wait: the candidate was reverted",
        "3    --wait: the rollout ended without a promotion",
        "64   usage error",
        "124  --wait --timeout",
    ] {
        assert!(out.stdout.contains(line), "`{line}` in {}", out.stdout);
    }
    let out = turnout(&["ctl", "rollout", "--help"]).await;
    assert_eq!(out.code, 0);
    assert!(
        out.stdout.contains("--timeout <DURATION>") && out.stdout.contains("124  --wait"),
        "{}",
        out.stdout
    );
    let out = turnout(&["--help"]).await;
    assert!(out.stdout.contains("64   usage error"), "{}", out.stdout);
}

/// A ramp of three steps, resumed from the file at step 2 (50%) or, with
/// `step = 2`, baking at 100%. It cannot move without traffic.
fn resumed(b: &Upstream, g: &Upstream, step: usize) -> Setup {
    let weights = [(90, 10), (50, 50), (0, 100)][step];
    let rollout = format!(
        "steps = [10, 50, 100]\ninterval = \"300ms\"\nbake = \"300ms\"\nprogress = {{ step = {step}, since = \"2026-01-01T00:00:00Z\" }}\n"
    );
    Setup::shop()
        .pools(b, g)
        .weights(weights.0, weights.1)
        .ramp("{ min_requests = 5 }", &rollout)
        .preamble(&token_table("s3cret"))
}

#[tokio::test]
async fn a_second_rollout_leaves_the_running_one_at_its_step() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let proxy = resumed(&b, &g, 1).spawn().await;
    let before = proxy.view_with("s3cret", "shop").await;
    assert_eq!(before["status"], "ramping");
    assert_eq!(before["rollout"]["step"], 2);

    // Over HTTP: 200, nothing changed, the running rollout in the answer.
    let r = proxy
        .admin(
            "POST",
            "/v1/tenants/shop/rollout",
            Some("s3cret"),
            Some(r#"{"reason": "retried CI job"}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let answer: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(answer["changed"], false, "{answer}");
    assert_eq!(answer["already_running"], true, "{answer}");
    assert_eq!(answer["generation"], before["generation"], "{answer}");
    assert_eq!(answer["rollout"]["step"], 2, "{answer}");
    assert_eq!(answer["rollout"]["since"], "2026-01-01T00:00:00Z");

    // Through ctl, as a retried pipeline step runs it.
    let out = ctl(
        proxy.running.admin_addr,
        Some("s3cret"),
        &["rollout", "shop"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("shop: rollout already running, left as it is, step 2/3 at 50%"),
        "{}",
        out.stdout
    );
    let after = proxy.view_with("s3cret", "shop").await;
    assert_eq!(after["rollout"]["step"], 2, "{after}");
    assert_eq!(after["rollout"]["since"], "2026-01-01T00:00:00Z");
    assert_eq!(after["weights"], before["weights"]);
    assert_eq!(after["generation"], before["generation"]);
    // No event was recorded for the calls that changed nothing.
    let r = proxy
        .admin("GET", "/v1/events?tenant=shop", Some("s3cret"), None)
        .await;
    assert!(!r.text().contains("retried CI job"), "{}", r.text());

    // `promote` moves a ramp below 100% on to the bake, once.
    let r = proxy
        .admin("POST", "/v1/tenants/shop/promote", Some("s3cret"), None)
        .await;
    let first: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(first["changed"], true, "{first}");
    assert_eq!(first["status"], "baking", "{first}");
    assert_eq!(first["rollout"]["step"], 3, "{first}");
}

#[tokio::test]
async fn a_second_promote_leaves_the_bake_clock_alone() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    // With a rollout table: the bake is the ramp's last step.
    let proxy = resumed(&b, &g, 2).spawn().await;
    let before = proxy.view_with("s3cret", "shop").await;
    assert_eq!(before["status"], "baking", "{before}");
    let out = ctl(
        proxy.running.admin_addr,
        Some("s3cret"),
        &["promote", "shop"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("promote already running, left as it is"),
        "{}",
        out.stdout
    );
    let after = proxy.view_with("s3cret", "shop").await;
    assert_eq!(after["rollout"]["since"], "2026-01-01T00:00:00Z", "{after}");
    assert_eq!(after["generation"], before["generation"]);
    // A rollout while baking is the same: the running one is kept.
    let r = proxy
        .admin("POST", "/v1/tenants/shop/rollout", Some("s3cret"), None)
        .await;
    let answer: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(answer["already_running"], true, "{answer}");
    assert_eq!(
        proxy.view_with("s3cret", "shop").await["weights"]["green"],
        100
    );

    // Without a rollout table: the bake is held in memory.
    let (b2, g2) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let plain = Setup::shop()
        .pools(&b2, &g2)
        .weights(100, 0)
        .extra("slo = { min_requests = 5 }\n")
        .preamble(&token_table("s3cret"))
        .spawn()
        .await;
    let promote = || plain.admin("POST", "/v1/tenants/shop/promote", Some("s3cret"), None);
    let r = promote().await;
    assert_eq!(r.status, 200, "{}", r.text());
    let first: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(first["already_running"], false, "{first}");
    let since = first["rollout"]["since"].as_str().unwrap().to_owned();
    // `since` has whole seconds: let one pass, so a restarted bake shows.
    let started = humantime::parse_rfc3339(&since).unwrap();
    wait_until(
        std::time::Duration::from_secs(5),
        "the next second",
        || async {
            std::time::SystemTime::now()
                .duration_since(started)
                .is_ok_and(|d| d >= std::time::Duration::from_secs(1))
        },
    )
    .await;
    let second: serde_json::Value = serde_json::from_slice(&promote().await.body).unwrap();
    assert_eq!(second["changed"], false, "{second}");
    assert_eq!(second["already_running"], true, "{second}");
    assert_eq!(second["rollout"]["since"], since.as_str(), "{second}");
    assert_eq!(second["generation"], first["generation"], "{second}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_wait_gives_up_at_its_timeout_with_its_own_code() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    // No traffic: the ramp cannot move, `--wait` alone would wait forever.
    let proxy = ramped_ci(&b, &g).spawn().await;
    let admin = proxy.running.admin_addr;
    let started = std::time::Instant::now();
    let out = ctl(
        admin,
        Some("s3cret"),
        &["rollout", "shop", "--wait", "--timeout", "1s"],
    )
    .await;
    assert_eq!(
        out.code, 124,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    assert!(
        out.stderr
            .contains("shop: still ramping, step 1/2 at 50% after 1s; stopped waiting, the rollout keeps running"),
        "{}",
        out.stderr
    );
    // The first state is printed once, not once per poll.
    assert_eq!(
        out.stdout.lines().filter(|l| l.contains("ramping")).count(),
        1,
        "{}",
        out.stdout
    );
    assert_eq!(proxy.view_with("s3cret", "shop").await["status"], "ramping");

    // The same in NDJSON: the answer, the view, then the outcome.
    let out = ctl(
        admin,
        Some("s3cret"),
        &["--json", "rollout", "shop", "--wait", "--timeout", "700ms"],
    )
    .await;
    assert_eq!(out.code, 124, "{}", out.stderr);
    let docs: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(docs.len(), 3, "{}", out.stdout);
    assert_eq!(docs[0]["already_running"], true);
    assert_eq!(docs[1]["name"], "shop");
    assert_eq!(docs[2]["outcome"], "timeout");
    assert_eq!(docs[2]["exit_code"], 124);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_wait_prints_one_document_per_line() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let proxy = Arc::new(ramped_ci(&b, &g).spawn().await);
    let traffic = Traffic::start(&proxy);
    let out = ctl(
        proxy.running.admin_addr,
        Some("s3cret"),
        &["rollout", "shop", "--wait", "--json"],
    )
    .await;
    drop(traffic);
    assert_eq!(
        out.code, 0,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    let docs: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON document: {e}: {l}"))
        })
        .collect();
    let (first, last) = (&docs[0], &docs[docs.len() - 1]);
    assert_eq!(first["changed"], true, "{first}");
    assert_eq!(first["rollout"]["step"], 1, "{first}");
    assert_eq!(last["outcome"], "promoted", "{last}");
    assert_eq!(last["exit_code"], 0, "{last}");
    let views = &docs[1..docs.len() - 1];
    let statuses: Vec<&str> = views
        .iter()
        .map(|v| v["status"].as_str().unwrap())
        .collect();
    assert!(statuses.contains(&"ramping"), "{statuses:?}");
    assert_eq!(views.last().unwrap()["stable"], "green");
    // One line per change: no two views in a row alike.
    for pair in views.windows(2) {
        let key = |v: &serde_json::Value| {
            (
                v["status"].clone(),
                v["weights"].clone(),
                v["stable"].clone(),
                v["rollout"]["step"].clone(),
            )
        };
        assert_ne!(key(&pair[0]), key(&pair[1]), "{}", out.stdout);
    }
}
