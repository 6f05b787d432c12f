//! In-process networks of real libp2p nodes: discovery through the DHT, validation against a
//! malicious DHT node, expiry and replication (specs/04). Most run on an in-memory network
//! (`MemoryNet`: the same Noise and Yamux, no sockets) with a wall clock the test moves; one
//! discovery test and the malicious-node test run on loopback TCP.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::identity::{Keypair, ed25519};
use libp2p::kad::{self, Quorum, Record, RecordKey, store::MemoryStore, store::RecordStore};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, noise, tcp, yamux};
use shallot_crypto::OnionPublicKey;
use shallot_directory::WallClock;
use shallot_directory::{
    Descriptor, PROTOCOL_CIRCUIT_V1, RecordRefusal, RelayFlags, SignedDescriptor, descriptor_key,
    shard_key, shard_of,
};
use shallot_p2p::{KAD_PROTOCOL, MemoryNet, Node, NodeConfig, Role, TransportConfig};

/// Upper bound for any network in these tests to converge; a test that needs longer fails.
const CONVERGE_LIMIT: Duration = Duration::from_secs(120);

/// Where a test network runs: on loopback TCP with the system clock, or on an in-memory
/// network with a wall clock the test can move forward.
#[derive(Clone)]
enum Wire {
    Tcp,
    Memory {
        net: MemoryNet,
        /// Seconds added to the system clock.
        ahead: Arc<AtomicU64>,
    },
}

impl Wire {
    fn memory() -> Self {
        Self::Memory {
            net: MemoryNet::new(),
            ahead: Arc::new(AtomicU64::new(0)),
        }
    }

    fn clock(&self) -> WallClock {
        match self {
            Self::Tcp => WallClock::system(),
            Self::Memory { ahead, .. } => {
                let ahead = Arc::clone(ahead);
                let system = WallClock::system();
                WallClock::from_fn(move || system.now() + ahead.load(Ordering::Relaxed))
            }
        }
    }

    /// Moves the wall clock of every node on this wire forward (memory only).
    fn skip(&self, secs: u64) {
        match self {
            Self::Tcp => panic!("the system clock cannot be moved"),
            Self::Memory { ahead, .. } => {
                ahead.fetch_add(secs, Ordering::Relaxed);
            }
        }
    }

    /// Relay `i`'s address: each in its own /24 (and /16 on memory), so the view's Sybil caps
    /// hold them all, as they would hold relays of different operators.
    fn relay_ip(&self, i: usize) -> Ipv4Addr {
        let i = u8::try_from(i + 1).expect("at most 255 relays");
        match self {
            Self::Tcp => Ipv4Addr::new(127, 0, i, 1),
            Self::Memory { .. } => Ipv4Addr::new(10, i, 0, 1),
        }
    }

    fn config(
        &self,
        role: Role,
        ip: Ipv4Addr,
        listen: bool,
        bootstrap: Vec<Multiaddr>,
    ) -> NodeConfig {
        let listen = if listen {
            vec![format!("/ip4/{ip}/tcp/0").parse().expect("addr")]
        } else {
            Vec::new()
        };
        let mut config = NodeConfig::new(role, listen, bootstrap);
        config.query_timeout = Duration::from_secs(10);
        config.clock = self.clock();
        if let Self::Memory { net, .. } = self {
            config.transport = TransportConfig::Memory {
                net: net.clone(),
                ip: IpAddr::V4(ip),
            };
        }
        config
    }
}

struct TestRelay {
    node: Node,
    keypair: ed25519::Keypair,
}

impl TestRelay {
    fn descriptor(&self, lifetime: u64) -> SignedDescriptor {
        let now = self.node.clock().now();
        Descriptor {
            identity: self.keypair.public(),
            published_at: now,
            expires_at: now + lifetime,
            protocols: PROTOCOL_CIRCUIT_V1,
            flags: RelayFlags::default(),
            addrs: self.node.listen_addrs().to_vec(),
            onion_key: OnionPublicKey([1; 32]),
            previous_onion_key: None,
            family: Vec::new(),
            policy_summary: Vec::new(),
        }
        .sign(&self.keypair)
        .expect("sign descriptor")
    }
}

/// Starts `n` relays on `wire` (relay `i` at [`Wire::relay_ip`]), bootstrapping from the first.
async fn start_relays(wire: &Wire, n: usize) -> Vec<TestRelay> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut relays: Vec<TestRelay> = Vec::with_capacity(n);
    for i in 0..n {
        let keypair = ed25519::Keypair::generate();
        let bootstrap = relays
            .first()
            .and_then(|r| r.node.bootstrap_addr())
            .into_iter()
            .collect();
        let node = Node::start(
            Keypair::from(keypair.clone()),
            wire.config(Role::Relay, wire.relay_ip(i), true, bootstrap),
        )
        .await
        .expect("start relay");
        relays.push(TestRelay { node, keypair });
    }
    relays
}

/// Publishes every relay's descriptor at once, as relays started together would, each retrying
/// until [`CONVERGE_LIMIT`].
async fn publish_all(relays: &[TestRelay], lifetime: u64) {
    futures::future::join_all(relays.iter().map(|relay| async move {
        let deadline = Instant::now() + CONVERGE_LIMIT;
        loop {
            match relay.node.publish(relay.descriptor(lifetime)).await {
                Ok(()) => break,
                Err(err) if Instant::now() < deadline => {
                    tracing::debug!(%err, "publish failed, retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err) => panic!("relay could not publish within {CONVERGE_LIMIT:?}: {err}"),
            }
        }
    }))
    .await;
}

async fn start_client(wire: &Wire, bootstrap: Vec<Multiaddr>) -> Node {
    let ip = match wire {
        Wire::Tcp => Ipv4Addr::LOCALHOST,
        Wire::Memory { .. } => Ipv4Addr::new(10, 255, 0, 1),
    };
    Node::start(
        Keypair::generate_ed25519(),
        wire.config(Role::Client, ip, false, bootstrap),
    )
    .await
    .expect("start client")
}

/// Fetches until the client sees every relay of `expected`; returns the time it took, or after
/// [`CONVERGE_LIMIT`] what the view lacks and the relays it lacks.
async fn try_wait_for_view(
    client: &Node,
    expected: &HashSet<PeerId>,
) -> Result<Duration, (String, Vec<PeerId>)> {
    let started = Instant::now();
    loop {
        let fetch_started = Instant::now();
        let outcome = client.fetch_descriptors().await.expect("fetch");
        let seen: HashSet<PeerId> = outcome.descriptors.iter().map(|d| d.peer_id()).collect();
        tracing::info!(
            seen = seen.len(),
            listed = outcome.providers_listed,
            took = ?fetch_started.elapsed(),
            "one refresh"
        );
        if expected.is_subset(&seen) {
            return Ok(started.elapsed());
        }
        if started.elapsed() >= CONVERGE_LIMIT {
            let missing: Vec<PeerId> = expected.difference(&seen).copied().collect();
            return Err((
                format!(
                    "view holds {} of {} relays after {CONVERGE_LIMIT:?} (providers listed {}, \
                     refused {:?}, missing {missing:?})",
                    seen.intersection(expected).count(),
                    expected.len(),
                    outcome.providers_listed,
                    outcome.refused,
                ),
                missing,
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Fetches until the client sees every relay of `expected`; returns the time it took.
async fn wait_for_view(client: &Node, expected: &HashSet<PeerId>) -> Duration {
    try_wait_for_view(client, expected)
        .await
        .unwrap_or_else(|(failure, _)| panic!("{failure}"))
}

/// Where the DHT servers among `relays` hold what a client needs to list `missing`: its
/// descriptor record, and its shard announcement with or without addresses (a server does not
/// serve an announcement without addresses for a relay outside its routing table).
async fn where_stored(relays: &[TestRelay], missing: &[PeerId]) -> String {
    let mut report = String::new();
    for peer in missing {
        let (mut records, mut announcements, mut with_addrs) = (0, 0, 0);
        for relay in relays.iter().filter(|r| r.node.peer_id() != *peer) {
            if relay
                .node
                .stored_record(descriptor_key(peer))
                .await
                .expect("store")
                .is_some()
            {
                records += 1;
            }
            let providers = relay
                .node
                .stored_providers(shard_key(shard_of(peer)))
                .await
                .expect("store");
            if let Some(p) = providers.iter().find(|p| p.provider == *peer) {
                announcements += 1;
                with_addrs += usize::from(!p.addrs.is_empty());
            }
        }
        report.push_str(&format!(
            "\n  {peer}: record held by {records} other servers, shard announcement by \
             {announcements} ({with_addrs} with addresses)"
        ));
    }
    report
}

async fn discovery_of(wire: &Wire, n: usize) -> Duration {
    let started = Instant::now();
    let relays = start_relays(wire, n).await;
    let all_started = started.elapsed();
    publish_all(&relays, 3600).await;
    let all_published = started.elapsed();
    let bootstrap: Vec<Multiaddr> = relays
        .iter()
        .take(3)
        .filter_map(|r| r.node.bootstrap_addr())
        .collect();
    let client = start_client(wire, bootstrap).await;
    let expected: HashSet<PeerId> = relays.iter().map(|r| r.node.peer_id()).collect();
    let took = match try_wait_for_view(&client, &expected).await {
        Ok(took) => took,
        Err((failure, missing)) => panic!("{failure}{}", where_stored(&relays, &missing).await),
    };
    println!(
        "a fresh client's view held all {n} relays after {took:?} (relays started in \
         {all_started:?}, published by {all_published:?})"
    );
    took
}

/// Over real TCP on loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_client_discovers_twenty_relays() {
    discovery_of(&Wire::Tcp, 20).await;
}

/// The figure for 100 relays in specs/04 §6.1, on the in-memory network.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_client_discovers_one_hundred_relays() {
    discovery_of(&Wire::memory(), 100).await;
}

/// specs/04 §5.3: a relay's shard announcement carries its descriptor's addresses. A DHT server
/// leaves an announcement without addresses out of its replies unless the relay happens to be
/// in its routing table; with 100 relays that left 1 to 6 of them out of every fresh view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_announcements_carry_the_descriptor_addresses() {
    let relays = start_relays(&Wire::memory(), 6).await;
    publish_all(&relays, 3600).await;
    for relay in &relays {
        let peer = relay.node.peer_id();
        // Kademlia hands the addresses on with the announcer's /p2p suffix.
        let announced: Vec<Multiaddr> = relay
            .node
            .listen_addrs()
            .iter()
            .map(|a| a.clone().with(Protocol::P2p(peer)))
            .collect();
        let deadline = Instant::now() + CONVERGE_LIMIT;
        loop {
            let mut held = 0;
            // A relay keeps its own announcement without addresses (libp2p fills them in
            // when it serves it), so only the other servers' copies are checked.
            for (i, server) in relays.iter().enumerate() {
                if server.node.peer_id() == peer {
                    continue;
                }
                let stored = server
                    .node
                    .stored_providers(shard_key(shard_of(&peer)))
                    .await
                    .expect("store");
                for announcement in stored.iter().filter(|p| p.provider == peer) {
                    held += 1;
                    assert_eq!(
                        announcement.addrs, announced,
                        "relay {i} holds {peer}'s announcement without its descriptor's addresses"
                    );
                }
            }
            if held > 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no server holds {peer}'s shard announcement after {CONVERGE_LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A DHT node that stores and serves whatever it is given: the adversary of specs/04 §5.4.
struct MaliciousNode {
    swarm: libp2p::Swarm<kad::Behaviour<MemoryStore>>,
    addr: Multiaddr,
}

impl MaliciousNode {
    async fn start() -> Self {
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .expect("tcp")
            .with_behaviour(|key| {
                let peer = key.public().to_peer_id();
                let mut config = kad::Config::new(KAD_PROTOCOL);
                config.set_record_filtering(kad::StoreInserts::Unfiltered);
                let mut kad = kad::Behaviour::with_config(peer, MemoryStore::new(peer), config);
                kad.set_mode(Some(kad::Mode::Server));
                kad
            })
            .expect("behaviour")
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        swarm
            .listen_on("/ip4/127.0.200.1/tcp/0".parse().expect("addr"))
            .expect("listen");
        let addr = loop {
            if let libp2p::swarm::SwarmEvent::NewListenAddr { address, .. } =
                swarm.select_next_some().await
            {
                break address;
            }
        };
        let peer = *swarm.local_peer_id();
        Self {
            swarm,
            addr: addr.with(Protocol::P2p(peer)),
        }
    }

    fn plant(&mut self, key: Vec<u8>, value: Vec<u8>, publisher: Option<PeerId>) {
        let record = Record {
            key: RecordKey::new(&key),
            value,
            publisher,
            expires: None,
        };
        self.swarm
            .behaviour_mut()
            .store_mut()
            .put(record)
            .expect("plant record");
    }

    fn plant_provider(&mut self, provider: PeerId) {
        let record = kad::ProviderRecord {
            key: RecordKey::new(&shard_key(shard_of(&provider))),
            provider,
            expires: None,
            addresses: vec!["/ip4/127.0.201.1/tcp/9".parse().expect("addr")],
        };
        self.swarm
            .behaviour_mut()
            .store_mut()
            .add_provider(record)
            .expect("plant provider");
    }
}

fn forged_descriptors(genuine: &TestRelay) -> Vec<(&'static str, Vec<u8>, Vec<u8>, PeerId)> {
    let now = WallClock::system().now();
    let mut forged = Vec::new();

    // Bad signature: a genuine relay's descriptor with one signature byte changed.
    let mut bad_signature = genuine.descriptor(3600).as_bytes().to_vec();
    let last = bad_signature.len() - 1;
    bad_signature[last] ^= 0x01;
    forged.push((
        "bad_signature",
        descriptor_key(&genuine.node.peer_id()),
        bad_signature,
        genuine.node.peer_id(),
    ));

    // Expired: correctly signed by a fake relay, but its lifetime is over.
    let fake = ed25519::Keypair::generate();
    let expired = Descriptor {
        identity: fake.public(),
        published_at: now - 7200,
        expires_at: now - 3600,
        protocols: PROTOCOL_CIRCUIT_V1,
        flags: RelayFlags::default(),
        addrs: vec!["/ip4/127.0.202.1/tcp/9".parse().expect("addr")],
        onion_key: OnionPublicKey([2; 32]),
        previous_onion_key: None,
        family: Vec::new(),
        policy_summary: Vec::new(),
    }
    .sign(&fake)
    .expect("sign");
    forged.push((
        "expired",
        descriptor_key(&expired.peer_id()),
        expired.as_bytes().to_vec(),
        expired.peer_id(),
    ));

    // Oversized: 5000 bytes under a fake relay's key.
    let oversized_peer = PeerId::random();
    forged.push((
        "oversized",
        descriptor_key(&oversized_peer),
        vec![0x53; 5000],
        oversized_peer,
    ));

    // PeerId mismatch: a valid descriptor of relay A stored under the key of relay B.
    let a = ed25519::Keypair::generate();
    let valid_a = Descriptor {
        identity: a.public(),
        published_at: now,
        expires_at: now + 3600,
        protocols: PROTOCOL_CIRCUIT_V1,
        flags: RelayFlags::default(),
        addrs: vec!["/ip4/127.0.203.1/tcp/9".parse().expect("addr")],
        onion_key: OnionPublicKey([3; 32]),
        previous_onion_key: None,
        family: Vec::new(),
        policy_summary: Vec::new(),
    }
    .sign(&a)
    .expect("sign");
    let b = PeerId::random();
    forged.push((
        "peer_mismatch",
        descriptor_key(&b),
        valid_a.as_bytes().to_vec(),
        b,
    ));
    forged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malicious_dht_node_gets_nothing_into_views_or_stores() {
    let relays = start_relays(&Wire::Tcp, 8).await;
    publish_all(&relays, 3600).await;
    let mut adversary = MaliciousNode::start().await;
    let forged = forged_descriptors(&relays[0]);
    for (_, key, value, named) in &forged {
        adversary.plant(key.clone(), value.clone(), None);
        adversary.plant_provider(*named);
    }

    // The adversary pushes every forged record straight to every honest DHT server.
    let honest: Vec<PeerId> = relays.iter().map(|r| r.node.peer_id()).collect();
    for relay in &relays {
        let addr = relay.node.listen_addrs()[0].clone();
        adversary
            .swarm
            .behaviour_mut()
            .add_address(&relay.node.peer_id(), addr);
    }
    let mut pending = HashSet::new();
    for (_, key, value, _) in &forged {
        let record = Record::new(RecordKey::new(key), value.clone());
        pending.insert(adversary.swarm.behaviour_mut().put_record_to(
            record,
            honest.iter().copied(),
            Quorum::One,
        ));
    }
    let drive_until = Instant::now() + Duration::from_secs(20);
    while !pending.is_empty() && Instant::now() < drive_until {
        if let Ok(libp2p::swarm::SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed {
            id,
            step,
            ..
        })) =
            tokio::time::timeout(Duration::from_secs(1), adversary.swarm.select_next_some()).await
            && step.last
        {
            pending.remove(&id);
        }
    }
    // Keep serving the client's queries from here on.
    let adversary_addr = adversary.addr.clone();
    let adversary_task = tokio::spawn(async move {
        loop {
            adversary.swarm.select_next_some().await;
        }
    });

    // No honest store holds any forged value.
    let mut refused = 0;
    for relay in &relays {
        for (label, key, value, _) in &forged {
            let stored = relay.node.stored_record(key.clone()).await.expect("store");
            assert_ne!(
                stored.as_deref(),
                Some(value.as_slice()),
                "{label} record entered an honest store"
            );
        }
        for reason in [
            RecordRefusal::BadSignature,
            RecordRefusal::Expired,
            RecordRefusal::Oversized,
            RecordRefusal::PeerMismatch,
            RecordRefusal::Malformed,
        ] {
            refused += relay.node.stats().records_refused(reason);
        }
    }
    assert!(
        refused >= forged.len() as u64,
        "honest servers counted only {refused} refusals"
    );

    // A client bootstrapping from the adversary and one honest relay: sees every honest relay,
    // none of the forged ones, and counts each kind of forgery as refused.
    let client = start_client(
        &Wire::Tcp,
        vec![
            adversary_addr,
            relays[1].node.bootstrap_addr().expect("addr"),
        ],
    )
    .await;
    let expected: HashSet<PeerId> = honest.iter().copied().collect();
    wait_for_view(&client, &expected).await;
    let outcome = client.fetch_descriptors().await.expect("fetch");
    let genuine = relays[0].descriptor(3600);
    for descriptor in &outcome.descriptors {
        for (label, _, value, _) in &forged {
            assert_ne!(
                descriptor.as_bytes(),
                value.as_slice(),
                "{label} entered a view"
            );
        }
        assert!(
            expected.contains(&descriptor.peer_id()),
            "unknown relay in view"
        );
    }
    assert_eq!(outcome.descriptors.len(), relays.len());
    assert_eq!(
        outcome
            .descriptors
            .iter()
            .find(|d| d.peer_id() == genuine.peer_id())
            .map(|d| d.descriptor().onion_key),
        Some(genuine.descriptor().onion_key)
    );
    let refused_kinds: HashSet<RecordRefusal> = outcome.refused.keys().copied().collect();
    for kind in [
        RecordRefusal::BadSignature,
        RecordRefusal::Expired,
        RecordRefusal::Oversized,
        RecordRefusal::PeerMismatch,
    ] {
        assert!(
            refused_kinds.contains(&kind),
            "the client never saw (and refused) a {} record: {:?}",
            kind.as_str(),
            outcome.refused
        );
    }
    adversary_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_relay_stays_findable_until_expiry_then_leaves_views() {
    const LIFETIME: u64 = 20;
    let wire = Wire::memory();
    let mut relays = start_relays(&wire, 6).await;
    // The relay that will stop publishes only a short-lived descriptor.
    let leaving = relays.pop().expect("relay");
    publish_all(&relays, 3600).await;
    let leaving_peer = leaving.node.peer_id();
    leaving
        .node
        .publish(leaving.descriptor(LIFETIME))
        .await
        .expect("publish");
    let published = Instant::now();
    drop(leaving);

    // Its publisher is offline, yet other DHT servers still serve its record.
    let client = start_client(&wire, vec![relays[0].node.bootstrap_addr().expect("addr")]).await;
    let mut expected: HashSet<PeerId> = relays.iter().map(|r| r.node.peer_id()).collect();
    expected.insert(leaving_peer);
    wait_for_view(&client, &expected).await;
    assert!(
        published.elapsed() < Duration::from_secs(LIFETIME),
        "the test machine was too slow to check findability before the DHT's own expiry"
    );

    // After its lifetime (the wall clock moved, no waiting), a fresh view does not hold it.
    wire.skip(LIFETIME + 1);
    let fresh = start_client(&wire, vec![relays[1].node.bootstrap_addr().expect("addr")]).await;
    let outcome = fresh.fetch_descriptors().await.expect("fetch");
    assert!(
        outcome
            .descriptors
            .iter()
            .all(|d| d.peer_id() != leaving_peer),
        "an expired relay is still in a fresh view"
    );
    assert_eq!(outcome.descriptors.len(), relays.len());
}
