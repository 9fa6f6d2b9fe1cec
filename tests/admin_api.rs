//! Changes through the admin API: auth, validation, write-through, history,
//! the merge rule, and replicas sharing one file.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::time::Duration;

use sha2::{Digest, Sha256};
use support::*;
use turnout::app::{self, ListenOverrides};

const OPS: &str = "ops-secret";
const SHOP_CI: &str = "shop-ci-secret";

fn tokens() -> String {
    let hex = |s: &str| hex::encode(Sha256::digest(s.as_bytes()));
    format!(
        "[admin.tokens.ops]\ntoken_sha256 = \"{}\"\ntenants = [\"*\"]\n\n[admin.tokens.shop-ci]\ntoken_sha256 = \"{}\"\ntenants = [\"shop\"]\n\n",
        hex(OPS),
        hex(SHOP_CI)
    )
}

#[tokio::test]
async fn auth_and_validation_matrix() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let config = format!(
        "{}{}{}",
        tokens(),
        Setup::shop().pools(&b, &g).weights(100, 0).toml(),
        Setup::tenant("blog").pools(&b, &g).weights(100, 0).toml()
    );
    let proxy = spawn_proxy(&config).await;
    let put = |token: Option<&'static str>, tenant: &'static str, body: &'static str| {
        let proxy = &proxy;
        async move {
            proxy
                .admin(
                    "PUT",
                    &format!("/v1/tenants/{tenant}/weights"),
                    token,
                    Some(body),
                )
                .await
        }
    };
    let ok_body = r#"{"blue": 90, "green": 10}"#;

    let r = put(None, "shop", ok_body).await;
    assert_eq!(r.status, 401);
    assert!(json(&r)["error"].as_str().unwrap().contains("token"));
    assert_eq!(put(Some("wrong"), "shop", ok_body).await.status, 401);
    assert_eq!(
        proxy.admin("GET", "/v1/tenants", None, None).await.status,
        401
    );
    // A token scoped to shop may not touch blog, nor see it.
    assert_eq!(put(Some(SHOP_CI), "blog", ok_body).await.status, 403);
    assert_eq!(
        proxy
            .admin("GET", "/v1/tenants/blog", Some(SHOP_CI), None)
            .await
            .status,
        403
    );
    let visible = json(&proxy.admin("GET", "/v1/tenants", Some(SHOP_CI), None).await);
    assert_eq!(visible.as_array().unwrap().len(), 1);
    // Bad bodies.
    let r = put(Some(OPS), "shop", "{not json").await;
    assert_eq!(r.status, 400);
    assert!(json(&r)["error"].as_str().unwrap().contains("JSON"));
    assert_eq!(
        put(Some(OPS), "shop", r#"{"blue": -1, "green": 5}"#)
            .await
            .status,
        400
    );
    assert_eq!(put(Some(OPS), "shop", r#"{"blue": 1}"#).await.status, 400);
    assert_eq!(
        put(Some(OPS), "shop", r#"{"blue": 1, "green": 1, "purple": 1}"#)
            .await
            .status,
        400
    );
    let r = put(Some(OPS), "shop", r#"{"blue": 0, "green": 0}"#).await;
    assert_eq!(r.status, 400);
    assert!(json(&r)["error"].as_str().unwrap().contains("both be 0"));
    let r = put(Some(OPS), "shop", r#"{"blue": 1, "green": 1000001}"#).await;
    assert_eq!(r.status, 400);
    let error = json(&r)["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("green weight must be at most 1000000"),
        "{error}"
    );
    let huge = format!(
        "{{\"reason\": \"{}\", \"blue\": 1, \"green\": 1}}",
        "x".repeat(70 * 1024)
    );
    let r = proxy
        .admin("PUT", "/v1/tenants/shop/weights", Some(OPS), Some(&huge))
        .await;
    assert_eq!(r.status, 413);
    // Unknown tenant.
    assert_eq!(put(Some(OPS), "nope", ok_body).await.status, 404);
    // Nothing so far changed anything.
    assert_eq!(proxy.weights_with(OPS, "shop").await, (100, 0));
    // The good calls.
    let r = put(Some(SHOP_CI), "shop", ok_body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&r)["generation"], 2);
    assert_eq!(json(&r)["changed"], true);
    assert_eq!(json(&r)["persisted"], true);
    assert_eq!(proxy.weights_with(OPS, "shop").await, (90, 10));
}

#[tokio::test]
async fn write_through_keeps_comments_and_survives_a_restart() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let extra = "# the shop's own note\nmax_inflight = 100 # keep this comment";
    let proxy = Setup::shop()
        .pools(&b, &g)
        .weights(100, 0)
        .extra(extra)
        .spawn()
        .await;
    let r = proxy
        .admin(
            "PUT",
            "/v1/tenants/shop/weights",
            None,
            Some(r#"{"blue": 75, "green": 25, "reason": "canary"}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = std::fs::read_to_string(&proxy.path).unwrap();
    assert!(
        text.contains("weights = { blue = 75, green = 25 }"),
        "{text}"
    );
    assert!(
        text.contains("# the shop's own note\nmax_inflight = 100 # keep this comment"),
        "{text}"
    );
    // Only the weights line changed.
    let before = Setup::shop()
        .pools(&b, &g)
        .weights(100, 0)
        .extra(extra)
        .toml();
    let after = Setup::shop()
        .pools(&b, &g)
        .weights(75, 25)
        .extra(extra)
        .toml();
    assert!(text.ends_with(&after) && !text.contains(&before));
    // Re-reading turnout's own write does not apply it a second time.
    let r = proxy.admin("POST", "/v1/config/reload", None, None).await;
    assert_eq!(json(&r)["changed"], false);
    let cfg = json(&proxy.admin_get("/v1/config").await);
    assert_eq!(
        (cfg["generation"].as_u64(), cfg["persisted"].as_bool()),
        (Some(2), Some(true))
    );

    // A restart on the same file keeps the change.
    let path = proxy.path.clone();
    let TestProxy { running, dir, .. } = proxy;
    running.shutdown().await;
    let again = app::start(&path, ListenOverrides::default()).await.unwrap();
    assert_eq!(
        tenant_weights(&client(), again.admin_addr, "shop").await,
        (75, 25)
    );
    again.shutdown().await;
    drop(dir);
}

#[tokio::test]
async fn if_match_guards_against_lost_updates() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let proxy = Setup::shop().pools(&b, &g).weights(100, 0).spawn().await;
    let put = |if_match: &'static str, body: &'static str| {
        let proxy = &proxy;
        async move {
            let req = http::Request::put(proxy.admin_url("/v1/tenants/shop/weights"))
                .header("if-match", if_match)
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    body.as_bytes(),
                )))
                .unwrap();
            proxy.send(req).await
        }
    };
    let r = put("\"7\"", r#"{"blue": 50, "green": 50}"#).await;
    assert_eq!(r.status, 412);
    assert!(json(&r)["error"].as_str().unwrap().contains("generation 1"));
    let r = put("\"1\"", r#"{"blue": 50, "green": 50}"#).await;
    assert_eq!(r.status, 200);
    // The generation moved on: the same If-Match now fails.
    assert_eq!(
        put("\"1\"", r#"{"blue": 60, "green": 40}"#).await.status,
        412
    );
    assert_eq!(proxy.weights("shop").await, (50, 50));
}

#[tokio::test]
async fn events_record_source_actor_and_reason() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let config = format!(
        "{}{}",
        tokens(),
        Setup::shop().pools(&b, &g).weights(100, 0).toml()
    );
    let proxy = spawn_proxy(&config).await;
    let r = proxy
        .admin(
            "PUT",
            "/v1/tenants/shop/weights",
            Some(SHOP_CI),
            Some(r#"{"blue": 80, "green": 20, "reason": "canary 20%"}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = proxy
        .admin(
            "POST",
            "/v1/tenants/shop/rollback",
            Some(OPS),
            Some(r#"{"reason": "bad release"}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    edit_file(
        &proxy.path,
        "blue = 100, green = 0",
        "blue = 60, green = 40",
    );
    wait_until(Duration::from_secs(5), "the file edit", || async {
        proxy.weights_with(OPS, "shop").await == (60, 40)
    })
    .await;

    let events = json(
        &proxy
            .admin("GET", "/v1/events?tenant=shop", Some(OPS), None)
            .await,
    );
    let events = events.as_array().unwrap();
    assert_eq!(events.len(), 3, "{events:?}");
    let (canary, rollback, file) = (&events[0], &events[1], &events[2]);
    assert_eq!(canary["source"], "admin");
    assert_eq!(canary["actor"], "shop-ci");
    assert_eq!(canary["reason"], "canary 20%");
    assert_eq!(canary["from"], serde_json::json!({"blue": 100, "green": 0}));
    assert_eq!(canary["to"], serde_json::json!({"blue": 80, "green": 20}));
    assert_eq!(canary["stable"], "blue");
    assert_eq!(canary["persisted"], true);
    assert!(canary["at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(rollback["actor"], "ops");
    assert_eq!(rollback["reason"], "bad release");
    assert_eq!(rollback["to"], serde_json::json!({"blue": 100, "green": 0}));
    assert_eq!(file["source"], "file");
    assert_eq!(file.get("actor"), Some(&serde_json::Value::Null));
    assert_eq!(file["reason"], "control file changed: weights");
    assert!(
        canary["seq"].as_u64() < rollback["seq"].as_u64()
            && rollback["seq"].as_u64() < file["seq"].as_u64()
    );
    let limited = json(
        &proxy
            .admin("GET", "/v1/events?limit=1", Some(OPS), None)
            .await,
    );
    assert_eq!(limited.as_array().unwrap()[0]["seq"], file["seq"]);
}

#[tokio::test]
async fn merge_rule_with_an_unwritable_file() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let proxy = Setup::shop().pools(&b, &g).weights(50, 50).spawn().await;
    // Make the write-through fail: a directory where its lock file must go.
    block_write_through(proxy.dir.path()).await;
    let r = proxy
        .admin("POST", "/v1/tenants/shop/rollback", None, None)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(json(&r)["persisted"], false);
    assert_eq!(proxy.weights("shop").await, (100, 0));
    assert!(
        std::fs::read_to_string(&proxy.path)
            .unwrap()
            .contains("blue = 50, green = 50")
    );
    let cfg = json(&proxy.admin_get("/v1/config").await);
    assert_eq!(cfg["persisted"], false);
    let events = json(&proxy.admin_get("/v1/events").await);
    assert_eq!(events[0]["persisted"], false);

    // A reload of a file that did not touch the weights keeps the rollback.
    edit_file(&proxy.path, "[tenants.shop]", "# a comment\n[tenants.shop]");
    proxy.reload().await;
    assert_eq!(proxy.weights("shop").await, (100, 0));
    // An edit of another key applies, and still keeps the rollback.
    edit_file(
        &proxy.path,
        "hosts = [\"shop.test\"]",
        "hosts = [\"shop.test\", \"www.shop.test\"]",
    );
    wait_until(Duration::from_secs(5), "the new host", || async {
        proxy.get("www.shop.test", "/").await.status == 200
    })
    .await;
    assert_eq!(proxy.weights("shop").await, (100, 0));
    // A new operator intent for the weights applies.
    edit_file(
        &proxy.path,
        "blue = 50, green = 50",
        "blue = 20, green = 80",
    );
    wait_until(Duration::from_secs(5), "the operator's weights", || async {
        proxy.weights("shop").await == (20, 80)
    })
    .await;
    assert_eq!(
        json(&proxy.admin_get("/v1/config").await)["persisted"],
        true
    );
}

#[tokio::test]
async fn replicas_sharing_one_file_converge() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let first = Setup::shop().pools(&b, &g).weights(100, 0).spawn().await;
    // The second replica: same file, its own ports from the command line.
    let any = "127.0.0.1:0".parse().ok();
    let second = app::start(
        &first.path,
        ListenOverrides {
            http: any,
            https: None,
            admin: any,
        },
    )
    .await
    .unwrap();
    let c = client();
    let r = first
        .admin(
            "PUT",
            "/v1/tenants/shop/weights",
            None,
            Some(r#"{"blue": 70, "green": 30}"#),
        )
        .await;
    assert_eq!(r.status, 200);
    wait_until(
        Duration::from_secs(5),
        "the second replica to converge",
        || async { tenant_weights(&c, second.admin_addr, "shop").await == (70, 30) },
    )
    .await;
    // And the other way round, through the second replica's admin API.
    let req = http::Request::post(format!(
        "http://{}/v1/tenants/shop/rollback",
        second.admin_addr
    ))
    .body(http_body_util::Full::default())
    .unwrap();
    assert_eq!(c.request(req).await.unwrap().status(), 200);
    wait_until(
        Duration::from_secs(5),
        "the first replica to converge",
        || async { first.weights("shop").await == (100, 0) },
    )
    .await;
    second.shutdown().await;
}

#[tokio::test]
async fn sticky_users_on_the_candidate_stay_as_it_grows() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let extra = r#"sticky = { header = "x-user-id" }"#;
    let proxy = Setup::shop()
        .pools(&b, &g)
        .weights(90, 10)
        .extra(extra)
        .spawn()
        .await;
    let pool_of = |user: usize| {
        let proxy = &proxy;
        async move {
            let req = http::Request::get(proxy.http_url("/"))
                .header("host", "shop.test")
                .header("x-user-id", format!("user-{user}"))
                .body(http_body_util::Full::default())
                .unwrap();
            proxy.send(req).await.text()
        }
    };
    let mut on_green = Vec::new();
    for user in 0..300 {
        if pool_of(user).await == "green" {
            on_green.push(user);
        }
    }
    // About 30 of 300; far from none.
    assert!(on_green.len() >= 10, "{}", on_green.len());
    let r = proxy
        .admin(
            "PUT",
            "/v1/tenants/shop/weights",
            None,
            Some(r#"{"blue": 70, "green": 30}"#),
        )
        .await;
    assert_eq!(r.status, 200);
    for user in &on_green {
        assert_eq!(
            pool_of(*user).await,
            "green",
            "user-{user} left the candidate when its share grew"
        );
    }
    let now_green = futures_count(&pool_of, 300).await;
    assert!(
        now_green > on_green.len(),
        "the larger share must move more users to green"
    );
}

async fn futures_count<F, Fut>(pool_of: &F, users: usize) -> usize
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let mut n = 0;
    for user in 0..users {
        if pool_of(user).await == "green" {
            n += 1;
        }
    }
    n
}

#[test]
fn an_exposed_admin_api_without_tokens_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("turnout.toml");
    std::fs::write(
        &path,
        "[listen]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_turnout"))
        .args(["run", "--listen-admin", "0.0.0.0:0", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("listen.admin: 0.0.0.0:0 is not loopback"),
        "{err}"
    );
}

#[tokio::test]
async fn the_bearer_scheme_is_read_as_rfc_9110_writes_it() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let proxy = spawn_proxy(&format!(
        "{}{}",
        tokens(),
        Setup::shop().pools(&b, &g).weights(100, 0).toml()
    ))
    .await;
    let get = |authorization: String| {
        let proxy = &proxy;
        async move {
            let req = http::Request::get(proxy.admin_url("/v1/tenants/shop"))
                .header("authorization", authorization)
                .body(http_body_util::Full::default())
                .unwrap();
            proxy.send(req).await
        }
    };
    // The scheme is case-insensitive (RFC 9110 §11.1) and one or more
    // spaces separate it from the token (§11.4: `1*SP`).
    for scheme in ["Bearer ", "bearer ", "BEARER ", "bEaReR ", "Bearer   "] {
        let r = get(format!("{scheme}{OPS}")).await;
        assert_eq!(r.status, 200, "`{scheme}`: {}", r.text());
    }
    // Not `auth-scheme 1*SP token68`, or not our scheme: 401 with the
    // challenge RFC 9110 §11.6.1 requires.
    for bad in [
        format!("Basic {OPS}"),
        format!("Bearer\t{OPS}"),
        format!("Bearer{OPS}"),
        format!("Bearers {OPS}"),
        format!("Bearer {OPS} extra"),
        "Bearer".to_owned(),
    ] {
        let r = get(bad.clone()).await;
        assert_eq!(r.status, 401, "`{bad}`");
        assert_eq!(
            r.headers.get("www-authenticate").unwrap(),
            "Bearer realm=\"turnout\""
        );
    }
}

#[tokio::test]
async fn a_reason_that_could_forge_a_log_line_is_refused() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let proxy = spawn_proxy(&format!(
        "{}{}",
        tokens(),
        Setup::shop()
            .pools(&b, &g)
            .weights(100, 0)
            .extra("[tenants.shop.rollout]\nsteps = [50, 100]\ninterval = \"1h\"\nbake = \"1h\"\n")
            .toml()
    ))
    .await;
    let generation =
        json(&proxy.admin("GET", "/v1/config", Some(OPS), None).await)["generation"].clone();
    let forged = [
        (
            r#"ok\nINFO change applied seq=99 actor=root"#,
            "U+000A at character 3",
        ),
        (r#"ok\r"#, "U+000D at character 3"),
        (r#"\u0000"#, "U+0000 at character 1"),
        (r#"\u001b[31mred"#, "U+001B at character 1"),
        (r#"tab\there"#, "U+0009 at character 4"),
        (r#"\u0085next line"#, "U+0085 at character 1"),
        (r#"a\u2028b"#, "U+2028 at character 2"),
        (r#"a\u202eb"#, "U+202E at character 2"),
    ];
    let calls = [
        (
            "PUT",
            "/v1/tenants/shop/weights",
            r#""blue": 90, "green": 10, "#,
        ),
        ("POST", "/v1/tenants/shop/rollback", ""),
        ("POST", "/v1/tenants/shop/rollout", ""),
        ("POST", "/v1/tenants/shop/promote", ""),
    ];
    for (method, path, fields) in calls {
        for (reason, found) in forged {
            let body = format!(r#"{{{fields}"reason": "{reason}"}}"#);
            let r = proxy.admin(method, path, Some(OPS), Some(&body)).await;
            assert_eq!(r.status, 400, "{method} {path} {body}: {}", r.text());
            let error = json(&r)["error"].as_str().unwrap().to_owned();
            assert!(
                error.contains("reason must not contain control characters or line breaks")
                    && error.contains(found),
                "{error}"
            );
        }
    }
    let long = format!(r#"{{"reason": "{}"}}"#, "x".repeat(1025));
    let r = proxy
        .admin("POST", "/v1/tenants/shop/rollback", Some(OPS), Some(&long))
        .await;
    assert_eq!(r.status, 400);
    assert!(
        json(&r)["error"]
            .as_str()
            .unwrap()
            .contains("at most 1024 bytes")
    );
    // Nothing was applied or recorded.
    let now = json(&proxy.admin("GET", "/v1/config", Some(OPS), None).await);
    assert_eq!(now["generation"], generation);
    assert_eq!(proxy.weights_with(OPS, "shop").await, (100, 0));
    // Text that is merely not ASCII is a fine reason.
    let r = proxy
        .admin(
            "PUT",
            "/v1/tenants/shop/weights",
            Some(OPS),
            Some(r#"{"blue": 90, "green": 10, "reason": "déploiement 7 — ok ✓"}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let events = proxy
        .admin("GET", "/v1/events?tenant=shop", Some(OPS), None)
        .await;
    assert!(events.text().contains("déploiement 7 — ok ✓"));
}

#[tokio::test]
async fn outside_text_in_a_text_log_line_stays_on_its_line() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let file = Setup::shop().pools(&b, &g).weights(100, 0).write();
    let proc = spawn_binary_with(LogFormat::Text, None, &file.path, &[], &[]).await;
    // A value that carries a line break and a terminal sequence into the
    // error the reload logs.
    edit_file(
        &file.path,
        "stable = \"blue\"",
        "stable = \"blue\"\nrequest_timeout = \"5s\\nFORGED ERROR all tenants dropped \\u001b[2J\"",
    );
    let reload = admin_request(proc.admin_addr, "POST", "/v1/config/reload", None, None);
    let resp = client().request(reload).await.unwrap();
    assert_eq!(resp.status(), 422);
    let failed = |l: &String| l.contains("control file not applied");
    wait_until(
        Duration::from_secs(10),
        "the failed reload's log line",
        || async { proc.log_lines().iter().any(failed) },
    )
    .await;
    let lines = proc.log_lines();
    let at = lines.iter().position(failed).unwrap();
    for line in &lines[..=at] {
        assert!(
            !line.starts_with("FORGED"),
            "a value from outside started a log line of its own: {line}"
        );
    }
    let line = &lines[at];
    assert!(
        line.contains("`5s\\nFORGED ERROR all tenants dropped \\u{1b}[2J` is not a duration"),
        "{line}"
    );
    assert!(!line.contains('\u{1b}'), "{line:?}");
}
