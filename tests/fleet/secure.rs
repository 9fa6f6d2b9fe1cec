//! The fleet on an etcd that wants client TLS (mutual) or a user and
//! password, as production etcds do (SPEC section 12, `[store]`).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::etcd::{Etcd, EtcdTls};
use super::kit::*;
use super::support::*;

/// Writes `text` to `dir/name`; its path.
fn file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A call on a replica run as a process.
async fn call(replica: &BinaryProxy, method: &str, path: &str, body: Option<&str>) -> Reply {
    let req = admin_request(replica.admin_addr, method, path, None, body);
    send_with(&client(), req).await
}

/// The replica's `GET /v1/config`.
async fn config_of(replica: &BinaryProxy) -> Value {
    json(&call(replica, "GET", "/v1/config", None).await)
}

/// Waits until the replica has logged a line with every one of `words`;
/// that line (or the whole log in the failure).
async fn logged(replica: &BinaryProxy, words: &[&str]) -> String {
    let find = || {
        replica
            .log_lines()
            .into_iter()
            .find(|l| words.iter().all(|w| l.contains(w)))
    };
    let found = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(line) = find() {
                return line;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| {
        panic!(
            "no log line with {words:?} in:\n{}",
            replica.log_lines().join("\n")
        )
    })
}

/// Asserts that the replica is not ready and shows etcd unconnected.
async fn not_ready(replica: &BinaryProxy) -> Value {
    assert_eq!(call(replica, "GET", "/readyz", None).await.status, 503);
    let config = config_of(replica).await;
    assert_eq!(config["store"]["connected"], false, "{config}");
    assert_eq!(config["store"]["revision"], 0, "{config}");
    config
}

#[tokio::test]
async fn mutual_tls_replicas_follow_one_state_and_a_wrong_ca_or_no_client_cert_is_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // etcd's certificate is for a name, not for 127.0.0.1: the replicas
    // verify it as `server_name`.
    let (server_ca, client_ca, stranger) = (
        TestCa::new("etcd server CA"),
        TestCa::new("etcd client CA"),
        TestCa::new("someone else"),
    );
    let server = server_ca.issue("etcd.test");
    let client = client_ca.issue("turnout");
    let etcd = Etcd::start_with(
        Some(EtcdTls {
            cert: file(d, "etcd.pem", &server.cert_pem),
            key: file(d, "etcd-key.pem", &server.key_pem),
            client_ca: Some(file(d, "client-ca.pem", &client_ca.pem)),
        }),
        &[],
    )
    .await;
    let ca = file(d, "ca.pem", &server_ca.pem).display().to_string();
    let wrong_ca = file(d, "wrong-ca.pem", &stranger.pem).display().to_string();
    let cert = file(d, "client.pem", &client.cert_pem)
        .display()
        .to_string();
    let key = file(d, "client-key.pem", &client.key_pem)
        .display()
        .to_string();
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let setup = |keys: &str| {
        Setup::shop()
            .preamble(&etcd.store_tls("mtls", keys))
            .pools(&b, &g)
            .weights(100, 0)
    };
    let good =
        format!("ca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\nserver_name = \"etcd.test\"\n");
    let a = replica(setup(&good)).await;
    let other = replica(setup(&good)).await;

    let r = a
        .admin(
            "PUT",
            "/v1/tenants/shop/weights",
            None,
            Some(r#"{"blue": 0, "green": 100}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_until(WAIT, "the other replica to serve the change", || async {
        other.get("shop.test", "/").await.upstream() == Some("green")
    })
    .await;
    let config = config_view(&other).await;
    assert_eq!(config["store"]["connected"], true, "{config}");
    assert_eq!(config["store"]["error"], Value::Null, "{config}");
    assert_eq!(
        config["store"]["endpoints"][0],
        format!("https://{}", etcd.client)
    );
    assert_eq!(config["store"]["tls"]["ca"], ca.as_str());
    assert_eq!(config["store"]["tls"]["cert"], cert.as_str());
    assert_eq!(config["store"]["tls"]["server_name"], "etcd.test");
    assert_eq!(config["store"]["auth"], Value::Null);

    // A replica that does not trust etcd's certificate, and one that has
    // no client certificate: neither reads the state, both say why.
    let untrusting = setup(&format!(
        "ca = \"{wrong_ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\nserver_name = \"etcd.test\"\n"
    ))
    .spawn_binary(&[])
    .await;
    let anonymous = setup(&format!("ca = \"{ca}\"\nserver_name = \"etcd.test\"\n"))
        .spawn_binary(&[])
        .await;
    let line = logged(&untrusting, &["cannot reach etcd", "UnknownIssuer"]).await;
    assert!(line.contains("does not chain to store.ca"), "{line}");
    // TLS 1.3: etcd refuses a missing certificate after the handshake, so
    // the replica sees its alert or only the connection closing; either
    // way the hint names the client certificate.
    logged(
        &anonymous,
        &["cannot reach etcd", "this replica's client certificate"],
    )
    .await;
    for (replica, why) in [
        (&untrusting, "does not chain to store.ca"),
        (&anonymous, "this replica's client certificate"),
    ] {
        let config = not_ready(replica).await;
        assert_eq!(config["store"]["tls"]["server_name"], "etcd.test");
        // The reason is shown where an operator looks first, too.
        let error = config["store"]["error"].as_str().unwrap_or_default();
        assert!(error.contains(why), "{config}");
        // It serves the file's topology with the candidate at 0, never the
        // fleet's green on unknown state.
        assert_eq!(replica.get("shop.test", "/").await.upstream(), Some("blue"));
    }
}

#[tokio::test]
async fn a_user_with_its_password_follows_the_fleet_and_a_wrong_one_is_not_ready() {
    let mut etcd = Etcd::start().await;
    // A user that may read and write this test's keys, and auth on.
    let mut admin = etcd_client::Client::connect([format!("http://{}", etcd.client)], None)
        .await
        .unwrap();
    admin.user_add("root", "root-pw", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.role_add("turnout").await.unwrap();
    let keys = etcd_client::Permission::read_write(etcd.root()).with_prefix();
    admin.role_grant_permission("turnout", keys).await.unwrap();
    admin.user_add("turnout", "s3cret-pw", None).await.unwrap();
    admin.user_grant_role("turnout", "turnout").await.unwrap();
    admin.auth_enable().await.unwrap();

    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let store = format!(
        "{}user = \"turnout\"\npassword_env = \"ETCD_PASSWORD\"\n\n",
        etcd.store("auth")
    );
    let setup = || Setup::shop().preamble(&store).pools(&b, &g).weights(100, 0);
    let a = setup()
        .spawn_binary(&[("ETCD_PASSWORD", "s3cret-pw")])
        .await;
    let other = setup()
        .spawn_binary(&[("ETCD_PASSWORD", "s3cret-pw")])
        .await;
    let wrong = setup().spawn_binary(&[("ETCD_PASSWORD", "guessed")]).await;
    for replica in [&a, &other] {
        wait_until(WAIT, "the replica to be ready", || async {
            call(replica, "GET", "/readyz", None).await.status == 200
        })
        .await;
    }
    let put = |weights: &'static str| call(&a, "PUT", "/v1/tenants/shop/weights", Some(weights));
    let r = put(r#"{"blue": 0, "green": 100}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_until(WAIT, "the other replica to serve the change", || async {
        other.get("shop.test", "/").await.upstream() == Some("green")
    })
    .await;
    let config = config_of(&other).await;
    assert_eq!(config["store"]["auth"]["user"], "turnout", "{config}");
    assert_eq!(config["store"]["auth"]["password_env"], "ETCD_PASSWORD");
    assert_eq!(config["store"]["tls"], Value::Null);
    assert!(!config.to_string().contains("s3cret-pw"), "{config}");

    logged(&wrong, &["cannot reach etcd", "authentication failed"]).await;
    let config = not_ready(&wrong).await;
    let error = config["store"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("authentication failed"), "{config}");
    assert!(!error.contains("guessed"), "{config}");
    assert!(
        !wrong.log_lines().iter().any(|l| l.contains("guessed")),
        "the password is never logged"
    );

    // etcd restarts: every token it gave is gone. The watches reconnect
    // and authenticate again, and an admin write takes a new token.
    etcd.restart().await;
    wait_until(WAIT, "an admin write after the restart", || async {
        put(r#"{"blue": 30, "green": 70}"#).await.status == 200
    })
    .await;
    wait_until(
        WAIT,
        "the other replica to follow after the restart",
        || async {
            let view = json(&call(&other, "GET", "/v1/tenants/shop", None).await);
            view["weights"] == serde_json::json!({"blue": 30, "green": 70})
        },
    )
    .await;
}

#[test]
fn turnout_check_shows_how_etcd_is_reached_and_never_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("etcd CA");
    let client = ca.issue("turnout");
    file(dir.path(), "ca.pem", &ca.pem);
    file(dir.path(), "client.pem", &client.cert_pem);
    file(dir.path(), "client-key.pem", &client.key_pem);
    let store = "[store]\netcd = [\"https://etcd-0.etcd:2379\"]\nca = \"ca.pem\"\ncert = \"client.pem\"\nkey = \"client-key.pem\"\nserver_name = \"etcd.internal\"\nuser = \"turnout\"\npassword_env = \"TEST_ETCD_PASSWORD\"\n\n";
    let path = file(dir.path(), "turnout.toml", &control_file("", store));
    let check = |password: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_turnout"));
        cmd.args(["check", "--config"]).arg(&path);
        match password {
            Some(p) => cmd.env("TEST_ETCD_PASSWORD", p),
            None => cmd.env_remove("TEST_ETCD_PASSWORD"),
        };
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = check(Some("s3cret-pw"));
    assert!(ok, "{stdout}{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("store: etcd https://etcd-0.etcd:2379"))
        .unwrap_or_else(|| panic!("no store line in:\n{stdout}"));
    for shown in [
        "TLS verified against",
        "ca.pem as etcd.internal",
        "client certificate",
        "user turnout (password from TEST_ETCD_PASSWORD)",
    ] {
        assert!(line.contains(shown), "{shown} not in {line}");
    }
    assert!(!format!("{stdout}{stderr}").contains("s3cret-pw"));
    // Unset where the file is checked (a CI job): a warning, not an error.
    let (ok, stdout, stderr) = check(None);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stderr.contains("store.password_env") && stderr.contains("TEST_ETCD_PASSWORD is not set"),
        "{stderr}"
    );
    assert!(stdout.contains("user turnout"), "{stdout}");
}
