//! The control file a test starts from, built as the SPEC describes a
//! tenant: its hosts, a blue and a green pool of endpoints, the weights, and
//! whatever else the test is about.
//!
//! ```ignore
//! Setup::shop().pools(&b, &g).weights(90, 10).spawn().await
//! Setup::shop().on(&up).extra("max_inflight = 4").spawn().await
//! Setup::tenant("busy").on(&slow).and_tenant("calm").on(&fast).spawn().await
//! Setup::shop().blue(&raw_up).spawn().await       // green = []
//! ```
//!
//! Each `tenant(..)` opens a new `[tenants.NAME]` table; the calls after it
//! shape that table. A table is written exactly as `tenant()` always wrote
//! it, so the file the proxy reads is the one the tests were written for.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::support::{BinaryProxy, RawUpstream, TestProxy, Upstream, spawn_binary_in};

/// A `health` line that probes `/` about never: for upstreams that answer
/// any request alike, where a probe's connection must not show in a count.
/// At start-up each endpoint's first probe comes at a random point of its
/// interval (`src/health.rs`): with an hour, one came within a 10 s test
/// about once in 360 runs; with 300 days (the longest allowed is a year),
/// about once in 2.6 million.
pub const RARE_PROBES: &str = r#"health = { path = "/", interval = "300d" }"#;

/// Anything with an address a pool can list.
pub trait Endpoint {
    /// The address turnout connects to.
    fn endpoint(&self) -> SocketAddr;

    /// The endpoint as the pool lists it (`[scheme://]host:port`).
    fn endpoint_text(&self) -> String {
        self.endpoint().to_string()
    }
}

impl Endpoint for Upstream {
    fn endpoint(&self) -> SocketAddr {
        self.addr
    }
}

impl Endpoint for RawUpstream {
    fn endpoint(&self) -> SocketAddr {
        self.addr
    }
}

impl Endpoint for SocketAddr {
    fn endpoint(&self) -> SocketAddr {
        *self
    }
}

/// One `[tenants.NAME]` table.
struct Table {
    name: String,
    hosts: Option<String>,
    blue: Vec<String>,
    green: Vec<String>,
    weights: (u32, u32),
    extra: Vec<String>,
}

impl Table {
    fn toml(&self) -> String {
        let list = |addrs: &[String]| {
            let quoted: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
            format!("[{}]", quoted.join(", "))
        };
        let hosts = self
            .hosts
            .clone()
            .unwrap_or_else(|| format!("[\"{}.test\"]", self.name));
        format!(
            "[tenants.{}]\nhosts = {hosts}\nstable = \"blue\"\nweights = {{ blue = {}, green = {} }}\npools.blue = {}\npools.green = {}\n{}\n",
            self.name,
            self.weights.0,
            self.weights.1,
            list(&self.blue),
            list(&self.green),
            self.extra.join("\n"),
        )
    }
}

/// A control file under construction: top-level tables (`preamble`), the
/// `[listen]` extras, and tenant tables in order.
#[must_use]
pub struct Setup {
    preamble: String,
    listen: String,
    tables: Vec<Table>,
    dir: Option<tempfile::TempDir>,
}

impl Setup {
    /// A control file with one tenant, `name`, serving `NAME.test`; its
    /// weights are 1/0 (all on blue) until `weights` says otherwise.
    pub fn tenant(name: &str) -> Setup {
        Setup {
            preamble: String::new(),
            listen: String::new(),
            tables: Vec::new(),
            dir: None,
        }
        .and_tenant(name)
    }

    /// `Setup::tenant("shop")`: the tenant the SPEC's examples use.
    pub fn shop() -> Setup {
        Setup::tenant("shop")
    }

    /// Opens another tenant table; the calls after it shape that one.
    pub fn and_tenant(mut self, name: &str) -> Setup {
        self.tables.push(Table {
            name: name.to_owned(),
            hosts: None,
            blue: Vec::new(),
            green: Vec::new(),
            weights: (1, 0),
            extra: Vec::new(),
        });
        self
    }

    fn last(&mut self) -> &mut Table {
        self.tables.last_mut().expect("Setup starts with a tenant")
    }

    /// The tenant's `hosts`, as a TOML array (`r#"["a.test", "*.a.test"]"#`).
    pub fn hosts(mut self, hosts: &str) -> Setup {
        self.last().hosts = Some(hosts.to_owned());
        self
    }

    /// Adds an endpoint to the blue pool.
    pub fn blue(mut self, up: &impl Endpoint) -> Setup {
        let addr = up.endpoint_text();
        self.last().blue.push(addr);
        self
    }

    /// Adds an endpoint to the green pool.
    pub fn green(mut self, up: &impl Endpoint) -> Setup {
        let addr = up.endpoint_text();
        self.last().green.push(addr);
        self
    }

    /// `blue` as the blue pool's endpoint, `green` as the green pool's.
    pub fn pools(self, blue: &impl Endpoint, green: &impl Endpoint) -> Setup {
        self.blue(blue).green(green)
    }

    /// One upstream behind both pools.
    pub fn on(self, up: &impl Endpoint) -> Setup {
        self.blue(up).green(up)
    }

    /// The weights of blue and green.
    pub fn weights(mut self, blue: u32, green: u32) -> Setup {
        self.last().weights = (blue, green);
        self
    }

    /// TOML lines added to the tenant's table (and any sub-tables after it).
    pub fn extra(mut self, lines: &str) -> Setup {
        self.last().extra.push(lines.to_owned());
        self
    }

    /// An SLO guard `slo = SLO` and a `[tenants.NAME.rollout]` table with
    /// `rollout` (its keys, one per line).
    pub fn ramp(mut self, slo: &str, rollout: &str) -> Setup {
        let name = self.last().name.clone();
        self.extra(&format!(
            "slo = {slo}\n\n[tenants.{name}.rollout]\n{rollout}"
        ))
    }

    /// Top-level tables before the tenants (`[admin.tokens.*]`, `[notify]`,
    /// `[defaults]`).
    pub fn preamble(mut self, text: &str) -> Setup {
        self.preamble.push_str(text);
        self
    }

    /// Extra lines for `[listen]` (`https = "127.0.0.1:0"`, `idle_timeout`).
    pub fn listen(mut self, lines: &str) -> Setup {
        self.listen.push_str(lines);
        self
    }

    /// The directory the control file goes to (to put TLS files beside it).
    pub fn in_dir(mut self, dir: tempfile::TempDir) -> Setup {
        self.dir = Some(dir);
        self
    }

    /// The tenant tables, after the preamble: what `spawn_proxy` takes.
    pub fn toml(&self) -> String {
        let tables: String = self.tables.iter().map(Table::toml).collect();
        format!("{}{tables}", self.preamble)
    }

    /// Writes the whole control file, `[listen]` on ephemeral ports first;
    /// the directory lives as long as the returned handle.
    pub fn write(mut self) -> ControlFile {
        let dir = self
            .dir
            .take()
            .unwrap_or_else(|| tempfile::tempdir().unwrap());
        let path = dir.path().join("turnout.toml");
        std::fs::write(&path, control_file(&self.listen, &self.toml())).unwrap();
        ControlFile { dir, path }
    }

    /// Starts turnout in-process on this control file.
    pub async fn spawn(mut self) -> TestProxy {
        let dir = self
            .dir
            .take()
            .unwrap_or_else(|| tempfile::tempdir().unwrap());
        crate::support::spawn_proxy_in(dir, &self.listen, &self.toml()).await
    }

    /// Runs the turnout binary on this control file with extra environment
    /// variables.
    pub async fn spawn_binary(self, env: &[(&str, &str)]) -> BinaryProxy {
        let file = self.write();
        spawn_binary_in(file, env).await
    }
}

/// The text of a control file: `[listen]` on ephemeral ports with `listen`
/// lines, then `tenants`.
pub fn control_file(listen: &str, tenants: &str) -> String {
    format!("[listen]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n{listen}\n{tenants}")
}

/// A control file on disk, in a temporary directory it owns.
pub struct ControlFile {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

/// A tenant table with one endpoint per pool (the `Setup` of one tenant,
/// as TOML).
pub fn tenant(
    name: &str,
    hosts: &str,
    blue: &Upstream,
    green: &Upstream,
    weights: (u32, u32),
    extra: &str,
) -> String {
    Setup::tenant(name)
        .hosts(hosts)
        .blue(blue)
        .green(green)
        .weights(weights.0, weights.1)
        .extra(extra)
        .toml()
}

/// shop at 100/0 on `blue` and `green` with an SLO guard and a ramp table
/// (`rollout`: its keys, one per line).
pub fn ramped(blue: &Upstream, green: &Upstream, slo: &str, rollout: &str) -> Setup {
    Setup::shop()
        .pools(blue, green)
        .weights(100, 0)
        .ramp(slo, rollout)
}
