//! Settings of a libp2p node.

use std::net::IpAddr;
use std::time::Duration;

use libp2p::Multiaddr;
use shallot_directory::WallClock;

use crate::memnet::MemoryNet;
use crate::node::Directory;

/// Whether a node serves the DHT and circuits, or only uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A relay: Kademlia server mode, publishes its descriptor, validates inbound records.
    Relay,
    /// A client: Kademlia client mode, answers no DHT query, announces no listen address.
    Client,
}

/// Connection limits against hostile peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Inbound connections still in their handshake.
    pub max_pending_incoming: u32,
    /// Established inbound connections.
    pub max_established_incoming: u32,
    /// Established connections with one peer.
    pub max_established_per_peer: u32,
    /// Inbound connections still in their handshake from one IPv4 address or IPv6 /64.
    pub max_pending_incoming_per_address: u32,
    /// Established inbound connections from one IPv4 address or IPv6 /64, relays listed in
    /// the directory store left out.
    pub max_established_incoming_per_address: u32,
}

/// Default [`ConnectionLimits::max_pending_incoming_per_address`]: an eighth of the total, so
/// that one address holding every slot it may still leaves most of them to others, and well
/// above what one host needs (a handshake takes a round trip or two).
pub const DEFAULT_MAX_PENDING_INCOMING_PER_ADDRESS: u32 = 16;
/// Default [`ConnectionLimits::max_established_incoming_per_address`]: Tor's
/// `DoSConnectionMaxConcurrentCount`, which leaves room for many users behind one NAT.
pub const DEFAULT_MAX_ESTABLISHED_INCOMING_PER_ADDRESS: u32 = 100;

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_pending_incoming: 128,
            max_established_incoming: 1024,
            // Each side may have dialed the other, and a probe or a stream at a signed address
            // needs a connection of its own.
            max_established_per_peer: 4,
            max_pending_incoming_per_address: DEFAULT_MAX_PENDING_INCOMING_PER_ADDRESS,
            max_established_incoming_per_address: DEFAULT_MAX_ESTABLISHED_INCOMING_PER_ADDRESS,
        }
    }
}

/// Default sources a refresh gathers listings from (specs/04 §6.1).
pub const DEFAULT_SOURCES_PER_REFRESH: usize = 8;
/// Default Kademlia walks to random keys one refresh may make to find sources.
pub const DEFAULT_MAX_WALKS: usize = 8;
/// Default time between a relay's probes of other relays' addresses.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// How often a node refreshes its Kademlia routing table by default.
pub const DEFAULT_KAD_BOOTSTRAP_INTERVAL: Duration = Duration::from_secs(300);
/// Default time between a relay's synchronisations with other relays (jittered ±25 %).
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(60);

/// Settings of the directory (specs/04 §6–§7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirConfig {
    /// Sources per refresh, each in its own /16 (IPv6 /32) of the address connected to.
    pub sources_per_refresh: usize,
    /// Kademlia walks to random keys per refresh, to find sources.
    pub max_walks: usize,
    /// A relay's time between two probes of other relays' addresses (at most
    /// `MAX_PROBES_IN_FLIGHT` run at once).
    pub probe_interval: Duration,
    /// A relay's time between synchronisations of its store with other relays'.
    pub sync_interval: Duration,
    /// Dial private, loopback and link-local addresses (probes, sources). Only for test
    /// networks, where every node is on such an address.
    pub allow_private_addrs: bool,
}

impl Default for DirConfig {
    fn default() -> Self {
        Self {
            sources_per_refresh: DEFAULT_SOURCES_PER_REFRESH,
            max_walks: DEFAULT_MAX_WALKS,
            probe_interval: DEFAULT_PROBE_INTERVAL,
            sync_interval: DEFAULT_SYNC_INTERVAL,
            allow_private_addrs: false,
        }
    }
}

/// How a node reaches others.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TransportConfig {
    /// TCP (with Noise and Yamux) and QUIC on the operating system's network.
    #[default]
    System,
    /// A [`MemoryNet`] in this process (tests and simulations): TCP-style addresses, Noise and
    /// Yamux over in-memory pipes; the node dials out from `ip`.
    Memory {
        /// The network.
        net: MemoryNet,
        /// The node's own IP (dials come from it).
        ip: IpAddr,
    },
    /// A [`MemoryNet`] whose nodes need no handshake: the network tells each end of a
    /// connection the other's PeerId (a simulation of thousands of nodes on one machine, where
    /// Noise would take most of the CPU). Every node of the network must use it.
    Simulated {
        /// The network.
        net: MemoryNet,
        /// The node's own IP (dials come from it).
        ip: IpAddr,
    },
}

/// Settings of a [`crate::Node`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Relay or client.
    pub role: Role,
    /// Addresses to listen on (`/ip4/127.0.0.1/tcp/0` picks a free port). Clients usually
    /// listen on none.
    pub listen_addrs: Vec<Multiaddr>,
    /// Known DHT servers, each ending with `/p2p/<PeerId>`.
    pub bootstrap: Vec<Multiaddr>,
    /// How long one Kademlia query may run.
    pub query_timeout: Duration,
    /// How long an unused connection stays open.
    pub idle_connection_timeout: Duration,
    /// How often a DHT server re-replicates the records it holds to the closest peers.
    pub replication_interval: Duration,
    /// How often the node refreshes its Kademlia routing table with a bootstrap query;
    /// `None`: only at start.
    pub kad_bootstrap_interval: Option<Duration>,
    /// The directory (specs/04 §7).
    pub directory: DirConfig,
    /// Connection limits.
    pub limits: ConnectionLimits,
    /// How the node reaches others. Default: the system's TCP and QUIC.
    pub transport: TransportConfig,
    /// The wall clock descriptors are validated against. Default: the system's.
    pub clock: WallClock,
    /// A relay's directory store to use instead of a new one. Only simulations set it: the
    /// relays of a simulated network may share one store that stands for a network in which
    /// every relay has already proven every other (specs/04 §6.1.2), where ten thousand stores
    /// of ten thousand entries would not fit one machine. Default: none.
    pub shared_directory: Option<Directory>,
}

impl NodeConfig {
    /// Defaults for `role`, listening on `listen_addrs`, bootstrapping from `bootstrap`.
    pub fn new(role: Role, listen_addrs: Vec<Multiaddr>, bootstrap: Vec<Multiaddr>) -> Self {
        Self {
            role,
            listen_addrs,
            bootstrap,
            query_timeout: Duration::from_secs(30),
            idle_connection_timeout: Duration::from_secs(120),
            replication_interval: Duration::from_secs(600),
            kad_bootstrap_interval: Some(DEFAULT_KAD_BOOTSTRAP_INTERVAL),
            directory: DirConfig::default(),
            limits: ConnectionLimits::default(),
            transport: TransportConfig::default(),
            clock: WallClock::system(),
            shared_directory: None,
        }
    }
}
