//! Bootstrap diagnostics: a client that has nothing to start from says so at once and says
//! what to set, instead of asking an empty DHT for relays forever.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use shallot_client::{Client, ClientConfig, ClientError};

/// What "at once" allows on a loaded machine.
const AT_ONCE: Duration = Duration::from_secs(5);

/// No bootstrap peer and no data directory (so no cached view): before, the client started,
/// logged "bootstrapped 10%: asking the DHT for relays" and then found nothing, forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_no_bootstrap_peer_and_no_cached_view_refuses_to_start() {
    let config = ClientConfig {
        socks_listen: "127.0.0.1:0".parse().unwrap(),
        bootstrap: Vec::new(),
        data_dir: None,
        ..ClientConfig::default()
    };
    let began = Instant::now();
    let started = tokio::time::timeout(AT_ONCE, Client::start(config, None))
        .await
        .expect("Client::start answered at once");
    let err = match started {
        Ok(_) => panic!("a client with nothing to bootstrap from started"),
        Err(err) => err,
    };
    assert!(began.elapsed() < AT_ONCE);
    assert!(matches!(err, ClientError::NoBootstrap), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("`bootstrap`") && message.contains("/p2p/"),
        "the message does not say what to set: {message}"
    );
}

/// An empty data directory holds no cached view either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_data_directory_is_no_cached_view() {
    let dir = tempfile::tempdir().unwrap();
    let config = ClientConfig {
        socks_listen: "127.0.0.1:0".parse().unwrap(),
        bootstrap: Vec::new(),
        data_dir: Some(dir.path().to_path_buf()),
        ..ClientConfig::default()
    };
    let started = tokio::time::timeout(AT_ONCE, Client::start(config, None))
        .await
        .expect("Client::start answered at once");
    assert!(matches!(started, Err(ClientError::NoBootstrap)));
}
