//! Errors of the handshake and of the onion layers.

use shallot_error::{ErrorKind, HasKind};
/// What went wrong in `shallot-crypto`.
///
/// Every error from a layer operation means the circuit MUST be destroyed in both directions
/// (specs/02 §4.8); [`CryptoError::kind`] tells a caller which side is to blame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// A layer failed to authenticate: the cell was modified, replayed, reordered, or a cell
    /// before it was dropped. `hop` is the client's 0-based hop index; `None` at a relay (its
    /// own layer).
    #[error("onion layer failed to authenticate (hop {hop:?})")]
    AuthenticationFailed {
        /// The hop whose layer failed, as the client numbers them; `None` at a relay.
        hop: Option<usize>,
    },
    /// An authenticated layer carried a marker that is not allowed there (an unknown value, or
    /// "relayed" from the last hop of the client's circuit).
    #[error("onion layer carried bad marker {0:#04x}")]
    BadMarker(u8),
    /// The onion-key id of a handshake names neither the relay's current nor its previous key.
    #[error("unknown onion key id")]
    UnknownOnionKey,
    /// A handshake message is shorter than the pattern needs, or longer than any version-1
    /// message can be.
    #[error("handshake message has bad length {got} (expected {expected})")]
    BadHandshakeLength {
        /// The length version 1 uses.
        expected: usize,
        /// The length received.
        got: usize,
    },
    /// A handshake message authenticated but carried a payload, which version 1 forbids.
    #[error("handshake message carried a {0}-byte payload")]
    NonEmptyHandshakePayload(usize),
    /// The relay identity is longer than the one-byte length field of the prologue allows.
    #[error("relay peer id is {0} bytes, at most 255 allowed")]
    PeerIdTooLong(usize),
    /// The Noise handshake failed (for a message from the network: it did not authenticate,
    /// so the wrong onion key, the wrong relay identity, or garbage).
    #[error("noise handshake failed")]
    Noise(#[source] snow::Error),
    /// A per-direction nonce counter reached its limit; the circuit must be torn down.
    #[error("nonce counter exhausted")]
    NonceExhausted,
    /// A body is too short for the layers it must hold (`needed` bytes at least).
    #[error("body of {len} bytes is too short, {needed} needed")]
    BodyTooShort {
        /// The body length given.
        len: usize,
        /// The smallest length that fits the layers.
        needed: usize,
    },
    /// The client addressed a hop that its circuit does not have.
    #[error("no hop {target} in a circuit of {hops} hops")]
    NoSuchHop {
        /// The hop index asked for (0-based).
        target: usize,
        /// How many hops the circuit has.
        hops: usize,
    },
    /// An earlier failure closed these layers; nothing more may be sealed or opened with them.
    #[error("onion layers closed by an earlier failure")]
    LayersClosed,
    /// The AEAD implementation refused to work (a bug, not remote input).
    #[error("internal AEAD failure")]
    Internal,
}

impl HasKind for CryptoError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::AuthenticationFailed { .. } | Self::Noise(_) => ErrorKind::Authentication,
            Self::BadMarker(_)
            | Self::UnknownOnionKey
            | Self::BadHandshakeLength { .. }
            | Self::NonEmptyHandshakePayload(_) => ErrorKind::Protocol,
            Self::NonceExhausted => ErrorKind::Exhausted,
            Self::BodyTooShort { .. } | Self::NoSuchHop { .. } | Self::PeerIdTooLong(_) => {
                ErrorKind::BadApiUsage
            }
            Self::LayersClosed | Self::Internal => ErrorKind::Internal,
        }
    }
}

impl From<snow::Error> for CryptoError {
    fn from(e: snow::Error) -> Self {
        Self::Noise(e)
    }
}
