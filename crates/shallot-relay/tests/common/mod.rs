//! Helpers for the relay's network tests: relays on 127.0.<i>.1, a client node, descriptors,
//! circuits built by the client's own driver (`shallot_client::CircuitHandle`, what `shallot
//! client` runs), and local TCP servers. Everything binds to loopback and stops when dropped.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use libp2p::identity::Keypair;
use shallot_client::{BuildFailure, CircuitHandle};
use shallot_directory::SignedDescriptor;
use shallot_p2p::{MemoryNet, Multiaddr, Node, NodeConfig, PeerId, Role, TransportConfig};
use shallot_proto::HopSpec;
use shallot_relay::{Relay, RelayConfig, RelayHandle};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The longest any network in these tests may take to converge; longer is a failure.
pub const CONVERGE_LIMIT: Duration = Duration::from_secs(90);
/// The longest one circuit operation may take in these tests.
pub const STEP_LIMIT: Duration = Duration::from_secs(30);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A relay config for a test: listens on 127.0.`subnet`.1 (TCP, any port), keys in `dir`,
/// short timeouts.
pub fn test_config(dir: &Path, subnet: u8, bootstrap: Vec<Multiaddr>) -> RelayConfig {
    RelayConfig {
        data_dir: dir.to_owned(),
        listen: vec![format!("/ip4/127.0.{subnet}.1/tcp/0").parse().unwrap()],
        bootstrap,
        safe_logging: false,
        allow_private_addresses: true,
        handshake_timeout_secs: 5,
        connect_timeout_secs: 5,
        resolve_timeout_secs: 5,
        extend_timeout_secs: 10,
        ..RelayConfig::default()
    }
}

/// Running relays and their key directories.
pub struct Relays {
    pub handles: Vec<RelayHandle>,
    _dirs: Vec<tempfile::TempDir>,
}

/// Starts `configs.len()` relays, relay `i` on 127.0.`i+1`.1, each bootstrapping from the
/// first. `tweak(i, config)` adjusts each config.
pub async fn start_relays(n: usize, mut tweak: impl FnMut(usize, &mut RelayConfig)) -> Relays {
    init_tracing();
    let mut handles: Vec<RelayHandle> = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..n {
        let dir = tempfile::tempdir().unwrap();
        let bootstrap = handles
            .first()
            .and_then(RelayHandle::bootstrap_addr)
            .into_iter()
            .collect();
        let mut config = test_config(dir.path(), u8::try_from(i + 1).unwrap(), bootstrap);
        tweak(i, &mut config);
        handles.push(Relay::start(config).await.expect("start relay"));
        dirs.push(dir);
    }
    wait_for_stores(&handles).await;
    Relays {
        handles,
        _dirs: dirs,
    }
}

/// Waits until every relay lists every other one in its directory store: a relay extends only
/// to relays it knows (specs/03 §4.6).
pub async fn wait_for_stores(relays: &[RelayHandle]) {
    let started = Instant::now();
    loop {
        let missing: usize = relays
            .iter()
            .map(|r| {
                relays
                    .iter()
                    .filter(|o| {
                        r.directory()
                            .get(&o.peer_id())
                            .is_none_or(|e| e.proven.is_empty())
                    })
                    .count()
            })
            .sum();
        if missing == 0 {
            return;
        }
        assert!(
            started.elapsed() < CONVERGE_LIMIT,
            "{missing} relay pairs still unknown to each other after {CONVERGE_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A signed descriptor for `keypair` at `addrs` with `onion_key`, valid for an hour from now:
/// a relay that other relays can be told about.
pub fn descriptor_for(
    keypair: &Keypair,
    addrs: &[Multiaddr],
    onion_key: shallot_crypto::OnionPublicKey,
) -> SignedDescriptor {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ed = keypair.clone().try_into_ed25519().unwrap();
    shallot_directory::Descriptor {
        identity: ed.public(),
        published_at: now,
        expires_at: now + 3600,
        protocols: shallot_directory::PROTOCOL_CIRCUIT_V1,
        flags: shallot_directory::RelayFlags::default(),
        addrs: addrs.to_vec(),
        onion_key,
        previous_onion_key: None,
        family: Vec::new(),
        policy_summary: Vec::new(),
    }
    .sign(&ed)
    .unwrap()
}

/// A client node (fresh identity, Kademlia client mode) bootstrapping from `relays`.
pub async fn start_client(relays: &[RelayHandle]) -> Node {
    let bootstrap = relays
        .iter()
        .filter_map(RelayHandle::bootstrap_addr)
        .collect();
    let mut config = NodeConfig::new(Role::Client, Vec::new(), bootstrap);
    config.query_timeout = Duration::from_secs(10);
    Node::start(Keypair::generate_ed25519(), config)
        .await
        .expect("start client")
}

/// A client node that knows `relays`' addresses directly (no DHT).
pub async fn direct_client(relays: &[&RelayHandle]) -> Node {
    let node = Node::start(
        Keypair::generate_ed25519(),
        NodeConfig::new(Role::Client, Vec::new(), Vec::new()),
    )
    .await
    .expect("start client");
    for r in relays {
        for a in r.listen_addrs() {
            node.add_address(r.peer_id(), a.clone()).await.unwrap();
        }
    }
    node
}

/// Fetches descriptors until every relay of `relays` is in the client's verified set; returns
/// them in the order of `relays`.
pub async fn fetch_all(client: &Node, relays: &[RelayHandle]) -> Vec<SignedDescriptor> {
    let want: HashSet<PeerId> = relays.iter().map(RelayHandle::peer_id).collect();
    let started = Instant::now();
    loop {
        let outcome = client.fetch_descriptors().await.expect("fetch");
        let seen: HashSet<PeerId> = outcome.descriptors.iter().map(|d| d.peer_id()).collect();
        if want.is_subset(&seen) {
            return relays
                .iter()
                .map(|r| {
                    outcome
                        .descriptors
                        .iter()
                        .find(|d| d.peer_id() == r.peer_id())
                        .unwrap()
                        .clone()
                })
                .collect();
        }
        assert!(
            started.elapsed() < CONVERGE_LIMIT,
            "the client saw {} of {} relays after {CONVERGE_LIMIT:?}",
            seen.intersection(&want).count(),
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A hop from a verified descriptor: PeerId, addresses and current onion key.
pub fn hop_of(d: &SignedDescriptor) -> HopSpec {
    HopSpec {
        peer_id: d.peer_id().to_bytes(),
        addrs: d.descriptor().addrs.iter().map(|a| a.to_vec()).collect(),
        onion_key: d.descriptor().onion_key,
    }
}

/// A relay alone on the in-memory network `net` at `ip` (no DHT: clients are told its
/// address), its config changed by `tweak`.
pub async fn memory_relay(
    net: &MemoryNet,
    ip: Ipv4Addr,
    tweak: impl FnOnce(&mut RelayConfig),
) -> (RelayHandle, tempfile::TempDir) {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut config = RelayConfig {
        data_dir: dir.path().to_owned(),
        listen: vec![format!("/ip4/{ip}/tcp/0").parse().unwrap()],
        allow_private_addresses: true,
        safe_logging: false,
        transport: TransportConfig::Memory {
            net: net.clone(),
            ip: IpAddr::V4(ip),
        },
        ..RelayConfig::default()
    };
    tweak(&mut config);
    (Relay::start(config).await.expect("start relay"), dir)
}

/// A client node on the in-memory network `net` dialing from `ip`, told `relay`'s address.
pub async fn memory_client(net: &MemoryNet, ip: Ipv4Addr, relay: &RelayHandle) -> Node {
    let mut config = NodeConfig::new(Role::Client, Vec::new(), Vec::new());
    config.transport = TransportConfig::Memory {
        net: net.clone(),
        ip: IpAddr::V4(ip),
    };
    let node = Node::start(Keypair::generate_ed25519(), config)
        .await
        .expect("start client");
    node.add_address(relay.peer_id(), relay.listen_addrs()[0].clone())
        .await
        .unwrap();
    node
}

/// A hop from a running relay (for tests that skip the DHT).
pub fn hop_of_relay(r: &RelayHandle) -> HopSpec {
    HopSpec {
        peer_id: r.peer_id().to_bytes(),
        addrs: r.announced_addrs().iter().map(|a| a.to_vec()).collect(),
        onion_key: r.onion_key(),
    }
}

/// Builds a circuit from `client` through `hops` (CREATE to the first, then EXTEND), each step
/// within [`STEP_LIMIT`].
pub async fn build_circuit(
    client: &Node,
    hops: Vec<HopSpec>,
) -> Result<CircuitHandle, BuildFailure> {
    let mut control = client.stream_control();
    step(
        "build",
        CircuitHandle::build(&mut control, hops, STEP_LIMIT),
    )
    .await
}

/// Reads `n` bytes from `r`, fewer if it ends first.
pub async fn read_n(r: &mut (impl AsyncRead + Unpin), n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    let _ = r.take(n as u64).read_to_end(&mut out).await;
    out
}

/// Writes `data` on `stream` while reading as many bytes back, and returns what came back.
pub async fn exchange(stream: &mut (impl AsyncRead + AsyncWrite + Unpin), data: &[u8]) -> Vec<u8> {
    let (mut r, mut w) = tokio::io::split(stream);
    let (sent, back) = tokio::join!(w.write_all(data), read_n(&mut r, data.len()));
    sent.expect("write");
    back
}

/// A TCP echo server on 127.0.0.1; stops when the handle is dropped.
pub struct Server {
    pub port: u16,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves each connection on 127.0.0.1 with `handle`, in its own task.
async fn serve<F, Fut>(handle: F) -> Server
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                Ok((s, _)) = listener.accept() => {
                    conns.spawn(handle(s));
                }
                Some(_) = conns.join_next() => {}
            }
        }
    });
    Server { port, task }
}

/// Echoes every byte back on each connection.
pub async fn echo_server() -> Server {
    serve(|mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

/// Sends `len` bytes of [`pattern`] on each connection, then closes it.
pub async fn source_server(len: usize) -> Server {
    serve(move |mut s| async move {
        let data = pattern(len, 7);
        let _ = s.write_all(&data).await;
        let _ = s.shutdown().await;
        let mut sink = [0u8; 1024];
        while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await
}

/// Accepts connections and never reads from them. A failed accept (a connection reset while
/// queued, a moment without descriptors) does not end it: a tarpit that stopped listening
/// would turn the timeouts the tests expect into refused connections.
pub async fn tarpit_server() -> Server {
    const MAX_HELD: usize = 1024;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while held.len() < MAX_HELD {
            match listener.accept().await {
                Ok((s, _)) => held.push(s),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        std::future::pending::<()>().await;
    });
    Server { port, task }
}

/// A port on 127.0.0.1 with nothing listening (bound, then closed).
pub async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// Deterministic test bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(131).wrapping_add(usize::from(seed) * 17) % 251) as u8)
        .collect()
}

/// Runs `f` within [`STEP_LIMIT`], failing the test otherwise.
pub async fn step<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(STEP_LIMIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {STEP_LIMIT:?}"),
    }
}
