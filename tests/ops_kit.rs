//! The operations kit stays true to the product: every metric the dashboard
//! and the alert rules use exists, every shipped control file validates, and
//! the container kit (Dockerfile, compose file, `docker run` examples,
//! Kubernetes manifests) runs turnout the way it needs: control directory
//! mounted, images named in full, the Pod Security "restricted" profile.
//! (promtool tests the alerts themselves and kubernetes-validate checks the
//! manifests against the Kubernetes schemas; see .ci/run.)
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::Path;

#[path = "ops_kit/k8s.rs"]
mod k8s;
#[path = "ops_kit/yaml.rs"]
mod yaml;

use yaml::*;

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
        DNS_FAILURES_TOTAL,
        STORE_UP,
        STORE_REVISION,
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
    let path = root("docker/control/turnout.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    validates(&text, &path);

    // The control file embedded in the Kubernetes ConfigMap.
    let manifest = std::fs::read_to_string(root("docker/k8s/configmap.yaml")).unwrap();
    let (_, body) = manifest.split_once("turnout.toml: |\n").unwrap();
    let embedded: String = body
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    validates(&embedded, Path::new("configmap/turnout.toml"));
}

/// `text` is a valid control file. Both shipped files are fleets (`[store]`):
/// a build without the `etcd` feature must refuse the `[store]` table for
/// that reason alone, and accept everything else.
fn validates(text: &str, path: &Path) {
    let env = |var: &str| (var == "TURNOUT_DEPLOYER_TOKEN").then(|| "secret".to_owned());
    assert!(
        text.contains("\n[store]\n"),
        "{}: not a fleet",
        path.display()
    );
    let parsed = turnout::config::parse(text, path, &env);
    if cfg!(feature = "etcd") {
        parsed.unwrap_or_else(|e| panic!("{e}"));
        return;
    }
    let message = match parsed {
        Ok(_) => panic!(
            "{}: [store] accepted without the etcd feature",
            path.display()
        ),
        Err(e) => e.to_string(),
    };
    assert!(
        message.contains("store: this turnout was built without the etcd feature"),
        "{message}"
    );
    let mut in_store = false;
    let rest: String = text
        .lines()
        .filter(|l| {
            if l.starts_with('[') {
                in_store = *l == "[store]";
            }
            !in_store
        })
        .map(|l| format!("{l}\n"))
        .collect();
    turnout::config::parse(&rest, path, &env).unwrap_or_else(|e| panic!("{e}"));
}

// ---------------------------------------------------------------------------
// The container kit: compose file, Dockerfile, docs and Kubernetes manifests.
// (The manifests' schemas are checked by kubernetes-validate in .ci/run; these
// tests check what a schema cannot: the Pod Security profile, the image's
// user, mounts that let write-back work.)

/// `registry/…/name:tag` (or `@digest`): a name buildah, podman and CRI-O
/// resolve without a registries.conf search list.
fn fully_qualified(image: &str) -> bool {
    let Some((registry, rest)) = image.split_once('/') else {
        return false;
    };
    let named_registry = registry.contains(['.', ':']) || registry == "localhost";
    let tagged = rest.contains('@') || rest.rsplit('/').next().unwrap().contains(':');
    named_registry && tagged
}

/// The Dockerfile's stages as (base image, stage name), in order.
fn dockerfile_stages() -> Vec<(String, Option<String>)> {
    let text = std::fs::read_to_string(root("docker/Dockerfile")).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let name = (words.len() == 3 && words[1].eq_ignore_ascii_case("as")).then(|| words[2]);
            (words[0].to_owned(), name.map(str::to_owned))
        })
        .collect()
}

/// The runtime user of the image: (uid, gid) from its numeric `USER`.
fn image_user() -> (String, String) {
    let text = std::fs::read_to_string(root("docker/Dockerfile")).unwrap();
    let user = text
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .unwrap();
    let (uid, gid) = user.trim().split_once(':').expect("USER uid:gid");
    for id in [uid, gid] {
        assert!(
            id.parse::<u32>().is_ok_and(|n| n > 0),
            "USER {user}: not a numeric non-root id"
        );
    }
    for (flag, id) in [("--uid", uid), ("--gid", gid)] {
        assert!(
            text.contains(&format!("{flag} {id} ")),
            "the image creates no {flag} {id}"
        );
    }
    (uid.to_owned(), gid.to_owned())
}

#[test]
fn dockerfile_names_base_images_in_full_and_runs_as_a_numeric_user() {
    let stages = dockerfile_stages();
    assert!(stages.len() >= 2, "a build stage and a runtime stage");
    let mut earlier: Vec<&str> = Vec::new();
    for (base, name) in &stages {
        let ok = earlier.contains(&base.as_str()) || fully_qualified(base);
        assert!(
            ok,
            "FROM {base}: not fully qualified (docker.io/library/...)"
        );
        earlier.extend(name.as_deref());
    }
    image_user();
}

#[test]
fn compose_mounts_directories_and_names_images_in_full() {
    let compose = &yaml_docs("docker/compose.yml")[0];
    let services: std::collections::BTreeSet<&str> = compose
        .iter()
        .filter_map(|(p, _)| p.strip_prefix("services.")?.split('.').next())
        .collect();
    assert!(services.contains("turnout") && services.contains("prometheus"));
    for service in &services {
        if let Some(image) = get(compose, &format!("services.{service}.image")) {
            assert!(
                fully_qualified(image),
                "{service}: image {image} is not fully qualified"
            );
        }
        for volume in items(compose, &format!("services.{service}.volumes")) {
            let source = volume.split(':').next().unwrap();
            if source.starts_with(['.', '/']) {
                let host = root("docker").join(source);
                assert!(
                    host.is_dir(),
                    "{service} bind-mounts {source}, not a directory: a file mount breaks the \
                     rename of write-back (EBUSY) and hides editors' replacements"
                );
            }
        }
    }
    // turnout's --config names a file inside its mounted directory, and that
    // file is the shipped playground control file.
    let command = flow_list(get(compose, "services.turnout.command").unwrap());
    let at = command.iter().position(|a| a == "--config").unwrap();
    let config = &command[at + 1];
    let found = items(compose, "services.turnout.volumes")
        .into_iter()
        .find_map(|v| {
            let mut parts = v.split(':');
            let (source, target) = (parts.next()?, parts.next()?);
            let inside = config.strip_prefix(target)?.strip_prefix('/')?;
            Some(root("docker").join(source).join(inside))
        });
    let host_file = found.unwrap_or_else(|| panic!("{config} is in no mounted directory"));
    assert_eq!(
        host_file.canonicalize().unwrap(),
        root("docker/control/turnout.toml").canonicalize().unwrap()
    );
}

#[test]
fn docker_run_examples_mount_the_control_directory() {
    let mut mounts = Vec::new();
    for file in ["docker/README.md", "README.md"] {
        let text = std::fs::read_to_string(root(file))
            .unwrap()
            .replace("\\\n", " ");
        for line in text
            .lines()
            .filter(|l| l.contains("docker run ") || l.contains("podman run "))
        {
            let words: Vec<String> = line.split_whitespace().map(unquote).collect();
            for pair in words
                .windows(2)
                .filter(|w| w[0] == "-v" || w[0] == "--volume")
            {
                let target = pair[1].split(':').nth(1).unwrap_or_default().to_owned();
                assert!(
                    !target.ends_with(".toml"),
                    "{file}: `{line}` bind-mounts a single file; mount its directory"
                );
                mounts.push((file, target, line.to_owned()));
            }
            // An explicit --config names a file in a mounted directory.
            if let Some(at) = words.iter().position(|w| w == "--config") {
                let config = &words[at + 1];
                let inside = mounts
                    .iter()
                    .filter(|(_, _, l)| l == line)
                    .any(|(_, target, _)| config.starts_with(&format!("{target}/")));
                assert!(
                    inside,
                    "{file}: `{line}`: {config} is in no mounted directory"
                );
            }
        }
    }
    assert!(
        mounts.iter().any(|(_, target, _)| target == "/etc/turnout"),
        "no `docker run` example mounts the control directory at /etc/turnout: {mounts:?}"
    );
}
