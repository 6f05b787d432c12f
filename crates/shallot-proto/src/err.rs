//! Errors of the circuit and stream state machines.

use shallot_cell::{CellError, DestroyReason};
use shallot_crypto::CryptoError;
use shallot_error::{ErrorKind, HasKind};

/// An error of the circuit and stream state machines.
///
/// When a `handle_*` method returns one of these with a kind other than
/// [`ErrorKind::WouldBlock`] or [`ErrorKind::BadApiUsage`], the circuit has been destroyed and the
/// DESTROY cells are already queued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// A cell or relay message from the peer did not decode.
    #[error("malformed {what} from the peer")]
    Malformed {
        /// Which part was malformed.
        what: &'static str,
        /// The codec's reason.
        #[source]
        source: CellError,
    },
    /// A cell had the wrong length for its link.
    #[error("cell of {got} bytes on a link of {expected}-byte cells")]
    BadCellLength {
        /// The link's cell length.
        expected: usize,
        /// What arrived.
        got: usize,
    },
    /// A message arrived that the protocol does not allow in this state or direction.
    #[error("unexpected {what}")]
    Unexpected {
        /// What arrived, and where.
        what: &'static str,
    },
    /// An unknown, non-ignorable relay command (0..=127) arrived (specs/03 §8).
    #[error("unknown relay command {0}")]
    UnknownRelayCommand(u8),
    /// An onion layer failed to open or seal (authentication failure, bad marker, exhausted
    /// counter).
    #[error("onion layer failed")]
    Layer(#[source] CryptoError),
    /// The CREATE/EXTEND handshake failed.
    #[error("circuit handshake failed")]
    Handshake(#[source] CryptoError),
    /// The stream-opening preamble was invalid.
    #[error("invalid stream preamble")]
    Preamble(#[source] CellError),
    /// An API call named a stream that is not open.
    #[error("unknown stream {0}")]
    UnknownStream(u16),
    /// A BEGIN or RESOLVE reused a stream id, or did not increase it (specs/03 flow control §6).
    #[error("stream id {0} reused")]
    StreamIdReuse(u16),
    /// The peer sent more DATA than the credit it was given (specs/03 flow control §3).
    #[error("credit violation on stream {0}")]
    CreditViolation(u16),
    /// A WINDOW_UPDATE pushed the sender's credit above the maximum window.
    #[error("window overflow on stream {0}")]
    WindowOverflow(u16),
    /// More optimistic data than allowed arrived before the stream connected.
    #[error("optimistic data limit exceeded on stream {0}")]
    OptimisticDataExceeded(u16),
    /// A bounded queue was pushed past its bound (the IO layer ignored backpressure).
    #[error("{0} queue full")]
    QueueFull(&'static str),
    /// The circuit already has the maximum number of streams.
    #[error("too many streams on the circuit")]
    TooManyStreams,
    /// The circuit has used every stream id (they are never reused).
    #[error("stream ids exhausted")]
    StreamIdsExhausted,
    /// The circuit already has the maximum number of hops.
    #[error("too many hops")]
    TooManyHops,
    /// A CREATE or EXTEND did not complete before its deadline.
    #[error("circuit build timed out")]
    BuildTimeout,
    /// The peer destroyed the circuit.
    #[error("circuit destroyed by the peer: {0:?}")]
    Destroyed(DestroyReason),
    /// The link under the circuit closed.
    #[error("link closed")]
    LinkClosed,
    /// The application closed the circuit.
    #[error("circuit closed locally")]
    ClosedLocally,
    /// The circuit is closed; the operation cannot proceed.
    #[error("circuit closed")]
    CircuitClosed,
    /// The stream is closed or ended.
    #[error("stream {0} closed")]
    StreamClosed(u16),
    /// The operation needs a state the circuit or stream is not in (e.g. extend while
    /// extending, write to a resolve stream).
    #[error("not allowed in this state: {0}")]
    WrongState(&'static str),
    /// Nothing can be done now; wait for an event.
    #[error("would block")]
    WouldBlock,
    /// Encoding an outgoing message failed (a value the codec refuses).
    #[error("cannot encode {what}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The codec's reason.
        #[source]
        source: CellError,
    },
    /// The handshake could not start (bad onion key or peer id).
    #[error("cannot start handshake")]
    HandshakeStart(#[source] CryptoError),
}

impl ProtoError {
    /// The DESTROY reason we send when this error tears a circuit down.
    pub(crate) fn destroy_reason(&self) -> DestroyReason {
        match self.kind() {
            ErrorKind::ResourceLimit => DestroyReason::ResourceLimit,
            ErrorKind::Timeout => DestroyReason::Timeout,
            ErrorKind::Closed => match self {
                ProtoError::Destroyed(_) => DestroyReason::Destroyed,
                ProtoError::LinkClosed => DestroyReason::ChannelClosed,
                _ => DestroyReason::Finished,
            },
            ErrorKind::BadApiUsage => DestroyReason::Internal,
            _ => DestroyReason::Protocol,
        }
    }
}

impl HasKind for ProtoError {
    fn kind(&self) -> ErrorKind {
        use ProtoError as E;
        match self {
            E::Malformed { .. }
            | E::BadCellLength { .. }
            | E::Unexpected { .. }
            | E::UnknownRelayCommand(_)
            | E::Preamble(_)
            | E::StreamIdReuse(_)
            | E::CreditViolation(_)
            | E::WindowOverflow(_)
            | E::OptimisticDataExceeded(_) => ErrorKind::Protocol,
            E::Layer(_) | E::Handshake(_) | E::HandshakeStart(_) => ErrorKind::Authentication,
            E::QueueFull(_) | E::TooManyStreams | E::StreamIdsExhausted | E::TooManyHops => {
                ErrorKind::ResourceLimit
            }
            E::BuildTimeout => ErrorKind::Timeout,
            E::Destroyed(_)
            | E::LinkClosed
            | E::ClosedLocally
            | E::CircuitClosed
            | E::StreamClosed(_) => ErrorKind::Closed,
            E::WouldBlock => ErrorKind::WouldBlock,
            E::UnknownStream(_) | E::WrongState(_) | E::Encode { .. } => ErrorKind::BadApiUsage,
        }
    }
}
