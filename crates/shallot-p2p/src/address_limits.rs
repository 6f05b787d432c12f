//! Connection limits per source address (specs/00 §4.4): inbound connections still in their
//! handshake and established inbound connections, per IPv4 address and per IPv6 /64, and the
//! address each connected peer is connected from, for the relay's own per-address limits.
//!
//! libp2p's `connection_limits` counts in total and per PeerId. A PeerId costs nothing, and
//! one address holding every pending slot locks every newcomer out, so the counts that matter
//! against one host are by address. Relays listed in the node's directory store are exempt
//! from the established-connection count (they carry many clients' circuits; Tor exempts known
//! relays from its connection limits for the same reason); pending connections have no PeerId
//! yet, so every address counts there.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::{ConnectedPoint, Endpoint};
use libp2p::swarm::behaviour::ConnectionEstablished;
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionId, DialFailure, FromSwarm, ListenFailure,
    NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};
use shallot_directory::{HostKey, ip_of};

use crate::config::ConnectionLimits;
use crate::node::{Directory, NodeStats};

/// Why an inbound connection was denied by its address.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AddressLimitExceeded {
    /// `max_pending_incoming_per_address` reached.
    #[error("too many inbound connections in their handshake from one address")]
    Pending,
    /// `max_established_incoming_per_address` reached.
    #[error("too many inbound connections from one address")]
    Established,
}

/// The address each connected peer is connected from (the remote IP of one of its open
/// connections): what a relay's per-address circuit limits look at, since a circuit stream
/// names only a PeerId. One entry per open connection, so it is bounded by the connection
/// limits.
#[derive(Debug, Clone, Default)]
pub struct PeerAddresses(Arc<RwLock<HashMap<PeerId, HashMap<ConnectionId, IpAddr>>>>);

impl PeerAddresses {
    /// The IP `peer` is connected from, while it has a connection.
    pub fn ip_of(&self, peer: &PeerId) -> Option<IpAddr> {
        let map = self.0.read().unwrap_or_else(PoisonError::into_inner);
        map.get(peer)
            .and_then(|conns| conns.values().min().copied())
    }

    fn insert(&self, peer: PeerId, connection: ConnectionId, ip: IpAddr) {
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        map.entry(peer).or_default().insert(connection, ip);
    }

    fn remove(&self, peer: &PeerId, connection: ConnectionId) {
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(conns) = map.get_mut(peer) {
            conns.remove(&connection);
            if conns.is_empty() {
                map.remove(peer);
            }
        }
    }

    #[cfg(test)]
    fn connections(&self) -> usize {
        let map = self.0.read().unwrap_or_else(PoisonError::into_inner);
        map.values().map(HashMap::len).sum()
    }
}

/// The behaviour: denies inbound connections over the per-address limits and records which
/// address each peer is connected from.
pub(crate) struct AddressLimits {
    max_pending: u32,
    max_established: u32,
    directory: Option<Directory>,
    stats: Arc<NodeStats>,
    peers: PeerAddresses,
    /// Inbound connections in their handshake, by id; bounded by libp2p's
    /// `max_pending_incoming` behind this behaviour, and by this behaviour's own per-address
    /// count in front of it.
    pending: HashMap<ConnectionId, HostKey>,
    pending_per_host: HashMap<HostKey, u32>,
    /// Established inbound connections from peers that are not listed relays.
    established: HashMap<ConnectionId, HostKey>,
    established_per_host: HashMap<HostKey, u32>,
    /// Connections recorded in `peers` when their handler was made, until the swarm reports
    /// them established or failed. Bounded as `pending` is: the swarm settles each in the same
    /// step.
    recorded_early: HashMap<ConnectionId, PeerId>,
}

impl AddressLimits {
    pub(crate) fn new(
        limits: &ConnectionLimits,
        directory: Option<Directory>,
        stats: Arc<NodeStats>,
        peers: PeerAddresses,
    ) -> Self {
        Self {
            max_pending: limits.max_pending_incoming_per_address,
            max_established: limits.max_established_incoming_per_address,
            directory,
            stats,
            peers,
            pending: HashMap::new(),
            pending_per_host: HashMap::new(),
            established: HashMap::new(),
            established_per_host: HashMap::new(),
            recorded_early: HashMap::new(),
        }
    }

    fn is_listed_relay(&self, peer: &PeerId) -> bool {
        self.directory.as_ref().is_some_and(|d| d.lists(peer))
    }

    /// Records where `peer`'s connection comes from as soon as its handler is made. The swarm
    /// starts the connection's task before it reports the connection established, so on a
    /// multi-threaded runtime the peer's first stream can reach the relay before
    /// `ConnectionEstablished` does: a relay that looked the peer up then found no address and
    /// closed an honest circuit stream (seen under load as `LinkClosed` in
    /// `shallot-relay/tests/by_address.rs`).
    fn record_early(&mut self, connection: ConnectionId, peer: PeerId, ip: IpAddr) {
        self.peers.insert(peer, connection, ip);
        self.recorded_early.insert(connection, peer);
    }

    /// A connection recorded early that the swarm did not establish after all.
    fn forget_early(&mut self, connection: ConnectionId) {
        if let Some(peer) = self.recorded_early.remove(&connection) {
            self.peers.remove(&peer, connection);
        }
    }

    fn forget_pending(&mut self, connection: ConnectionId) {
        if let Some(host) = self.pending.remove(&connection) {
            decrement(&mut self.pending_per_host, host);
        }
    }
}

fn decrement(counts: &mut HashMap<HostKey, u32>, host: HostKey) {
    if let Some(n) = counts.get_mut(&host) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(&host);
        }
    }
}

/// The IP a connection's remote end has, as the transport reports it.
fn remote_ip(endpoint: &ConnectedPoint) -> Option<IpAddr> {
    match endpoint {
        ConnectedPoint::Dialer { address, .. } => ip_of(address),
        ConnectedPoint::Listener { send_back_addr, .. } => ip_of(send_back_addr),
    }
}

impl NetworkBehaviour for AddressLimits {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        // A transport that reports no IP (none of ours) is left to the global limits.
        let Some(ip) = ip_of(remote_addr) else {
            return Ok(());
        };
        let host = HostKey::of(ip);
        let count = self.pending_per_host.entry(host).or_default();
        if *count >= self.max_pending {
            self.stats
                .connections_refused_by_address
                .fetch_add(1, Ordering::Relaxed);
            return Err(ConnectionDenied::new(AddressLimitExceeded::Pending));
        }
        *count += 1;
        self.pending.insert(connection_id, host);
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.forget_pending(connection_id);
        if let Some(ip) = ip_of(remote_addr)
            && !self.is_listed_relay(&peer)
        {
            let host = HostKey::of(ip);
            let count = self.established_per_host.get(&host).copied().unwrap_or(0);
            if count >= self.max_established {
                self.stats
                    .connections_refused_by_address
                    .fetch_add(1, Ordering::Relaxed);
                return Err(ConnectionDenied::new(AddressLimitExceeded::Established));
            }
        }
        if let Some(ip) = ip_of(remote_addr) {
            self.record_early(connection_id, peer, ip);
        }
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if let Some(ip) = ip_of(addr) {
            self.record_early(connection_id, peer, ip);
        }
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            }) => {
                self.recorded_early.remove(&connection_id);
                let Some(ip) = remote_ip(endpoint) else {
                    return;
                };
                self.peers.insert(peer_id, connection_id, ip);
                if endpoint.is_listener() && !self.is_listed_relay(&peer_id) {
                    let host = HostKey::of(ip);
                    self.established.insert(connection_id, host);
                    *self.established_per_host.entry(host).or_default() += 1;
                }
            }
            FromSwarm::ConnectionClosed(ConnectionClosed {
                peer_id,
                connection_id,
                ..
            }) => {
                self.peers.remove(&peer_id, connection_id);
                if let Some(host) = self.established.remove(&connection_id) {
                    decrement(&mut self.established_per_host, host);
                }
            }
            FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => {
                self.forget_pending(connection_id);
                self.forget_early(connection_id);
            }
            FromSwarm::DialFailure(DialFailure { connection_id, .. }) => {
                self.forget_early(connection_id);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer_id: PeerId,
        _connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        libp2p::core::util::unreachable(event)
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn limits(pending: u32, established: u32) -> AddressLimits {
        AddressLimits::new(
            &ConnectionLimits {
                max_pending_incoming_per_address: pending,
                max_established_incoming_per_address: established,
                ..ConnectionLimits::default()
            },
            None,
            Arc::new(NodeStats::default()),
            PeerAddresses::default(),
        )
    }

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    fn listener(remote: &str) -> ConnectedPoint {
        ConnectedPoint::Listener {
            local_addr: addr("/ip4/10.0.0.1/tcp/1"),
            send_back_addr: addr(remote),
        }
    }

    #[test]
    fn pending_connections_are_bounded_per_address_and_released() {
        let mut b = limits(2, 10);
        let local = addr("/ip4/10.0.0.1/tcp/1");
        let a = addr("/ip4/192.0.2.1/tcp/5000");
        let (c1, c2) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
        );
        b.handle_pending_inbound_connection(c1, &local, &a).unwrap();
        b.handle_pending_inbound_connection(c2, &local, &a).unwrap();
        assert!(
            b.handle_pending_inbound_connection(ConnectionId::new_unchecked(3), &local, &a)
                .is_err()
        );
        assert_eq!(
            b.stats
                .connections_refused_by_address
                .load(Ordering::Relaxed),
            1
        );
        // Another address, and another port of the same /64, are counted apart and together.
        let other = addr("/ip4/192.0.2.2/tcp/5000");
        b.handle_pending_inbound_connection(ConnectionId::new_unchecked(4), &local, &other)
            .unwrap();
        let v6a = addr("/ip6/2001:db8:1:2::1/tcp/1");
        let v6b = addr("/ip6/2001:db8:1:2::9/tcp/1");
        b.handle_pending_inbound_connection(ConnectionId::new_unchecked(5), &local, &v6a)
            .unwrap();
        b.handle_pending_inbound_connection(ConnectionId::new_unchecked(6), &local, &v6b)
            .unwrap();
        assert!(
            b.handle_pending_inbound_connection(ConnectionId::new_unchecked(7), &local, &v6a)
                .is_err()
        );
        // A handshake that fails frees its place; one that completes too.
        b.on_swarm_event(FromSwarm::ListenFailure(ListenFailure {
            local_addr: &local,
            send_back_addr: &a,
            error: &libp2p::swarm::ListenError::Aborted,
            connection_id: c1,
            peer_id: None,
        }));
        b.handle_established_inbound_connection(c2, PeerId::random(), &local, &a)
            .unwrap();
        for id in [8, 9] {
            b.handle_pending_inbound_connection(ConnectionId::new_unchecked(id), &local, &a)
                .unwrap();
        }
    }

    #[test]
    fn established_connections_are_bounded_per_address_and_peers_are_known_by_address() {
        let mut b = limits(10, 2);
        let local = addr("/ip4/10.0.0.1/tcp/1");
        let remote = "/ip4/192.0.2.1/tcp/5000";
        let peers: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        for (i, peer) in peers.iter().take(2).enumerate() {
            let id = ConnectionId::new_unchecked(i);
            b.handle_established_inbound_connection(id, *peer, &local, &addr(remote))
                .unwrap();
            b.on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
                peer_id: *peer,
                connection_id: id,
                endpoint: &listener(remote),
                failed_addresses: &[],
                other_established: 0,
            }));
        }
        assert!(
            b.handle_established_inbound_connection(
                ConnectionId::new_unchecked(2),
                peers[2],
                &local,
                &addr(remote)
            )
            .is_err()
        );
        assert_eq!(b.peers.ip_of(&peers[0]), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(b.peers.ip_of(&peers[2]), None);
        b.on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
            peer_id: peers[0],
            connection_id: ConnectionId::new_unchecked(0),
            endpoint: &listener(remote),
            cause: None,
            remaining_established: 0,
        }));
        assert_eq!(b.peers.ip_of(&peers[0]), None);
        assert_eq!(b.peers.connections(), 1);
        b.handle_established_inbound_connection(
            ConnectionId::new_unchecked(2),
            peers[2],
            &local,
            &addr(remote),
        )
        .unwrap();
    }

    #[test]
    fn a_peer_is_known_by_address_from_its_handler_on_and_forgotten_if_denied_later() {
        let mut b = limits(10, 10);
        let local = addr("/ip4/10.0.0.1/tcp/1");
        let remote = "/ip4/192.0.2.7/tcp/5000";
        let peer = PeerId::random();
        let id = ConnectionId::new_unchecked(7);
        b.handle_established_inbound_connection(id, peer, &local, &addr(remote))
            .unwrap();
        // Before ConnectionEstablished: the connection's task may already deliver a stream.
        assert_eq!(b.peers.ip_of(&peer), Some("192.0.2.7".parse().unwrap()));
        // Another behaviour denied it: the swarm reports a listen failure, and it goes.
        let denied = libp2p::swarm::ListenError::Aborted;
        b.on_swarm_event(FromSwarm::ListenFailure(ListenFailure {
            local_addr: &local,
            send_back_addr: &addr(remote),
            error: &denied,
            connection_id: id,
            peer_id: Some(peer),
        }));
        assert_eq!(b.peers.ip_of(&peer), None);
        assert!(b.recorded_early.is_empty());
        // Established after all: it stays until closed, and the early record is settled.
        b.handle_established_inbound_connection(id, peer, &local, &addr(remote))
            .unwrap();
        b.on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
            peer_id: peer,
            connection_id: id,
            endpoint: &listener(remote),
            failed_addresses: &[],
            other_established: 0,
        }));
        assert!(b.recorded_early.is_empty());
        assert_eq!(b.peers.connections(), 1);
    }
}
