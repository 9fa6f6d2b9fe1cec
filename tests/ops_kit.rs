//! The operations kit stays true to the product: every metric the dashboard
//! and the alert rules use exists, and every shipped control file validates.
//! (promtool tests the alerts themselves; see .ci/run.)
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::Path;

use turnout::metrics::*;

fn root(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Every `turnout_…` name in `text`.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(found) = text[i..].find("turnout_") {
        let start = i + found;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        names.push(text[start..end].to_owned());
        i = end;
    }
    names
}

#[test]
fn dashboards_and_alerts_use_only_real_metrics() {
    let known = [
        REQUESTS_TOTAL,
        UPSTREAM_ERRORS_TOTAL,
        POOL_SHARE,
        ENDPOINT_HEALTHY,
        FAILOVERS_TOTAL,
        INFLIGHT_REQUESTS,
        REJECTED_TOTAL,
        UNROUTED_TOTAL,
        CONFIG_RELOADS_TOTAL,
        CONFIG_GENERATION,
        SLO_ERROR_RATE,
        REVERTS_TOTAL,
        NOTIFY_FAILURES_TOTAL,
    ];
    let histogram = ["_bucket", "_sum", "_count"].map(|s| format!("{REQUEST_DURATION_SECONDS}{s}"));
    for file in [
        "docker/grafana/dashboards/turnout.json",
        "docker/prometheus/alerts.yml",
    ] {
        let text = std::fs::read_to_string(root(file)).unwrap();
        let names = metric_names(&text);
        assert!(!names.is_empty(), "{file} uses no turnout metric");
        for name in names {
            let ok = known.contains(&name.as_str()) || histogram.contains(&name);
            assert!(ok, "{file} uses `{name}`, which turnout does not export");
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root("docker/grafana/dashboards/turnout.json")).unwrap(),
    )
    .unwrap();
    assert!(dashboard["panels"].as_array().unwrap().len() >= 6);
}

#[test]
fn shipped_control_files_validate() {
    let env = |var: &str| (var == "TURNOUT_DEPLOYER_TOKEN").then(|| "secret".to_owned());
    let path = root("docker/turnout.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    turnout::config::parse(&text, &path, &env).unwrap_or_else(|e| panic!("{e}"));

    // The control file embedded in the Kubernetes ConfigMap.
    let manifest = std::fs::read_to_string(root("docker/k8s/configmap.yaml")).unwrap();
    let (_, body) = manifest.split_once("turnout.toml: |\n").unwrap();
    let embedded: String = body
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    turnout::config::parse(&embedded, Path::new("configmap/turnout.toml"), &env)
        .unwrap_or_else(|e| panic!("{e}"));
}
