#![doc = include_str!("../README.md")]

mod behaviour;
mod config;
mod err;
mod memnet;
mod node;

pub use behaviour::{
    AGENT_VERSION, CIRCUIT_PROTOCOL, IDENTIFY_PROTOCOL, KAD_PROTOCOL, MAX_KAD_PACKET,
    MAX_PROVIDERS_PER_SHARD, MAX_STORED_RECORDS,
};
pub use config::{ConnectionLimits, NodeConfig, Role, TransportConfig};
pub use err::P2pError;
pub use libp2p::multiaddr::Protocol;
pub use libp2p::{Multiaddr, PeerId, identity};
pub use libp2p_stream::{Control as StreamControl, IncomingStreams, OpenStreamError};
pub use memnet::{MEMORY_BACKLOG, MEMORY_PIPE_BYTES, MemoryNet, MemoryNetError};
pub use node::{
    COMMAND_QUEUE, FetchOutcome, MAX_FETCHES_IN_FLIGHT, MAX_PENDING_PUBLISHES, MAX_REFRESH_WAITERS,
    Node, NodeStats, StoredProvider, peer_of,
};
