//! A replica's own copy of the control file against the fleet's state
//! (SPEC sections 7 and 12): a broken file keeps the last good topology
//! and its error shown, and never stops the replica following the fleet.

use super::etcd::Etcd;
use super::kit::*;
use super::support::*;

#[tokio::test]
async fn a_replica_with_a_broken_control_file_still_follows_the_fleet() {
    broken_file_case("broken", "").await;
}

/// With a certificate named in the file, every reload reads the file
/// again (the certificate may have changed), also on a fleet change.
#[tokio::test]
async fn a_replica_that_reads_its_broken_file_on_every_change_still_follows_the_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["hooks.test".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(&ca, cert.pem()).unwrap();
    let notify = format!(
        "[notify]\nwebhook = \"https://hooks.test:1/hook\"\nca = \"{}\"\n\n",
        ca.display()
    );
    broken_file_case("broken-tls", &notify).await;
}

async fn broken_file_case(prefix: &str, more: &str) {
    let etcd = Etcd::start().await;
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let preamble = format!("{}{more}", etcd.store(prefix));
    let setup = || {
        Setup::shop()
            .preamble(&preamble)
            .pools(&b, &g)
            .weights(100, 0)
    };
    let a = replica(setup()).await;
    let other = replica(setup()).await;
    let good = std::fs::read_to_string(&other.path).unwrap();
    std::fs::write(&other.path, format!("{good}\n[tenants.shop\n")).unwrap();
    wait_until(WAIT, "the broken file's error shown", || async {
        config_view(&other).await["last_error"].is_string()
    })
    .await;
    put_weights(&a, 80, 20).await;
    wait_until(WAIT, "the fleet's change on the broken replica", || async {
        other.weights("shop").await == (80, 20)
    })
    .await;
    assert_eq!(
        generation(&view(&other, "shop").await),
        generation(&view(&a, "shop").await)
    );
    let error = config_view(&other).await["last_error"].clone();
    assert!(
        error.as_str().is_some_and(|e| e.contains("unclosed table")),
        "the file's error still stands: {error}"
    );
    // Fixed, it is read again and the error is over.
    std::fs::write(&other.path, &good).unwrap();
    wait_until(WAIT, "the error cleared", || async {
        config_view(&other).await["last_error"].is_null()
    })
    .await;
    assert_eq!(other.weights("shop").await, (80, 20));
}
