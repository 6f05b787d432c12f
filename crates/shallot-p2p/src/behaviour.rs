//! The composed libp2p behaviour and the swarm builder.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use libp2p::core::transport::timeout::TransportTimeout;
use libp2p::core::{Transport as _, upgrade};
use libp2p::kad::store::{MemoryStore, MemoryStoreConfig};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, Swarm, connection_limits, identify, kad, noise, request_response, tcp, yamux,
};

use crate::address_limits::{AddressLimits, PeerAddresses};
use crate::config::{NodeConfig, Role, TransportConfig};
use crate::dircodec::{DIR_PROTOCOL, DirCodec};
use crate::err::P2pError;
use crate::memnet::{MemoryTransport, vouched};
use crate::node::{Directory, NodeStats};
use crate::reachability::{AutonatClient, AutonatServer};

/// The circuit stream protocol (specs/01): one stream per circuit hop.
pub const CIRCUIT_PROTOCOL: StreamProtocol = StreamProtocol::new("/shallot/circuit/1.0.0");
/// Shallot's own Kademlia, never IPFS's (specs/04 §5.1); version 2 with the directory of §7.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/shallot/kad/2.0.0");
/// What identify announces as protocol version.
pub const IDENTIFY_PROTOCOL: &str = "/shallot/1.0.0";
/// What identify announces as agent: the same for every node, so it tells an observer nothing
/// about versions or platforms.
pub const AGENT_VERSION: &str = "shallot";

/// Most DHT records a server stores (each is at most `MAX_DESCRIPTOR_LEN`).
pub const MAX_STORED_RECORDS: usize = 16_384;
/// Largest Kademlia message accepted: a descriptor record with room to spare.
pub const MAX_KAD_PACKET: usize = 64 * 1024;
/// How long a directory request may wait for its answer.
pub const DIR_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a connection's dial and handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Directory streams open at once per connection (inbound and outbound).
pub const MAX_DIR_STREAMS: usize = 16;

/// The composed behaviour. The per-address limits come first: a connection they deny is never
/// counted by the global limits (libp2p asks the fields in order and stops at a denial).
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(crate) address_limits: AddressLimits,
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) kad: kad::Behaviour<MemoryStore>,
    pub(crate) identify: identify::Behaviour,
    pub(crate) stream: libp2p_stream::Behaviour,
    pub(crate) dir: request_response::Behaviour<DirCodec>,
    /// Relays only: tests this relay's own addresses (specs/04 §4.1).
    pub(crate) autonat_client: Toggle<AutonatClient>,
    /// Relays only: dials other nodes back so that they can test theirs.
    pub(crate) autonat_server: Toggle<AutonatServer>,
}

/// What the behaviour shares with the rest of the node.
pub(crate) struct Shared {
    pub(crate) directory: Option<Directory>,
    pub(crate) stats: Arc<NodeStats>,
    pub(crate) peers: PeerAddresses,
}

pub(crate) fn build_swarm(
    keypair: libp2p::identity::Keypair,
    config: &NodeConfig,
    shared: &Shared,
) -> Result<Swarm<Behaviour>, P2pError> {
    let transport_err = |e: &dyn std::fmt::Display| P2pError::Transport(e.to_string());
    let idle = config.idle_connection_timeout;
    let swarm = match &config.transport {
        // TCP as the builder's `with_tcp` makes it, plus a bound on each connection's dial
        // and handshake: without it a dial to an address that drops SYNs holds its probe for
        // the kernel's two minutes.
        TransportConfig::System => libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_quic()
            .with_other_transport(|key| {
                let noise = noise::Config::new(key)
                    .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })?;
                Ok(
                    tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                        .upgrade(upgrade::Version::V1Lazy)
                        .authenticate(noise)
                        .multiplex(yamux::Config::default())
                        .timeout(CONNECT_TIMEOUT),
                )
            })
            .map_err(|e| transport_err(&e))?
            .with_behaviour(|key| behaviour(key, config, shared))
            .map_err(|e| transport_err(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
            .build(),
        TransportConfig::Memory { net, ip } => {
            libp2p::SwarmBuilder::with_existing_identity(keypair)
                .with_tokio()
                .with_other_transport(|key| {
                    let noise = noise::Config::new(key)
                        .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })?;
                    Ok(MemoryTransport::new(net.clone(), *ip)
                        .upgrade(upgrade::Version::V1)
                        .authenticate(noise)
                        .multiplex(yamux::Config::default())
                        .timeout(CONNECT_TIMEOUT))
                })
                .map_err(|e| transport_err(&e))?
                .with_behaviour(|key| behaviour(key, config, shared))
                .map_err(|e| transport_err(&e))?
                .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
                .build()
        }
        TransportConfig::Simulated { net, ip } => {
            libp2p::SwarmBuilder::with_existing_identity(keypair)
                .with_tokio()
                .with_other_transport(|key| {
                    let transport =
                        MemoryTransport::vouching_for(net.clone(), *ip, key.public().to_peer_id());
                    TransportTimeout::new(vouched(transport), CONNECT_TIMEOUT)
                })
                .map_err(|e| transport_err(&e))?
                .with_behaviour(|key| behaviour(key, config, shared))
                .map_err(|e| transport_err(&e))?
                .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
                .build()
        }
    };
    Ok(swarm)
}

/// The Kademlia record store (specs/04 §5.4): descriptor records only, no providers.
fn record_store(local: libp2p::PeerId) -> MemoryStore {
    MemoryStore::with_config(
        local,
        MemoryStoreConfig {
            max_records: MAX_STORED_RECORDS,
            // MemoryStore refuses a value of exactly max_value_bytes: allow the largest
            // descriptor.
            max_value_bytes: shallot_directory::MAX_DESCRIPTOR_LEN + 1,
            // No provider records any more (the directory protocol lists relays, §7).
            max_provided_keys: 0,
            max_providers_per_key: 0,
        },
    )
}

fn behaviour(key: &libp2p::identity::Keypair, config: &NodeConfig, shared: &Shared) -> Behaviour {
    let local = key.public().to_peer_id();
    let store = record_store(local);
    let mut kad_config = kad::Config::new(KAD_PROTOCOL);
    kad_config
        .set_query_timeout(config.query_timeout)
        // specs/04 §5.4: every inbound record is validated first; provider announcements are
        // not stored at all.
        .set_record_filtering(kad::StoreInserts::FilterBoth)
        .set_max_packet_size(MAX_KAD_PACKET)
        // Relays publish fresh descriptors themselves (specs/04 §4); Kademlia only replicates
        // what it holds so a record survives its publisher being briefly offline.
        .set_publication_interval(None)
        .set_replication_interval(Some(config.replication_interval))
        .set_record_ttl(Some(Duration::from_secs(
            shallot_directory::MAX_DESCRIPTOR_LIFETIME_SECS,
        )))
        .set_provider_publication_interval(None)
        .set_periodic_bootstrap_interval(config.kad_bootstrap_interval);
    if let Some(parallelism) = NonZeroUsize::new(3) {
        kad_config.set_parallelism(parallelism);
    }
    let mut kad = kad::Behaviour::with_config(local, store, kad_config);
    // Without a confirmed external address a node stays a DHT client (docs/dependencies.md §3); on
    // loopback nothing ever confirms one, so relays set server mode explicitly, and clients
    // stay clients on purpose (they answer no DHT queries).
    kad.set_mode(Some(match config.role {
        Role::Relay => kad::Mode::Server,
        Role::Client => kad::Mode::Client,
    }));

    let identify = identify::Behaviour::new(
        identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), key.public())
            .with_agent_version(AGENT_VERSION.to_owned())
            .with_hide_listen_addrs(config.role == Role::Client),
    );
    let limits = connection_limits::Behaviour::new(
        connection_limits::ConnectionLimits::default()
            .with_max_pending_incoming(Some(config.limits.max_pending_incoming))
            .with_max_established_incoming(Some(config.limits.max_established_incoming))
            .with_max_established_per_peer(Some(config.limits.max_established_per_peer)),
    );
    // Clients only ask; relays answer too.
    let support = match config.role {
        Role::Relay => request_response::ProtocolSupport::Full,
        Role::Client => request_response::ProtocolSupport::Outbound,
    };
    let dir = request_response::Behaviour::with_codec(
        DirCodec,
        [(DIR_PROTOCOL, support)],
        request_response::Config::default()
            .with_request_timeout(DIR_REQUEST_TIMEOUT)
            .with_max_concurrent_streams(MAX_DIR_STREAMS),
    );
    let relay = config.role == Role::Relay;
    Behaviour {
        address_limits: AddressLimits::new(
            &config.limits,
            shared.directory.clone(),
            Arc::clone(&shared.stats),
            shared.peers.clone(),
        ),
        limits,
        kad,
        identify,
        stream: libp2p_stream::Behaviour::new(),
        dir,
        autonat_client: relay.then(AutonatClient::new).into(),
        autonat_server: relay
            .then(|| AutonatServer::new(config.directory.clone()))
            .into(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use libp2p::kad::store::RecordStore;
    use libp2p::kad::{ProviderRecord, Record, RecordKey};

    use super::*;

    #[test]
    fn the_store_takes_a_record_of_the_largest_descriptor_and_no_provider() {
        let mut store = record_store(libp2p::PeerId::random());
        let largest = Record::new(
            RecordKey::new(&b"k".to_vec()),
            vec![0; shallot_directory::MAX_DESCRIPTOR_LEN],
        );
        store.put(largest).expect("the largest descriptor fits");
        let over = Record::new(
            RecordKey::new(&b"k2".to_vec()),
            vec![0; shallot_directory::MAX_DESCRIPTOR_LEN + 1],
        );
        assert!(store.put(over).is_err());
        let provider = ProviderRecord::new(
            RecordKey::new(&b"p".to_vec()),
            libp2p::PeerId::random(),
            Vec::new(),
        );
        assert!(store.add_provider(provider).is_err(), "no provider records");
    }
}
