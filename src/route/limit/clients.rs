//! The per-client buckets of one tenant: a bounded table from client key
//! to its bucket's TAT, least recently seen forgotten first.
//!
//! Why not `governor`'s keyed store: it is a `DashMap` that only grows (a
//! flood of distinct keys — spoofed API keys, a botnet — would take all the
//! memory), and it cannot give a token back. This table is split into
//! shards by key, each a `schnellru` LRU map behind its own mutex: a
//! request locks one shard for a hash lookup and a link update, so clients
//! on different shards never wait for each other, and there is no global
//! lock. Each shard holds `max_clients / shards` keys (the remainder
//! spread over the first ones), so the table never holds more than
//! `max_clients`; "least recently seen" is exact within a shard, and keys
//! spread evenly over shards by hash. Small tables (under 2048 keys) have
//! one shard, so their eviction order is exact.
//!
//! Keys are 64-bit xxh3 hashes of the client's IP or header value, seeded
//! per table at random so no one can aim collisions at a victim; two
//! clients share a bucket only on a 64-bit collision (about one chance in
//! 10^9 among 100 000 keys). An entry is 16 bytes of payload plus the
//! map's links and control byte: about 26 bytes, ~50 bytes per key with the
//! power-of-two growth of the table (benches/RESULTS.md measures it).

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};

use governor::nanos::Nanos;
use schnellru::{ByLength, LruMap};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// More shards than this stop helping: a request holds a shard for well
/// under a microsecond.
const MAX_SHARDS: u32 = 64;
/// Tables are split into shards of at least this many keys.
const KEYS_PER_SHARD: u32 = 1024;
/// Mixed into the seed for header keys, so a header value can never hash
/// like an address.
const HEADER_DOMAIN: u64 = 0x6865_6164_6572_6b79;

type Shard = LruMap<u64, u64, ByLength, PreHashed>;

/// Client key → TAT (nanoseconds in the owning limiter's frame).
pub struct ClientTable {
    shards: Box<[Mutex<Shard>]>,
    /// `shards.len() - 1` (a power of two minus one).
    mask: u64,
    seed: u64,
}

impl ClientTable {
    /// An empty table holding at most `max_clients` keys (at least 1),
    /// hashing keys with `seed` (a fresh random one when `None`).
    pub fn new(max_clients: u32, seed: Option<u64>) -> ClientTable {
        let max_clients = max_clients.max(1);
        let count = (max_clients / KEYS_PER_SHARD)
            .max(1)
            .next_power_of_two()
            .min(MAX_SHARDS);
        let (base, extra) = (max_clients / count, max_clients % count);
        let shards = (0..count)
            .map(|i| {
                let cap = base + u32::from(i < extra);
                Mutex::new(LruMap::with_hasher(ByLength::new(cap), PreHashed))
            })
            .collect();
        ClientTable {
            shards,
            mask: u64::from(count - 1),
            seed: seed.unwrap_or_else(|| fastrand::u64(..)),
        }
    }

    /// The seed keys are hashed with (carried to a table that replaces
    /// this one, so keys keep their buckets).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The key of a client known by its address; an IPv4-mapped IPv6
    /// address is the IPv4 client it maps.
    pub fn key_of_ip(&self, ip: IpAddr) -> u64 {
        match ip.to_canonical() {
            IpAddr::V4(v4) => xxh3_64_with_seed(&v4.octets(), self.seed),
            IpAddr::V6(v6) => xxh3_64_with_seed(&v6.octets(), self.seed),
        }
    }

    /// The key of a client known by a header value.
    pub fn key_of_header(&self, value: &[u8]) -> u64 {
        xxh3_64_with_seed(value, self.seed ^ HEADER_DOMAIN)
    }

    /// `governor`'s state update for `key`: `f` gets the key's TAT (`None`
    /// for a key not held: a full bucket) and returns the new one, or a
    /// refusal. The key becomes the most recently seen either way; a new
    /// key may push out the shard's least recently seen.
    pub fn measure_and_replace<T, E, F>(&self, key: u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut shard = self.shard(key);
        if let Some(tat) = shard.get(&key) {
            let (out, next) = f(Some(Nanos::from(*tat)))?;
            *tat = next.as_u64();
            return Ok(out);
        }
        let (out, next) = f(None)?;
        shard.insert(key, next.as_u64());
        Ok(out)
    }

    /// Gives back the token `key` took: its TAT moves `interval_ns` (one
    /// token's worth) earlier. A TAT in the past is a full bucket, so the
    /// subtraction cannot over-fill it.
    pub fn give_back(&self, key: u64, interval_ns: u64) {
        if let Some(tat) = self.shard(key).peek_mut(&key) {
            *tat = tat.saturating_sub(interval_ns);
        }
    }

    /// Keys held now, at most `max_clients` (locks each shard in turn).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the table's maps hold now (what the keys cost).
    pub fn memory_bytes(&self) -> usize {
        self.shards.iter().map(|s| lock(s).memory_usage()).sum()
    }

    /// Copies every key into `into` with its TAT converted by `convert`
    /// (`None`: a full bucket, left out), least recently seen first, so
    /// `into`'s eviction keeps the most recently seen. Used when a limit
    /// changes; `into` is not yet seen by requests.
    pub fn carry_into(&self, into: &ClientTable, convert: impl Fn(u64) -> Option<u64>) {
        for shard in self.shards.iter() {
            let entries: Vec<(u64, u64)> = lock(shard)
                .iter()
                .rev()
                .map(|(key, tat)| (*key, *tat))
                .collect();
            for (key, tat) in entries {
                if let Some(tat) = convert(tat) {
                    into.shard(key).insert(key, tat);
                }
            }
        }
    }

    fn shard(&self, key: u64) -> MutexGuard<'_, Shard> {
        // Bits 32.. pick the shard: the maps index by the low bits and tag
        // by the top seven, which must stay spread within a shard.
        lock(&self.shards[((key >> 32) & self.mask) as usize])
    }
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // A panic while holding a shard leaves a consistent map of numbers.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Keys are already xxh3 hashes: the maps use them as their own hash.
#[derive(Clone, Copy, Default)]
struct PreHashed;

impl BuildHasher for PreHashed {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

/// Passes a `u64` key through (the only thing the maps hash).
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached for `u64` keys; still a hash for anything else.
        self.0 = xxh3_64_with_seed(bytes, self.0);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(t: &ClientTable, key: u64) {
        t.measure_and_replace(key, |_| Ok::<_, ()>(((), Nanos::from(key))))
            .unwrap();
    }

    #[test]
    fn the_table_never_holds_more_than_max_clients() {
        for max in [1, 7, 2048, 5000, 100_000] {
            let t = ClientTable::new(max, Some(1));
            for i in 0..u64::from(max) * 3 {
                touch(&t, t.key_of_header(&i.to_le_bytes()));
            }
            assert!(t.len() <= max as usize, "{max}: {}", t.len());
            assert!(t.len() >= (max as usize) * 9 / 10, "{max}: {}", t.len());
        }
    }

    #[test]
    fn the_least_recently_seen_key_goes_first() {
        let t = ClientTable::new(3, Some(1));
        for key in [1, 2, 3] {
            touch(&t, key);
        }
        touch(&t, 1);
        touch(&t, 4);
        let held = |k: u64| t.shard(k).peek(&k).is_some();
        assert!(held(1) && !held(2) && held(3) && held(4));
    }

    #[test]
    fn keys_are_seeded_and_kinds_apart() {
        let (a, b) = (ClientTable::new(10, Some(1)), ClientTable::new(10, Some(2)));
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(a.key_of_ip(ip), a.key_of_ip(mapped));
        assert_ne!(a.key_of_ip(ip), b.key_of_ip(ip));
        assert_ne!(a.key_of_ip(ip), a.key_of_header(&[10, 1, 2, 3]));
    }

    #[test]
    fn carrying_keeps_the_most_recent_keys_and_drops_full_buckets() {
        let old = ClientTable::new(10, Some(1));
        for key in 1..=10 {
            touch(&old, key);
        }
        let new = ClientTable::new(3, Some(1));
        old.carry_into(&new, |tat| (tat != 9).then_some(tat * 2));
        let held: Vec<Option<u64>> = (1..=10).map(|k| new.shard(k).peek(&k).copied()).collect();
        let expect = [
            None,
            None,
            None,
            None,
            None,
            None,
            Some(14),
            Some(16),
            None,
            Some(20),
        ];
        assert_eq!(held, expect);
    }
}
