//! Errors of the libp2p layer.

use shallot_error::{ErrorKind, HasKind};
/// Why a libp2p operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum P2pError {
    /// The transport could not be built (TCP, QUIC, Noise or Yamux set-up).
    #[error("cannot build the libp2p transport: {0}")]
    Transport(String),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: libp2p::Multiaddr,
        /// What went wrong.
        reason: String,
    },
    /// A bootstrap address lacks the `/p2p/<PeerId>` suffix that authenticates the peer.
    #[error("bootstrap address {0} must end with /p2p/<PeerId>")]
    BootstrapWithoutPeerId(libp2p::Multiaddr),
    /// The swarm task has stopped; the node is shut down.
    #[error("the libp2p node has stopped")]
    Stopped,
    /// Another refresh is already being served and the queue of waiters is full.
    #[error("too many concurrent view refreshes")]
    Busy,
    /// Publishing a record or provider announcement failed.
    #[error("publishing the descriptor failed: {0}")]
    Publish(String),
    /// The descriptor could not be used (for example, it is for another peer).
    #[error("descriptor rejected: {0}")]
    Descriptor(#[from] shallot_directory::DirectoryError),
}

impl HasKind for P2pError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Transport(_)
            | Self::Listen { .. }
            | Self::BootstrapWithoutPeerId(_)
            | Self::Descriptor(_) => ErrorKind::BadConfig,
            Self::Busy | Self::Publish(_) => ErrorKind::Transient,
            Self::Stopped => ErrorKind::ShuttingDown,
        }
    }
}
