//! The merge rule for file changes (SPEC section 7).
//!
//! Some keys are also set by turnout itself — weights and the stable pool,
//! by admin calls and automatic reverts. When such a change could not be
//! written to the file, the running value differs from the file's. On a
//! reload, a key the file changed since its previous version takes the
//! file's value (an operator's new intent always applies); a key the file did
//! not change keeps the running value (so a reload does not undo a revert
//! held in memory). Everything else always comes from the file.

use std::sync::Arc;

use crate::config::{Config, TenantConfig};

/// Merges a newly read file into the running state.
pub fn merge(running: &Config, file_prev: &Config, mut file_new: Config) -> Config {
    for shared in &mut file_new.tenants {
        let (Some(run), Some(prev)) =
            (running.tenant(&shared.name), file_prev.tenant(&shared.name))
        else {
            continue;
        };
        let merged = merge_tenant(shared, run, prev);
        if let Some(merged) = merged {
            *shared = Arc::new(merged);
        }
    }
    file_new
}

/// The tenant the merge rule makes of a new file version, or `None` when
/// that is the file's version unchanged (so it stays shared, uncopied).
fn merge_tenant(
    file: &TenantConfig,
    run: &TenantConfig,
    prev: &TenantConfig,
) -> Option<TenantConfig> {
    let mut tenant = file.clone();
    // Weights and the stable pool are one decision (which release gets which
    // share): if the file changed either, both come from the file.
    if (file.weights, file.stable) == (prev.weights, prev.stable) {
        (tenant.weights, tenant.stable) = (run.weights, run.stable);
    }
    // A ramp's progress, too: deleting it from the file stops the ramp.
    let progress = |t: &TenantConfig| t.rollout.as_ref().map(|r| r.progress.clone());
    if let (Some(rollout), Some(prev_p), Some(run_p)) =
        (tenant.rollout.as_mut(), progress(prev), progress(run))
        && rollout.progress == prev_p
    {
        rollout.progress = run_p;
    }
    // Keys merged one by one must still make a valid tenant (the file may
    // have emptied a pool the running weights send traffic to); if not, the
    // file wins for this tenant.
    if let Some((_, problem)) = tenant.empty_pool_in_use() {
        tracing::warn!(tenant = %tenant.name, %problem, "running weights conflict with the file; taking the file's");
        (tenant.weights, tenant.stable) = (file.weights, file.stable);
    }
    (tenant != *file).then_some(tenant)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Pool, Weights};
    use std::path::Path;

    fn config(blue: u32, green: u32, green_pool: &str) -> Config {
        let text = format!(
            "[tenants.t]\nhosts = [\"t\"]\nstable = \"blue\"\nweights = {{ blue = {blue}, green = {green} }}\npools.blue = [\"a:1\"]\npools.green = [{green_pool}]\n"
        );
        crate::config::parse(&text, Path::new("t.toml"), &|_| None).unwrap()
    }

    fn weights(c: &Config) -> Weights {
        c.tenant("t").unwrap().weights
    }

    #[test]
    fn running_value_survives_an_untouched_key() {
        let file = config(90, 10, "\"b:1\"");
        let mut running = file.clone();
        running.tenant_mut("t").unwrap().weights = Weights::new(100, 0).unwrap();
        // The file is re-read unchanged: the in-memory revert stays.
        let merged = merge(&running, &file, file.clone());
        assert_eq!(weights(&merged), Weights::new(100, 0).unwrap());
    }

    #[test]
    fn a_key_the_file_changed_takes_the_files_value() {
        let file = config(90, 10, "\"b:1\"");
        let mut running = file.clone();
        running.tenant_mut("t").unwrap().weights = Weights::new(100, 0).unwrap();
        let merged = merge(&running, &file, config(50, 50, "\"b:1\""));
        assert_eq!(weights(&merged), Weights::new(50, 50).unwrap());
        assert_eq!(merged.tenant("t").unwrap().stable, Pool::Blue);
    }

    #[test]
    fn the_file_wins_when_the_merge_would_be_invalid() {
        let file = config(100, 0, "\"b:1\"");
        let mut running = file.clone();
        running.tenant_mut("t").unwrap().weights = Weights::new(50, 50).unwrap();
        // The file empties the green pool the running weights send traffic to.
        let merged = merge(&running, &file, config(100, 0, ""));
        assert_eq!(weights(&merged), Weights::new(100, 0).unwrap());
    }
}
