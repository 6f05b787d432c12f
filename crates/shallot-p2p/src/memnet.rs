//! An in-memory network for tests and simulations. Nodes listen on and dial ordinary
//! `/ip4/A/tcp/P` and `/ip6/A/tcp/P` addresses, but the bytes move through in-memory pipes in
//! one process: a thousand nodes need no socket and no file descriptor, and every address still
//! carries the IP that the subnet caps of the view and the path rules look at (specs/04,
//! specs/05). Each node dials out from its own address, so a listener sees who called.
//!
//! Over these pipes a node runs the same Noise and Yamux upgrades as over TCP, or, in a
//! simulation of thousands of nodes, lets the network vouch for who listens and who dials
//! (`TransportConfig::Simulated`): the network knows every node's PeerId, so it can tell each
//! end the other's without a handshake, and the CPU a million Noise handshakes would take goes
//! to the protocol being simulated instead. Everything above the connection (Kademlia, the
//! directory protocol, probes and verification) runs unchanged.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use futures::future::{Ready, ready};
use libp2p::core::ConnectedPoint;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::and_then::AndThen;
use libp2p::core::transport::{DialOpts, ListenerId, Transport, TransportError, TransportEvent};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, yamux};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

/// Connections waiting to be accepted by one listener; a dial past it is refused, as a full
/// listen backlog would.
pub const MEMORY_BACKLOG: usize = 128;
/// Bytes buffered in each direction of an in-memory connection (a socket buffer's role).
pub const MEMORY_PIPE_BYTES: usize = 256 * 1024;
/// The first port handed out for `…/tcp/0` listeners and for dialers.
const FIRST_EPHEMERAL_PORT: u16 = 32_768;

/// One end of an in-memory connection, with the PeerId of the other end when the network
/// vouches for identities.
pub struct MemoryStream {
    io: Compat<DuplexStream>,
    remote: Option<PeerId>,
}

impl MemoryStream {
    /// The other end's PeerId, as the network knows it: `None` unless both ends' transports
    /// were built with [`MemoryTransport::vouching_for`].
    pub fn remote_peer(&self) -> Option<PeerId> {
        self.remote
    }
}

impl futures::AsyncRead for MemoryStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl futures::AsyncWrite for MemoryStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_close(cx)
    }
}

/// A connection on its way to a listener, with the dialer's address and identity.
struct Incoming {
    stream: MemoryStream,
    from: SocketAddr,
}

/// What listens at one address.
#[derive(Clone)]
struct Listening {
    incoming: mpsc::Sender<Incoming>,
    peer: Option<PeerId>,
}

#[derive(Default)]
struct Hub {
    listeners: HashMap<SocketAddr, Listening>,
    /// The next port to try per IP, for `…/tcp/0` listeners and dialers.
    next_port: HashMap<IpAddr, u16>,
}

impl Hub {
    /// A port of `ip` no listener uses.
    fn free_port(&mut self, ip: IpAddr) -> Option<u16> {
        let next = self.next_port.entry(ip).or_insert(FIRST_EPHEMERAL_PORT);
        for _ in 0..=(u16::MAX - FIRST_EPHEMERAL_PORT) {
            let port = *next;
            *next = if port == u16::MAX {
                FIRST_EPHEMERAL_PORT
            } else {
                port + 1
            };
            if !self.listeners.contains_key(&SocketAddr::new(ip, port)) {
                return Some(port);
            }
        }
        None
    }
}

/// The network: a shared registry of listeners. Cloning shares it; nodes given the same
/// `MemoryNet` can reach each other, and nothing else.
#[derive(Clone, Default)]
pub struct MemoryNet {
    hub: Arc<Mutex<Hub>>,
}

impl MemoryNet {
    /// A new, empty network.
    pub fn new() -> Self {
        Self::default()
    }

    fn hub(&self) -> MutexGuard<'_, Hub> {
        self.hub.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Addresses something listens on now.
    pub fn listeners(&self) -> usize {
        self.hub().listeners.len()
    }
}

impl fmt::Debug for MemoryNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryNet")
            .field("listeners", &self.listeners())
            .finish()
    }
}

/// Networks are equal when they are the same network.
impl PartialEq for MemoryNet {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.hub, &other.hub)
    }
}

impl Eq for MemoryNet {}

/// Why an in-memory dial or listen failed.
#[derive(Debug, thiserror::Error)]
pub enum MemoryNetError {
    /// Nothing listens at the address, or its backlog is full.
    #[error("connection refused: nothing accepts at {0}")]
    Refused(SocketAddr),
    /// The address is taken by another listener.
    #[error("address in use: {0}")]
    InUse(SocketAddr),
    /// Every port of the IP is taken.
    #[error("no free port on {0}")]
    NoFreePort(IpAddr),
    /// A vouched connection whose other end's identity the network does not know.
    #[error("the network does not know who is at the other end (both transports must vouch)")]
    Unvouched,
    /// Yamux could not start on the connection.
    #[error("multiplexer: {0}")]
    Muxer(#[source] std::io::Error),
}

struct Listener {
    id: ListenerId,
    addr: SocketAddr,
    incoming: mpsc::Receiver<Incoming>,
}

/// A node's transport on a [`MemoryNet`]: it dials out from `ip`. `Node` builds its own; a
/// test or simulation may build a swarm of its own on it.
pub struct MemoryTransport {
    net: MemoryNet,
    ip: IpAddr,
    /// This node's PeerId, told to whom it dials and who dials it.
    identity: Option<PeerId>,
    listeners: Vec<Listener>,
    events: VecDeque<TransportEvent<Ready<Result<MemoryStream, MemoryNetError>>, MemoryNetError>>,
}

impl MemoryTransport {
    /// A transport on `net` that dials out from `ip` (for a swarm of one's own on the memory
    /// network, such as a test's hostile node).
    pub fn new(net: MemoryNet, ip: IpAddr) -> Self {
        Self {
            net,
            ip,
            identity: None,
            listeners: Vec::new(),
            events: VecDeque::new(),
        }
    }

    /// A transport on `net` for the node `identity`: the network tells each end of a
    /// connection the other's PeerId (for [`vouched`]).
    pub fn vouching_for(net: MemoryNet, ip: IpAddr, identity: PeerId) -> Self {
        let mut transport = Self::new(net, ip);
        transport.identity = Some(identity);
        transport
    }
}

/// What [`vouched`] makes of a connection.
pub type VouchedConnection = Ready<Result<(PeerId, StreamMuxerBox), MemoryNetError>>;

/// `transport` with the identities the network vouches for, and Yamux: no handshake, so a
/// simulation spends its CPU on the protocol above. Only for a network of nodes that all
/// vouch; a connection to one that does not fails with [`MemoryNetError::Unvouched`].
pub fn vouched(
    transport: MemoryTransport,
) -> AndThen<MemoryTransport, fn(MemoryStream, ConnectedPoint) -> VouchedConnection> {
    transport.and_then(|stream, endpoint| ready(vouched_muxer(stream, &endpoint)))
}

fn vouched_muxer(
    stream: MemoryStream,
    endpoint: &ConnectedPoint,
) -> Result<(PeerId, StreamMuxerBox), MemoryNetError> {
    let peer = stream.remote.ok_or(MemoryNetError::Unvouched)?;
    let config = yamux::Config::default();
    let protocol = "/yamux/1.0.0";
    let muxer = if endpoint.is_dialer() {
        config.upgrade_outbound(stream, protocol).into_inner()
    } else {
        config.upgrade_inbound(stream, protocol).into_inner()
    }
    .map_err(MemoryNetError::Muxer)?;
    Ok((peer, StreamMuxerBox::new(muxer)))
}

/// `/ip4/A/tcp/P` or `/ip6/A/tcp/P` (a trailing `/p2p/…` is allowed) as a socket address.
pub(crate) fn socket_addr(addr: &Multiaddr) -> Option<SocketAddr> {
    let mut parts = addr.iter();
    let ip = match parts.next()? {
        Protocol::Ip4(a) => IpAddr::V4(a),
        Protocol::Ip6(a) => IpAddr::V6(a),
        _ => return None,
    };
    let Protocol::Tcp(port) = parts.next()? else {
        return None;
    };
    match parts.next() {
        None | Some(Protocol::P2p(_)) => Some(SocketAddr::new(ip, port)),
        Some(_) => None,
    }
}

fn multiaddr(addr: SocketAddr) -> Multiaddr {
    Multiaddr::empty()
        .with(match addr.ip() {
            IpAddr::V4(a) => Protocol::Ip4(a),
            IpAddr::V6(a) => Protocol::Ip6(a),
        })
        .with(Protocol::Tcp(addr.port()))
}

impl Drop for MemoryTransport {
    fn drop(&mut self) {
        let mut hub = self.net.hub();
        for l in &self.listeners {
            hub.listeners.remove(&l.addr);
        }
    }
}

impl Transport for MemoryTransport {
    type Output = MemoryStream;
    type Error = MemoryNetError;
    type ListenerUpgrade = Ready<Result<MemoryStream, MemoryNetError>>;
    type Dial = Ready<Result<MemoryStream, MemoryNetError>>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        let Some(mut at) = socket_addr(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let (tx, incoming) = mpsc::channel(MEMORY_BACKLOG);
        {
            let mut hub = self.net.hub();
            if at.port() == 0 {
                let port = hub
                    .free_port(at.ip())
                    .ok_or(TransportError::Other(MemoryNetError::NoFreePort(at.ip())))?;
                at.set_port(port);
            }
            if hub.listeners.contains_key(&at) {
                return Err(TransportError::Other(MemoryNetError::InUse(at)));
            }
            hub.listeners.insert(
                at,
                Listening {
                    incoming: tx,
                    peer: self.identity,
                },
            );
        }
        self.listeners.push(Listener {
            id,
            addr: at,
            incoming,
        });
        self.events.push_back(TransportEvent::NewAddress {
            listener_id: id,
            listen_addr: multiaddr(at),
        });
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        let Some(i) = self.listeners.iter().position(|l| l.id == id) else {
            return false;
        };
        let l = self.listeners.swap_remove(i);
        self.net.hub().listeners.remove(&l.addr);
        self.events.push_back(TransportEvent::ListenerClosed {
            listener_id: id,
            reason: Ok(()),
        });
        true
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        _opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        let Some(to) = socket_addr(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let (listening, from) = {
            let mut hub = self.net.hub();
            let Some(listening) = hub.listeners.get(&to).cloned() else {
                return Ok(ready(Err(MemoryNetError::Refused(to))));
            };
            let port = hub
                .free_port(self.ip)
                .ok_or(TransportError::Other(MemoryNetError::NoFreePort(self.ip)))?;
            (listening, SocketAddr::new(self.ip, port))
        };
        let (ours, theirs) = tokio::io::duplex(MEMORY_PIPE_BYTES);
        let offered = listening.incoming.try_send(Incoming {
            stream: MemoryStream {
                io: theirs.compat(),
                remote: self.identity,
            },
            from,
        });
        Ok(ready(match offered {
            Ok(()) => Ok(MemoryStream {
                io: ours.compat(),
                remote: listening.peer,
            }),
            Err(_) => Err(MemoryNetError::Refused(to)),
        }))
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        if let Some(event) = self.events.pop_front() {
            return Poll::Ready(event);
        }
        for l in &mut self.listeners {
            if let Poll::Ready(Some(Incoming { stream, from })) = l.incoming.poll_recv(cx) {
                return Poll::Ready(TransportEvent::Incoming {
                    listener_id: l.id,
                    upgrade: ready(Ok(stream)),
                    local_addr: multiaddr(l.addr),
                    send_back_addr: multiaddr(from),
                });
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use futures::{AsyncReadExt, AsyncWriteExt};
    use libp2p::core::Endpoint;
    use libp2p::core::transport::PortUse;

    use super::*;

    fn dial_opts() -> DialOpts {
        DialOpts {
            role: Endpoint::Dialer,
            port_use: PortUse::New,
        }
    }

    async fn next_event(
        t: &mut MemoryTransport,
    ) -> TransportEvent<Ready<Result<MemoryStream, MemoryNetError>>, MemoryNetError> {
        futures::future::poll_fn(|cx| Pin::new(&mut *t).poll(cx)).await
    }

    #[tokio::test]
    async fn a_dial_reaches_the_listener_with_the_dialers_address_and_carries_bytes() {
        let net = MemoryNet::new();
        let mut server = MemoryTransport::new(net.clone(), "10.1.0.1".parse().unwrap());
        let mut client = MemoryTransport::new(net.clone(), "10.2.0.1".parse().unwrap());
        server
            .listen_on(ListenerId::next(), "/ip4/10.1.0.1/tcp/0".parse().unwrap())
            .unwrap();
        let TransportEvent::NewAddress { listen_addr, .. } = next_event(&mut server).await else {
            panic!("the listener's address first");
        };
        assert_eq!(listen_addr.to_string(), "/ip4/10.1.0.1/tcp/32768");
        let mut ours = client
            .dial(listen_addr.clone(), dial_opts())
            .unwrap()
            .await
            .unwrap();
        let TransportEvent::Incoming {
            upgrade,
            local_addr,
            send_back_addr,
            ..
        } = next_event(&mut server).await
        else {
            panic!("an incoming connection");
        };
        assert_eq!(local_addr, listen_addr);
        assert!(send_back_addr.to_string().starts_with("/ip4/10.2.0.1/tcp/"));
        let mut theirs = upgrade.await.unwrap();
        ours.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        theirs.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
    }

    #[tokio::test]
    async fn nothing_listening_refuses_and_a_taken_address_is_in_use() {
        let net = MemoryNet::new();
        let mut a = MemoryTransport::new(net.clone(), "10.1.0.1".parse().unwrap());
        let r = a
            .dial("/ip4/10.9.0.1/tcp/9".parse().unwrap(), dial_opts())
            .unwrap()
            .await;
        assert!(matches!(r, Err(MemoryNetError::Refused(_))));
        assert!(matches!(
            a.dial("/dns4/example.com/tcp/9".parse().unwrap(), dial_opts()),
            Err(TransportError::MultiaddrNotSupported(_))
        ));
        a.listen_on(ListenerId::next(), "/ip4/10.1.0.1/tcp/9".parse().unwrap())
            .unwrap();
        let mut b = MemoryTransport::new(net.clone(), "10.1.0.1".parse().unwrap());
        assert!(matches!(
            b.listen_on(ListenerId::next(), "/ip4/10.1.0.1/tcp/9".parse().unwrap()),
            Err(TransportError::Other(MemoryNetError::InUse(_)))
        ));
        drop(a);
        assert_eq!(
            net.listeners(),
            0,
            "a dropped transport frees its addresses"
        );
    }

    #[tokio::test]
    async fn a_vouching_network_tells_each_end_who_is_at_the_other() {
        let net = MemoryNet::new();
        let (server_id, client_id) = (PeerId::random(), PeerId::random());
        let mut server =
            MemoryTransport::vouching_for(net.clone(), "10.1.0.1".parse().unwrap(), server_id);
        let mut client =
            MemoryTransport::vouching_for(net.clone(), "10.2.0.1".parse().unwrap(), client_id);
        let mut stranger = MemoryTransport::new(net.clone(), "10.3.0.1".parse().unwrap());
        server
            .listen_on(ListenerId::next(), "/ip4/10.1.0.1/tcp/5".parse().unwrap())
            .unwrap();
        let to: Multiaddr = "/ip4/10.1.0.1/tcp/5".parse().unwrap();
        let ours = client.dial(to.clone(), dial_opts()).unwrap().await.unwrap();
        assert_eq!(ours.remote_peer(), Some(server_id));
        let _ = next_event(&mut server).await; // the listener's address
        let TransportEvent::Incoming { upgrade, .. } = next_event(&mut server).await else {
            panic!("an incoming connection");
        };
        assert_eq!(upgrade.await.unwrap().remote_peer(), Some(client_id));

        // A node the network does not vouch for gets no identity, and the vouched upgrade
        // refuses the connection rather than invent one.
        let unknown = stranger.dial(to, dial_opts()).unwrap().await.unwrap();
        let TransportEvent::Incoming { upgrade, .. } = next_event(&mut server).await else {
            panic!("an incoming connection");
        };
        let theirs = upgrade.await.unwrap();
        assert_eq!(theirs.remote_peer(), None);
        let listener = ConnectedPoint::Listener {
            local_addr: Multiaddr::empty(),
            send_back_addr: Multiaddr::empty(),
        };
        assert!(matches!(
            vouched_muxer(theirs, &listener),
            Err(MemoryNetError::Unvouched)
        ));
        assert_eq!(unknown.remote_peer(), Some(server_id));
    }

    #[tokio::test]
    async fn a_full_backlog_refuses_further_dials() {
        let net = MemoryNet::new();
        let mut server = MemoryTransport::new(net.clone(), "10.1.0.1".parse().unwrap());
        let mut client = MemoryTransport::new(net.clone(), "10.2.0.1".parse().unwrap());
        server
            .listen_on(ListenerId::next(), "/ip4/10.1.0.1/tcp/7".parse().unwrap())
            .unwrap();
        let to: Multiaddr = "/ip4/10.1.0.1/tcp/7".parse().unwrap();
        let mut held = Vec::new();
        for _ in 0..MEMORY_BACKLOG {
            held.push(client.dial(to.clone(), dial_opts()).unwrap().await.unwrap());
        }
        let r = client.dial(to, dial_opts()).unwrap().await;
        assert!(matches!(r, Err(MemoryNetError::Refused(_))));
    }
}
