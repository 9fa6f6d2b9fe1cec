//! The SPEC's pools — `blue` and `green` — and a tenant's weights between
//! them: valid by construction (never both 0, each at most
//! [`Weights::MAX`]), so routing's weighted draw can never divide by zero.

use std::fmt;

/// One of the two pools every tenant owns (the SPEC's *pool*: `blue` or
/// `green`). Which one is stable is per tenant ([`TenantConfig::stable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pool {
    /// The pool named `blue` in the file, the API and metric labels.
    Blue,
    /// The pool named `green` in the file, the API and metric labels.
    Green,
}

impl Pool {
    /// Both pools, in [`Pool::index`] order: `[Blue, Green]`.
    pub const ALL: [Pool; 2] = [Pool::Blue, Pool::Green];

    /// `"blue"` or `"green"`: the spelling of the file, the admin API, the
    /// `X-Turnout-Pool` header and the `pool` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Pool::Blue => "blue",
            Pool::Green => "green",
        }
    }

    /// The other pool: the candidate of a stable pool and vice versa.
    pub fn other(self) -> Pool {
        match self {
            Pool::Blue => Pool::Green,
            Pool::Green => Pool::Blue,
        }
    }

    /// Position in per-pool arrays (`[blue, green]`).
    pub fn index(self) -> usize {
        match self {
            Pool::Blue => 0,
            Pool::Green => 1,
        }
    }

    /// The inverse of [`Pool::as_str`]: exactly `"blue"` or `"green"`
    /// (lower case); `None` for anything else.
    pub fn parse(s: &str) -> Option<Pool> {
        match s {
            "blue" => Some(Pool::Blue),
            "green" => Some(Pool::Green),
            _ => None,
        }
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{ blue = B, green = G }`: how a tenant's traffic is split between its
/// pools, in proportion to the two numbers (as nginx's and Envoy's weighted
/// upstreams do).
///
/// Valid by construction: each weight is at most [`Weights::MAX`] and they
/// are never both 0, so `total()` is in `1..=2 * MAX` and a draw below it
/// never panics. The fields are private; build one with [`Weights::new`]
/// (checked) or [`Weights::all_on`] / [`Weights::split`] (valid by their
/// shape). The serde-facing form of the file is `raw::RawWeights`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Weights {
    blue: u32,
    green: u32,
}

/// Why two numbers are not [`Weights`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsError {
    /// Both weights are 0: no pool would get the traffic.
    BothZero,
    /// This pool's weight is above [`Weights::MAX`].
    TooLarge(Pool),
}

impl fmt::Display for WeightsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightsError::BothZero => f.write_str("weights must not both be 0"),
            WeightsError::TooLarge(pool) => {
                write!(f, "the {pool} weight must be at most {}", Weights::MAX)
            }
        }
    }
}

impl std::error::Error for WeightsError {}

impl Weights {
    /// The largest weight of one pool (the file, the admin API and `ctl`
    /// share it): enough for a 0.0001 % split, small enough that the total
    /// fits a `u32` draw.
    pub const MAX: u32 = 1_000_000;

    /// Checked constructor: `blue` and `green` at most [`Weights::MAX`],
    /// not both 0.
    pub fn new(blue: u32, green: u32) -> Result<Weights, WeightsError> {
        if blue == 0 && green == 0 {
            return Err(WeightsError::BothZero);
        }
        for (pool, weight) in [(Pool::Blue, blue), (Pool::Green, green)] {
            if weight > Weights::MAX {
                return Err(WeightsError::TooLarge(pool));
            }
        }
        Ok(Weights { blue, green })
    }

    /// All traffic to `pool`: `{pool = 100, other = 0}`.
    pub fn all_on(pool: Pool) -> Weights {
        Weights::split(pool.other(), 100)
    }

    /// `candidate_percent` of the traffic to the pool other than `stable`,
    /// the rest to `stable` (a rollout step); a percent above 100 counts as
    /// 100. The weights always add up to 100.
    pub fn split(stable: Pool, candidate_percent: u32) -> Weights {
        let candidate = candidate_percent.min(100);
        let stable_weight = 100 - candidate;
        match stable {
            Pool::Blue => Weights {
                blue: stable_weight,
                green: candidate,
            },
            Pool::Green => Weights {
                blue: candidate,
                green: stable_weight,
            },
        }
    }

    /// The blue pool's weight, `0..=MAX`.
    pub fn blue(&self) -> u32 {
        self.blue
    }

    /// The green pool's weight, `0..=MAX`.
    pub fn green(&self) -> u32 {
        self.green
    }

    /// The weight of `color`.
    pub fn of(&self, color: Pool) -> u32 {
        match color {
            Pool::Blue => self.blue,
            Pool::Green => self.green,
        }
    }

    /// `blue + green`: at least 1, at most `2 * MAX`.
    pub fn total(&self) -> u32 {
        self.blue + self.green
    }

    /// The pool's share of traffic in basis points (0..=10 000).
    pub fn share_bp(&self, color: Pool) -> u32 {
        (u64::from(self.of(color)) * 10_000 / u64::from(self.total())) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_never_both_zero_nor_too_large() {
        assert_eq!(Weights::new(0, 0), Err(WeightsError::BothZero));
        assert_eq!(
            Weights::new(Weights::MAX + 1, 1),
            Err(WeightsError::TooLarge(Pool::Blue))
        );
        assert_eq!(
            Weights::new(0, u32::MAX),
            Err(WeightsError::TooLarge(Pool::Green))
        );
        assert_eq!(
            WeightsError::BothZero.to_string(),
            "weights must not both be 0"
        );
        assert_eq!(
            WeightsError::TooLarge(Pool::Green).to_string(),
            "the green weight must be at most 1000000"
        );
        let w = Weights::new(0, 7).unwrap();
        assert_eq!((w.blue(), w.green(), w.total()), (0, 7, 7));
        let max = Weights::new(Weights::MAX, Weights::MAX).unwrap();
        assert_eq!(max.total(), 2 * Weights::MAX);
        assert_eq!(max.share_bp(Pool::Blue), 5_000);
    }

    #[test]
    fn shares_add_up_and_follow_the_weights() {
        let w = Weights::new(1, 2).unwrap();
        assert_eq!(w.of(Pool::Blue), 1);
        assert_eq!(w.of(Pool::Green), 2);
        assert_eq!(w.share_bp(Pool::Blue), 3_333);
        assert_eq!(w.share_bp(Pool::Green), 6_666);
        let one_sided = Weights::new(5, 0).unwrap();
        assert_eq!(one_sided.share_bp(Pool::Blue), 10_000);
        assert_eq!(one_sided.share_bp(Pool::Green), 0);
    }

    #[test]
    fn all_on_and_split_are_valid_by_shape() {
        assert_eq!(Weights::all_on(Pool::Blue), Weights::new(100, 0).unwrap());
        assert_eq!(Weights::all_on(Pool::Green), Weights::new(0, 100).unwrap());
        assert_eq!(
            Weights::split(Pool::Blue, 20),
            Weights::new(80, 20).unwrap()
        );
        assert_eq!(
            Weights::split(Pool::Green, 20),
            Weights::new(20, 80).unwrap()
        );
        assert_eq!(Weights::split(Pool::Blue, 0), Weights::all_on(Pool::Blue));
        assert_eq!(
            Weights::split(Pool::Blue, 250),
            Weights::all_on(Pool::Green)
        );
        for percent in 0..=100 {
            for stable in Pool::ALL {
                let w = Weights::split(stable, percent);
                assert_eq!(w.total(), 100);
                assert_eq!(w.of(stable.other()), percent);
            }
        }
    }

    #[test]
    fn serializes_as_the_admin_api_shows_it() {
        let w = Weights::new(90, 10).unwrap();
        assert_eq!(
            serde_json::to_value(w).unwrap(),
            serde_json::json!({"blue": 90, "green": 10})
        );
    }
}
