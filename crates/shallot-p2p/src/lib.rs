#![doc = include_str!("../README.md")]

mod address_limits;
mod behaviour;
mod bootstrap;
mod config;
mod dircodec;
mod err;
mod memnet;
mod node;
mod reachability;

pub use address_limits::PeerAddresses;
pub use behaviour::{
    AGENT_VERSION, CIRCUIT_PROTOCOL, CONNECT_TIMEOUT, DIR_REQUEST_TIMEOUT, IDENTIFY_PROTOCOL,
    KAD_PROTOCOL, MAX_DIR_STREAMS, MAX_KAD_PACKET, MAX_STORED_RECORDS,
};
pub use bootstrap::{BootstrapDial, BootstrapPeerStatus, DialFailure};
pub use config::{
    ConnectionLimits, DEFAULT_KAD_BOOTSTRAP_INTERVAL, DEFAULT_MAX_ESTABLISHED_INCOMING_PER_ADDRESS,
    DEFAULT_MAX_PENDING_INCOMING_PER_ADDRESS, DEFAULT_MAX_WALKS, DEFAULT_PROBE_INTERVAL,
    DEFAULT_SOURCES_PER_REFRESH, DEFAULT_SYNC_INTERVAL, DirConfig, NodeConfig, Role,
    TransportConfig,
};
pub use dircodec::{DIR_PROTOCOL, read_dir_message, write_dir_message};
pub use err::P2pError;
pub use libp2p::multiaddr::Protocol;
pub use libp2p::{Multiaddr, PeerId, identity};
pub use libp2p_stream::{Control as StreamControl, IncomingStreams, OpenStreamError};
pub use memnet::{
    MEMORY_BACKLOG, MEMORY_PIPE_BYTES, MemoryNet, MemoryNetError, MemoryStream, MemoryTransport,
    VouchedConnection, vouched,
};
pub use node::{
    COMMAND_QUEUE, Directory, FetchOutcome, MAX_ANNOUNCE_PEERS, MAX_CANDIDATES_PER_REFRESH,
    MAX_CONTEST_ROUNDS, MAX_LISTINGS_IN_FLIGHT, MAX_PAGES_PER_SOURCE, MAX_PENDING_PUBLISHES,
    MAX_PROBES_IN_FLIGHT, MAX_REFRESH_TIME, MAX_REFRESH_WAITERS, MAX_VERIFICATIONS,
    MAX_VERIFY_DIALS_IN_FLIGHT, MAX_VERIFY_TARGETS, MAX_VERIFY_TIME, Node, NodeStats, peer_of,
};
pub use reachability::{
    AUTONAT_DIAL_REQUEST_PROTOCOL, AUTONAT_PROBE_INTERVAL, REACHABILITY_TEST_DEADLINE,
    Reachability, UNTESTABLE_AFTER,
};
