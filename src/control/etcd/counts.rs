//! Evidence across the fleet: each replica's SLO counts, published under a
//! lease-bound key and added up by every other replica.
//!
//! Each replica sees a slice of the traffic, so a ramp step or promotion
//! judged on one replica's counts would wait for a slice to reach
//! `min_requests`, or pass on too few. Every second each replica puts its
//! exposed tenants' candidate and stable counts under
//! `PREFIX/counts/REPLICA`, bound to a lease of [`LEASE_TTL`]: a replica
//! that dies stops renewing it, and etcd deletes its counts. The watch
//! keeps the other replicas' latest counts ([`Peers`]); the control task
//! adds them to its own for the exposure they share.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper, PutOptions};
use tokio::sync::watch;

use super::keys::Keys;
use crate::config::store::StoreConfig;
use crate::control::store::{Counts, Evidence};
use crate::slo::sequential::Tally;

/// How often a replica publishes its counts.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// The lease of a replica's counts: gone this long after its last renewal.
pub const LEASE_TTL: i64 = 5;

/// The other replicas' latest evidence, by replica id.
#[derive(Clone, Default)]
pub struct Peers(Arc<Mutex<BTreeMap<String, Evidence>>>);

impl Peers {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Evidence>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A replica's new counts (`None`: its key is gone).
    pub fn set(&self, replica: &str, evidence: Option<Evidence>) {
        let mut peers = self.lock();
        match evidence {
            Some(e) => {
                peers.insert(replica.to_owned(), e);
            }
            None => {
                peers.remove(replica);
            }
        }
    }

    /// Forgets every replica (before reading them all again).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// The sum of the other replicas' counts of `tenant` in the exposure
    /// that began at `exposure`.
    pub fn pooled(&self, tenant: &str, exposure: u64) -> Counts {
        let mut sum = Counts {
            exposure,
            candidate: Tally::default(),
            stable: Tally::default(),
        };
        for evidence in self.lock().values() {
            if let Some(c) = evidence.get(tenant).filter(|c| c.exposure == exposure) {
                add(&mut sum.candidate, c.candidate);
                add(&mut sum.stable, c.stable);
            }
        }
        sum
    }

    /// The newest exposure of `tenant` among the other replicas' counts
    /// that began at or before `at_most` (the generation this replica
    /// serves), or `None` when none publishes one.
    pub fn newest_exposure(&self, tenant: &str, at_most: u64) -> Option<u64> {
        self.lock()
            .values()
            .filter_map(|evidence| evidence.get(tenant).map(|c| c.exposure))
            .filter(|e| *e <= at_most)
            .max()
    }
}

fn add(sum: &mut Tally, more: Tally) {
    sum.requests += more.requests;
    sum.errors += more.errors;
    sum.slow += more.slow;
}

/// Evidence as stored: tenant → `[exposure, candidate requests, errors,
/// slow, stable requests, errors, slow]`.
type Wire = BTreeMap<String, [u64; 7]>;

/// Encodes `evidence` as stored.
pub fn encode(evidence: &Evidence) -> Vec<u8> {
    let wire: Wire = evidence
        .iter()
        .map(|(t, c)| {
            let (a, b) = (c.candidate, c.stable);
            let row = [
                c.exposure, a.requests, a.errors, a.slow, b.requests, b.errors, b.slow,
            ];
            (t.clone(), row)
        })
        .collect();
    serde_json::to_vec(&wire).unwrap_or_default()
}

/// Decodes stored evidence; `None` when it does not parse.
pub fn decode(value: &[u8]) -> Option<Evidence> {
    let wire: Wire = serde_json::from_slice(value).ok()?;
    let tally = |requests, errors, slow| Tally {
        requests,
        errors,
        slow,
    };
    Some(
        wire.into_iter()
            .map(|(t, [exposure, cr, ce, cs, sr, se, ss])| {
                let counts = Counts {
                    exposure,
                    candidate: tally(cr, ce, cs),
                    stable: tally(sr, se, ss),
                };
                (t, counts)
            })
            .collect(),
    )
}

/// Publishes this replica's evidence every [`PUBLISH_EVERY`] until the
/// process stops; failures are retried on the next round.
pub(super) async fn publish(
    store: Arc<StoreConfig>,
    keys: Keys,
    replica: String,
    mut evidence: watch::Receiver<Evidence>,
) {
    let key = keys.counts(&replica);
    let mut lease: Option<(Client, i64, LeaseKeeper, LeaseKeepAliveStream)> = None;
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let value = encode(&evidence.borrow_and_update());
        if lease.is_none() {
            lease = grant(&store).await;
        }
        let Some((client, id, keeper, stream)) = lease.as_mut() else {
            continue;
        };
        let renewed = match keeper.keep_alive().await {
            Ok(()) => stream
                .message()
                .await
                .ok()
                .flatten()
                .is_some_and(|r| r.ttl() > 0),
            Err(_) => false,
        };
        let options = PutOptions::new().with_lease(*id);
        if !renewed || client.put(key.clone(), value, Some(options)).await.is_err() {
            // Lost or expired: a new lease next round.
            lease = None;
        }
    }
}

async fn grant(store: &StoreConfig) -> Option<(Client, i64, LeaseKeeper, LeaseKeepAliveStream)> {
    let mut client = super::connect(store).await.ok()?;
    let id = client.lease_grant(LEASE_TTL, None).await.ok()?.id();
    let (keeper, stream) = client.lease_keep_alive(id).await.ok()?;
    Some((client, id, keeper, stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_round_trips_and_pools_one_exposure() {
        let tally = |requests, errors| Tally {
            requests,
            errors,
            slow: 0,
        };
        let mut mine = Evidence::new();
        mine.insert(
            "shop".to_owned(),
            Counts {
                exposure: 7,
                candidate: tally(10, 1),
                stable: tally(30, 0),
            },
        );
        let decoded = decode(&encode(&mine)).unwrap();
        assert_eq!(decoded, mine);
        let peers = Peers::default();
        peers.set("a", Some(decoded.clone()));
        let mut older = decoded;
        older.get_mut("shop").unwrap().exposure = 6;
        peers.set("b", Some(older));
        let pooled = peers.pooled("shop", 7);
        assert_eq!(
            (pooled.candidate, pooled.stable),
            (tally(10, 1), tally(30, 0))
        );
        peers.set("a", None);
        assert_eq!(peers.pooled("shop", 7).candidate, Tally::default());
    }
}
