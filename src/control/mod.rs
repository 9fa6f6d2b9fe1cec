//! The control plane: the one writer of the control state.
//!
//! Every change — a file edit, SIGHUP, an admin call, an SLO revert, a
//! rollout tick, a certificate file replaced — is a [`Change`] handled by a
//! single control task, one at a time, so no two changes ever race and no
//! lock guards the state it owns. Each change goes through the same named
//! steps: validate in full → commit to the store → swap the routing table
//! (one `ArcSwap` store) → record an event per tenant touched → notify the
//! webhook. The admin API reads history and status through the small
//! [`Published`] block.
//!
//! The modules, in the order a change meets them:
//! - `task`: the loop — receives every source and dispatches each change;
//! - `rollout`: the per-tenant ramp and bake state machine, which turns a
//!   tick into the steps that are due;
//! - `apply`: applying one tenant's edit (validate → commit → swap → record)
//!   and the swap's side effects;
//! - `reload`: re-reading the store and merging it into the running state
//!   (`merge`: the merge rule of SPEC section 7);
//! - `store`: the seam to where the state lives, with the control file
//!   (`disk`, `watch`) as its first implementation;
//! - `events`: the change history and what a change is recorded as.

#![warn(missing_docs)]

mod apply;
mod disk;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod events;
mod evidence;
mod fleet;
pub mod merge;
mod reload;
mod resolved;
pub mod rollout;
pub mod store;
mod task;
pub mod watch;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot};

use crate::config::{ConfigError, Weights};
pub use events::{Event, EventLog, Source};
pub use rollout::Ramps;
pub use task::{Wiring, start};

/// A change to the control state: what each source asks of the control task.
#[derive(Debug, Clone)]
pub enum Change {
    /// Re-read the control state from the store.
    Reload {
        /// Re-read even when the file's text is the same as last time
        /// (SIGHUP, the admin API); the watcher does not force.
        forced: bool,
    },
    /// Set a tenant's weights (ends a running ramp).
    SetWeights {
        /// The tenant's name.
        tenant: String,
        /// The new split.
        weights: Weights,
        /// `If-Match`: must equal the current generation when given.
        if_match: Option<u64>,
        /// Allows raising a candidate with no healthy endpoint.
        force: bool,
    },
    /// All traffic to the stable pool now (ends a running ramp).
    Rollback {
        /// The tenant's name.
        tenant: String,
        /// `If-Match`: must equal the current generation when given.
        if_match: Option<u64>,
    },
    /// Start the configured ramp at its first step.
    StartRollout {
        /// The tenant's name.
        tenant: String,
        /// Allows a first step onto a candidate with no healthy endpoint.
        force: bool,
    },
    /// Candidate to 100, bake, then it becomes stable.
    Promote {
        /// The tenant's name.
        tenant: String,
        /// Allows promoting a candidate with no healthy endpoint.
        force: bool,
    },
    /// The SLO guard found the candidate in breach (SPEC section 6): all
    /// traffic to the stable pool, and the candidate's window starts afresh.
    Revert {
        /// The tenant's name.
        tenant: String,
        /// The verdict, as the event shows it.
        reason: String,
    },
    /// The rollout clock: look at every running ramp and bake and take the
    /// steps that are due (as the `Advance`, `Finish`, `EndRamp` and
    /// `Revert` changes).
    Tick,
    /// Move a running ramp on to its next step.
    Advance {
        /// The tenant's name.
        tenant: String,
        /// The step to move to (0-based, into the rollout table's `steps`).
        step: usize,
    },
    /// The bake is over and the verdict `ok`: the candidate becomes stable.
    Finish {
        /// The tenant's name.
        tenant: String,
    },
    /// Stop a ramp without touching the weights (they were changed outside
    /// it).
    EndRamp {
        /// The tenant's name.
        tenant: String,
        /// Why, as the event shows it.
        reason: String,
    },
    /// An endpoint name resolves to a new set of addresses (SPEC section
    /// 13; sent by its `dns` task): the routing table is rebuilt with one
    /// endpoint per address. The control state is unchanged, so the
    /// generation stays and no event is recorded.
    Resolved {
        /// The name, as the pools spell it (without the port).
        name: String,
        /// Its addresses, sorted, never empty.
        addresses: Vec<std::net::IpAddr>,
    },
}

/// Who asked for a change, and why.
#[derive(Debug, Clone)]
pub struct Origin {
    /// What made the change, as events and metrics name it.
    pub source: Source,
    /// The admin token's name.
    pub actor: Option<String>,
    /// The event's reason; `None` lets the change say what it did.
    pub reason: Option<String>,
}

impl Origin {
    /// A change read from the control file (the watcher, SIGHUP, a reload).
    pub fn file() -> Origin {
        Origin::of(Source::File, None)
    }

    /// An automatic change of the rollout clock, with its event's reason.
    pub fn rollout(reason: Option<String>) -> Origin {
        Origin::of(Source::Rollout, reason)
    }

    /// A revert of the SLO guard, with the verdict as its reason.
    pub fn slo(reason: String) -> Origin {
        Origin::of(Source::Slo, Some(reason))
    }

    fn of(source: Source, reason: Option<String>) -> Origin {
        Origin {
            source,
            actor: None,
            reason,
        }
    }
}

/// The result of an applied (or no-op) change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The generation serving once the change is applied.
    pub generation: u64,
    /// Whether the state changed at all.
    pub changed: bool,
    /// Whether the running state is all in the store (the control file).
    pub persisted: bool,
}

/// Why a change was not applied.
#[derive(Debug)]
pub enum ChangeError {
    /// No tenant of that name in the running state.
    UnknownTenant(String),
    /// `If-Match` named another generation.
    GenerationMismatch {
        /// The generation serving now.
        current: u64,
    },
    /// The change would leave an invalid or unsafe state.
    Conflict(String),
    /// The control file does not parse or validate.
    File(ConfigError),
    /// The store could not take a change that must be stored before it is
    /// applied (SPEC section 12: an unreachable etcd); nothing changed.
    Store(String),
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
            ChangeError::Store(m) => write!(f, "the control state cannot be stored: {m}"),
            ChangeError::Stopped => f.write_str("turnout is stopping"),
        }
    }
}

/// The reload status `GET /v1/config` shows.
#[derive(Debug, Clone)]
pub struct ReloadStatus {
    /// The control file.
    pub path: PathBuf,
    /// The generation serving.
    pub generation: u64,
    /// When the control file was last read (valid or not).
    pub last_reload: Option<SystemTime>,
    /// The located error of the last reload, until a reload succeeds.
    pub last_error: Option<String>,
    /// Whether the running state is all in the store.
    pub persisted: bool,
}

/// What the control task shares with readers. The task is its only writer;
/// each lock is held for a copy or an insert, never across an await.
pub struct Published {
    events: Mutex<EventLog>,
    status: Mutex<ReloadStatus>,
    ramps: Mutex<Ramps>,
    store: Option<Arc<store::StoreStatus>>,
}

impl Published {
    /// When the promote bake of `tenant` began, for a tenant without a
    /// rollout table (whose bake has no `progress` key to live in).
    pub fn bake_started(&self, tenant: &str) -> Option<SystemTime> {
        self.ramps().bake_started(tenant)
    }

    /// The change history.
    pub fn events(&self) -> MutexGuard<'_, EventLog> {
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The fleet store's status (`None` when the control file is the
    /// store).
    pub fn store(&self) -> Option<&store::StoreStatus> {
        self.store.as_deref()
    }

    /// Whether the state was read from the store once: always with the
    /// control file (read at start), and for etcd once it answered (SPEC
    /// section 12: a replica is not ready before).
    pub fn store_ready(&self) -> bool {
        self.store.as_ref().is_none_or(|s| s.loaded())
    }

    /// The reload status.
    pub fn status(&self) -> MutexGuard<'_, ReloadStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ramps(&self) -> MutexGuard<'_, Ramps> {
        self.ramps.lock().unwrap_or_else(|p| p.into_inner())
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
    /// History and status, for the admin API.
    pub published: Arc<Published>,
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
