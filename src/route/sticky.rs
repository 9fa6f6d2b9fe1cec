//! The fixed sticky hash: which bucket a user's key falls in.
//!
//! `bucket(tenant, key) = xxh3_64_with_seed(key, seed = xxh3_64(tenant)) mod 10 000`
//! with XXH3 (64-bit) as specified by the xxHash project. It depends on nothing
//! but the two strings, so every replica and every restart agrees. A request
//! goes to the candidate iff its bucket is below the candidate's share in
//! basis points — so raising the share only ever adds buckets to the
//! candidate: a user already there stays there (monotonic by construction).

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Buckets per tenant: shares are compared in basis points.
pub const BUCKETS: u64 = 10_000;

/// The per-tenant seed, computed once when the routing table is built.
pub fn tenant_seed(tenant: &str) -> u64 {
    xxh3_64(tenant.as_bytes())
}

/// The key's bucket, `0..10 000`.
pub fn bucket(seed: u64, key: &[u8]) -> u32 {
    (xxh3_64_with_seed(key, seed) % BUCKETS) as u32
}

/// A fresh random sticky key for a cookie: 128 random bits in hex.
pub fn fresh_key() -> String {
    format!("{:032x}", fastrand::u128(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_fixed() {
        // Pinned values: changing the hash would move users between pools on
        // upgrade, so this must never change.
        let seed = tenant_seed("acme");
        assert_eq!(seed, 4_948_779_126_678_378_721);
        assert_eq!(bucket(seed, b"user-1"), 4094);
    }

    #[test]
    fn monotonic_as_share_grows() {
        let seed = tenant_seed("shop");
        let keys: Vec<String> = (0..20_000).map(|i| format!("user-{i}")).collect();
        let on_candidate = |share_bp: u32| -> Vec<bool> {
            keys.iter()
                .map(|k| bucket(seed, k.as_bytes()) < share_bp)
                .collect()
        };
        let shares = [0, 1, 100, 500, 1000, 2000, 2500, 5000, 9999, 10_000];
        for pair in shares.windows(2) {
            let (low, high) = (on_candidate(pair[0]), on_candidate(pair[1]));
            for (l, h) in low.iter().zip(&high) {
                assert!(
                    !l || *h,
                    "a user left the candidate as its share grew {pair:?}"
                );
            }
        }
        assert!(on_candidate(10_000).iter().all(|c| *c));
        assert!(on_candidate(0).iter().all(|c| !*c));
    }

    #[test]
    fn buckets_are_spread_evenly() {
        let seed = tenant_seed("shop");
        let n = 100_000;
        let below = (0..n)
            .filter(|i| bucket(seed, format!("k{i}").as_bytes()) < 1000)
            .count();
        // Expect 10 %; 9–11 % is > 10 standard deviations wide.
        assert!((9_000..=11_000).contains(&below), "{below}");
    }

    #[test]
    fn tenants_hash_independently() {
        let (a, b) = (tenant_seed("a"), tenant_seed("b"));
        let same = (0..1000)
            .filter(|i| {
                let k = format!("u{i}");
                bucket(a, k.as_bytes()) == bucket(b, k.as_bytes())
            })
            .count();
        assert!(same < 10);
    }
}
