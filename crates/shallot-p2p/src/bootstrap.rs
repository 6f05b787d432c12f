//! What became of each bootstrap peer's dials, for a client to say why it is stuck (Tor's
//! "Problem bootstrapping ... (Connection refused)"). Only the configured bootstrap peers are
//! tracked: their addresses are the operator's own configuration, never a user's destination.

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use libp2p::swarm::DialError;
use libp2p::{Multiaddr, PeerId, TransportError};

/// Why a dial to a bootstrap peer failed, as a person fixing the configuration needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DialFailure {
    /// Nothing listens there: the peer is down, or the port is wrong.
    Refused,
    /// No answer in time: a firewall, or the wrong host.
    TimedOut,
    /// No route to the address.
    Unreachable,
    /// Something answered there, but under another PeerId: the address's `/p2p/` part is
    /// not that node's.
    WrongPeerId,
    /// A connection opened but the libp2p handshake failed: not a Shallot node, or one that
    /// speaks another version.
    Handshake,
    /// This node refused the dial itself (a connection limit).
    Denied,
    /// Anything else.
    Other,
}

impl fmt::Display for DialFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Refused => "connection refused",
            Self::TimedOut => "timed out",
            Self::Unreachable => "no route to the address",
            Self::WrongPeerId => "wrong PeerId at that address",
            Self::Handshake => "handshake failed (not a Shallot node, or another version)",
            Self::Denied => "refused by this node's own connection limits",
            Self::Other => "dial failed",
        })
    }
}

/// Where a bootstrap peer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootstrapDial {
    /// Not answered yet: being dialed.
    Pending,
    /// Connected at least once since the last failure.
    Connected,
    /// The last dial failed.
    Failed(DialFailure),
}

impl fmt::Display for BootstrapDial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pending => f.write_str("no answer yet"),
            Self::Connected => f.write_str("connected"),
            Self::Failed(why) => why.fmt(f),
        }
    }
}

/// One configured bootstrap peer and its latest dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapPeerStatus {
    /// The address as configured (with `/p2p/<PeerId>`).
    pub addr: Multiaddr,
    /// Its PeerId.
    pub peer: PeerId,
    /// The latest dial's outcome.
    pub state: BootstrapDial,
}

/// The bootstrap peers' states, shared by the node's task (which writes) and its handle.
#[derive(Debug, Clone, Default)]
pub(crate) struct BootstrapTable(Arc<Mutex<Vec<BootstrapPeerStatus>>>);

impl BootstrapTable {
    pub(crate) fn new(peers: Vec<(Multiaddr, PeerId)>) -> Self {
        Self(Arc::new(Mutex::new(
            peers
                .into_iter()
                .map(|(addr, peer)| BootstrapPeerStatus {
                    addr,
                    peer,
                    state: BootstrapDial::Pending,
                })
                .collect(),
        )))
    }

    pub(crate) fn snapshot(&self) -> Vec<BootstrapPeerStatus> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records `state` for `peer`, if it is a bootstrap peer.
    pub(crate) fn set(&self, peer: &PeerId, state: BootstrapDial) {
        let mut peers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for p in peers.iter_mut().filter(|p| &p.peer == peer) {
            p.state = state;
        }
    }
}

/// What `error` says about the dial.
pub(crate) fn classify(error: &DialError) -> DialFailure {
    match error {
        DialError::WrongPeerId { .. } => DialFailure::WrongPeerId,
        DialError::Denied { .. } => DialFailure::Denied,
        DialError::Transport(attempts) => attempts
            .iter()
            .map(|(_, e)| match e {
                TransportError::MultiaddrNotSupported(_) => DialFailure::Other,
                TransportError::Other(e) => of_transport(e),
            })
            // The most telling of several addresses' failures.
            .min_by_key(|f| telling(*f))
            .unwrap_or(DialFailure::Other),
        _ => DialFailure::Other,
    }
}

/// How much a failure tells, most first.
fn telling(failure: DialFailure) -> u8 {
    match failure {
        DialFailure::Refused => 0,
        DialFailure::WrongPeerId => 1,
        DialFailure::Unreachable => 2,
        DialFailure::TimedOut => 3,
        DialFailure::Handshake => 4,
        DialFailure::Denied => 5,
        DialFailure::Other => 6,
    }
}

/// What a transport's error names. The socket's error sits several wrappers down (the
/// timeout's, the upgrade's, `Either`s), and those wrappers' `source()` skips the error they
/// wrap, so the chain never reaches it: its `Debug` rendering, which names the `io::ErrorKind`,
/// is read instead. Anything else after a connection was attempted is the handshake's.
fn of_transport(error: &io::Error) -> DialFailure {
    const NAMED: [(&str, DialFailure); 5] = [
        ("kind: ConnectionRefused", DialFailure::Refused),
        ("kind: TimedOut", DialFailure::TimedOut),
        ("kind: HostUnreachable", DialFailure::Unreachable),
        ("kind: NetworkUnreachable", DialFailure::Unreachable),
        // libp2p's transport timeout (`TransportTimeoutError::Timeout`).
        ("Timeout", DialFailure::TimedOut),
    ];
    match error.kind() {
        io::ErrorKind::ConnectionRefused => return DialFailure::Refused,
        io::ErrorKind::TimedOut => return DialFailure::TimedOut,
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
            return DialFailure::Unreachable;
        }
        _ => {}
    }
    let rendered = format!("{error:?}");
    NAMED
        .iter()
        .find(|(name, _)| rendered.contains(name))
        .map_or(DialFailure::Handshake, |(_, failure)| *failure)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(e: io::Error) -> DialError {
        DialError::Transport(vec![(
            "/ip4/127.0.0.1/tcp/1".parse().expect("addr"),
            TransportError::Other(e),
        )])
    }

    #[test]
    fn the_socket_error_is_found_under_the_wrappers() {
        let refused = io::Error::other(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        ));
        assert_eq!(classify(&transport(refused)), DialFailure::Refused);
        let timed_out = io::Error::new(io::ErrorKind::TimedOut, "timed out");
        assert_eq!(classify(&transport(timed_out)), DialFailure::TimedOut);
        let timeout_text = io::Error::other("Timeout has been reached");
        assert_eq!(classify(&transport(timeout_text)), DialFailure::TimedOut);
        let handshake = io::Error::other("Multistream select failed");
        assert_eq!(classify(&transport(handshake)), DialFailure::Handshake);
    }

    #[test]
    fn the_table_tracks_only_bootstrap_peers() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/1/p2p/{a}")
            .parse()
            .expect("addr");
        let table = BootstrapTable::new(vec![(addr, a)]);
        table.set(&b, BootstrapDial::Connected);
        assert_eq!(table.snapshot()[0].state, BootstrapDial::Pending);
        table.set(&a, BootstrapDial::Failed(DialFailure::Refused));
        assert_eq!(
            table.snapshot()[0].state.to_string(),
            "connection refused".to_owned()
        );
    }
}
