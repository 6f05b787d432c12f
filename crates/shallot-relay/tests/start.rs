//! Starting a relay: keys made by `keygen` are the ones it runs with, and a configuration that
//! could only publish an unspecified address is refused with a message naming `announce`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use shallot_error::{ErrorKind, HasKind};
use shallot_relay::{Relay, RelayConfig, keygen};

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
    assert_eq!(err.kind(), ErrorKind::BadConfig);
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

/// An onion key older than the rotation period is rotated at start: the relay then publishes
/// a new current key and still accepts circuits made with the previous one (specs/04 §4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_onion_key_is_rotated_and_still_accepted() {
    use std::time::{Duration, SystemTime};

    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path()).unwrap();
    let key_file = dir.path().join(shallot_relay::ONION_KEY_FILE);
    let bytes: [u8; 32] = std::fs::read(&key_file).unwrap().try_into().unwrap();
    let old = shallot_crypto::OnionSecretKey::from_bytes(bytes).public_key();
    let eight_days_ago = SystemTime::now() - Duration::from_secs(8 * 24 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&key_file)
        .unwrap()
        .set_modified(eight_days_ago)
        .unwrap();

    let relay = Relay::start(common::test_config(dir.path(), 9, Vec::new()))
        .await
        .unwrap();
    common::step("the key is rotated", async {
        while relay.stats().onion_key_rotations.get() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_ne!(relay.onion_key(), old);
    assert!(
        dir.path()
            .join(shallot_relay::PREVIOUS_ONION_KEY_FILE)
            .exists()
    );

    let client = common::direct_client(&[&relay]).await;
    for key in [old, relay.onion_key()] {
        let mut hop = common::hop_of_relay(&relay);
        hop.onion_key = key;
        common::build_circuit(&client, vec![hop])
            .await
            .expect("current and previous onion keys are accepted");
    }
    assert_eq!(relay.stats().circuits_accepted.get(), 2);
}
