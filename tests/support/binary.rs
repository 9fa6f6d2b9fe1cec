//! The turnout binary as a child process: for what only a process has (its
//! environment, signals, exit code, its log on stderr, file descriptors).
//! It learns its ports from its own "turnout serving" log line, so every
//! listener can be on port 0.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use crate::support::{
    ControlFile, Reply, TestClient, client, control_file, get_request, metric_value, send_with,
};

/// The turnout binary, run as a child process.
pub struct BinaryProxy {
    pub child: tokio::process::Child,
    pub http_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The control file's directory, when this process owns it.
    pub dir: Option<tempfile::TempDir>,
    /// Every line the process wrote to stderr (its log), as it comes.
    pub log: Arc<Mutex<Vec<String>>>,
    /// The task reading stderr; it ends when the process closes it.
    reader: Option<tokio::task::JoinHandle<()>>,
    client: TestClient,
}

/// The log format asked of the binary.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `--log-format json`: one JSON object a line.
    Json,
    /// `--log-format text` with `NO_COLOR=1`.
    Text,
    /// No `--log-format`, no `NO_COLOR`: what an operator gets by default.
    Default,
}

/// Runs `target/.../turnout` on a control file with `tenants`, with extra
/// environment variables; learns its ports from its JSON start-up log line.
pub async fn spawn_binary(tenants: &str, env: &[(&str, &str)]) -> BinaryProxy {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("turnout.toml");
    std::fs::write(&path, control_file("", tenants)).unwrap();
    spawn_binary_at(Some(dir), &path, &[], env).await
}

/// Runs the turnout binary on a written control file, which it then owns.
pub async fn spawn_binary_in(file: ControlFile, env: &[(&str, &str)]) -> BinaryProxy {
    spawn_binary_at(Some(file.dir), &file.path, &[], env).await
}

/// Runs the turnout binary on the control file at `path` with extra
/// arguments for `run`.
pub async fn spawn_binary_at(
    dir: Option<tempfile::TempDir>,
    path: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> BinaryProxy {
    spawn_binary_with(LogFormat::Json, dir, path, args, env).await
}

/// Runs the turnout binary with its log in `format`.
pub async fn spawn_binary_with(
    format: LogFormat,
    dir: Option<tempfile::TempDir>,
    path: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> BinaryProxy {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_turnout"));
    match format {
        LogFormat::Json => {
            cmd.args(["--log-format", "json"]);
        }
        LogFormat::Text => {
            cmd.args(["--log-format", "text"]).env("NO_COLOR", "1");
        }
        LogFormat::Default => {}
    }
    cmd.args(["run", "--config"])
        .arg(path)
        .args(args)
        .env("TURNOUT_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let log = Arc::new(Mutex::new(Vec::new()));
    let started = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            log.lock().unwrap().push(line.clone());
            if line.contains("turnout serving") {
                return Some(line);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .expect("turnout did not report that it is serving");
    // Keep reading stderr so the child never blocks on a full pipe.
    let kept = Arc::clone(&log);
    let reader = tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            kept.lock().unwrap().push(line);
        }
    });
    BinaryProxy {
        child,
        http_addr: logged_addr(&started, "http_addr"),
        admin_addr: logged_addr(&started, "admin_addr"),
        dir,
        log,
        reader: Some(reader),
        client: client(),
    }
}

/// The address `key` of the start-up line, as JSON (`"key":"…"`) or text
/// (`key=…`) writes it.
fn logged_addr(line: &str, key: &str) -> SocketAddr {
    let value = match serde_json::from_str::<serde_json::Value>(line) {
        Ok(v) => v[key].as_str().map(str::to_owned),
        Err(_) => line
            .split(&format!("{key}="))
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned),
    };
    value
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in the start-up line: {line}"))
}

impl BinaryProxy {
    /// The log lines written so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Sends the process a real signal (`"HUP"`, `"TERM"`, ...).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("the process is running").to_string();
        let status = std::process::Command::new("kill")
            .args([format!("-{name}").as_str(), &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} {pid} failed");
    }

    /// Waits (up to `within`) for the process to exit; its status and its
    /// whole log, read to the end.
    pub async fn exit(&mut self, within: Duration) -> (std::process::ExitStatus, String) {
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .expect("turnout did not exit")
            .unwrap();
        if let Some(reader) = self.reader.take() {
            tokio::time::timeout(within, reader)
                .await
                .expect("stderr was not closed")
                .unwrap();
        }
        (status, self.log_lines().join("\n"))
    }

    /// GET `path` with `Host: host` on the proxy port.
    pub async fn get(&self, host: &str, path: &str) -> Reply {
        send_with(&self.client, get_request(self.http_addr, host, path)).await
    }

    /// The value of one metric series on the admin API's `/metrics`.
    pub async fn metric(&self, series: &str) -> f64 {
        let req = http::Request::get(format!("http://{}/metrics", self.admin_addr))
            .body(http_body_util::Full::default())
            .unwrap();
        let text = send_with(&self.client, req).await.text();
        metric_value(&text, series)
    }
}
