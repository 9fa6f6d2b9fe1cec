//! Bringing the stored state in line with the control file: seeding the
//! tenants that have no key, and committing a file edit of a runtime key
//! once for the whole fleet.
//!
//! A replica proposes the file's runtime values for a tenant when its file
//! says something new — different from the file it read before (at start:
//! from the file values the key last took in) and from what the key last
//! took in. The proposal follows the merge rule of SPEC section 7 (a key
//! the file changed takes the file's value, the others keep the stored
//! one) and is a transaction conditioned on the key being unchanged since
//! read: of several replicas reading the same edit seconds apart, the
//! first commits it and the others find it already taken in.

use std::time::SystemTime;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use super::EtcdStore;
use super::keys::{Runtime, Split, WireEvent};
use crate::config::{Config, Weights};
use crate::control::events::{Event, Source};

/// Reads at most this many times per load while racing other replicas.
const ATTEMPTS: usize = 3;

impl EtcdStore {
    /// Reads the stored state, seeding and proposing as the file asks.
    pub(super) async fn sync(&mut self, file: &Config) -> Result<(), String> {
        for _ in 0..ATTEMPTS {
            self.read().await?;
            let mut wrote = false;
            for t in &file.tenants {
                let from_file = Split::of(t);
                let proposal = match self.runtime.get(&t.name) {
                    None => Some((None, from_file, "seeded from the control file")),
                    Some((rt, revision)) => {
                        let before = self.file_prev.get(&t.name).unwrap_or(&rt.file);
                        (from_file != *before && from_file != rt.file).then(|| {
                            let merged = merged(rt, from_file, t);
                            (Some(*revision), merged, "the control file changed")
                        })
                    }
                };
                if let Some((revision, state, reason)) = proposal {
                    let runtime = Runtime {
                        state,
                        file: from_file,
                        reverted: false,
                        bake: None,
                    };
                    let from = self.runtime.get(&t.name).map(|(rt, _)| rt.state);
                    wrote |= self
                        .propose(&t.name, revision, &runtime, from, reason)
                        .await?;
                }
            }
            if !wrote {
                break;
            }
        }
        self.file_prev = file
            .tenants
            .iter()
            .map(|t| (t.name.clone(), Split::of(t)))
            .collect();
        Ok(())
    }

    /// Writes `runtime` as `tenant`'s key if the key is still absent
    /// (`revision` `None`) or unchanged since `revision`, with its event.
    /// `Ok(true)` when written.
    async fn propose(
        &mut self,
        tenant: &str,
        revision: Option<u64>,
        runtime: &Runtime,
        from: Option<Split>,
        reason: &str,
    ) -> Result<bool, String> {
        let key = self.keys.tenant(tenant);
        let compare = match revision {
            None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            Some(r) => Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                i64::try_from(r).unwrap_or(i64::MAX),
            ),
        };
        let weights = |s: Split| Weights::new(s.blue, s.green).ok();
        let event = Event {
            seq: 0,
            at: SystemTime::now(),
            tenant: Some(tenant.to_owned()),
            source: Source::File,
            actor: None,
            from: from.and_then(weights),
            to: weights(runtime.state),
            stable: Some(runtime.state.stable.into()),
            reason: reason.to_owned(),
            persisted: true,
            generation: 0,
        };
        let value = serde_json::to_vec(runtime).map_err(|e| e.to_string())?;
        let event_value = serde_json::to_vec(&WireEvent::of(&event)).map_err(|e| e.to_string())?;
        let txn = Txn::new().when([compare]).and_then([
            TxnOp::put(key, value, None),
            TxnOp::put(
                self.keys.event(event.at, Some(tenant), 0, &self.replica),
                event_value,
                None,
            ),
        ]);
        let mut client = self.client().await?;
        let response = client.txn(txn).await.map_err(|e| self.failed(&e))?;
        if response.succeeded() {
            tracing::info!(%tenant, %reason, "control file's runtime keys committed to etcd");
        }
        Ok(response.succeeded())
    }
}

/// The merge rule of SPEC section 7 between the stored state and a new
/// file version: weights and stable are one decision, the progress
/// another; a decision the file changed takes the file's values. When the
/// result does not fit the tenant, the file's values whole.
fn merged(rt: &Runtime, file: Split, t: &crate::config::TenantConfig) -> Split {
    let mut state = rt.state;
    if (file.blue, file.green, file.stable) != (rt.file.blue, rt.file.green, rt.file.stable) {
        (state.blue, state.green, state.stable) = (file.blue, file.green, file.stable);
    }
    if file.progress != rt.file.progress {
        state.progress = file.progress;
    }
    let mut probe = t.clone();
    if state.apply_to(&mut probe).is_ok() {
        state
    } else {
        file
    }
}
