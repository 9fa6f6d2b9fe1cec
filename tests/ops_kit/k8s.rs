//! The Kubernetes manifests (docker/k8s/): the Pod Security "restricted"
//! profile, the image's user, a pinned image, a preStop that works before
//! Kubernetes 1.30, and `--config` naming a file of the mounted ConfigMap.

use super::yaml::*;
use super::{dockerfile_stages, fully_qualified, image_user, root};

/// Every pod spec in docker/k8s/, as (file and object, its document, the
/// path of its pod spec).
fn pod_specs() -> Vec<(String, Doc, &'static str)> {
    let mut pods = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(root("docker/k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for path in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
    {
        let rel = path
            .strip_prefix(root(""))
            .unwrap()
            .to_string_lossy()
            .into_owned();
        for doc in yaml_docs(&rel) {
            let spec = match get(&doc, "kind") {
                Some("Pod") => "spec",
                Some("CronJob") => "spec.jobTemplate.spec.template.spec",
                Some("Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job") => {
                    "spec.template.spec"
                }
                _ => continue,
            };
            let name = format!("{rel} {}", get(&doc, "metadata.name").unwrap_or("?"));
            pods.push((name, doc, spec));
        }
    }
    assert!(!pods.is_empty(), "no pod spec in docker/k8s/");
    pods
}

/// The paths of the containers of a pod spec (`…containers[0]`, …).
fn containers(doc: &[(String, String)], spec: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for kind in ["containers", "initContainers", "ephemeralContainers"] {
        for (path, _) in doc {
            let Some(rest) = path.strip_prefix(&format!("{spec}.{kind}[")) else {
                continue;
            };
            let index = rest.split(']').next().unwrap();
            let container = format!("{spec}.{kind}[{index}]");
            if !found.contains(&container) {
                found.push(container);
            }
        }
    }
    found
}

/// The Pod Security Standards' "restricted" profile (which includes
/// "baseline"), as of Kubernetes 1.25+, plus what this kit adds: a read-only
/// root filesystem with an emptyDir for /tmp, the image's own uid and gid, and
/// RuntimeDefault seccomp at pod level.
#[test]
fn kubernetes_pods_pass_the_restricted_profile() {
    let (uid, gid) = image_user();
    let mut violations = Vec::new();
    for (name, doc, spec) in pod_specs() {
        let mut fail = |what: String| violations.push(format!("{name}: {what}"));
        let pod = |key: &str| get(&doc, &format!("{spec}.{key}"));
        for host in ["hostNetwork", "hostPID", "hostIPC"] {
            if pod(host) == Some("true") {
                fail(format!("{host}: true"));
            }
        }
        if doc
            .iter()
            .any(|(p, _)| p.starts_with(&format!("{spec}.securityContext.sysctls")))
        {
            fail("sysctls set".into());
        }
        let allowed = [
            "configMap",
            "csi",
            "downwardAPI",
            "emptyDir",
            "ephemeral",
            "persistentVolumeClaim",
            "projected",
            "secret",
        ];
        let volumes = entries_keys(&doc, &format!("{spec}.volumes"));
        for keys in &volumes {
            for key in keys
                .iter()
                .filter(|k| *k != "name" && !allowed.contains(&k.as_str()))
            {
                fail(format!("volume type {key} is not allowed"));
            }
        }
        if pod("securityContext.seccompProfile.type") != Some("RuntimeDefault") {
            fail("pod securityContext.seccompProfile.type is not RuntimeDefault".into());
        }
        for c in containers(&doc, spec) {
            let own = |key: &str| get(&doc, &format!("{c}.securityContext.{key}"));
            let either = |key: &str| own(key).or_else(|| pod(&format!("securityContext.{key}")));
            let mut need = |key: &str, value: Option<&str>, want: &[&str]| {
                if !value.is_some_and(|v| want.contains(&v)) {
                    fail(format!("{c} {key} is {value:?}, needs one of {want:?}"));
                }
            };
            need(
                "privileged",
                own("privileged").or(Some("false")),
                &["false"],
            );
            need(
                "allowPrivilegeEscalation",
                own("allowPrivilegeEscalation"),
                &["false"],
            );
            need("runAsNonRoot", either("runAsNonRoot"), &["true"]);
            need("runAsUser", either("runAsUser"), &[uid.as_str()]);
            need("runAsGroup", either("runAsGroup"), &[gid.as_str()]);
            need(
                "seccompProfile.type",
                either("seccompProfile.type"),
                &["RuntimeDefault", "Localhost"],
            );
            need(
                "readOnlyRootFilesystem",
                own("readOnlyRootFilesystem"),
                &["true"],
            );
            need(
                "procMount",
                own("procMount").or(Some("Default")),
                &["Default"],
            );
            need(
                "windowsOptions.hostProcess",
                either("windowsOptions.hostProcess").or(Some("false")),
                &["false"],
            );
            let apparmor = either("appArmorProfile.type").unwrap_or("RuntimeDefault");
            need(
                "appArmorProfile.type",
                Some(apparmor),
                &["RuntimeDefault", "Localhost"],
            );
            let selinux = either("seLinuxOptions.type").unwrap_or("container_t");
            need(
                "seLinuxOptions.type",
                Some(selinux),
                &[
                    "container_t",
                    "container_init_t",
                    "container_kvm_t",
                    "container_engine_t",
                ],
            );
            let drop = own("capabilities.drop").map(flow_list).unwrap_or_default();
            if !drop.iter().any(|d| d == "ALL") {
                fail(format!("{c} does not drop ALL capabilities"));
            }
            let add = own("capabilities.add").map(flow_list).unwrap_or_default();
            if add.iter().any(|a| a != "NET_BIND_SERVICE") {
                fail(format!("{c} adds capabilities {add:?}"));
            }
            if doc
                .iter()
                .any(|(p, _)| p.starts_with(&format!("{c}.ports[")) && p.ends_with(".hostPort"))
            {
                fail(format!("{c} uses a hostPort"));
            }
            // The root filesystem is read-only: /tmp is an emptyDir.
            let mounts = entries_keys(&doc, &format!("{c}.volumeMounts")).len();
            let tmp = (0..mounts)
                .find(|i| get(&doc, &format!("{c}.volumeMounts[{i}].mountPath")) == Some("/tmp"));
            let tmp_volume = tmp.and_then(|i| get(&doc, &format!("{c}.volumeMounts[{i}].name")));
            let is_empty_dir = (0..volumes.len()).any(|i| {
                get(&doc, &format!("{spec}.volumes[{i}].name")) == tmp_volume
                    && volumes[i].iter().any(|k| k == "emptyDir")
            });
            if !is_empty_dir {
                fail(format!("{c} has no emptyDir at /tmp"));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "Pod Security restricted profile:\n{}",
        violations.join("\n")
    );
}

#[test]
fn kubernetes_containers_pin_their_image_and_stop_without_the_sleep_action() {
    let version = env!("CARGO_PKG_VERSION");
    let runtime = dockerfile_stages().pop().unwrap().0;
    for (name, doc, spec) in pod_specs() {
        for c in containers(&doc, spec) {
            let image = get(&doc, &format!("{c}.image")).unwrap();
            assert!(
                fully_qualified(image),
                "{name}: image {image} is not fully qualified"
            );
            let tag = image
                .rsplit('/')
                .next()
                .unwrap()
                .split_once(':')
                .map(|(_, t)| t);
            assert_eq!(
                tag,
                Some(version),
                "{name}: image {image} is not tagged with turnout's version"
            );
            let policy = get(&doc, &format!("{c}.imagePullPolicy"));
            assert!(
                matches!(policy, Some("IfNotPresent" | "Always" | "Never")),
                "{name}: imagePullPolicy {policy:?}"
            );

            let pre_stop = format!("{c}.lifecycle.preStop");
            assert!(
                !doc.iter()
                    .any(|(p, _)| p.starts_with(&format!("{pre_stop}.sleep"))),
                "{name}: the preStop `sleep` action needs Kubernetes 1.30; the kit supports 1.25"
            );
            if let Some(command) = get(&doc, &format!("{pre_stop}.exec.command")) {
                let program = flow_list(command).remove(0);
                // Debian's coreutils, in the runtime stage's base image.
                assert!(
                    runtime.starts_with("docker.io/library/debian:"),
                    "runtime image {runtime}"
                );
                assert!(
                    ["/bin/sleep", "/usr/bin/sleep"].contains(&program.as_str()),
                    "{name}: preStop runs {program}"
                );
            }

            // --config names a file of the ConfigMap mounted at its directory.
            let args = flow_list(get(&doc, &format!("{c}.args")).unwrap());
            let config = &args[args.iter().position(|a| a == "--config").unwrap() + 1];
            let (dir, file) = config.rsplit_once('/').unwrap();
            let mounts = entries_keys(&doc, &format!("{c}.volumeMounts")).len();
            let mount = (0..mounts)
                .find(|i| get(&doc, &format!("{c}.volumeMounts[{i}].mountPath")) == Some(dir))
                .unwrap_or_else(|| panic!("{name}: nothing mounted at {dir}"));
            let volume = get(&doc, &format!("{c}.volumeMounts[{mount}].name")).unwrap();
            let volumes = entries_keys(&doc, &format!("{spec}.volumes")).len();
            let index = (0..volumes)
                .find(|i| get(&doc, &format!("{spec}.volumes[{i}].name")) == Some(volume))
                .unwrap();
            let map = get(&doc, &format!("{spec}.volumes[{index}].configMap.name")).unwrap();
            let shipped = yaml_docs("docker/k8s/configmap.yaml");
            let has = shipped.iter().any(|d| {
                get(d, "kind") == Some("ConfigMap")
                    && get(d, "metadata.name") == Some(map)
                    && get(d, &format!("data.{file}")).is_some()
            });
            assert!(has, "{name}: ConfigMap {map} has no {file}");
        }
    }
}
