//! The attacks of specs/04 §1 against the directory, tried on real libp2p nodes on the
//! in-memory network: an adversary with thousands of PeerIds on a few addresses, sources that
//! lie, descriptors that squat honest relays' subnets. Each test states what the adversary
//! does, then checks a fresh client's view as `shallot client` assembles it.

mod common;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use common::hostile::{Lie, grind_near, listing_body, start_hostile};
use common::*;
use libp2p::identity::{Keypair, ed25519};
use libp2p::kad::{KBucketKey, RecordKey};
use libp2p::{Multiaddr, PeerId};
use shallot_crypto::OnionPublicKey;
use shallot_directory::{
    DEFAULT_MAX_RELAYS_PER_SUBNET, Descriptor, PROTOCOL_CIRCUIT_V1, RelayFlags, SignedDescriptor,
    descriptor_key,
};

/// A descriptor for `key` at `addrs`, published `published` (Unix seconds) for `lifetime`.
fn signed_at(
    key: &ed25519::Keypair,
    addrs: Vec<Multiaddr>,
    published: u64,
    lifetime: u64,
) -> SignedDescriptor {
    Descriptor {
        identity: key.public(),
        published_at: published,
        expires_at: published + lifetime,
        protocols: PROTOCOL_CIRCUIT_V1,
        flags: RelayFlags::default(),
        addrs,
        onion_key: OnionPublicKey([3; 32]),
        previous_onion_key: None,
        family: Vec::new(),
        policy_summary: Vec::new(),
    }
    .sign(key)
    .expect("sign")
}

fn peer_of_key(key: &ed25519::Keypair) -> PeerId {
    Keypair::from(key.clone()).public().to_peer_id()
}

/// Descriptors that sign two addresses in every honest relay's /24 where nothing listens.
fn squatters_of(relays: &[TestRelay], now: u64) -> Vec<SignedDescriptor> {
    let mut out = Vec::new();
    for r in relays {
        let Some(std::net::IpAddr::V4(ip)) = shallot_directory::ip_of(&r.node.listen_addrs()[0])
        else {
            panic!("relay without an IPv4 address");
        };
        let [a, b, c, _] = ip.octets();
        for host in [77, 78] {
            let addr = format!("/ip4/{a}.{b}.{c}.{host}/tcp/9")
                .parse()
                .expect("addr");
            out.push(signed_at(
                &ed25519::Keypair::generate(),
                vec![addr],
                now,
                3600,
            ));
        }
    }
    out
}

/// specs/04 §1, positioning and squatting: 50 honest relays; an adversary with 2,000 PeerIds
/// on 4 IP addresses (each in its own /16), 1,000 of them ground to be among the 20 nodes
/// closest to each honest relay's record key, all in the honest relays' routing tables. Every
/// hostile node answers every listing with the adversary's 2,000 relays and 100 squatters (two
/// descriptors in each honest relay's /24, where nothing listens), all claimed proven and
/// first seen long ago, and no honest relay; every Kademlia lookup it answers names only its
/// allies. A fresh client's view holds every honest relay, no squatter, and no more of the
/// adversary's relays than the caps allow on 4 addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adversary_with_two_thousand_peer_ids_on_four_addresses_does_not_shape_the_view() {
    const HONEST: usize = 50;
    const GROUND_PER_KEY: usize = 20;
    const RANDOM: usize = 1000;
    let wire = Wire::memory();
    let Wire::Memory { net, .. } = &wire else {
        unreachable!()
    };
    let relays = start_relays(&wire, HONEST).await;
    publish_all(&relays, 3600).await;
    let converged = wait_for_stores(&relays).await;
    println!("{HONEST} honest relays proved each other in {converged:?}");
    let started = Instant::now();
    let mut keys = Vec::new();
    for r in &relays {
        let target = KBucketKey::new(RecordKey::new(&descriptor_key(&r.peer_id())));
        for _ in 0..GROUND_PER_KEY {
            keys.push(grind_near(&target, 8));
        }
    }
    keys.extend((0..RANDOM).map(|_| ed25519::Keypair::generate()));
    println!(
        "{} adversary keys ground in {:?}",
        keys.len(),
        started.elapsed()
    );

    let ips = [
        Ipv4Addr::new(10, 201, 0, 1),
        Ipv4Addr::new(10, 202, 0, 1),
        Ipv4Addr::new(10, 203, 0, 1),
        Ipv4Addr::new(10, 204, 0, 1),
    ];
    let now = wire.clock().now();
    let placed: Vec<(ed25519::Keypair, Ipv4Addr, u16)> = keys
        .into_iter()
        .enumerate()
        .map(|(i, k)| (k, ips[i % 4], 1 + (i / 4) as u16))
        .collect();
    let allies: Vec<(PeerId, Multiaddr)> = placed
        .iter()
        .map(|(k, ip, port)| {
            (
                peer_of_key(k),
                format!("/ip4/{ip}/tcp/{port}").parse().expect("addr"),
            )
        })
        .collect();
    let adversary_relays: Vec<SignedDescriptor> = placed
        .iter()
        .zip(&allies)
        .map(|((k, _, _), (_, addr))| signed_at(k, vec![addr.clone()], now, 3600))
        .collect();
    let squatters = squatters_of(&relays, now);
    let mut lies = adversary_relays.clone();
    lies.extend(squatters.iter().cloned());
    let body = listing_body(&lies);
    println!(
        "the adversary's listing: {} entries, {} bytes",
        lies.len(),
        body.len()
    );

    let started = Instant::now();
    let mut hostile = Vec::with_capacity(placed.len());
    for (i, ((k, ip, port), descriptor)) in placed.into_iter().zip(&adversary_relays).enumerate() {
        let contacts = vec![
            relays[i % HONEST].node.bootstrap_addr().expect("addr"),
            relays[(i * 7 + 3) % HONEST]
                .node
                .bootstrap_addr()
                .expect("addr"),
        ];
        let lie = Lie {
            listing: Arc::clone(&body),
            own: Some(descriptor.clone()),
        };
        hostile.push(start_hostile(net, ip, port, k, lie, &allies, contacts).await);
    }
    println!(
        "{} hostile nodes started in {:?}",
        hostile.len(),
        started.elapsed()
    );
    // Let the honest relays meet them, sync with them and probe what they list.
    tokio::time::sleep(3 * TEST_SYNC_INTERVAL).await;

    let client = start_client(
        &wire,
        relays[..3]
            .iter()
            .map(|r| r.node.bootstrap_addr().expect("addr"))
            .collect(),
    )
    .await;
    let honest: HashSet<PeerId> = relays.iter().map(TestRelay::peer_id).collect();
    let started = Instant::now();
    let (took, view) = match try_wait_for_view(&client, &honest).await {
        Ok(done) => done,
        Err(failure) => panic!("{failure}"),
    };
    let adversary: HashSet<PeerId> = adversary_relays
        .iter()
        .map(SignedDescriptor::peer_id)
        .collect();
    let squatting: HashSet<PeerId> = squatters.iter().map(SignedDescriptor::peer_id).collect();
    let in_view: Vec<PeerId> = view.entries().map(|e| e.descriptor.peer_id()).collect();
    let adversary_in_view = in_view.iter().filter(|p| adversary.contains(p)).count();
    let squatters_in_view = in_view.iter().filter(|p| squatting.contains(p)).count();
    println!(
        "a fresh client's view: all {HONEST} honest relays after {took:?} ({:?} in all), \
         {adversary_in_view} of the adversary's {} relays, {squatters_in_view} of {} squatters",
        started.elapsed(),
        adversary.len(),
        squatting.len()
    );
    assert_eq!(squatters_in_view, 0, "a squatter is in the view");
    assert!(
        adversary_in_view <= ips.len() * DEFAULT_MAX_RELAYS_PER_SUBNET,
        "{adversary_in_view} adversary relays in the view, more than the caps allow"
    );
    drop(hostile);
}
