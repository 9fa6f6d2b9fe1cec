//! The control plane: the one writer of the control state.
//!
//! Every change — a file edit, SIGHUP, an admin call, and later SLO reverts
//! and rollout steps — is sent as a `Change` to a single control task
//! (`task.rs`). It validates the change in full, writes it through to the
//! file when it came from inside turnout (`config::write`), builds a new
//! routing table and swaps it in with one `ArcSwap` store, and records an
//! event per tenant touched. Being the only writer, it needs no locks around
//! the state it owns; the admin API reads history and status through the
//! small `Shared` block.

mod disk;
pub mod events;
pub mod merge;
mod task;
pub mod watch;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot};

use crate::config::{ConfigError, Weights};
pub use events::{Event, EventLog, Source};
pub use task::{Parts, spawn};

/// A change to the control state.
#[derive(Debug, Clone)]
pub enum Change {
    /// Re-read the control file. `forced` re-reads even when its text is the
    /// same as last time (SIGHUP, the admin API); the watcher does not force.
    Reload { forced: bool },
    /// Set a tenant's weights. `if_match` must equal the current generation
    /// when given; `force` allows raising a candidate with no healthy endpoint.
    SetWeights {
        tenant: String,
        weights: Weights,
        if_match: Option<u64>,
        force: bool,
    },
    /// All traffic to the stable pool now.
    Rollback {
        tenant: String,
        if_match: Option<u64>,
    },
    /// Start the configured ramp at its first step.
    StartRollout { tenant: String, force: bool },
    /// Candidate to 100, bake, then it becomes stable.
    Promote { tenant: String, force: bool },
}

/// Who asked for a change, and why.
#[derive(Debug, Clone)]
pub struct Origin {
    pub source: Source,
    /// The admin token's name.
    pub actor: Option<String>,
    pub reason: Option<String>,
}

impl Origin {
    pub fn file() -> Origin {
        Origin {
            source: Source::File,
            actor: None,
            reason: None,
        }
    }
}

/// The result of an applied (or no-op) change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub generation: u64,
    /// Whether the state changed at all.
    pub changed: bool,
    /// Whether the running state is all in the file.
    pub persisted: bool,
}

/// Why a change was not applied.
#[derive(Debug)]
pub enum ChangeError {
    UnknownTenant(String),
    /// `If-Match` named another generation.
    GenerationMismatch {
        current: u64,
    },
    /// The change would leave an invalid or unsafe state.
    Conflict(String),
    /// The control file does not parse or validate.
    File(ConfigError),
    /// The control task is gone (the process is stopping).
    Stopped,
}

impl std::fmt::Display for ChangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChangeError::UnknownTenant(t) => write!(f, "no tenant named {t}"),
            ChangeError::GenerationMismatch { current } => {
                write!(
                    f,
                    "If-Match does not match the current generation {current}"
                )
            }
            ChangeError::Conflict(m) => f.write_str(m),
            ChangeError::File(e) => write!(f, "{e}"),
            ChangeError::Stopped => f.write_str("turnout is stopping"),
        }
    }
}

/// The reload status `GET /v1/config` shows.
#[derive(Debug, Clone)]
pub struct ReloadStatus {
    pub path: PathBuf,
    pub generation: u64,
    pub last_reload: Option<SystemTime>,
    /// The located error of the last reload, until a reload succeeds.
    pub last_error: Option<String>,
    pub persisted: bool,
}

/// What the control task shares with readers.
pub struct Shared {
    events: Mutex<EventLog>,
    status: Mutex<ReloadStatus>,
    /// Bakes started by `promote` on tenants without a rollout table, which
    /// have no `progress` key to live in: tenant → start.
    bakes: Mutex<std::collections::HashMap<String, SystemTime>>,
}

impl Shared {
    pub fn bake_started(&self, tenant: &str) -> Option<SystemTime> {
        self.bakes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .copied()
    }

    pub fn events(&self) -> MutexGuard<'_, EventLog> {
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn status(&self) -> MutexGuard<'_, ReloadStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Request {
    change: Change,
    origin: Origin,
    reply: oneshot::Sender<Result<Outcome, ChangeError>>,
}

/// The handle every source of change holds.
#[derive(Clone)]
pub struct Control {
    tx: mpsc::Sender<Request>,
    pub shared: Arc<Shared>,
}

impl Control {
    /// Sends a change and waits until it is applied or refused.
    pub async fn submit(&self, change: Change, origin: Origin) -> Result<Outcome, ChangeError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request {
                change,
                origin,
                reply,
            })
            .await
            .map_err(|_| ChangeError::Stopped)?;
        answer.await.map_err(|_| ChangeError::Stopped)?
    }
}
