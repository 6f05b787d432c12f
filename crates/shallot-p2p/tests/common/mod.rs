//! Helpers for the directory's network tests: where a network runs (loopback TCP, or the
//! in-memory network with a wall clock the test moves), relays with their own keys, clients,
//! and a client's view built exactly as `shallot client` builds it (a refresh, then assembly).

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

pub mod hostile;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use libp2p::identity::{Keypair, ed25519};
use libp2p::{Multiaddr, PeerId};
use shallot_crypto::OnionPublicKey;
use shallot_directory::{
    AssemblyReport, Descriptor, NetworkView, PROTOCOL_CIRCUIT_V1, RelayFlags, SignedDescriptor,
    Verdicts, ViewConfig, WallClock, gather,
};
use shallot_p2p::{Directory, FetchOutcome, MemoryNet, Node, NodeConfig, Role, TransportConfig};

/// Upper bound for any network in these tests to converge; a test that needs longer fails.
pub const CONVERGE_LIMIT: Duration = Duration::from_secs(120);
/// A test relay's time between probes (the default is 250 ms).
pub const TEST_PROBE_INTERVAL: Duration = Duration::from_millis(20);
/// A test relay's time between synchronisations (the default is a minute).
pub const TEST_SYNC_INTERVAL: Duration = Duration::from_secs(2);

/// How long a simulated node keeps an unused connection: one process holds every node's
/// connections (about 50 KB each), which real relays spread over as many machines.
pub const SIMULATED_IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// A simulated node's time between synchronisations: thousands of nodes share two cores.
pub const SIMULATED_SYNC_INTERVAL: Duration = Duration::from_secs(5);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Where a test network runs: on loopback TCP with the system clock, or on an in-memory
/// network with a wall clock the test can move forward.
#[derive(Clone)]
pub enum Wire {
    Tcp,
    Memory {
        net: MemoryNet,
        /// Seconds added to the system clock.
        ahead: Arc<AtomicU64>,
        /// The network vouches for identities instead of Noise (`TransportConfig::Simulated`).
        vouched: bool,
    },
}

impl Wire {
    pub fn memory() -> Self {
        Self::Memory {
            net: MemoryNet::new(),
            ahead: Arc::new(AtomicU64::new(0)),
            vouched: false,
        }
    }

    /// An in-memory network without handshakes, for simulations of thousands of nodes.
    pub fn simulated() -> Self {
        Self::Memory {
            net: MemoryNet::new(),
            ahead: Arc::new(AtomicU64::new(0)),
            vouched: true,
        }
    }

    /// How often the nodes on this wire synchronise their directories.
    pub fn sync_interval(&self) -> Duration {
        match self {
            Self::Memory { vouched: true, .. } => SIMULATED_SYNC_INTERVAL,
            _ => TEST_SYNC_INTERVAL,
        }
    }

    pub fn clock(&self) -> WallClock {
        match self {
            Self::Tcp => WallClock::system(),
            Self::Memory { ahead, .. } => {
                let ahead = Arc::clone(ahead);
                let system = WallClock::system();
                WallClock::from_fn(move || system.now() + ahead.load(Ordering::Relaxed))
            }
        }
    }

    /// The in-memory network (memory only).
    pub fn net(&self) -> &MemoryNet {
        match self {
            Self::Tcp => panic!("a TCP wire has no in-memory network"),
            Self::Memory { net, .. } => net,
        }
    }

    /// Moves the wall clock of every node on this wire forward (memory only).
    pub fn skip(&self, secs: u64) {
        match self {
            Self::Tcp => panic!("the system clock cannot be moved"),
            Self::Memory { ahead, .. } => {
                ahead.fetch_add(secs, Ordering::Relaxed);
            }
        }
    }

    /// Relay `i`'s address: each in its own /24 (and /16 on memory), so the view's Sybil caps
    /// hold them all, as they would hold relays of different operators.
    pub fn relay_ip(&self, i: usize) -> Ipv4Addr {
        let i = u8::try_from(i + 1).expect("at most 255 relays");
        match self {
            // 127.0.0.0/8 is loopback: relay i in its own /16, as the local network does.
            Self::Tcp => Ipv4Addr::new(127, i, 0, 1),
            Self::Memory { .. } => Ipv4Addr::new(10, i, 0, 1),
        }
    }

    pub fn config(
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
        // A test network: every address is private, and things happen in seconds.
        config.directory.allow_private_addrs = true;
        config.directory.probe_interval = TEST_PROBE_INTERVAL;
        config.directory.sync_interval = self.sync_interval();
        if let Self::Memory { net, vouched, .. } = self {
            let (net, ip) = (net.clone(), IpAddr::V4(ip));
            config.transport = if *vouched {
                config.idle_connection_timeout = SIMULATED_IDLE_CONNECTION_TIMEOUT;
                TransportConfig::Simulated { net, ip }
            } else {
                TransportConfig::Memory { net, ip }
            };
        }
        config
    }
}

pub struct TestRelay {
    pub node: Node,
    pub keypair: ed25519::Keypair,
}

impl TestRelay {
    pub fn descriptor(&self, lifetime: u64) -> SignedDescriptor {
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

    pub fn peer_id(&self) -> PeerId {
        self.node.peer_id()
    }

    /// The relay's directory store.
    pub fn store(&self) -> Directory {
        self.node.directory().expect("a relay has a store").clone()
    }
}

/// Starts one relay at `ip` on `wire`, bootstrapping from `bootstrap`.
pub async fn start_relay(wire: &Wire, ip: Ipv4Addr, bootstrap: Vec<Multiaddr>) -> TestRelay {
    start_relay_with(wire.config(Role::Relay, ip, true, bootstrap)).await
}

/// Starts one relay with `config`.
pub async fn start_relay_with(config: NodeConfig) -> TestRelay {
    let keypair = ed25519::Keypair::generate();
    let node = Node::start(Keypair::from(keypair.clone()), config)
        .await
        .expect("start relay");
    TestRelay { node, keypair }
}

/// Starts `n` relays on `wire` (relay `i` at [`Wire::relay_ip`]), bootstrapping from the first.
pub async fn start_relays(wire: &Wire, n: usize) -> Vec<TestRelay> {
    init_tracing();
    let mut relays: Vec<TestRelay> = Vec::with_capacity(n);
    for i in 0..n {
        let bootstrap = relays
            .first()
            .and_then(|r| r.node.bootstrap_addr())
            .into_iter()
            .collect();
        relays.push(start_relay(wire, wire.relay_ip(i), bootstrap).await);
    }
    relays
}

/// Starts `n` relays, publishes their descriptors for an hour, and waits until every relay's
/// store lists every relay; returns them and how long the proving took.
pub async fn converged_relays(wire: &Wire, n: usize) -> (Vec<TestRelay>, Duration) {
    let relays = start_relays(wire, n).await;
    publish_all(&relays, 3600).await;
    let converged = wait_for_stores(&relays).await;
    (relays, converged)
}

/// The addresses a client bootstraps from to reach `relays`.
pub fn bootstrap_of(relays: &[TestRelay]) -> Vec<Multiaddr> {
    relays
        .iter()
        .map(|r| r.node.bootstrap_addr().expect("a relay's address"))
        .collect()
}

/// Publishes every relay's descriptor at once, as relays started together would, each retrying
/// until [`CONVERGE_LIMIT`].
pub async fn publish_all(relays: &[TestRelay], lifetime: u64) {
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

pub async fn start_client(wire: &Wire, bootstrap: Vec<Multiaddr>) -> Node {
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

/// A client's view after one refresh, assembled as `shallot client` does: gathered, the
/// contested and unproven relays verified by dialing them, then offered.
pub async fn refresh_into(
    client: &Node,
    view: &mut NetworkView,
    verdicts: &mut Verdicts,
) -> (FetchOutcome, AssemblyReport) {
    let started = Instant::now();
    let mut outcome = client.fetch_descriptors().await.expect("fetch");
    let fetched = started.elapsed();
    let listings = std::mem::take(&mut outcome.listings);
    let gathered = gather(listings, client.clock().now());
    let dials = client.verify_contests(&gathered, view, verdicts).await;
    for gone in client.check_down_reports(&gathered, view, verdicts).await {
        view.remove(&gone);
    }
    if std::env::var_os("SHALLOT_TEST_VERBOSE").is_some() {
        println!(
            "fetched in {fetched:?}; {dials} verification dials in {:?}",
            started.elapsed() - fetched
        );
    }
    let report = gathered.offer_to(view, Some(verdicts));
    (outcome, report)
}

/// A view as a fresh client's, with the caps of the real client.
pub fn fresh_view() -> NetworkView {
    NetworkView::new(ViewConfig::default())
}

/// Refreshes until the client's view holds every relay of `expected`; returns the time it took,
/// or after [`CONVERGE_LIMIT`] what the view lacks.
pub async fn try_wait_for_view(
    client: &Node,
    expected: &HashSet<PeerId>,
) -> Result<(Duration, NetworkView), String> {
    let started = Instant::now();
    let mut view = fresh_view();
    let mut verdicts = Verdicts::new();
    loop {
        let fetch_started = Instant::now();
        let (outcome, report) = refresh_into(client, &mut view, &mut verdicts).await;
        let seen: HashSet<PeerId> = view.entries().map(|e| e.descriptor.peer_id()).collect();
        if std::env::var_os("SHALLOT_TEST_VERBOSE").is_some() {
            println!(
                "refresh: {} of {} expected, took {:?}, bytes {}, walks {}, same block {}, \
                 failed {}; {report:?}",
                seen.intersection(expected).count(),
                expected.len(),
                fetch_started.elapsed(),
                outcome.bytes,
                outcome.walks,
                outcome.same_block,
                outcome.failed,
            );
        }
        if expected.is_subset(&seen) {
            return Ok((started.elapsed(), view));
        }
        if started.elapsed() >= CONVERGE_LIMIT {
            let missing: Vec<PeerId> = expected.difference(&seen).copied().collect();
            return Err(format!(
                "view holds {} of {} relays after {CONVERGE_LIMIT:?} (sources {}, walks {}, \
                 report {report:?}, missing {missing:?})",
                seen.intersection(expected).count(),
                expected.len(),
                report.sources_used,
                outcome.walks,
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Refreshes until the view holds every relay of `expected`; returns the time it took.
pub async fn wait_for_view(client: &Node, expected: &HashSet<PeerId>) -> (Duration, NetworkView) {
    try_wait_for_view(client, expected)
        .await
        .unwrap_or_else(|failure| panic!("{failure}"))
}

/// Waits until every relay's store lists (has proved) every relay of `relays`.
pub async fn wait_for_stores(relays: &[TestRelay]) -> Duration {
    let started = Instant::now();
    loop {
        let missing: usize = relays
            .iter()
            .map(|r| {
                let dir = r.node.directory().expect("a relay's directory");
                relays
                    .iter()
                    .filter(|o| dir.get(&o.peer_id()).is_none_or(|e| e.proven.is_empty()))
                    .count()
            })
            .sum();
        if missing == 0 {
            return started.elapsed();
        }
        if started.elapsed() >= CONVERGE_LIMIT {
            let mut absent = 0;
            let mut pending = 0;
            for r in relays {
                let dir = r.node.directory().expect("a relay's directory");
                for o in relays {
                    match dir.get(&o.peer_id()) {
                        None => absent += 1,
                        Some(e) if e.proven.is_empty() => pending += 1,
                        Some(_) => {}
                    }
                }
            }
            let refuted: u64 = relays
                .iter()
                .map(|r| {
                    r.node
                        .stats()
                        .probes_failed
                        .load(std::sync::atomic::Ordering::Relaxed)
                })
                .sum();
            panic!(
                "{missing} (relay, relay) pairs unproven after {CONVERGE_LIMIT:?}: {absent} \
                 absent, {pending} pending; {refuted} probes failed in all"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
