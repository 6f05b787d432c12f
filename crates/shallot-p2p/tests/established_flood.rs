//! One address opening more fully handshaken libp2p connections to a relay than the relay's
//! global limit of established inbound connections (specs/00 §4.4). Each connection has an
//! identity of its own (PeerIds cost nothing, and the per-peer limit would stop one identity
//! at a few), completes Noise and Yamux, and is then held open and never used. Without a limit
//! per address, the attacker's connections take every established slot and a newcomer on
//! another address is locked out; with it, the attacker holds its address's share and the
//! newcomer connects and opens a stream. On loopback TCP: the attacker dials from 127.0.0.2,
//! the newcomer from 127.0.0.1, the relay listens on its own loopback address. The two tests
//! together hold about 4,500 file descriptors at once.

mod common;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::*;
use futures::future::BoxFuture;
use futures::{AsyncReadExt, AsyncWriteExt, FutureExt, StreamExt};
use libp2p::core::transport::{DialOpts, ListenerId, PortUse, TransportError, TransportEvent};
use libp2p::core::upgrade::Version;
use libp2p::core::{Endpoint, Transport};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId, noise, yamux};
use shallot_directory::socket_of;
use shallot_p2p::{CIRCUIT_PROTOCOL, CONNECT_TIMEOUT, ConnectionLimits, Node, Role};
use tokio::net::TcpSocket;

const ATTACKER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// Handshakes the attacker runs at once: under the per-address pending limit, so that what
/// the relay refuses is refused by the established limit, not the pending one.
const HANDSHAKES_IN_FLIGHT: usize = 8;
/// Connections the attacker opens beyond the relay's global established limit.
const BEYOND_THE_GLOBAL_LIMIT: usize = 100;
/// Longest the whole flood may take (under 3 s on a loaded 2-core machine).
const FLOOD_LIMIT: Duration = Duration::from_secs(20);
/// Longest the relay may take to finish counting the flood once the attacker is done.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);
/// Longest the newcomer may take to connect and exchange a message with the relay (a few
/// milliseconds when nothing attacks).
const HONEST_LIMIT: Duration = Duration::from_secs(5);
const PING: &[u8] = b"ping";

/// TCP dialing from a chosen local IP: libp2p's TCP transport leaves a dial's local IP to the
/// kernel (it binds at most a listen port), which on loopback picks 127.0.0.1 for every peer.
/// Dial only; it listens on nothing.
struct TcpFrom(IpAddr);

impl Transport for TcpFrom {
    type Output = libp2p::tcp::tokio::TcpStream;
    type Error = io::Error;
    type ListenerUpgrade = futures::future::Pending<io::Result<Self::Output>>;
    type Dial = BoxFuture<'static, io::Result<Self::Output>>;

    fn listen_on(
        &mut self,
        _: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<io::Error>> {
        Err(TransportError::MultiaddrNotSupported(addr))
    }

    fn remove_listener(&mut self, _: ListenerId) -> bool {
        false
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        _: DialOpts,
    ) -> Result<Self::Dial, TransportError<io::Error>> {
        let Some(to) = socket_of(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let from = SocketAddr::new(self.0, 0);
        Ok(async move {
            let socket = TcpSocket::new_v4()?;
            socket.bind(from)?;
            socket.set_nodelay(true)?;
            Ok(libp2p::tcp::tokio::TcpStream(socket.connect(to).await?))
        }
        .boxed())
    }

    fn poll(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, io::Error>> {
        Poll::Pending
    }
}

/// A connection the attacker completed its handshake on (whether the relay then kept it or
/// closed it), held open and never polled: the attacker has no use for it but its slot.
type HeldConnection = Box<dyn std::any::Any + Send>;

/// One fresh identity's connection from [`ATTACKER_IP`] to `victim`, through Noise and Yamux
/// exactly as a node's own transport makes them.
async fn handshaken_connection(victim: Multiaddr) -> Option<(PeerId, HeldConnection)> {
    let key = Keypair::generate_ed25519();
    let noise = noise::Config::new(&key).ok()?;
    let mut transport = TcpFrom(IpAddr::V4(ATTACKER_IP))
        .upgrade(Version::V1)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .timeout(CONNECT_TIMEOUT);
    let dial = transport
        .dial(
            victim,
            DialOpts {
                role: Endpoint::Dialer,
                port_use: PortUse::New,
            },
        )
        .ok()?;
    let (_relay, muxer) = dial.await.ok()?;
    Some((key.public().to_peer_id(), Box::new(muxer)))
}

/// Opens `attempts` connections to `victim` from fresh identities on [`ATTACKER_IP`],
/// [`HANDSHAKES_IN_FLIGHT`] at a time; returns those whose handshake completed.
async fn flood(victim: &Multiaddr, attempts: usize) -> Vec<(PeerId, HeldConnection)> {
    let dials = futures::stream::iter(0..attempts)
        .map(|_| handshaken_connection(victim.clone()))
        .buffer_unordered(HANDSHAKES_IN_FLIGHT)
        .filter_map(|c| async move { c })
        .collect::<Vec<_>>();
    tokio::time::timeout(FLOOD_LIMIT, dials)
        .await
        .unwrap_or_else(|_| panic!("{attempts} handshakes took more than {FLOOD_LIMIT:?}"))
}

/// How many of `attackers` the relay holds a connection with, from the attacker's address.
fn held_by(relay: &TestRelay, attackers: &[(PeerId, HeldConnection)]) -> usize {
    let peers = relay.node.peer_addresses();
    attackers
        .iter()
        .filter(|(peer, _)| peers.ip_of(peer) == Some(IpAddr::V4(ATTACKER_IP)))
        .count()
}

fn refused_by_address(relay: &TestRelay) -> u64 {
    relay
        .node
        .stats()
        .connections_refused_by_address
        .load(Ordering::Relaxed)
}

/// Waits until the relay has decided on every connection the attacker completed (it keeps or
/// closes each a moment after the attacker's side of the handshake is done): until what it
/// holds and has refused by address add up to the attacker's connections, or nothing changed
/// for half a second, at most [`SETTLE_LIMIT`]. Returns what it holds and has refused.
async fn settle(relay: &TestRelay, attackers: &[(PeerId, HeldConnection)]) -> (usize, u64) {
    let started = Instant::now();
    let mut last = (held_by(relay, attackers), refused_by_address(relay));
    let mut unchanged_since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = (held_by(relay, attackers), refused_by_address(relay));
        if now != last {
            last = now;
            unchanged_since = Instant::now();
        }
        let decided = now.0 + usize::try_from(now.1).expect("a count");
        if decided >= attackers.len()
            || unchanged_since.elapsed() >= Duration::from_millis(500)
            || started.elapsed() >= SETTLE_LIMIT
        {
            return now;
        }
    }
}

/// A client that knows `relay`'s address. It dials from the address the kernel picks for
/// loopback, 127.0.0.1 (libp2p binds no dial socket to a listen IP, only to a listen port).
async fn honest_client(relay: &TestRelay) -> Node {
    let config = Wire::Tcp.config(Role::Client, Ipv4Addr::LOCALHOST, false, Vec::new());
    let client = Node::start(Keypair::generate_ed25519(), config)
        .await
        .expect("start the honest client");
    client
        .add_address(relay.peer_id(), relay.node.listen_addrs()[0].clone())
        .await
        .expect("tell the client the relay's address");
    client
}

/// The relay answers each circuit stream with what it sent, until aborted (only the honest
/// client opens any).
fn echo_streams(relay: &TestRelay) -> tokio::task::JoinHandle<()> {
    let mut incoming = relay
        .node
        .stream_control()
        .accept(CIRCUIT_PROTOCOL)
        .expect("accept circuit streams");
    tokio::spawn(async move {
        while let Some((_, mut stream)) = incoming.next().await {
            let mut buf = [0u8; PING.len()];
            if stream.read_exact(&mut buf).await.is_ok() {
                let _ = stream.write_all(&buf).await;
                let _ = stream.close().await;
            }
        }
    })
}

/// The honest client connects to the relay, opens a stream and reads the relay's echo; returns
/// how long it took, or what failed.
async fn honest_exchange(client: &Node, relay: &TestRelay) -> Result<Duration, String> {
    let started = Instant::now();
    let mut control = client.stream_control();
    let exchange = async {
        let mut stream = control
            .open_stream(relay.peer_id(), CIRCUIT_PROTOCOL)
            .await
            .map_err(|e| format!("no stream: {e}"))?;
        stream
            .write_all(PING)
            .await
            .map_err(|e| format!("write: {e}"))?;
        stream.flush().await.map_err(|e| format!("flush: {e}"))?;
        let mut buf = [0u8; PING.len()];
        stream
            .read_exact(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if buf == PING {
            Ok(started.elapsed())
        } else {
            Err(format!("the echo was {buf:?}"))
        }
    };
    tokio::time::timeout(HONEST_LIMIT, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("nothing within {HONEST_LIMIT:?}")))
        .map_err(|failure| format!("{failure} (after {:?})", started.elapsed()))
}

/// What one run of the attack came to.
struct Outcome {
    /// Connections the attacker opened (it completed the handshake on each).
    completed: usize,
    /// The attacker's connections the relay holds once it has decided on all of them.
    held: usize,
    /// Inbound connections the relay refused by their address.
    refused: u64,
    /// The honest client's connection and echo, or what failed.
    honest: Result<Duration, String>,
    /// The address the relay sees the honest client connected from, if it is connected.
    honest_seen_from: Option<IpAddr>,
    took: Duration,
}

/// The nodes of one run, for what a test does after it.
struct Scene {
    relay: TestRelay,
    client: Node,
    attackers: Vec<(PeerId, HeldConnection)>,
    echo: tokio::task::JoinHandle<()>,
}

impl Drop for Scene {
    fn drop(&mut self) {
        self.echo.abort();
    }
}

/// A relay with `limits`; an attacker opens more connections than its global established
/// limit from one address; then an honest client on another address tries to connect.
async fn attack(limits: ConnectionLimits) -> (Outcome, Scene) {
    let started = Instant::now();
    let wire = Wire::Tcp;
    init_tracing();
    let mut config = wire.config(Role::Relay, wire.relay_ip(0), true, Vec::new());
    config.limits = limits;
    let relay = start_relay_with(config).await;
    let echo = echo_streams(&relay);
    let victim = relay.node.listen_addrs()[0].clone();
    let attempts = limits.max_established_incoming as usize + BEYOND_THE_GLOBAL_LIMIT;
    let attackers = flood(&victim, attempts).await;
    let (held, refused) = settle(&relay, &attackers).await;
    let client = honest_client(&relay).await;
    let honest = honest_exchange(&client, &relay).await;
    let honest_seen_from = relay.node.peer_addresses().ip_of(&client.peer_id());
    let outcome = Outcome {
        completed: attackers.len(),
        held,
        refused,
        honest,
        honest_seen_from,
        took: started.elapsed(),
    };
    let scene = Scene {
        relay,
        client,
        attackers,
        echo,
    };
    (outcome, scene)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_connections_from_one_address_than_the_global_limit_keep_no_newcomer_out() {
    let limits = ConnectionLimits::default();
    let bound = limits.max_established_incoming_per_address as usize;
    assert!(
        bound < limits.max_established_incoming as usize,
        "the per-address bound must leave room under the global limit"
    );
    let (outcome, _scene) = attack(limits).await;
    let Outcome {
        completed,
        held,
        refused,
        ..
    } = outcome;
    println!(
        "one address completed {completed} handshakes: the relay holds {held} and refused \
         {refused} by address; the honest client: {:?} from {:?}; {:?} in all",
        outcome.honest, outcome.honest_seen_from, outcome.took
    );
    assert!(
        completed > limits.max_established_incoming as usize,
        "the attacker opened only {completed} connections, not more than the global limit"
    );
    assert_eq!(
        held, bound,
        "the relay holds {held} connections from the attacker's address, not its bound"
    );
    assert_eq!(
        usize::try_from(refused).expect("a count"),
        completed - held,
        "every connection past the bound is refused by its address"
    );
    if let Err(failure) = &outcome.honest {
        panic!(
            "while one address held {held} connections, an honest client on another address \
             failed: {failure}"
        );
    }
    assert!(
        outcome
            .honest_seen_from
            .is_some_and(|ip| ip != IpAddr::V4(ATTACKER_IP)),
        "the honest client should be connected from an address of its own, not {:?}",
        outcome.honest_seen_from
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_per_address_bound_one_address_locks_out_others() {
    let defaults = ConnectionLimits::default();
    // The per-address bound raised past the global limit: only the global limit is left.
    let limits = ConnectionLimits {
        max_established_incoming_per_address: defaults.max_established_incoming * 2,
        ..defaults
    };
    let (outcome, mut scene) = attack(limits).await;
    println!(
        "without the per-address bound, one address completed {} handshakes: the relay holds \
         {}; the honest client: {:?}; {:?} in all",
        outcome.completed, outcome.held, outcome.honest, outcome.took
    );
    assert_eq!(
        outcome.held, limits.max_established_incoming as usize,
        "the attacker's connections should take every established slot"
    );
    assert_eq!(outcome.refused, 0, "no per-address limit refused anything");
    assert!(
        outcome.honest.is_err(),
        "the honest client connected while one address held every established slot: the \
         attack this test shows no longer locks anyone out ({:?})",
        outcome.honest
    );
    assert_eq!(outcome.honest_seen_from, None);
    // The lockout is the attacker's doing: once its connections close, the same client gets
    // in.
    scene.attackers.clear();
    let recovered = retry_honest_exchange(&scene.client, &scene.relay).await;
    println!("once the attacker left, the honest client: {recovered:?}");
    if let Err(failure) = recovered {
        panic!("the honest client was still locked out once the attacker left: {failure}");
    }
}

/// [`honest_exchange`] until it succeeds, starting none after [`HONEST_LIMIT`] (the relay sees
/// the attacker's connections close a moment after they do).
async fn retry_honest_exchange(client: &Node, relay: &TestRelay) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        match honest_exchange(client, relay).await {
            Ok(_) => return Ok(started.elapsed()),
            Err(failure) if started.elapsed() >= HONEST_LIMIT => return Err(failure),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
