//! Reachability (specs/04 §4.1) over real TCP on loopback: relays that can dial each other back
//! find themselves reachable and publish; a relay announcing an address nobody can reach finds
//! itself unreachable within a bounded time, publishes nothing and is listed nowhere.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use shallot_p2p::{Multiaddr, REACHABILITY_TEST_DEADLINE};
use shallot_relay::{Reachability, Relay, RelayHandle};

/// Detection must take less than this (the netsim acceptance bound is 60 s).
const DETECTION_LIMIT: Duration = Duration::from_secs(60);

/// Waits (bounded by `limit`) until `relay`'s reachability satisfies `done`; returns how long
/// that took.
async fn wait_for(
    relay: &RelayHandle,
    limit: Duration,
    done: impl Fn(&Reachability) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let state = relay.reachability();
        if done(&state) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "reachability still {state:?} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_that_dial_each_other_back_are_reachable_at_their_addresses_and_publish() {
    let started = Instant::now();
    // start_relays returns once every relay lists every other: each one published.
    let relays = common::start_relays(3, |_, _| {}).await;
    for relay in &relays.handles {
        let took = wait_for(relay, DETECTION_LIMIT, |s| {
            matches!(s, Reachability::Reachable(_))
        })
        .await;
        assert_eq!(
            relay.reachability(),
            Reachability::Reachable(relay.announced_addrs().to_vec()),
            "confirmed at its announced address"
        );
        assert!(relay.stats().descriptors_published.get() >= 1);
        assert_eq!(relay.stats().found_unreachable.get(), 0);
        eprintln!(
            "reachable {took:?} after the check, {:?} after the first start",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_announcing_an_address_nobody_reaches_publishes_nothing() {
    let relays = common::start_relays(2, |_, _| {}).await;
    // A port on loopback where nothing listens (bound, then released).
    let closed = std::net::TcpListener::bind("127.0.9.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let unreachable: Multiaddr = format!("/ip4/127.0.9.1/tcp/{port}").parse().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(
        dir.path(),
        8,
        vec![relays.handles[0].bootstrap_addr().unwrap()],
    );
    config.announce = vec![unreachable.clone()];
    let started = Instant::now();
    let lonely = Relay::start(config).await.unwrap();
    let took = wait_for(&lonely, DETECTION_LIMIT, |s| {
        matches!(s, Reachability::Unreachable(_))
    })
    .await;
    eprintln!(
        "unreachable detected {took:?} after the start ({:?} in all)",
        started.elapsed()
    );
    assert!(took < REACHABILITY_TEST_DEADLINE + Duration::from_secs(10));
    assert_eq!(
        lonely.reachability(),
        Reachability::Unreachable(vec![unreachable])
    );
    assert_eq!(lonely.stats().found_unreachable.get(), 1);

    // It stays that way and publishes nothing, and no relay lists it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(matches!(
        lonely.reachability(),
        Reachability::Unreachable(_)
    ));
    assert_eq!(lonely.stats().descriptors_published.get(), 0);
    for relay in &relays.handles {
        assert!(
            relay.directory().get(&lonely.peer_id()).is_none(),
            "a relay holds the unreachable relay's descriptor"
        );
    }
    // It still learns the network as any node does: the reachable relays are in its store.
    let learned = Instant::now();
    loop {
        let known = relays
            .handles
            .iter()
            .filter(|r| lonely.directory().lists(&r.peer_id()))
            .count();
        if known == relays.handles.len() {
            break;
        }
        assert!(
            learned.elapsed() < common::CONVERGE_LIMIT,
            "the unreachable relay lists {known} of the reachable relays"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
