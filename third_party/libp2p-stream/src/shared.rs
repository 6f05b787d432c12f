use std::{
    collections::{HashMap, hash_map::Entry},
    io,
    sync::{Arc, Mutex, MutexGuard},
};

use futures::channel::mpsc;
use libp2p_core::{ConnectedPoint, Multiaddr, multiaddr::Protocol};
use libp2p_identity::PeerId;
use libp2p_swarm::{ConnectionId, Stream, StreamProtocol, dial_opts::DialOpts};
use rand::seq::IteratorRandom as _;

use crate::{AlreadyRegistered, IncomingStreams, handler::NewStream};

/// Inbound streams of one protocol negotiated but not yet taken by its `IncomingStreams`
/// (Shallot's change, see `accept`). Each holds only a negotiated substream; a relay admits
/// as many handshakes at once behind this queue (its MAX_PENDING_HANDSHAKES), and a flood
/// must not make this queue drop an honest stream before the relay's fair limits see it.
const INBOUND_QUEUE: usize = 1024;

/// Dials for `Control::open_stream_at` waiting for the behaviour's next poll (Shallot's
/// addition). Past it, `open_stream_at` fails at once instead of waiting.
pub(crate) const PENDING_DIALS_AT: usize = 256;

/// A dial of `open_stream_at` in progress, and the streams waiting for it.
pub(crate) struct PendingDialAt {
    peer: PeerId,
    addrs: Vec<Multiaddr>,
    sender: mpsc::Sender<NewStream>,
    receiver: mpsc::Receiver<NewStream>,
}

/// A dial the behaviour is to start.
pub(crate) enum Dial {
    /// Any address the swarm knows for the peer (upstream's behaviour).
    Peer(PeerId),
    /// Only the given addresses, on a connection of its own (Shallot's addition).
    At(DialOpts),
}

pub(crate) struct Shared {
    /// Tracks the supported inbound protocols created via
    /// [`Control::accept`](crate::Control::accept).
    ///
    /// For each [`StreamProtocol`], we hold the [`mpsc::Sender`] corresponding to the
    /// [`mpsc::Receiver`] in [`IncomingStreams`].
    supported_inbound_protocols: HashMap<StreamProtocol, mpsc::Sender<(PeerId, Stream)>>,

    connections: HashMap<ConnectionId, PeerId>,
    /// The address each connection we dialed was dialed at, without `/p2p` (Shallot).
    dialed_at: HashMap<ConnectionId, Multiaddr>,
    senders: HashMap<ConnectionId, mpsc::Sender<NewStream>>,

    /// Channel pairs of dials started by `open_stream_at`, by the connection they will be
    /// (Shallot). Bounded by [`PENDING_DIALS_AT`] plus the dials in progress, which the
    /// swarm's connection limits bound.
    pending_dials_at: HashMap<ConnectionId, PendingDialAt>,

    /// Tracks channel pairs for a peer whilst we are dialing them.
    pending_channels: HashMap<PeerId, (mpsc::Sender<NewStream>, mpsc::Receiver<NewStream>)>,

    /// Sender for peers we want to dial.
    ///
    /// We manage this through a channel to avoid locks as part of
    /// [`NetworkBehaviour::poll`](libp2p_swarm::NetworkBehaviour::poll).
    dial_sender: mpsc::Sender<Dial>,
}

impl Shared {
    pub(crate) fn lock(shared: &Arc<Mutex<Shared>>) -> MutexGuard<'_, Shared> {
        shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Shared {
    pub(crate) fn new(dial_sender: mpsc::Sender<Dial>) -> Self {
        Self {
            dial_sender,
            connections: Default::default(),
            dialed_at: Default::default(),
            pending_dials_at: Default::default(),
            senders: Default::default(),
            pending_channels: Default::default(),
            supported_inbound_protocols: Default::default(),
        }
    }

    pub(crate) fn accept(
        &mut self,
        protocol: StreamProtocol,
    ) -> Result<IncomingStreams, AlreadyRegistered> {
        self.supported_inbound_protocols
            .retain(|_, sender| !sender.is_closed());

        if self.supported_inbound_protocols.contains_key(&protocol) {
            return Err(AlreadyRegistered);
        }

        // Shallot: was `mpsc::channel(0)`, one slot. A connection task that negotiates two
        // inbound streams in one poll dropped the second before the acceptor could run
        // (rust-libp2p#5651); a relay extending several circuits at once to the same next hop
        // lost some. The queue stays bounded: past it, streams are still dropped.
        let (sender, receiver) = mpsc::channel(INBOUND_QUEUE);
        self.supported_inbound_protocols
            .insert(protocol.clone(), sender);

        Ok(IncomingStreams::new(receiver))
    }

    /// Lists the protocols for which we have an active [`IncomingStreams`] instance.
    pub(crate) fn supported_inbound_protocols(&mut self) -> Vec<StreamProtocol> {
        self.supported_inbound_protocols
            .retain(|_, sender| !sender.is_closed());

        self.supported_inbound_protocols.keys().cloned().collect()
    }

    pub(crate) fn on_inbound_stream(
        &mut self,
        remote: PeerId,
        stream: Stream,
        protocol: StreamProtocol,
    ) {
        match self.supported_inbound_protocols.entry(protocol.clone()) {
            Entry::Occupied(mut entry) => match entry.get_mut().try_send((remote, stream)) {
                Ok(()) => {}
                Err(e) if e.is_full() => {
                    tracing::debug!(%protocol, "Channel is full, dropping inbound stream");
                }
                Err(e) if e.is_disconnected() => {
                    tracing::debug!(%protocol, "Channel is gone, dropping inbound stream");
                    entry.remove();
                }
                _ => unreachable!(),
            },
            Entry::Vacant(_) => {
                tracing::debug!(%protocol, "channel is gone, dropping inbound stream");
            }
        }
    }

    pub(crate) fn on_connection_established(
        &mut self,
        conn: ConnectionId,
        peer: PeerId,
        endpoint: &ConnectedPoint,
    ) {
        self.connections.insert(conn, peer);
        if let ConnectedPoint::Dialer { address, .. } = endpoint {
            self.dialed_at.insert(conn, without_peer(address));
        }
    }

    pub(crate) fn on_connection_closed(&mut self, conn: ConnectionId) {
        self.connections.remove(&conn);
        self.dialed_at.remove(&conn);
        self.senders.remove(&conn);
    }

    pub(crate) fn is_dial_at(&self, conn: ConnectionId) -> bool {
        self.pending_dials_at.contains_key(&conn)
    }

    /// A dial of `open_stream_at` failed: its streams fail with `reason`.
    pub(crate) fn on_dial_at_failure(&mut self, conn: ConnectionId, reason: String) {
        let Some(PendingDialAt { mut receiver, .. }) = self.pending_dials_at.remove(&conn) else {
            return;
        };
        while let Ok(new_stream) = receiver.try_recv() {
            let _ = new_stream
                .sender
                .send(Err(crate::OpenStreamError::Io(io::Error::new(
                    io::ErrorKind::NotConnected,
                    reason.clone(),
                ))));
        }
    }

    /// A sender for a stream to `peer` on a connection we dialed at one of `addrs` (compared
    /// without `/p2p`): an existing one, or a new connection dialed at those addresses only.
    /// Connections the peer dialed to us, or that we dialed elsewhere, are never used.
    pub(crate) fn sender_at(
        &mut self,
        peer: PeerId,
        addrs: &[Multiaddr],
    ) -> Result<mpsc::Sender<NewStream>, crate::OpenStreamError> {
        let wanted: Vec<Multiaddr> = addrs.iter().map(without_peer).collect();
        let existing = self
            .connections
            .iter()
            .filter(|(c, p)| {
                **p == peer && self.dialed_at.get(*c).is_some_and(|a| wanted.contains(a))
            })
            .map(|(c, _)| *c)
            .choose(&mut rand::rng())
            .and_then(|c| self.senders.get(&c));
        if let Some(sender) = existing {
            return Ok(sender.clone());
        }
        // A dial to the same peer at one of these addresses is under way: wait for it.
        let joining = self
            .pending_dials_at
            .values()
            .find(|d| d.peer == peer && d.addrs.iter().all(|a| wanted.contains(a)));
        if let Some(d) = joining {
            return Ok(d.sender.clone());
        }
        if wanted.is_empty() {
            return Err(crate::OpenStreamError::Io(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "no address to dial",
            )));
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(wanted.clone())
            .condition(libp2p_swarm::dial_opts::PeerCondition::Always)
            .build();
        let conn = opts.connection_id();
        if self.dial_sender.try_send(Dial::At(opts)).is_err() {
            return Err(crate::OpenStreamError::Io(io::Error::new(
                io::ErrorKind::WouldBlock,
                "too many dials waiting",
            )));
        }
        let (sender, receiver) = mpsc::channel(0);
        self.pending_dials_at.insert(
            conn,
            PendingDialAt {
                peer,
                addrs: wanted,
                sender: sender.clone(),
                receiver,
            },
        );
        Ok(sender)
    }

    pub(crate) fn on_dial_failure(&mut self, peer: PeerId, reason: String) {
        let Some((_, mut receiver)) = self.pending_channels.remove(&peer) else {
            return;
        };

        while let Ok(new_stream) = receiver.try_recv() {
            let _ = new_stream
                .sender
                .send(Err(crate::OpenStreamError::Io(io::Error::new(
                    io::ErrorKind::NotConnected,
                    reason.clone(),
                ))));
        }
    }

    pub(crate) fn sender(&mut self, peer: PeerId) -> mpsc::Sender<NewStream> {
        let maybe_sender = self
            .connections
            .iter()
            .filter_map(|(c, p)| (p == &peer).then_some(c))
            .choose(&mut rand::rng())
            .and_then(|c| self.senders.get(c));

        match maybe_sender {
            Some(sender) => {
                tracing::debug!("Returning sender to existing connection");

                sender.clone()
            }
            None => {
                tracing::debug!(%peer, "Not connected to peer, initiating dial");

                let (sender, _) = self
                    .pending_channels
                    .entry(peer)
                    .or_insert_with(|| mpsc::channel(0));

                let _ = self.dial_sender.try_send(Dial::Peer(peer));

                sender.clone()
            }
        }
    }

    pub(crate) fn receiver(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
    ) -> mpsc::Receiver<NewStream> {
        // A connection dialed for `open_stream_at` serves the streams that asked for it.
        if let Some(d) = self.pending_dials_at.remove(&connection) {
            self.senders.insert(connection, d.sender);
            return d.receiver;
        }
        if let Some((sender, receiver)) = self.pending_channels.remove(&peer) {
            tracing::debug!(%peer, %connection, "Returning existing pending receiver");

            self.senders.insert(connection, sender);
            return receiver;
        }

        tracing::debug!(%peer, %connection, "Creating new channel pair");

        let (sender, receiver) = mpsc::channel(0);
        self.senders.insert(connection, sender);

        receiver
    }
}

fn without_peer(addr: &Multiaddr) -> Multiaddr {
    let mut addr = addr.clone();
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.pop();
    }
    addr
}
