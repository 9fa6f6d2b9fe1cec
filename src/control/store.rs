//! The seam between the control task and where the control state lives.
//!
//! The control task never touches the file itself: it loads the state,
//! hears of changes and commits its own through a [`Store`]. The file is
//! the first store ([`FileStore`]: the control file, written through under
//! a lock, watched by directory). A store keeping the runtime state in etcd
//! (SPEC section 12) plugs in here without a change to the control loop:
//! its versions are numbered by etcd's revision ([`Stored::revision`]), it
//! judges `If-Match` in its commit ([`CommitError::Precondition`]), it asks
//! for admin and ramp changes to be committed before they are applied and
//! for SLO reverts after ([`Store::order`]), and it reports its watch
//! events as reloads.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::disk::Disk;
use super::events::Event;
use super::{Control, Source};
use crate::config::write::TenantEdit;
use crate::config::{Config, ConfigError, ListenOverrides};

/// A boxed future, so that a `dyn Store` can be chosen at start.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One version of the control state as the store holds it.
#[derive(Debug)]
pub struct Stored {
    /// The state, validated in full (and with the `--listen-*` overrides).
    pub config: Config,
    /// The store's own number for this version (etcd's revision, which
    /// becomes the generation), or `None` when the store does not number
    /// versions (the file): the control task then numbers the versions it
    /// applies, one after the other.
    pub revision: Option<u64>,
    /// Tenants whose stored split is an SLO revert (a fleet store says so,
    /// so every replica shows them `reverted`); empty for the file.
    pub reverted: Vec<String>,
    /// The promote bakes the store keeps (tenant, start), or `None` when it
    /// keeps none (the file: bakes live in memory).
    pub bakes: Option<Vec<(String, std::time::SystemTime)>>,
    /// Whether the control file was read and validated anew for this
    /// version. `false` when only a fleet's state changed, laid over the
    /// file's last valid version: the file's last verdict (a standing
    /// error included) still stands.
    pub file_parsed: bool,
    /// The control file did not read or validate this time, and a fleet's
    /// state was laid over the file's last valid version instead (so a
    /// broken file never stops a replica following the fleet): the reload
    /// still fails with this error. Always `None` for the file store,
    /// whose `load` answers such a file with `Err`.
    pub file_error: Option<ConfigError>,
}

/// Which versions [`Store::load`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// The current version, even one returned before.
    Always,
    /// The current version only when it differs from the last one loaded or
    /// committed (valid or not): a watcher waking on turnout's own write, or
    /// on an unrelated file, changes nothing.
    IfChanged,
}

/// The answer to a commit the store accepted or could not take.
#[derive(Debug)]
pub struct Committed {
    /// Whether the change is now in the store. `false` when the store could
    /// not be written and the change is kept in memory only (the file store's
    /// read-only volume: SPEC section 7's `"persisted": false`).
    pub persisted: bool,
    /// The whole stored state after the commit, when the store read it
    /// back: it may hold more than this change (another replica's edit not
    /// yet seen), which the control task merges like any other new version.
    pub stored: Option<Stored>,
}

/// Why a store refused a commit.
#[derive(Debug)]
pub enum CommitError {
    /// The precondition failed: the stored state is no longer the one at
    /// the generation the change was decided from. Nothing was written.
    Precondition {
        /// The store's current generation.
        current: u64,
    },
    /// The store could not be reached or written; nothing was written.
    Unavailable(String),
}

impl std::fmt::Display for CommitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommitError::Precondition { current } => {
                write!(f, "the stored state moved on to generation {current}")
            }
            CommitError::Unavailable(message) => f.write_str(message),
        }
    }
}

/// What a commit is conditioned on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// An operator's change without `If-Match`: written over whatever the
    /// store holds now (the last writer wins, key by key).
    Any,
    /// `If-Match: "<generation>"`: nothing in the stored state changed
    /// after that generation, else [`CommitError::Precondition`].
    IfMatch(u64),
    /// An automatic decision (a revert, a ramp step, a promotion) judged on
    /// the state at this generation: the tenant's stored state has not
    /// changed since, else [`CommitError::Precondition`] and the decision
    /// is dropped (another replica made it, or an operator overrode it).
    Judged(u64),
}

/// What `GET /v1/config`, `/readyz` and the `turnout_store_*` metrics show
/// of a store that lives outside this process (etcd). The store updates it;
/// readers copy it.
#[derive(Debug)]
pub struct StoreStatus {
    /// `"etcd"`.
    pub kind: &'static str,
    /// The endpoints as configured.
    pub endpoints: Vec<String>,
    connected: AtomicBool,
    loaded: AtomicBool,
    revision: AtomicU64,
    /// Why the last exchange failed, until one succeeds (read by the admin
    /// API only, never on the request path).
    error: std::sync::Mutex<Option<String>>,
}

impl StoreStatus {
    /// A store of `kind` at `endpoints`, not yet connected or read.
    pub fn new(kind: &'static str, endpoints: Vec<String>) -> StoreStatus {
        StoreStatus {
            kind,
            endpoints,
            connected: AtomicBool::new(false),
            loaded: AtomicBool::new(false),
            revision: AtomicU64::new(0),
            error: std::sync::Mutex::new(None),
        }
    }

    /// Why the store is not connected: the last failed exchange's error
    /// (unreachable, a refused certificate or password), `None` once an
    /// exchange succeeds.
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records a failed exchange and why.
    pub fn set_failed(&self, error: &str) {
        self.connected.store(false, Ordering::Relaxed);
        *self.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.to_owned());
    }

    /// Whether the last exchange with the store succeeded.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Whether the state was read from the store at least once (a replica
    /// is not ready before: SPEC section 12).
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Relaxed)
    }

    /// The store revision of the state last read or committed (0 before).
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Relaxed)
    }

    /// Records the outcome of an exchange with the store.
    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
        if connected {
            self.clear_error();
        }
    }

    fn clear_error(&self) {
        let mut error = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if error.is_some() {
            *error = None;
        }
    }

    /// Records a read or commit of the whole state at `revision`.
    pub fn set_loaded(&self, revision: u64) {
        self.connected.store(true, Ordering::Relaxed);
        self.clear_error();
        self.loaded.store(true, Ordering::Relaxed);
        self.revision.fetch_max(revision, Ordering::Relaxed);
    }
}

/// One tenant's SLO evidence as one replica saw it (SPEC section 12: each
/// replica sees a slice of the traffic; ramps are judged on the sum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// The generation at which the candidate's exposure began (it got
    /// traffic, or became the candidate): only counts of the same exposure
    /// are added up.
    pub exposure: u64,
    /// The candidate's counts since then.
    pub candidate: crate::slo::sequential::Tally,
    /// The stable pool's counts since then.
    pub stable: crate::slo::sequential::Tally,
}

/// Every exposed tenant's [`Counts`] of one replica, by tenant name.
pub type Evidence = std::collections::BTreeMap<String, Counts>;

/// Whether a change is committed before or after it is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Apply (swap the routing table) first, then commit: traffic moves at
    /// once, whatever the store takes; a failed commit leaves the change in
    /// memory, unpersisted.
    ApplyFirst,
    /// Commit first and apply only what the store took: the answer an
    /// operator gets is what every replica will serve. A failed commit
    /// refuses the change.
    CommitFirst,
}

/// Where the control state lives. The control task is its only user and
/// calls it one change at a time, so implementations need no locking of
/// their own against it.
pub trait Store: Send + 'static {
    /// The control file (named in errors, logs and `GET /v1/config`; the
    /// file also holds topology when runtime state lives elsewhere).
    fn path(&self) -> &Path;

    /// Reads the whole control state and validates it in full. `Ok(None)`
    /// when `load` is [`Load::IfChanged`] and nothing changed. An `Err` is
    /// a located error; the store then counts the next version as news
    /// whatever it holds. Does its I/O off the runtime's workers.
    fn load(&mut self, load: Load) -> StoreFuture<'_, Result<Option<Stored>, ConfigError>>;

    /// Starts reporting changes of the stored state: each becomes a
    /// [`Change::Reload`](super::Change::Reload) (not forced) sent on `control`, at most one per
    /// burst of changes and within about a second of it. Also reports
    /// changes of the [`watch_files`](Store::watch_files). A watch that
    /// cannot be set up is logged; the state can still be reloaded.
    fn watch(&mut self, control: Control);

    /// Also reports changes of these files the state names (certificates,
    /// CA bundles), which live outside the store. Returns at once.
    fn watch_files(&mut self, files: Vec<PathBuf>);

    /// Commits `edits` (only the keys they name) under `condition`, with
    /// `events` (what the change is recorded as) when the store keeps the
    /// history ([`Store::status`] is `Some`). `Ok` says whether the change
    /// was persisted and what the store holds now; `Err` means nothing was
    /// written.
    fn commit(
        &mut self,
        edits: Vec<TenantEdit>,
        condition: Condition,
        events: Vec<Event>,
    ) -> StoreFuture<'_, Result<Committed, CommitError>>;

    /// The status of a store shared by a fleet (etcd), which also keeps the
    /// fleet's event history: the control task then sends its events with
    /// each commit and the store's watch records every replica's events
    /// into the local history. `None` for the control file.
    fn status(&self) -> Option<std::sync::Arc<StoreStatus>> {
        None
    }

    /// Publishes this replica's evidence to the fleet (the latest wins; a
    /// fleet store sends it about every second). The file store has no
    /// fleet: nothing to do.
    fn publish(&mut self, _evidence: Evidence) {}

    /// The sum of the other replicas' counts of `tenant` for the exposure
    /// that began at `exposure`, or `None` without a fleet.
    fn pooled(&self, _tenant: &str, _exposure: u64) -> Option<Counts> {
        None
    }

    /// The newest exposure of `tenant` the other replicas publish counts
    /// for, at or before generation `at_most`: a replica started while the
    /// candidate was exposed takes it as its own. `None` without a fleet
    /// or when no other replica publishes one.
    fn peer_exposure(&self, _tenant: &str, _at_most: u64) -> Option<u64> {
        None
    }

    /// Whether a change from `source` is committed before or after it is
    /// applied (see [`Order`]).
    fn order(&self, source: Source) -> Order;

    /// Housekeeping before the first change (the file store removes the
    /// temporary files of a writer killed mid-write). Failures are logged.
    fn clean_up(&mut self) -> StoreFuture<'_, ()>;
}

/// The control file as the store: the state is the file, a commit edits the
/// keys it names in place and replaces the file under a lock (`disk`), and
/// the file's directory is watched (`watch`).
pub struct FileStore {
    disk: Disk,
    /// The text last read or written, valid or not; `None` after a read
    /// that failed, so whatever is read next is looked at.
    last_text: Option<String>,
    /// Watches the control file's directory and those of TLS files.
    watcher: Option<super::watch::Watcher>,
}

impl FileStore {
    /// The store of the control file at `path` (a link stays a link), with
    /// `overrides` applied to every version read.
    pub fn new(path: PathBuf, overrides: ListenOverrides) -> FileStore {
        FileStore {
            disk: Disk { path, overrides },
            last_text: None,
            watcher: None,
        }
    }
}

impl Store for FileStore {
    fn path(&self) -> &Path {
        &self.disk.path
    }

    fn load(&mut self, load: Load) -> StoreFuture<'_, Result<Option<Stored>, ConfigError>> {
        Box::pin(async move {
            let read = self.disk.run(Disk::read).await;
            let text = match read.unwrap_or_else(|lost| Err(self.disk.error(lost))) {
                Ok(t) => t,
                Err(error) => {
                    // Nothing was read: whatever the file holds next is
                    // news, even the text it held before.
                    self.last_text = None;
                    return Err(error);
                }
            };
            if load == Load::IfChanged && self.last_text.as_ref() == Some(&text) {
                // The same text as last time, valid or not: its verdict
                // stands.
                return Ok(None);
            }
            self.last_text = Some(text.clone());
            if text.trim().is_empty() {
                // Most likely caught between a truncate and a write; never
                // a reason to drop every tenant.
                return Err(self.disk.error("the control file is empty".to_owned()));
            }
            let parsed = self.disk.run(move |disk| disk.parse(&text)).await;
            let config = parsed.unwrap_or_else(|lost| Err(self.disk.error(lost)))?;
            Ok(Some(Stored {
                config,
                revision: None,
                reverted: Vec::new(),
                bakes: None,
                file_parsed: true,
                file_error: None,
            }))
        })
    }

    fn watch(&mut self, control: Control) {
        self.watcher = Some(super::watch::spawn(&self.disk.path, control));
    }

    fn watch_files(&mut self, files: Vec<PathBuf>) {
        if let Some(w) = self.watcher.as_mut() {
            w.ensure(files.iter().map(PathBuf::as_path));
        }
    }

    /// The file has no generation of its own: the control task is its one
    /// writer in this process and has judged `If-Match` against the
    /// generation it serves, so the condition is not looked at again here;
    /// the events are recorded by the control task itself. A
    /// file that cannot be written keeps the change in memory:
    /// `Ok(persisted: false)`, logged.
    fn commit(
        &mut self,
        edits: Vec<TenantEdit>,
        _condition: Condition,
        _events: Vec<Event>,
    ) -> StoreFuture<'_, Result<Committed, CommitError>> {
        Box::pin(async move {
            let result = self
                .disk
                .run(move |disk| disk.write_through(&edits))
                .await
                .and_then(|written| written);
            match result {
                Ok((text, config)) => {
                    self.last_text = Some(text);
                    Ok(Committed {
                        persisted: true,
                        stored: Some(Stored {
                            config,
                            revision: None,
                            reverted: Vec::new(),
                            bakes: None,
                            file_parsed: true,
                            file_error: None,
                        }),
                    })
                }
                Err(error) => {
                    tracing::warn!(path = %self.disk.path.display(), %error, "change kept in memory only: the control file was not updated");
                    Ok(Committed {
                        persisted: false,
                        stored: None,
                    })
                }
            }
        })
    }

    /// Traffic moves first; the file (a lock, a write, two fsyncs) after.
    fn order(&self, _source: Source) -> Order {
        Order::ApplyFirst
    }

    fn clean_up(&mut self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            if let Err(error) = self.disk.run(Disk::clean_up).await {
                tracing::warn!(%error, "stale temporary files not looked for");
            }
        })
    }
}
