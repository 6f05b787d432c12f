//! One host with many PeerIds against a relay (issue: PeerIds cost nothing): the relay's
//! limits count the address a peer connects from, so sixty-four fresh identities on one address
//! get what one address gets, and a client on another address is served. The nodes run on an
//! in-memory network, where each dials from its own address (on loopback TCP every peer would
//! be 127.0.0.1).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::{build_circuit, hop_of_relay, memory_client, memory_relay, step};
use shallot_cell::DestroyReason;
use shallot_client::{BuildFailure, CircuitHandle};
use shallot_p2p::{CIRCUIT_PROTOCOL, MemoryNet, Node};
use shallot_relay::{
    CreateRate, DEFAULT_MAX_CIRCUITS_PER_ADDRESS, MAX_PENDING_HANDSHAKES,
    MAX_PENDING_HANDSHAKES_PER_SOURCE, RelayConfig, RelayHandle,
};

/// Identities the attacker makes on its one address.
const IDENTITIES: usize = 64;
/// Silent streams each identity opens: together they would hold every pending handshake
/// slot, were the slots counted per PeerId.
const SILENT_STREAMS_PER_IDENTITY: usize = 16;
/// Circuits each identity tries to hold: together far above the relay's total.
const CIRCUITS_PER_IDENTITY: usize = 512;

const RELAY_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const ATTACKER_IP: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const HONEST_IP: Ipv4Addr = Ipv4Addr::new(10, 8, 0, 1);

/// A relay on `net`, alone, with these tests' 10 s handshake timeout.
async fn relay_on(
    net: &MemoryNet,
    tweak: impl FnOnce(&mut RelayConfig),
) -> (RelayHandle, tempfile::TempDir) {
    memory_relay(net, RELAY_IP, |config| {
        config.handshake_timeout_secs = 10;
        tweak(config);
    })
    .await
}

async fn client_at(net: &MemoryNet, ip: Ipv4Addr, relay: &RelayHandle) -> Node {
    memory_client(net, ip, relay).await
}

async fn one_hop(client: &Node, relay: &RelayHandle) -> Result<CircuitHandle, BuildFailure> {
    build_circuit(client, vec![hop_of_relay(relay)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_streams_from_many_identities_on_one_address_leave_others_served() {
    let net = MemoryNet::new();
    let (relay, _dir) = relay_on(&net, |_| {}).await;
    let mut attackers = Vec::new();
    let mut silent = Vec::new();
    for _ in 0..IDENTITIES {
        let node = client_at(&net, ATTACKER_IP, &relay).await;
        let mut control = node.stream_control();
        for _ in 0..SILENT_STREAMS_PER_IDENTITY {
            // Opened and never written: each holds a handshake slot until the relay's
            // handshake timeout, unless the relay refuses it at once.
            if let Ok(s) = step(
                "open a silent stream",
                control.open_stream(relay.peer_id(), CIRCUIT_PROTOCOL),
            )
            .await
            {
                silent.push(s);
            }
        }
        attackers.push(node);
    }
    let opened = IDENTITIES * SILENT_STREAMS_PER_IDENTITY;
    // The streams reach the relay's accept loop a little after they open: give it a moment
    // (bounded) to see them all before the honest client comes.
    let all_but_one_address = (opened - MAX_PENDING_HANDSHAKES_PER_SOURCE) as u64;
    for _ in 0..100 {
        if relay.stats().refused_handshakes.get() >= all_but_one_address {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let honest = client_at(&net, HONEST_IP, &relay).await;
    let built = one_hop(&honest, &relay).await;
    assert!(
        built.is_ok(),
        "an honest CREATE from another address, while {opened} silent streams from {IDENTITIES} \
         identities on one address are open: {built:?} (refused for handshakes: {})",
        relay.stats().refused_handshakes.get()
    );
    assert!(
        relay.stats().refused_handshakes.get() >= all_but_one_address,
        "the attacker's address held more than {MAX_PENDING_HANDSHAKES_PER_SOURCE} handshakes"
    );
    assert!(
        opened >= MAX_PENDING_HANDSHAKES,
        "the attack would hold every slot, were they counted per PeerId"
    );
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_circuits_from_many_identities_on_one_address_stay_under_its_bound() {
    let net = MemoryNet::new();
    // The rate is opened wide so that the bound on circuits is what this test meets.
    let (relay, _dir) = relay_on(&net, |c| {
        c.create_rate_per_address = CreateRate {
            per_second: 100_000,
            burst: 100_000,
        };
    })
    .await;
    let refused = BuildFailure::Destroyed {
        hops_built: 0,
        reason: DestroyReason::ResourceLimit,
    };
    let mut held = Vec::new();
    let mut attackers = Vec::new();
    for _ in 0..IDENTITIES {
        let node = client_at(&net, ATTACKER_IP, &relay).await;
        for _ in 0..CIRCUITS_PER_IDENTITY {
            match one_hop(&node, &relay).await {
                Ok(c) => held.push(c),
                Err(e) => {
                    assert_eq!(e, refused);
                    break;
                }
            }
        }
        attackers.push(node);
    }
    assert!(
        held.len() <= DEFAULT_MAX_CIRCUITS_PER_ADDRESS,
        "{IDENTITIES} identities on one address hold {} idle circuits, over the bound of {}",
        held.len(),
        DEFAULT_MAX_CIRCUITS_PER_ADDRESS
    );
    assert_eq!(held.len(), DEFAULT_MAX_CIRCUITS_PER_ADDRESS);
    assert!(relay.stats().refused_address_limit.get() >= IDENTITIES as u64 - 1);
    let honest = client_at(&net, HONEST_IP, &relay).await;
    let built = one_hop(&honest, &relay).await;
    assert!(
        built.is_ok(),
        "an honest client on another address: {built:?}"
    );
    assert_eq!(relay.open_circuits(), held.len() + 1);
}

/// Identities of the CREATE flood, each on an address of its own.
const FLOODERS: usize = 100;
/// Builds each flooding identity keeps in flight.
const FLOOD_IN_FLIGHT: usize = 4;
/// How long the flood goes on.
const FLOOD_FOR: Duration = Duration::from_secs(8);
/// Honest builds made one after another while the flood goes on.
const HONEST_BUILDS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_flood_from_a_hundred_addresses_leaves_honest_builds_served() {
    let net = MemoryNet::new();
    let (relay, _dir) = relay_on(&net, |_| {}).await;
    let relay = std::sync::Arc::new(relay);
    let mut flooders = Vec::new();
    for i in 0..FLOODERS {
        let ip = Ipv4Addr::new(
            10,
            9,
            u8::try_from(i / 200).unwrap(),
            u8::try_from(i % 200 + 1).unwrap(),
        );
        flooders.push(std::sync::Arc::new(client_at(&net, ip, &relay).await));
    }
    let started = std::time::Instant::now();
    let mut flood = Vec::new();
    for node in &flooders {
        for _ in 0..FLOOD_IN_FLIGHT {
            let (node, relay) = (std::sync::Arc::clone(node), std::sync::Arc::clone(&relay));
            flood.push(tokio::spawn(async move {
                let mut sent = 0u64;
                while started.elapsed() < FLOOD_FOR {
                    // Built or refused, the circuit is dropped at once: what counts is the CREATE.
                    let _ = one_hop(&node, &relay).await;
                    sent += 1;
                }
                sent
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let honest = client_at(&net, HONEST_IP, &relay).await;
    let mut latencies = Vec::new();
    for i in 0..HONEST_BUILDS {
        let t = std::time::Instant::now();
        let built = one_hop(&honest, &relay).await;
        assert!(
            built.is_ok(),
            "honest build {i} during a CREATE flood from {FLOODERS} addresses: {built:?} \
             (refused: queue {}, rate {}, handshakes {}, timeout {}, malformed {})",
            relay.stats().refused_create_queue.get(),
            relay.stats().refused_rate_limit.get(),
            relay.stats().refused_handshakes.get(),
            relay.stats().refused_timeout.get(),
            relay.stats().refused_malformed.get(),
        );
        latencies.push(t.elapsed());
    }
    let mut sent = 0;
    for f in flood {
        sent += f.await.unwrap();
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let accepted = relay.stats().circuits_accepted.get();
    println!(
        "flood: {sent} CREATEs from {FLOODERS} addresses in {elapsed:.1?}; relay accepted {accepted}, \
         refused by rate {}, by queue {}; honest builds p50 {:?}, max {:?}",
        relay.stats().refused_rate_limit.get(),
        relay.stats().refused_create_queue.get(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
    );
    let total = shallot_relay::DEFAULT_CREATE_RATE_TOTAL;
    let allowed = u64::from(total.burst) + u64::from(total.per_second) * (elapsed.as_secs() + 1);
    assert!(
        accepted <= allowed,
        "the relay ran {accepted} handshakes in {elapsed:?}, over its total rate ({allowed})"
    );
}
