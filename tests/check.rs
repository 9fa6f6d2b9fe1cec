//! `turnout check`: the example passes; broken files fail with located errors.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

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
