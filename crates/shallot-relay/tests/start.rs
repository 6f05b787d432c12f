//! Starting a relay: keys made by `keygen` are the ones it runs with, and a configuration that
//! could only publish an unspecified address is refused with a message naming `announce`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use shallot_relay::{ErrorKind, Relay, RelayConfig, keygen};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_then_start_runs_with_that_identity() {
    let dir = tempfile::tempdir().unwrap();
    let peer = keygen(dir.path()).unwrap();
    let relay = Relay::start(common::test_config(dir.path(), 9, Vec::new()))
        .await
        .unwrap();
    assert_eq!(relay.peer_id(), peer);
    assert!(!relay.is_exit());
    assert!(
        relay
            .announced_addrs()
            .iter()
            .all(|a| a.to_string().starts_with("/ip4/127.0.9.1/tcp/"))
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unspecified_listen_address_needs_announce() {
    let dir = tempfile::tempdir().unwrap();
    let config = RelayConfig {
        data_dir: dir.path().to_owned(),
        listen: vec!["/ip4/0.0.0.0/tcp/0".parse().unwrap()],
        ..RelayConfig::default()
    };
    let err = Relay::start(config).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("announce"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_policy_file_is_refused_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("bad.policy");
    std::fs::write(&policy, "accept *:*\naccept *:80x\n").unwrap();
    let mut config = common::test_config(dir.path(), 9, Vec::new());
    config.exit_policy_file = Some(policy);
    let err = Relay::start(config).await.unwrap_err().to_string();
    assert!(err.contains("bad.policy:2:"), "{err}");
}
