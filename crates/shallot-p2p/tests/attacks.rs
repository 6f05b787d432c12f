//! The attacks of specs/04 §1 against the directory, tried on real libp2p nodes on the
//! in-memory network: an adversary with thousands of PeerIds on a few addresses, sources that
//! lie, descriptors that squat honest relays' subnets. Each test states what the adversary
//! does, then checks a fresh client's view as `shallot client` assembles it.

mod common;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::hostile::{
    Lie, down_changes_body, flood_stores, grind_near, junk_listing_body, listing_body,
    listing_body_of_bytes, start_hostile,
};
use common::*;
use libp2p::identity::{Keypair, ed25519};
use libp2p::kad::{KBucketKey, RecordKey};
use libp2p::{Multiaddr, PeerId};
use shallot_crypto::OnionPublicKey;
use shallot_directory::MAX_RESPONSE_LEN;
use shallot_directory::{
    DEFAULT_MAX_RELAYS_PER_SUBNET, Descriptor, MAX_DOWN_CHECKS, PROTOCOL_CIRCUIT_V1, RelayFlags,
    SignedDescriptor, descriptor_key,
};
use shallot_p2p::{MAX_PAGES_PER_SOURCE, MAX_REFRESH_TIME, MAX_VERIFY_TIME};

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

/// `n` relays that exist only as descriptors, freshly signed, relay `i` at `addr_of(i)` (where
/// nothing listens).
fn made_up_relays(n: usize, now: u64, addr_of: impl Fn(usize) -> String) -> Vec<SignedDescriptor> {
    (0..n)
        .map(|i| {
            let addr = addr_of(i).parse().expect("addr");
            signed_at(&ed25519::Keypair::generate(), vec![addr], now, 3600)
        })
        .collect()
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
    let net = wire.net();
    let (relays, converged) = converged_relays(&wire, HONEST).await;
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
            changes: None,
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

    let client = start_client(&wire, bootstrap_of(&relays[..3])).await;
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

/// A hostile source on `ip` that answers every first listing request with `body`, known to
/// the client only as one of its bootstrap peers.
async fn liar(
    net: &shallot_p2p::MemoryNet,
    ip: Ipv4Addr,
    body: Arc<Vec<u8>>,
    contacts: Vec<Multiaddr>,
) -> common::hostile::HostileNode {
    let lie = Lie {
        listing: body,
        changes: None,
        own: None,
    };
    start_hostile(net, ip, 1, ed25519::Keypair::generate(), lie, &[], contacts).await
}

/// specs/04 §1, lying sources: a fresh client bootstraps from four liars and one honest relay.
/// One liar claims 100,000 entries (junk past every bound); one lists 4,096 made-up relays,
/// validly signed, each in a /16 of its own where nothing listens, all claimed proven; one
/// lists only half the honest relays; one serves every honest relay's descriptor stale or
/// forged. The view holds every honest relay and none of the made-up ones, and no refresh
/// costs more than the protocol's bounds: [`MAX_PAGES_PER_SOURCE`] pages of
/// [`MAX_RESPONSE_LEN`] bytes per source and [`MAX_REFRESH_TIME`] in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_sources_cost_a_bounded_refresh_and_hide_no_honest_relay() {
    const HONEST: usize = 20;
    const MADE_UP: usize = 4096;
    let wire = Wire::memory();
    let net = wire.net();
    let (relays, _) = converged_relays(&wire, HONEST).await;
    let now = wire.clock().now();
    let store = relays[0].node.directory().expect("a relay's store");
    let honest_entries: Vec<SignedDescriptor> = relays
        .iter()
        .map(|r| store.get(&r.peer_id()).expect("listed").descriptor)
        .collect();

    let started = Instant::now();
    let made_up = made_up_relays(MADE_UP, now, |i| {
        format!("/ip4/{}.{}.0.1/tcp/9", 100 + i / 256, i % 256)
    });
    println!("{MADE_UP} made-up relays signed in {:?}", started.elapsed());
    let stale_or_forged: Vec<Vec<u8>> = relays
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let stale = signed_at(&r.keypair, r.node.listen_addrs().to_vec(), now - 7200, 3600);
            if i % 2 == 0 {
                return stale.as_bytes().to_vec();
            }
            // A newer descriptor of the honest relay at the liar's address: the signature
            // no longer covers the bytes.
            let mut bytes = r.descriptor(3600).as_bytes().to_vec();
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
            bytes
        })
        .collect();
    let contacts = vec![relays[1].node.bootstrap_addr().expect("addr")];
    let liars = vec![
        liar(
            net,
            Ipv4Addr::new(10, 211, 0, 1),
            junk_listing_body(100_000),
            contacts.clone(),
        )
        .await,
        liar(
            net,
            Ipv4Addr::new(10, 212, 0, 1),
            listing_body(&made_up),
            contacts.clone(),
        )
        .await,
        liar(
            net,
            Ipv4Addr::new(10, 213, 0, 1),
            listing_body(&honest_entries[..HONEST / 2]),
            contacts.clone(),
        )
        .await,
        liar(
            net,
            Ipv4Addr::new(10, 214, 0, 1),
            listing_body_of_bytes(&stale_or_forged),
            contacts,
        )
        .await,
    ];
    let mut bootstrap: Vec<Multiaddr> = liars
        .iter()
        .map(|l| {
            l.addr
                .clone()
                .with(libp2p::multiaddr::Protocol::P2p(l.peer))
        })
        .collect();
    bootstrap.push(relays[2].node.bootstrap_addr().expect("addr"));
    let client = start_client(&wire, bootstrap).await;

    let honest: HashSet<PeerId> = relays.iter().map(TestRelay::peer_id).collect();
    let fake: HashSet<PeerId> = made_up.iter().map(SignedDescriptor::peer_id).collect();
    let mut view = fresh_view();
    let mut verdicts = shallot_directory::Verdicts::new();
    let per_source = (MAX_PAGES_PER_SOURCE * MAX_RESPONSE_LEN) as u64;
    let started = Instant::now();
    for refresh in 1..=8 {
        let began = Instant::now();
        let (outcome, report) = refresh_into(&client, &mut view, &mut verdicts).await;
        let took = began.elapsed();
        let seen: HashSet<PeerId> = view.entries().map(|e| e.descriptor.peer_id()).collect();
        let fakes = seen.intersection(&fake).count();
        println!(
            "refresh {refresh}: {took:?}, {} bytes from {} sources ({} failed), {} of {HONEST} \
             honest and {fakes} made-up relays in the view; {report:?}",
            outcome.bytes,
            report.sources_used + report.sources_dropped.len() + outcome.failed,
            outcome.failed,
            seen.intersection(&honest).count(),
        );
        assert_eq!(fakes, 0, "made-up relays entered the view");
        // Error-path bounds, with slack for a loaded machine: a refresh ends by its deadline
        // and no source sends more than its pages.
        assert!(
            took <= MAX_REFRESH_TIME + Duration::from_secs(15),
            "a refresh took {took:?}"
        );
        let asked = (report.sources_used + report.sources_dropped.len() + outcome.failed) as u64;
        assert!(
            outcome.bytes <= asked * per_source,
            "{} bytes",
            outcome.bytes
        );
        if honest.is_subset(&seen) {
            println!(
                "every honest relay in the view after {:?}",
                started.elapsed()
            );
            drop(liars);
            return;
        }
    }
    panic!("the view lacks honest relays after 8 refreshes from lying sources");
}

/// specs/04 §6.1 and §7.4, a source that calls every relay down: a client follows a liar and
/// an honest relay. The liar's first listing is empty; from then on each listing of changes it
/// sends lists every honest relay with no address proven, as a store lists a relay that
/// stopped answering its checks, while the honest sources have nothing new. The client dials
/// the relays itself, at most [`MAX_DOWN_CHECKS`] per refresh, finds every one, and removes
/// none: a client that took the word of one source would lose its whole view to it, with no
/// honest listing of changes to bring the relays back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_calls_every_relay_down_removes_none_that_answer() {
    // Fewer than one refresh's dials, so that every relay is checked in each.
    const HONEST: usize = 20;
    const _: () = assert!(HONEST <= MAX_DOWN_CHECKS);
    let wire = Wire::memory();
    let (relays, _) = converged_relays(&wire, HONEST).await;
    let store = relays[0].node.directory().expect("a relay's store");
    let honest_entries: Vec<SignedDescriptor> = relays
        .iter()
        .map(|r| store.get(&r.peer_id()).expect("listed").descriptor)
        .collect();
    let honest: HashSet<PeerId> = relays.iter().map(TestRelay::peer_id).collect();
    let lie = Lie {
        listing: listing_body(&[]),
        changes: Some(down_changes_body(&honest_entries)),
        own: None,
    };
    let contacts = vec![relays[1].node.bootstrap_addr().expect("addr")];
    let liar = start_hostile(
        wire.net(),
        Ipv4Addr::new(10, 215, 0, 1),
        1,
        ed25519::Keypair::generate(),
        lie,
        &[],
        contacts,
    )
    .await;
    let bootstrap = vec![
        liar.addr
            .clone()
            .with(libp2p::multiaddr::Protocol::P2p(liar.peer)),
        relays[2].node.bootstrap_addr().expect("addr"),
    ];
    let client = start_client(&wire, bootstrap).await;
    let (_, mut view) = wait_for_view(&client, &honest).await;
    let mut verdicts = shallot_directory::Verdicts::new();
    for refresh in 1..=3 {
        let (_, report) = refresh_into(&client, &mut view, &mut verdicts).await;
        println!("refresh {refresh}: {report:?}");
        assert_eq!(
            report.reported_down, HONEST,
            "the liar's changes were not read"
        );
        let kept: HashSet<PeerId> = view.entries().map(|e| e.descriptor.peer_id()).collect();
        assert_eq!(kept, honest, "relays that answer left the view");
    }
    drop(liar);
}

/// specs/04 §1, store filling: one host sends 20,000 validly signed fresh descriptors (each in
/// a /24 of its own, where nothing listens) to every relay, as Kademlia records and as
/// announcements. A relay that joins afterwards still has its descriptor stored, as a record
/// and in the relays' stores, and a fresh client finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_fresh_descriptors_keep_no_honest_newcomer_out() {
    const HONEST: usize = 4;
    const FLOOD: usize = 20_000;
    let wire = Wire::memory();
    let net = wire.net();
    let (relays, _) = converged_relays(&wire, HONEST).await;
    let now = wire.clock().now();
    let started = Instant::now();
    let records = made_up_relays(FLOOD, now, |i| {
        format!(
            "/ip4/{}.{}.{}.1/tcp/9",
            30 + i / 65_536,
            (i / 256) % 256,
            i % 256
        )
    });
    println!("{FLOOD} descriptors signed in {:?}", started.elapsed());
    let targets: Vec<(PeerId, Multiaddr)> = relays
        .iter()
        .map(|r| (r.peer_id(), r.node.listen_addrs()[0].clone()))
        .collect();
    let started = Instant::now();
    let flooded = flood_stores(net, Ipv4Addr::new(10, 231, 0, 1), &records, &targets).await;
    println!(
        "the flood took {:?}: {flooded:?}; records the relays stored: {:?}, refused as not \
         in their stores: {:?}",
        started.elapsed(),
        relays
            .iter()
            .map(|r| r.node.stats().records_stored())
            .collect::<Vec<_>>(),
        relays
            .iter()
            .map(|r| {
                r.node
                    .stats()
                    .records_not_in_store
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .collect::<Vec<_>>()
    );

    let newcomer = start_relay(
        &wire,
        wire.relay_ip(HONEST),
        vec![relays[0].node.bootstrap_addr().expect("addr")],
    )
    .await;
    publish_all(std::slice::from_ref(&newcomer), 3600).await;
    let key = descriptor_key(&newcomer.peer_id());
    let deadline = Instant::now() + CONVERGE_LIMIT;
    loop {
        let mut holders = 0;
        for r in &relays {
            if r.node
                .stored_record(key.clone())
                .await
                .expect("stored record")
                .is_some()
            {
                holders += 1;
            }
        }
        if holders > 0 {
            println!("{holders} of {HONEST} relays hold the newcomer's record");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no relay stored the newcomer's record after the flood"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let client = start_client(&wire, vec![relays[3].node.bootstrap_addr().expect("addr")]).await;
    let (took, _) = wait_for_view(&client, &HashSet::from([newcomer.peer_id()])).await;
    println!("a fresh client found the newcomer in {took:?}");
}

/// specs/04 §6.3, made-up relays at an address that accepts and then never answers: every dial
/// there lasts until [`shallot_p2p::CONNECT_TIMEOUT`], so a client that dialed each of 1,024
/// such relays (4 rounds of 256, 32 at once) would spend over five minutes of one refresh on
/// them. Verification ends after [`MAX_VERIFY_TIME`] whatever they do, and the dials it gave up
/// on leave room for the next verification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_at_a_silent_address_cost_a_refresh_at_most_the_verification_deadline() {
    use libp2p::core::Transport as _;
    use libp2p::core::transport::ListenerId;
    use shallot_directory::{Block, ListingEntry, SourceListing, Verdicts, gather};

    let wire = Wire::memory();
    let (relays, _) = converged_relays(&wire, 1).await;
    // Listeners nobody ever accepts from, one per made-up relay, each in a /16 of its own
    // (so that no cap spares the client a dial): dials connect and then hear nothing.
    let silent_addr = |i: usize| format!("/ip4/10.{}.{}.1/tcp/9", 100 + i / 256, i % 256);
    let count = 4 * shallot_p2p::MAX_VERIFY_TARGETS;
    let mut silent =
        shallot_p2p::MemoryTransport::new(wire.net().clone(), Ipv4Addr::new(10, 99, 0, 1).into());
    for i in 0..count {
        silent
            .listen_on(ListenerId::next(), silent_addr(i).parse().expect("addr"))
            .expect("listen");
    }
    let now = wire.clock().now();
    let made_up = made_up_relays(count, now, silent_addr);
    let entries = |ds: &[SignedDescriptor]| -> Vec<ListingEntry> {
        ds.iter()
            .map(|d| ListingEntry {
                first_seen: 1,
                proven: shallot_directory::AddrSet::ALL,
                descriptor: d.as_bytes().to_vec(),
            })
            .collect()
    };
    // Two sources, one of which lists the made-up relays: each is a minority candidate and
    // must be dialed before it is admitted.
    let listings = vec![
        SourceListing {
            source: PeerId::random(),
            block: Block::V4([10, 250]),
            entries: entries(&made_up),
        },
        SourceListing {
            source: PeerId::random(),
            block: Block::V4([10, 251]),
            entries: Vec::new(),
        },
    ];
    let gathered = gather(listings, now);
    let client = start_client(&wire, bootstrap_of(&relays)).await;
    let view = fresh_view();
    let mut verdicts = Verdicts::new();
    let started = Instant::now();
    let bound = MAX_VERIFY_TIME + Duration::from_secs(10);
    let dials = tokio::time::timeout(
        bound,
        client.verify_contests(&gathered, &view, &mut verdicts),
    )
    .await
    .unwrap_or_else(|_| panic!("verification of silent relays ran past {bound:?}"));
    println!(
        "verification of {} silent relays ended after {:?} ({dials} dials in rounds that finished)",
        made_up.len(),
        started.elapsed()
    );
    // The next verification is not refused for the one given up on, and gets its answer once
    // the abandoned dials time out.
    let target = (
        relays[0].peer_id(),
        relays[0].node.listen_addrs()[0].clone(),
    );
    let reached = tokio::time::timeout(bound, client.verify(vec![target]))
        .await
        .expect("a later verification within the bound")
        .expect("not refused");
    assert_eq!(reached, vec![true]);
    drop(silent);
}
