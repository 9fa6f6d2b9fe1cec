//! `turnout ctl status --watch` and `ctl events --follow` against a real
//! proxy: plain lines when stdout is not a terminal, a redrawn screen under
//! a pseudo-terminal (util-linux `script`), and a clean exit 0 on Ctrl-C
//! that gives the terminal back.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SHOWN: Duration = Duration::from_secs(20);

/// A `turnout ctl` (or `script` around one) still running, its stdout
/// collected as it comes.
struct Running {
    child: tokio::process::Child,
    out: Arc<Mutex<String>>,
}

fn start(program: &str, args: &[String]) -> Running {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env_remove("TURNOUT_TOKEN")
        // script(1) runs its command as `$SHELL -c`: a user whose shell is
        // nologin or false (CI service users) would run nothing.
        .env("SHELL", "/bin/sh")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = Arc::new(Mutex::new(String::new()));
    let mut stdout = child.stdout.take().unwrap();
    let sink = Arc::clone(&out);
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf).await {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    Running { child, out }
}

fn ctl_args(admin: SocketAddr, args: &[&str]) -> Vec<String> {
    let mut all = vec![
        "ctl".to_owned(),
        "--admin".to_owned(),
        format!("http://{admin}"),
    ];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    all
}

impl Running {
    fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    async fn shows(&self, wanted: &str) {
        wait_until(SHOWN, &format!("output with {wanted:?}"), || async {
            self.output().contains(wanted)
        })
        .await;
    }

    /// Sends SIGINT, as Ctrl-C does; the exit code.
    async fn interrupt(&mut self) -> i32 {
        let pid = self.child.id().unwrap().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        self.exit_code().await
    }

    async fn exit_code(&mut self) -> i32 {
        let status = tokio::time::timeout(SHOWN, self.child.wait())
            .await
            .expect("ctl did not exit")
            .unwrap();
        status.code().unwrap_or(-1)
    }
}

async fn set_weights(proxy: &TestProxy, blue: u32, green: u32, reason: &str) {
    let body = format!("{{\"blue\":{blue},\"green\":{green},\"reason\":\"{reason}\"}}");
    let r = proxy
        .admin("PUT", "/v1/tenants/shop/weights", None, Some(&body))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_prints_a_tenants_line_again_when_an_event_changes_it() {
    let up = spawn_upstream("up").await;
    let proxy = Setup::shop()
        .on(&up)
        .weights(90, 10)
        .and_tenant("blog")
        .on(&up)
        .spawn()
        .await;
    let admin = proxy.running.admin_addr;
    let mut watch = start(
        env!("CARGO_BIN_EXE_turnout"),
        &ctl_args(admin, &["status", "--watch"]),
    );
    watch.shows("90/10").await;
    watch.shows("blog").await;
    set_weights(&proxy, 70, 30, "watch me").await;
    watch.shows("70/30").await;
    let out = watch.output();
    assert!(!out.contains('\x1b'), "no escape codes on a pipe: {out:?}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0].split_whitespace().next(), Some("TENANT"));
    let shop_lines = lines.iter().filter(|l| l.starts_with("shop ")).count();
    let blog_lines = lines.iter().filter(|l| l.starts_with("blog ")).count();
    assert_eq!(
        (shop_lines, blog_lines),
        (2, 1),
        "the changed tenant's line again, the other not: {out}"
    );
    assert_eq!(watch.interrupt().await, 0, "Ctrl-C is a clean exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_on_a_terminal_redraws_and_gives_the_terminal_back() {
    let up = spawn_upstream("up").await;
    let proxy = Setup::shop().on(&up).weights(90, 10).spawn().await;
    let admin = proxy.running.admin_addr;
    // `exec`: script(1) runs the command through $SHELL, and a shell that
    // stays as the parent (dash, CI's /bin/sh) is itself killed by the
    // terminal's SIGINT — the exit code would be the shell's, not turnout's.
    let command = format!(
        "exec {} ctl --admin http://{admin} status --watch shop",
        env!("CARGO_BIN_EXE_turnout")
    );
    // script(1) runs it on a pseudo-terminal; what is typed on its stdin
    // reaches that terminal, so a ^C there is a real Ctrl-C.
    let mut watch = start(
        "script",
        &[
            "--quiet".into(),
            "--return".into(),
            "--command".into(),
            command,
            "/dev/null".into(),
        ],
    );
    watch.shows("Ctrl-C to quit").await;
    watch.shows("\x1b[?1049h").await;
    set_weights(&proxy, 60, 40, "on screen").await;
    watch.shows("60/40").await;
    watch.shows("on screen").await;
    let stdin = watch.child.stdin.as_mut().unwrap();
    stdin.write_all(b"\x03").await.unwrap();
    stdin.flush().await.unwrap();
    assert_eq!(watch.exit_code().await, 0, "Ctrl-C is a clean exit");
    let out = watch.output();
    let left = out
        .rfind("\x1b[?1049l")
        .expect("the alternate screen is left");
    assert!(
        out.rfind("\x1b[?25h").is_some_and(|shown| shown < left),
        "the cursor is shown again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_prints_the_history_then_each_new_event() {
    let up = spawn_upstream("up").await;
    let proxy = Setup::shop().on(&up).spawn().await;
    let admin = proxy.running.admin_addr;
    set_weights(&proxy, 90, 10, "before").await;
    let mut follow = start(
        env!("CARGO_BIN_EXE_turnout"),
        &ctl_args(admin, &["events", "shop", "--follow", "--json"]),
    );
    follow.shows("before").await;
    set_weights(&proxy, 80, 20, "after").await;
    follow.shows("after").await;
    assert_eq!(follow.interrupt().await, 0);
    let seqs: Vec<u64> = follow
        .output()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, [1, 2], "one JSON document a line, none twice");
}
