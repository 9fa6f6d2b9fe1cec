//! A tenant's rate limits as requests meet them (SPEC section 16): the
//! client's bucket first, then the tenant's, right after admission and
//! before any upstream work.
//!
//! The buckets are `governor`'s GCRA (one number per bucket: its
//! theoretical arrival time, TAT) over stores of our own: a single atomic
//! for the tenant ([`TenantCell`]) and a sharded, bounded LRU map for the
//! clients (`clients::ClientTable`). Owning the stores is what lets us do
//! the three things `governor`'s own stores cannot: forget the least
//! recently seen client past `max_clients`, give back a client's token when
//! the tenant's bucket then refuses (a refusal by one takes no token from
//! the other), and carry a bucket's fill across a change of its limit.
//!
//! Lifecycle: the `Limits` of a tenant are rebuilt with each routing table
//! (`Limits::rebuild`), on the control path. A bucket whose limit did not
//! change is the same `Arc`, so a reload that touches nothing else keeps
//! every bucket; a changed limit gets a new limiter whose buckets start
//! from the old ones' fill, capped at the new `burst`.

mod clients;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::clock::{Clock, QuantaClock, QuantaInstant, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{NotKeyed, StateStore};
use governor::{NotUntil, Quota, RateLimiter};
use http::HeaderMap;

use crate::config::{ClientKey, ClientRateLimit, RateLimit, Settings};
pub use clients::ClientTable;

/// Which limit refused a request: the `reason` counted in
/// `turnout_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// The client's own bucket (`client_rate_limit`).
    Client,
    /// The tenant's bucket (`rate_limit`).
    Tenant,
}

/// A request over a limit: answered 429 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The limit that refused it.
    pub by: Limited,
    /// Seconds until the refusing bucket holds a token again, rounded up,
    /// at least 1 (the `Retry-After` value; RFC 9110 §10.2.3).
    pub retry_after_s: u64,
}

/// A tenant's buckets; requests call [`Limits::check`]. Cheap to clone
/// (two `Arc`s); `Default` is no limit at all.
#[derive(Clone, Default)]
pub struct Limits {
    tenant: Option<Arc<TenantBucket>>,
    client: Option<Arc<ClientBuckets>>,
}

impl Limits {
    /// The limits of `settings`, keeping each bucket of `previous` (the
    /// tenant's limits in the table before) whose limit is unchanged, and
    /// carrying the fill of those whose `rps`, `burst` or `max_clients`
    /// changed. A changed client `key` starts afresh: old keys mean
    /// nothing under the new one.
    pub fn rebuild(settings: &Settings, previous: &Limits) -> Limits {
        let tenant = settings.rate_limit.map(|limit| match &previous.tenant {
            Some(old) if old.gcra.limit == limit => Arc::clone(old),
            Some(old) => Arc::new(old.carried(limit)),
            None => Arc::new(TenantBucket::new(limit)),
        });
        let client = settings
            .client_rate_limit
            .as_ref()
            .map(|wanted| match &previous.client {
                Some(old) if old.config == *wanted => Arc::clone(old),
                Some(old) if old.config.key == wanted.key => Arc::new(old.carried(wanted)),
                _ => Arc::new(ClientBuckets::new(wanted.clone(), None)),
            });
        Limits { tenant, client }
    }

    /// Takes a token from the client's bucket, then one from the tenant's.
    /// A request refused by the tenant's bucket gets its client token back,
    /// so it costs neither. Lock-free for the tenant; one shard's short
    /// lock for the client.
    #[inline]
    pub fn check(&self, headers: &HeaderMap, peer: IpAddr) -> Result<(), Refusal> {
        if self.tenant.is_none() && self.client.is_none() {
            return Ok(());
        }
        let client = match &self.client {
            Some(c) => Some(c.take(headers, peer)?),
            None => None,
        };
        if let Some(t) = &self.tenant
            && let Err(refusal) = t.take()
        {
            if let (Some(c), Some(key)) = (&self.client, client) {
                c.give_back(key);
            }
            return Err(refusal);
        }
        Ok(())
    }

    /// Client keys held now (at most `max_clients`); `None` without a
    /// client limit. For the tenant view.
    pub fn clients(&self) -> Option<usize> {
        self.client.as_ref().map(|c| c.table.len())
    }

    /// Tokens left in the tenant's bucket now (fractional); `None` without
    /// a tenant limit. For the tenant view.
    pub fn tenant_tokens(&self) -> Option<f64> {
        self.tenant.as_ref().map(|t| {
            let now = t.gcra.now();
            t.gcra.tokens(t.cell.0.load(Ordering::Relaxed), now)
        })
    }
}

/// Added to a bucket's fill when it is carried to a new limit. The two
/// limiters' frames are known to within a clock read (see `Gcra::new`);
/// this millionth of a token settles that in the client's favour, so a
/// carried bucket never shows a whole token less than it held.
const CARRY_SLACK: f64 = 1e-6;

/// One limiter: `governor`'s GCRA over store `S`, and the clock frame its
/// TATs are counted in (nanoseconds since `origin`).
struct Gcra<S: StateStore> {
    limit: RateLimit,
    limiter: RateLimiter<S::Key, S, QuantaClock, NoOpMiddleware<QuantaInstant>>,
    origin: QuantaInstant,
    /// `1 / rps` in nanoseconds: a token's worth of TAT.
    interval_ns: u64,
}

impl<S: StateStore> Gcra<S> {
    fn new(limit: RateLimit, store: S) -> Gcra<S> {
        let interval = limit.interval();
        let burst = std::num::NonZeroU32::new(limit.burst).unwrap_or(std::num::NonZeroU32::MIN);
        let quota = Quota::with_period(interval)
            .expect("validation keeps rps at most 1e9: the interval is at least 1 ns")
            .allow_burst(burst);
        let clock = QuantaClock::default();
        // `RateLimiter::new` reads the clock once for its own origin, right
        // after this reading: the frames differ by the time between two
        // clock reads (nanoseconds), which only ever shows in a bucket's
        // fill carried across a change of its limit.
        let origin = clock.now();
        Gcra {
            limit,
            limiter: RateLimiter::new(quota, store, clock),
            origin,
            interval_ns: u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// Now, in this limiter's frame.
    fn now(&self) -> u64 {
        self.limiter
            .clock()
            .now()
            .duration_since(self.origin)
            .as_u64()
    }

    /// The tokens a bucket with `tat` holds at `now` (both in this frame):
    /// `burst - debt / interval`, where the debt is how far `tat` is ahead.
    fn tokens(&self, tat: u64, now: u64) -> f64 {
        let debt = tat.saturating_sub(now) as f64;
        (f64::from(self.limit.burst) - debt / self.interval_ns as f64).max(0.0)
    }

    /// The TAT, in this frame at `now`, of a bucket holding `tokens`
    /// (capped at `burst`); `None` for a full bucket (the same as no entry).
    fn tat_for(&self, tokens: f64, now: u64) -> Option<u64> {
        let missing = f64::from(self.limit.burst) - tokens.min(f64::from(self.limit.burst));
        let debt = (missing * self.interval_ns as f64) as u64;
        (debt > 0).then(|| now.saturating_add(debt))
    }

    /// The refusal for a `NotUntil`: seconds to the next token, rounded
    /// up, at least 1.
    fn refusal(&self, by: Limited, not_until: &NotUntil<QuantaInstant>) -> Refusal {
        let wait = not_until.wait_time_from(self.limiter.clock().now());
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Refusal {
            by,
            retry_after_s: secs.max(1),
        }
    }
}

/// The tenant's bucket: one TAT in an atomic (a compare-and-swap per
/// request, like `governor`'s own `InMemoryState`; 0 means full).
#[derive(Default)]
struct TenantCell(AtomicU64);

impl StateStore for TenantCell {
    type Key = NotKeyed;

    fn measure_and_replace<T, F, E>(&self, _key: &NotKeyed, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut prev = self.0.load(Ordering::Acquire);
        loop {
            let (out, next) = f((prev != 0).then(|| Nanos::from(prev)))?;
            match self.0.compare_exchange_weak(
                prev,
                next.as_u64(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(out),
                Err(actual) => prev = actual,
            }
        }
    }
}

/// A shared handle on a [`TenantCell`]: the limiter owns one, the bucket
/// keeps another to read and carry its fill.
#[derive(Clone)]
struct SharedCell(Arc<TenantCell>);

impl StateStore for SharedCell {
    type Key = NotKeyed;

    fn measure_and_replace<T, F, E>(&self, key: &NotKeyed, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, f)
    }
}

/// `rate_limit`: the tenant's one bucket.
struct TenantBucket {
    gcra: Gcra<SharedCell>,
    cell: Arc<TenantCell>,
}

impl TenantBucket {
    fn new(limit: RateLimit) -> TenantBucket {
        let cell = Arc::new(TenantCell::default());
        TenantBucket {
            gcra: Gcra::new(limit, SharedCell(Arc::clone(&cell))),
            cell,
        }
    }

    fn take(&self) -> Result<(), Refusal> {
        self.gcra
            .limiter
            .check()
            .map_err(|n| self.gcra.refusal(Limited::Tenant, &n))
    }

    /// A bucket under `limit` holding what this one holds now, capped at
    /// the new burst.
    fn carried(&self, limit: RateLimit) -> TenantBucket {
        let tokens = self
            .gcra
            .tokens(self.cell.0.load(Ordering::Acquire), self.gcra.now())
            + CARRY_SLACK;
        let bucket = TenantBucket::new(limit);
        if let Some(tat) = bucket.gcra.tat_for(tokens, bucket.gcra.now()) {
            bucket.cell.0.store(tat, Ordering::Release);
        }
        bucket
    }
}

/// A shared handle on a [`ClientTable`], for the same reason as
/// [`SharedCell`].
#[derive(Clone)]
struct SharedTable(Arc<ClientTable>);

impl StateStore for SharedTable {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(*key, f)
    }
}

/// `client_rate_limit`: a bucket per client key, in a bounded table.
struct ClientBuckets {
    config: ClientRateLimit,
    gcra: Gcra<SharedTable>,
    table: Arc<ClientTable>,
}

impl ClientBuckets {
    /// Empty buckets under `config`; `seed` keys the table's hash (a fresh
    /// random one when `None`).
    fn new(config: ClientRateLimit, seed: Option<u64>) -> ClientBuckets {
        let table = Arc::new(ClientTable::new(config.max_clients, seed));
        ClientBuckets {
            gcra: Gcra::new(config.limit, SharedTable(Arc::clone(&table))),
            table,
            config,
        }
    }

    /// Takes a token from the request's client; `Ok` is the client's key,
    /// for [`ClientBuckets::give_back`].
    fn take(&self, headers: &HeaderMap, peer: IpAddr) -> Result<u64, Refusal> {
        let key = match &self.config.key {
            ClientKey::Header(name) => match headers.get(name) {
                Some(value) => self.table.key_of_header(value.as_bytes()),
                None => self.table.key_of_ip(peer),
            },
            ClientKey::Ip => self.table.key_of_ip(peer),
        };
        match self.gcra.limiter.check_key(&key) {
            Ok(()) => Ok(key),
            Err(n) => Err(self.gcra.refusal(Limited::Client, &n)),
        }
    }

    /// Returns the token `key` just took.
    fn give_back(&self, key: u64) {
        self.table.give_back(key, self.gcra.interval_ns);
    }

    /// Buckets under `config` (same key kind) holding what these hold now,
    /// each capped at the new burst, most recently seen kept first when
    /// `max_clients` shrank.
    fn carried(&self, config: &ClientRateLimit) -> ClientBuckets {
        let fresh = ClientBuckets::new(config.clone(), Some(self.table.seed()));
        let (old_now, new_now) = (self.gcra.now(), fresh.gcra.now());
        self.table.carry_into(&fresh.table, |tat| {
            let tokens = self.gcra.tokens(tat, old_now) + CARRY_SLACK;
            fresh.gcra.tat_for(tokens, new_now)
        });
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientKey;

    fn limit(rps: f64, burst: u32) -> RateLimit {
        RateLimit { rps, burst }
    }

    fn settings(tenant: Option<RateLimit>, client: Option<ClientRateLimit>) -> Settings {
        Settings {
            rate_limit: tenant,
            client_rate_limit: client,
            ..Settings::default()
        }
    }

    fn per_client(rps: f64, burst: u32, max_clients: u32) -> ClientRateLimit {
        ClientRateLimit {
            limit: limit(rps, burst),
            key: ClientKey::Ip,
            max_clients,
        }
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn passes(l: &Limits, ip: IpAddr) -> usize {
        (0..1000)
            .take_while(|_| l.check(&HeaderMap::new(), ip).is_ok())
            .count()
    }

    #[test]
    fn a_burst_passes_then_the_next_waits_for_a_token() {
        let l = Limits::rebuild(&settings(Some(limit(0.5, 3)), None), &Limits::default());
        assert_eq!(passes(&l, IP), 3);
        let refusal = l.check(&HeaderMap::new(), IP).unwrap_err();
        assert_eq!(refusal.by, Limited::Tenant);
        // A token every 2 s: the next is due within 2 s, rounded up.
        assert!((1..=2).contains(&refusal.retry_after_s), "{refusal:?}");
    }

    #[test]
    fn a_tenant_refusal_takes_no_client_token() {
        let both = settings(Some(limit(0.001, 2)), Some(per_client(0.001, 3, 10)));
        let l = Limits::rebuild(&both, &Limits::default());
        assert_eq!(passes(&l, IP), 2);
        // Refused by the tenant many times: the client's third token is
        // still there once the tenant's limit is gone.
        for _ in 0..5 {
            assert_eq!(
                l.check(&HeaderMap::new(), IP).unwrap_err().by,
                Limited::Tenant
            );
        }
        let l = Limits::rebuild(&settings(None, Some(per_client(0.001, 3, 10))), &l);
        assert_eq!(passes(&l, IP), 1);
        assert_eq!(
            l.check(&HeaderMap::new(), IP).unwrap_err().by,
            Limited::Client
        );
    }

    #[test]
    fn an_unchanged_limit_keeps_its_buckets_and_a_changed_one_its_fill() {
        let s = settings(Some(limit(0.001, 10)), Some(per_client(0.001, 10, 10)));
        let l = Limits::rebuild(&s, &Limits::default());
        assert_eq!(passes(&l, IP), 10);
        let same = Limits::rebuild(&s, &l);
        assert_eq!(passes(&same, IP), 0);
        // The tenant's burst grows: its bucket stays empty (no free tokens);
        // the client's shrinks below what it holds... which is nothing.
        let grown = settings(Some(limit(0.001, 20)), Some(per_client(0.001, 10, 10)));
        assert_eq!(passes(&Limits::rebuild(&grown, &same), IP), 0);

        // 6 of 10 tokens left: a burst of 3 keeps 3 of them, a burst of
        // 50 keeps the 6.
        let ten = settings(Some(limit(0.001, 10)), None);
        for burst in [3, 50] {
            let l = Limits::rebuild(&ten, &Limits::default());
            for _ in 0..4 {
                assert!(l.check(&HeaderMap::new(), IP).is_ok());
            }
            let changed = settings(Some(limit(0.001, burst)), None);
            assert_eq!(
                passes(&Limits::rebuild(&changed, &l), IP),
                burst.min(6) as usize
            );
        }
    }

    #[test]
    fn a_header_key_falls_back_to_the_ip() {
        let mut c = per_client(0.001, 1, 10);
        c.key = ClientKey::Header(http::HeaderName::from_static("x-api-key"));
        let l = Limits::rebuild(&settings(None, Some(c)), &Limits::default());
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("x-api-key", http::HeaderValue::from_static(v));
            l.check(&h, IP).is_ok()
        };
        assert!(with("a"));
        assert!(!with("a"));
        assert!(with("b"));
        assert!(l.check(&HeaderMap::new(), IP).is_ok());
        assert!(l.check(&HeaderMap::new(), IP).is_err());
        assert_eq!(l.clients(), Some(3));
    }
}
