//! The fleet's store: runtime control state in etcd (SPEC section 12).
//!
//! Topology and settings stay in the control file ([`FileStore`], read and
//! watched as without a fleet); each tenant's runtime keys live in etcd,
//! one key per tenant (`keys`), and are laid over the file's values. A
//! read takes every tenant key at one revision; the generation is the
//! newest `mod_revision` among them, so every replica that has caught up
//! serves the same number. Commits are transactions conditioned in etcd
//! (`commit`), so `If-Match` and "decided on the state still current" are
//! judged by etcd itself; the events of a change go in the same
//! transaction. One watch over the prefix (`watch`) turns changes into
//! reloads, records the fleet's events into the local history, notices a
//! dead or frozen etcd within a few seconds and reconnects with backoff.
//!
//! A tenant with no key is seeded from the file (one event, source
//! `file`); an edit of a runtime key in the file is proposed by the
//! replicas that read it, and committed by the first (`sync`).

mod commit;
mod counts;
mod sync;
mod watch;

pub mod keys;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions, Identity, TlsOptions};

use super::events::Event;
use super::store::{
    CommitError, Committed, Condition, Counts, Evidence, FileStore, Load, Order, Store,
    StoreFuture, StoreStatus, Stored,
};
use super::{Control, Source};
use crate::config::store::StoreConfig;
use crate::config::write::TenantEdit;
use crate::config::{Config, ConfigError, Weights};
use crate::metrics::{Metrics, StoreGauges};
use keys::{Keys, Runtime};

/// How long a request to etcd may take before etcd counts as unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting to an endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 keep-alive on the channel, also while idle: a frozen etcd fails
/// the watch after about interval + timeout.
const KEEP_ALIVE: Duration = Duration::from_secs(1);

/// The store's view of etcd, shared by its reads, commits and watch.
#[derive(Clone)]
pub(crate) struct Link {
    status: Arc<StoreStatus>,
    gauges: Arc<StoreGauges>,
}

impl Link {
    fn up(&self, up: bool) {
        self.status.set_connected(up);
        self.gauges.up.set(if up { 1.0 } else { 0.0 });
    }

    /// A failed exchange: not connected, and why (shown by `GET
    /// /v1/config` until an exchange succeeds).
    fn down(&self, error: &str) {
        self.status.set_failed(error);
        self.gauges.up.set(0.0);
    }

    fn loaded(&self, revision: u64) {
        self.status.set_loaded(revision);
        self.gauges.up.set(1.0);
        #[allow(clippy::cast_precision_loss)] // revisions stay far below 2^53
        self.gauges.revision.set(self.status.revision() as f64);
    }
}

/// Connects a client to the etcd of `store` with the fleet's timeouts and
/// keep-alive, over TLS when its endpoints are `https://` (the PEM files
/// read again now, so a rotated client certificate is taken up), as its
/// user when it names one. The client authenticates here and again when
/// etcd refuses an expired token (`with_auto_token_refresh`); every watch
/// session connects anew, so a reconnected watch authenticates too.
async fn connect(store: &StoreConfig) -> Result<Client, String> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(KEEP_ALIVE, KEEP_ALIVE)
        .with_keep_alive_while_idle(true)
        .with_require_leader(true);
    if let Some(tls) = &store.tls {
        let material = tls.read().map_err(|e| format!("etcd TLS: {e}"))?;
        let mut config = TlsOptions::new()
            .trust_anchors(material.roots.roots.iter().cloned())
            .timeout(CONNECT_TIMEOUT);
        if let Some((cert, key)) = material.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = &tls.server_name {
            config = config.domain_name(name.clone());
        }
        options = options.with_tls(config);
    }
    if let Some(auth) = &store.auth {
        options = options
            .with_user(auth.user.clone(), auth.password.clone())
            .with_auto_token_refresh(true);
    }
    Client::connect(&store.endpoints, Some(options))
        .await
        .map_err(|e| unreachable(&e, store))
}

/// The control file for topology, etcd for the runtime state.
pub struct EtcdStore {
    file: FileStore,
    config: StoreConfig,
    keys: Keys,
    link: Link,
    client: Option<Client>,
    /// Each tenant's key as last read or committed, with its `mod_revision`.
    runtime: BTreeMap<String, (Runtime, u64)>,
    /// The newest `mod_revision` among the tenant keys (the generation).
    revision: u64,
    /// The file's runtime values at this replica's previous read.
    file_prev: BTreeMap<String, keys::Split>,
    /// The last file version that validated.
    file_config: Option<Config>,
    /// What `load` returned last: (generation, state).
    last: Option<(u64, Config)>,
    /// Commits since the events were last trimmed.
    commits: u32,
    /// This replica's id among the fleet's counts keys.
    replica: String,
    /// The other replicas' SLO counts, kept by the watch.
    peers: counts::Peers,
    /// This replica's latest counts, for the publisher.
    evidence: tokio::sync::watch::Sender<Evidence>,
    watch: Option<tokio::task::JoinHandle<()>>,
    publisher: Option<tokio::task::JoinHandle<()>>,
}

impl EtcdStore {
    /// The store of `config` beside the control file `file`; its status
    /// and `turnout_store_*` gauges start at "not connected".
    pub fn new(file: FileStore, config: StoreConfig, metrics: &Metrics) -> EtcdStore {
        let link = Link {
            status: Arc::new(StoreStatus::new("etcd", config.endpoints.clone())),
            gauges: Arc::new(metrics.store_gauges()),
        };
        link.up(false);
        EtcdStore {
            file,
            keys: Keys::new(&config.prefix),
            config,
            link,
            client: None,
            runtime: BTreeMap::new(),
            revision: 0,
            file_prev: BTreeMap::new(),
            file_config: None,
            last: None,
            commits: 0,
            replica: format!("{:016x}", fastrand::u64(..)),
            peers: counts::Peers::default(),
            evidence: tokio::sync::watch::Sender::new(Evidence::new()),
            watch: None,
            publisher: None,
        }
    }

    /// A connected client (connecting once if none is).
    async fn client(&mut self) -> Result<Client, String> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        match connect(&self.config).await {
            Ok(c) => {
                self.client = Some(c.clone());
                Ok(c)
            }
            Err(e) => {
                self.link.down(&e);
                Err(e)
            }
        }
    }

    /// Reads every tenant key at one revision into `runtime`.
    async fn read(&mut self) -> Result<(), String> {
        let mut client = self.client().await?;
        let options = GetOptions::new().with_prefix();
        let response = client
            .get(self.keys.tenants(), Some(options))
            .await
            .map_err(|e| self.failed(&e))?;
        let header = response.header().map_or(0, |h| h.revision());
        let mut runtime = BTreeMap::new();
        let mut newest = 0;
        for kv in response.kvs() {
            let Some(tenant) = kv.key_str().ok().and_then(|k| self.keys.tenant_of(k)) else {
                continue;
            };
            let revision = u64::try_from(kv.mod_revision()).unwrap_or(0);
            newest = newest.max(revision);
            match serde_json::from_slice::<Runtime>(kv.value()) {
                Ok(rt) => {
                    runtime.insert(tenant.to_owned(), (rt, revision));
                }
                Err(e) => {
                    tracing::error!(%tenant, error = %e, "unreadable tenant key in etcd; serving the file's values for it");
                }
            }
        }
        self.runtime = runtime;
        self.revision = if newest > 0 {
            newest
        } else {
            u64::try_from(header).unwrap_or(0)
        };
        self.link.loaded(self.revision);
        Ok(())
    }

    /// Notes a failed exchange: etcd is unreachable (or refused). The
    /// client is dropped, so the next exchange connects anew: with the TLS
    /// files as they are then, and a fresh token.
    fn failed(&mut self, e: &etcd_client::Error) -> String {
        self.client = None;
        let error = unreachable(e, &self.config);
        self.link.down(&error);
        error
    }

    /// The tenants whose stored split is an SLO revert.
    fn reverted(&self) -> Vec<String> {
        self.runtime
            .iter()
            .filter(|(_, (rt, _))| rt.reverted)
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// The promote bakes in the store.
    fn bakes(&self) -> Vec<(String, std::time::SystemTime)> {
        self.runtime
            .iter()
            .filter_map(|(t, (rt, _))| {
                let at = std::time::UNIX_EPOCH + Duration::from_secs(rt.bake?);
                Some((t.clone(), at))
            })
            .collect()
    }

    /// The state to serve: the file with the stored runtime keys over it.
    fn state(&self, file: Config) -> Config {
        keys::overlay(file, &self.runtime)
    }
}

/// An error talking to etcd, as admin calls and logs show it: with its
/// causes (a TLS handshake's reason is a few sources down), each once, and
/// a hint when it looks like a refused certificate or password.
fn unreachable(e: &etcd_client::Error, store: &StoreConfig) -> String {
    let mut text = format!("etcd is unreachable: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    if let Some(hint) = hint(&text, store.tls.is_some()) {
        text.push_str(" (");
        text.push_str(hint);
        text.push(')');
    }
    text
}

/// What an operator should look at for a TLS or authentication refusal,
/// judged from the error's text (rustls' and etcd's own words). With TLS
/// 1.3 an etcd that refuses a client certificate does so after the
/// handshake, so the client often sees only the connection closing.
fn hint(error: &str, tls: bool) -> Option<&'static str> {
    let has = |words: &[&str]| words.iter().any(|w| error.contains(w));
    if has(&["NotValidForName"]) {
        Some(
            "etcd's certificate is not for the name verified: set store.server_name to a name it holds",
        )
    } else if has(&["UnknownIssuer", "invalid peer certificate"]) {
        Some("etcd's certificate does not chain to store.ca (or to the system roots without it)")
    } else if has(&[
        "BadCertificate",
        "CertificateRequired",
        "UnknownCA",
        "certificate required",
    ]) {
        Some(
            "etcd refused this replica's client certificate, or none was presented: check store.cert and store.key against etcd's --trusted-ca-file",
        )
    } else if tls
        && has(&[
            "connection closed",
            "broken pipe",
            "BrokenPipe",
            "ConnectionReset",
        ])
    {
        Some(
            "etcd closed the TLS connection; if this repeats while etcd is up, it refuses this replica's client certificate or wants one: check store.cert and store.key against etcd's --trusted-ca-file",
        )
    } else if has(&["authentication failed"]) {
        Some("check store.user and the password in the variable store.password_env names")
    } else if has(&["permission denied", "user name is empty"]) {
        Some("etcd has auth enabled: store.user needs read and write on the prefix")
    } else {
        None
    }
}

/// The file's state with every candidate at 0 and no ramp: what a replica
/// serves before it has read the fleet's state once (never a candidate
/// above 0 on unknown state).
fn safe(mut config: Config) -> Config {
    let names: Vec<String> = config.tenants.iter().map(|t| t.name.clone()).collect();
    for name in names {
        if let Some(t) = config.tenant_mut(&name) {
            t.weights = Weights::all_on(t.stable);
            if let Some(r) = t.rollout.as_mut() {
                r.progress = None;
            }
        }
    }
    config
}

impl Store for EtcdStore {
    fn path(&self) -> &Path {
        self.file.path()
    }

    fn load(&mut self, load: Load) -> StoreFuture<'_, Result<Option<Stored>, ConfigError>> {
        Box::pin(async move {
            // A watch event is most often another replica's change: the
            // file is read again (to see an edit) but parsed only when its
            // text changed; an unchanged file, valid or not, stands at its
            // last valid version, so etcd's changes apply on top of it.
            let file_load = match (load, &self.file_config) {
                (Load::IfChanged, Some(_)) => Load::IfChanged,
                _ => Load::Always,
            };
            let (file, file_parsed, file_error) = match self.file.load(file_load).await {
                Ok(Some(stored)) => (stored.config, true, None),
                Ok(None) => match &self.file_config {
                    Some(last) => (last.clone(), false, None),
                    None => return Ok(None),
                },
                // A broken file (read again because a reload was forced,
                // or certificates may have changed): the fleet's state is
                // still followed, over the last valid topology.
                Err(error) => match &self.file_config {
                    Some(last) => (last.clone(), false, Some(error)),
                    None => return Err(error),
                },
            };
            self.file_config = Some(file.clone());
            let synced = self.sync(&file).await;
            if let Err(error) = &synced {
                tracing::warn!(%error, "etcd not read; serving the last state read from it");
                if !self.link.status.loaded() {
                    // Never read: the file's topology, candidates at 0,
                    // not ready until etcd answers.
                    return Ok(Some(Stored {
                        config: safe(file),
                        revision: None,
                        reverted: Vec::new(),
                        bakes: None,
                        file_parsed,
                        file_error,
                    }));
                }
            }
            let config = self.state(file);
            let now = (self.revision, config);
            // A file read anew is news even when the state it makes is
            // the same (it may end a standing error of the file).
            if load == Load::IfChanged
                && !file_parsed
                && file_error.is_none()
                && self.last.as_ref() == Some(&now)
            {
                return Ok(None);
            }
            self.last = Some((now.0, now.1.clone()));
            Ok(Some(Stored {
                config: now.1,
                revision: Some(now.0),
                reverted: self.reverted(),
                bakes: Some(self.bakes()),
                file_parsed,
                file_error,
            }))
        })
    }

    fn watch(&mut self, control: Control) {
        self.file.watch(control.clone());
        let watch = watch::Watch {
            store: Arc::new(self.config.clone()),
            keys: self.keys.clone(),
            link: self.link.clone(),
            control,
            peers: self.peers.clone(),
            replica: self.replica.clone(),
        };
        self.watch = Some(tokio::spawn(watch.run()));
        self.publisher = Some(tokio::spawn(counts::publish(
            Arc::new(self.config.clone()),
            self.keys.clone(),
            self.replica.clone(),
            self.evidence.subscribe(),
        )));
    }

    fn watch_files(&mut self, files: Vec<PathBuf>) {
        self.file.watch_files(files);
    }

    fn commit(
        &mut self,
        edits: Vec<TenantEdit>,
        condition: Condition,
        events: Vec<Event>,
    ) -> StoreFuture<'_, Result<Committed, CommitError>> {
        Box::pin(async move {
            self.commit_edits(edits, condition, events).await?;
            let file = self.file_config.clone();
            let stored = file.map(|f| {
                let config = self.state(f);
                self.last = Some((self.revision, config.clone()));
                Stored {
                    config,
                    revision: Some(self.revision),
                    reverted: self.reverted(),
                    bakes: Some(self.bakes()),
                    file_parsed: false,
                    file_error: None,
                }
            });
            Ok(Committed {
                persisted: true,
                stored,
            })
        })
    }

    /// Operators' and the rollout clock's changes commit first (the answer
    /// is what the fleet serves); an SLO revert applies at once, then
    /// commits.
    fn order(&self, source: Source) -> Order {
        match source {
            Source::Slo => Order::ApplyFirst,
            _ => Order::CommitFirst,
        }
    }

    fn clean_up(&mut self) -> StoreFuture<'_, ()> {
        self.file.clean_up()
    }

    fn status(&self) -> Option<Arc<StoreStatus>> {
        Some(Arc::clone(&self.link.status))
    }

    fn publish(&mut self, evidence: Evidence) {
        self.evidence.send_replace(evidence);
    }

    fn pooled(&self, tenant: &str, exposure: u64) -> Option<Counts> {
        Some(self.peers.pooled(tenant, exposure))
    }

    fn peer_exposure(&self, tenant: &str, at_most: u64) -> Option<u64> {
        self.peers.newest_exposure(tenant, at_most)
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        for task in [self.watch.take(), self.publisher.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::hint;

    #[test]
    fn refusals_get_a_hint_and_outages_none() {
        let said = |e: &str, tls: bool| hint(e, tls).unwrap_or("");
        assert!(said("invalid peer certificate: UnknownIssuer", true).contains("store.ca"));
        assert!(said("received fatal alert: BadCertificate", true).contains("store.cert"));
        assert!(said("hyper::Error(Canceled, \"connection closed\")", true).contains("store.cert"));
        assert!(
            said("authentication failed, invalid user ID or password", false)
                .contains("store.user")
        );
        // Without TLS a closed connection is an outage, nothing more.
        assert_eq!(
            hint("hyper::Error(Canceled, \"connection closed\")", false),
            None
        );
        assert_eq!(hint("tcp connect error: Connection refused", true), None);
    }
}
