//! `turnout check`: the example passes; broken files fail with located errors.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::process::Command;

fn check(path: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_turnout"))
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check_text(text: &str) -> (bool, String, String, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let (ok, out, err) = check(&path);
    (ok, out, err, path, dir)
}

const GOOD: &str = r#"[tenants.a]
hosts = ["a.test"]
stable = "blue"
weights = { blue = 1, green = 0 }
pools.blue = ["127.0.0.1:1"]
pools.green = ["127.0.0.1:2"]
"#;

#[test]
fn accepts_the_shipped_example() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/turnout.toml");
    let (ok, out, err) = check(&example);
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l.starts_with("acme: ")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("globex: ")), "{out}");
}

#[test]
fn rejects_a_duplicate_host_with_its_location() {
    let text = format!(
        "{GOOD}\n[tenants.b]\nhosts = [\"b.test\", \"A.test\"]\nstable = \"blue\"\nweights = {{ blue = 1, green = 0 }}\npools.blue = [\"127.0.0.1:3\"]\npools.green = []\n"
    );
    let (ok, _, err, path, _dir) = check_text(&text);
    assert!(!ok);
    let expected = format!(
        "{}:9:20: tenants.b.hosts[1]: host `A.test` already belongs to tenant `a`",
        path.display()
    );
    assert!(err.contains(&expected), "wanted {expected}\ngot {err}");
}

#[test]
fn rejects_zero_weights_with_its_location() {
    let text = GOOD.replace("blue = 1, green = 0", "blue = 0, green = 0");
    let (ok, _, err, path, _dir) = check_text(&text);
    assert!(!ok);
    let expected = format!(
        "{}:4:1: tenants.a.weights: weights must not both be 0",
        path.display()
    );
    assert!(err.contains(&expected), "wanted {expected}\ngot {err}");
}

#[test]
fn rejects_out_of_range_weights_each_at_its_key() {
    let text = GOOD.replace("blue = 1, green = 0", "blue = -1, green = 1000001");
    let (ok, _, err, _path, _dir) = check_text(&text);
    assert!(!ok);
    for pool in ["blue", "green"] {
        let expected = format!("tenants.a.weights.{pool}: must be between 0 and 1000000");
        assert!(err.contains(&expected), "wanted {expected}\ngot {err}");
    }
    assert!(!err.contains("both be 0"), "{err}");
}

#[test]
fn rejects_an_unknown_key_with_its_location() {
    let text = GOOD.replace("stable = \"blue\"", "stable = \"blue\"\nstabel = \"green\"");
    let (ok, _, err, path, _dir) = check_text(&text);
    assert!(!ok);
    let expected = format!(
        "{}:4:1: tenants.a.stabel: unknown field `stabel`",
        path.display()
    );
    assert!(err.contains(&expected), "wanted {expected}\ngot {err}");
}

#[test]
fn reports_every_problem_not_just_the_first() {
    let text = GOOD
        .replace("\"blue\"\n", "\"purple\"\n")
        .replace("127.0.0.1:2", "no-port")
        .replace(
            "[tenants.a]",
            "[defaults]\nrequest_timeout = \"soon\"\n\n[tenants.a]",
        );
    let (ok, _, err, _path, _dir) = check_text(&text);
    assert!(!ok);
    assert!(
        err.contains(":2:1: defaults.request_timeout: `soon` is not a duration"),
        "{err}"
    );
    assert!(
        err.contains("tenants.a.stable: `purple` is not \"blue\" or \"green\""),
        "{err}"
    );
    assert!(
        err.contains(":9:16: tenants.a.pools.green[0]: `no-port` is not host:port"),
        "{err}"
    );
}

#[test]
fn a_syntax_error_is_located() {
    let (ok, _, err, path, _dir) = check_text("[tenants.a\nhosts = 1\n");
    assert!(!ok);
    assert!(err.starts_with(&format!("{}:1:", path.display())), "{err}");
}

/// `turnout check` with `vars` removed from (or, as `Some`, set in) the
/// environment, as a CI job without secrets runs it.
fn check_env(path: &std::path::Path, vars: &[(&str, Option<&str>)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_turnout"));
    cmd.args(["check", "--config"]).arg(path);
    for (k, v) in vars {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every kind of `*_env` key: an admin token and a tenant's preview token.
const WITH_SECRETS: &str = r#"[admin.tokens.ops]
token_env = "TURNOUT_TEST_T_OPS"
tenants = ["*"]

[tenants.a]
hosts = ["a.test"]
preview_hosts = ["preview.a.test"]
preview_token_env = "TURNOUT_TEST_PREVIEW_A"
stable = "blue"
weights = { blue = 1, green = 0 }
pools.blue = ["127.0.0.1:1"]
pools.green = ["127.0.0.1:2"]
"#;

const UNSET: [(&str, Option<&str>); 2] = [
    ("TURNOUT_TEST_T_OPS", None),
    ("TURNOUT_TEST_PREVIEW_A", None),
];

#[test]
fn an_unset_secret_is_a_located_warning_and_check_passes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("turnout.toml");
    std::fs::write(&path, WITH_SECRETS).unwrap();
    let (code, out, err) = check_env(&path, &UNSET);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.starts_with("a: hosts a.test;"), "{out}");
    for expected in [
        format!(
            "{}:2:1: warning: admin.tokens.ops.token_env: environment variable TURNOUT_TEST_T_OPS is not set",
            path.display()
        ),
        format!(
            "{}:8:1: warning: tenants.a.preview_token_env: environment variable TURNOUT_TEST_PREVIEW_A is not set",
            path.display()
        ),
    ] {
        assert!(err.contains(&expected), "wanted {expected}\ngot {err}");
    }
    assert!(err.contains("`turnout run` refuses to start"), "{err}");

    // An empty variable is as good as an unset one: a warning.
    let (code, _, err) = check_env(
        &path,
        &[
            ("TURNOUT_TEST_T_OPS", Some("")),
            ("TURNOUT_TEST_PREVIEW_A", Some("p")),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(
            "warning: admin.tokens.ops.token_env: environment variable TURNOUT_TEST_T_OPS is empty"
        ),
        "{err}"
    );
    // With the secrets set there is nothing to warn about.
    let (code, _, err) = check_env(
        &path,
        &[
            ("TURNOUT_TEST_T_OPS", Some("s3cret")),
            ("TURNOUT_TEST_PREVIEW_A", Some("p")),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("warning"), "{err}");
}

#[test]
fn a_token_whose_secret_is_unset_still_guards_a_public_admin_listener() {
    // Admin on a non-loopback address needs a token; one whose secret is
    // not in this environment is still configured.
    let text = format!("[listen]\nadmin = \"0.0.0.0:9901\"\n\n{WITH_SECRETS}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("public.toml");
    std::fs::write(&path, &text).unwrap();
    let (code, _, err) = check_env(&path, &UNSET);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("not loopback"), "{err}");
}

#[test]
fn errors_still_fail_check_with_the_warnings_beside_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("turnout.toml");
    let text = WITH_SECRETS
        .replace("\"127.0.0.1:2\"", "\"no-port\"")
        .replace("\"TURNOUT_TEST_PREVIEW_A\"", "\"\"");
    std::fs::write(&path, text).unwrap();
    let (code, out, err) = check_env(&path, &UNSET);
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(
        err.contains("tenants.a.pools.green[0]: `no-port` is not host:port"),
        "{err}"
    );
    // A key that names no variable at all is an error, not a warning.
    assert!(
        err.contains(":8:1: tenants.a.preview_token_env: `` is not an environment variable name"),
        "{err}"
    );
    assert!(
        err.contains("warning: admin.tokens.ops.token_env: environment variable TURNOUT_TEST_T_OPS is not set"),
        "{err}"
    );
}

#[test]
fn a_token_no_client_can_send_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("turnout.toml");
    std::fs::write(&path, WITH_SECRETS).unwrap();
    let (code, _, err) = check_env(
        &path,
        &[
            ("TURNOUT_TEST_T_OPS", Some("two words")),
            ("TURNOUT_TEST_PREVIEW_A", Some("p")),
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(":2:1: admin.tokens.ops.token_env: the token in TURNOUT_TEST_T_OPS cannot be sent as a bearer token"),
        "{err}"
    );
}

#[test]
fn run_refuses_to_start_without_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("turnout.toml");
    let text =
        format!("[listen]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n{WITH_SECRETS}");
    std::fs::write(&path, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_turnout"))
        .args(["run", "--config"])
        .arg(&path)
        .env_remove("TURNOUT_TEST_T_OPS")
        .env("TURNOUT_TEST_PREVIEW_A", "p")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("turnout run started without its token secret");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "{}:6:1: admin.tokens.ops.token_env: environment variable TURNOUT_TEST_T_OPS is not set",
            path.display()
        )),
        "{err}"
    );
    assert!(!err.contains("warning"), "{err}");
}

#[tokio::test]
async fn a_reload_refuses_a_file_whose_secret_is_unset() {
    let (b, g) = (
        support::spawn_upstream("blue").await,
        support::spawn_upstream("green").await,
    );
    let proxy = support::Setup::shop()
        .pools(&b, &g)
        .weights(100, 0)
        .spawn()
        .await;
    support::edit_file(
        &proxy.path,
        "stable = \"blue\"",
        "preview_hosts = [\"preview.shop.test\"]\npreview_token_env = \"TURNOUT_TEST_NEVER_SET\"\nstable = \"blue\"",
    );
    let r = proxy.admin("POST", "/v1/config/reload", None, None).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(
        r.text().contains(
            "tenants.shop.preview_token_env: environment variable TURNOUT_TEST_NEVER_SET is not set"
        ),
        "{}",
        r.text()
    );
    // The last good state keeps serving.
    assert_eq!(proxy.get("shop.test", "/").await.text(), "blue");
}
