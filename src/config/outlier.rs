//! `[defaults.outlier]` (or a tenant's `outlier`): passive outlier
//! ejection's settings (SPEC section 15), resolved over the layer below.
//!
//! Off unless the table is present: an operator opts in, as with Envoy's
//! `outlier_detection` and HAProxy's `observe layer7`. Each key present is
//! validated and located like any other; an absent key takes the value of
//! the layer below (`[defaults]`), or the SPEC's default.

use std::time::Duration;

use serde::Deserialize;

use super::locate::KeyPath;
use super::validate::{Problems, count, duration};

/// The `outlier` table as the file writes it. Absent keys inherit.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    /// `consecutive_errors`: errors of one endpoint in a row that eject it.
    pub consecutive_errors: Option<i64>,
    /// `ejection`: a duration string, the first ejection's length.
    pub ejection: Option<String>,
    /// `max_ejected`: a fraction in `[0, 1]` of a pool's endpoints.
    pub max_ejected: Option<f64>,
}

/// Passive outlier ejection of one tenant's endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierSettings {
    /// Errors of one endpoint in a row that eject it (default 5): 5xx,
    /// connect failures, timeouts, body failures and gRPC error statuses,
    /// counted across the requests of every tenant with ejection on.
    pub consecutive_errors: u32,
    /// The first ejection's length (default 30 s); doubled on each repeat,
    /// as Envoy's `base_ejection_time`, up to [`OutlierSettings::max_ejection`].
    pub ejection: Duration,
    /// At most this fraction of a pool's endpoints, rounded down, ejected
    /// at once (default 0.5: 1 of 2, none of 1).
    pub max_ejected: f64,
}

impl Default for OutlierSettings {
    fn default() -> Self {
        OutlierSettings {
            consecutive_errors: 5,
            ejection: Duration::from_secs(30),
            max_ejected: 0.5,
        }
    }
}

impl OutlierSettings {
    /// The longest an ejection gets however often it repeats: 300 s
    /// (Envoy's `max_ejection_time`), or the first ejection's length if
    /// that is longer.
    pub fn max_ejection(&self) -> Duration {
        self.ejection.max(Duration::from_secs(300))
    }

    /// How long the ejection after `repeats` earlier ones lasts: the base
    /// doubled per repeat, capped at [`OutlierSettings::max_ejection`].
    pub fn ejection_after(&self, repeats: u32) -> Duration {
        let factor = 1u32 << repeats.min(16);
        self.ejection
            .checked_mul(factor)
            .unwrap_or(Duration::MAX)
            .min(self.max_ejection())
    }

    /// How many of a pool of `endpoints` may be ejected at once:
    /// `max_ejected × endpoints`, rounded down.
    pub fn max_ejected_of(&self, endpoints: usize) -> usize {
        (self.max_ejected * endpoints as f64).floor() as usize
    }
}

/// Resolves a layer's `outlier` table over `base` (the `[defaults]`
/// value, `None` when ejection is off there): absent in the layer, the
/// base holds; present, ejection is on with the layer's keys over the
/// base's (or the SPEC's defaults).
pub(super) fn resolve(
    p: &mut Problems,
    path: &KeyPath,
    base: Option<&OutlierSettings>,
    raw: Option<&RawOutlier>,
) -> Option<OutlierSettings> {
    let Some(raw) = raw else {
        return base.cloned();
    };
    let base = base.cloned().unwrap_or_default();
    let max_ejected = match raw.max_ejected {
        Some(f) if (0.0..=1.0).contains(&f) => f,
        Some(_) => {
            p.add(path.key("max_ejected"), "must be between 0 and 1");
            base.max_ejected
        }
        None => base.max_ejected,
    };
    Some(OutlierSettings {
        consecutive_errors: count(
            p,
            path,
            "consecutive_errors",
            raw.consecutive_errors,
            base.consecutive_errors,
        ),
        ejection: duration(p, path, "ejection", raw.ejection.as_deref(), base.ejection),
        max_ejected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejection_doubles_up_to_the_cap_and_max_ejected_rounds_down() {
        let s = OutlierSettings::default();
        assert_eq!(s.ejection_after(0), Duration::from_secs(30));
        assert_eq!(s.ejection_after(1), Duration::from_secs(60));
        assert_eq!(s.ejection_after(3), Duration::from_secs(240));
        assert_eq!(s.ejection_after(4), Duration::from_secs(300));
        assert_eq!(s.ejection_after(u32::MAX), Duration::from_secs(300));
        assert_eq!((s.max_ejected_of(1), s.max_ejected_of(2)), (0, 1));
        assert_eq!((s.max_ejected_of(3), s.max_ejected_of(5)), (1, 2));
    }
}
