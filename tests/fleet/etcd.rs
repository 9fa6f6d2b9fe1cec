//! A real etcd for the fleet tests: one per test, on free loopback ports,
//! with a temporary data directory and a unique name; it can be killed,
//! paused (SIGSTOP), resumed and restarted on the same directory.
//!
//! etcd must be installed (Debian: `etcd-server`). Without it the tests
//! fail — never pass by skipping; `.ci/run` installs it and sets
//! `TURNOUT_REQUIRE_ETCD=1`, which the failure message names.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or stopped) etcd.
pub struct Etcd {
    pub client: SocketAddr,
    peer: SocketAddr,
    /// Where `/health` is asked: the client port, or with TLS a plain
    /// metrics port of its own.
    health: SocketAddr,
    name: String,
    dir: tempfile::TempDir,
    /// Serve clients over TLS with these files.
    tls: Option<EtcdTls>,
    /// More flags (`--auth-token-ttl`, ...).
    args: Vec<String>,
    child: Option<Child>,
}

/// The PEM files of an etcd serving TLS to its clients.
#[derive(Clone)]
pub struct EtcdTls {
    /// Its certificate and key.
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// Given: client certificates must chain to this CA
    /// (`--client-cert-auth`).
    pub client_ca: Option<std::path::PathBuf>,
}

/// Three loopback ports free a moment ago, all different (held together
/// while picked). etcd takes its ports on the command line, so they are
/// free only until it binds them: see `Etcd::start_with`.
fn free_ports() -> [SocketAddr; 3] {
    let held: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap())
}

impl Etcd {
    /// Starts etcd and waits until it answers `/health`.
    pub async fn start() -> Etcd {
        Etcd::start_with(None, &[]).await
    }

    /// Starts etcd serving its clients over TLS (`https://`) and, with
    /// `tls.client_ca`, asking them for certificates; `args` are more
    /// flags.
    pub async fn start_with(tls: Option<EtcdTls>, args: &[&str]) -> Etcd {
        let found = Command::new("etcd")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            let ci = std::env::var("TURNOUT_REQUIRE_ETCD").is_ok_and(|v| v == "1");
            panic!(
                "the fleet tests need etcd on PATH (Debian: apt-get install etcd-server){}",
                if ci {
                    "; TURNOUT_REQUIRE_ETCD=1 is set: CI must install it"
                } else {
                    ""
                }
            );
        }
        let name = format!("t{}-{}", std::process::id(), fastrand::u32(..));
        // A port taken by another test between being picked and etcd
        // binding it makes etcd exit: then it starts on other ports.
        for _ in 0..5 {
            let [client, peer, metrics] = free_ports();
            let mut etcd = Etcd {
                client,
                peer,
                health: if tls.is_some() { metrics } else { client },
                name: name.clone(),
                dir: tempfile::tempdir().unwrap(),
                tls: tls.clone(),
                args: args.iter().map(|a| (*a).to_owned()).collect(),
                child: None,
            };
            if etcd.spawn().await {
                return etcd;
            }
        }
        panic!("etcd exited at start on five sets of free ports");
    }

    /// The `[store]` table of a control file on this etcd, under a prefix
    /// of the test's own.
    pub fn store(&self, prefix: &str) -> String {
        format!(
            "[store]\netcd = [\"{}\"]\nprefix = \"/{}/{prefix}\"\n\n",
            self.client, self.name
        )
    }

    /// The key prefix of this etcd's tests: each test's `prefix` is under
    /// it.
    pub fn root(&self) -> String {
        format!("/{}/", self.name)
    }

    /// The `[store]` table of a control file on this TLS etcd (its
    /// endpoint as `https://`), with more `keys` (`ca`, `cert`, `user`...).
    pub fn store_tls(&self, prefix: &str, keys: &str) -> String {
        format!(
            "[store]\netcd = [\"https://{}\"]\nprefix = \"/{}/{prefix}\"\n{keys}\n",
            self.client, self.name
        )
    }

    /// Starts etcd and waits until it answers: true; false if it exited
    /// first (it could not bind a port).
    async fn spawn(&mut self) -> bool {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://{}", self.client);
        let peer = format!("http://{}", self.peer);
        let mut command = Command::new("etcd");
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .args(["--listen-metrics-urls", &format!("http://{}", self.health)]);
            if let Some(ca) = &tls.client_ca {
                command
                    .arg("--trusted-ca-file")
                    .arg(ca)
                    .arg("--client-cert-auth");
            }
        }
        let child = command
            .args(&self.args)
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("{}={peer}", self.name)])
            .args(["--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.healthy().await {
                return true;
            }
            let child = self.child.as_mut().expect("etcd was started");
            if child.try_wait().unwrap().is_some() {
                self.child = None;
                return false;
            }
            assert!(Instant::now() < deadline, "etcd did not become healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.healthy().await {
                return;
            }
            assert!(Instant::now() < deadline, "etcd did not become healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn healthy(&self) -> bool {
        let client = crate::support::client();
        let req = http::Request::get(format!("http://{}/health", self.health))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let Ok(Ok(resp)) =
            tokio::time::timeout(Duration::from_millis(500), client.request(req)).await
        else {
            return false;
        };
        resp.status() == 200
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("etcd runs").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    }

    /// Freezes etcd (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Resumes a paused etcd and waits until it answers.
    pub async fn resume(&self) {
        self.signal("-CONT");
        self.wait_healthy().await;
    }

    /// Kills etcd (its data stays).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts etcd again on the same ports and data.
    pub async fn restart(&mut self) {
        self.kill();
        assert!(self.spawn().await, "etcd exited at restart on its ports");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_ref() {
            // A paused etcd must be resumed to die on SIGKILL's reaping.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.kill();
    }
}

impl Etcd {
    /// The `[store]` table of a control file that reaches this etcd at
    /// `endpoint` (a relay in front of it).
    pub fn store_via(&self, endpoint: std::net::SocketAddr, prefix: &str) -> String {
        format!(
            "[store]\netcd = [\"{endpoint}\"]\nprefix = \"/{}/{prefix}\"\n\n",
            self.name
        )
    }

    /// Compacts the key-value history up to the current revision (etcd's
    /// JSON gateway), so a watch resuming from an older one is refused.
    pub async fn compact(&self) -> i64 {
        let body = r#"{"key": "AA==", "limit": 1}"#;
        let range = self.gateway("/v3/kv/range", body).await;
        let revision: i64 = range["header"]["revision"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let body = format!(r#"{{"revision": "{revision}", "physical": true}}"#);
        self.gateway("/v3/kv/compaction", &body).await;
        revision
    }

    async fn gateway(&self, path: &str, body: &str) -> serde_json::Value {
        use http_body_util::BodyExt;
        let client = crate::support::client();
        let req = http::Request::post(format!("http://{}{path}", self.client))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_owned(),
            )))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }
}

/// A TCP relay in front of etcd that can cut one replica off: while cut,
/// its connections are closed and new ones refused.
pub struct Relay {
    pub addr: std::net::SocketAddr,
    cut: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

impl Relay {
    /// A relay to `target`, passing traffic.
    pub async fn start(target: std::net::SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = std::sync::Arc::new(tokio::sync::watch::Sender::new(false));
        let state = std::sync::Arc::clone(&cut);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if *state.borrow() {
                    continue; // dropped: refused while cut
                }
                let mut cut = state.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Relay { addr, cut }
    }

    /// Cuts the replica off (`true`) or lets it through again.
    pub fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}
