//! The error type of the codec.

use shallot_error::{ErrorKind, HasKind};

/// Why bytes could not be decoded into a cell or message, or a value could not be encoded.
///
/// Every variant is a protocol violation when it comes from a decoder fed by a remote peer
/// (specs/01 §7, specs/03 §10): the caller tears the circuit down.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CellError {
    /// The preamble buffer is not exactly [`Preamble::LEN`](crate::Preamble::LEN) bytes.
    #[error("stream preamble must be 4 bytes, got {got}")]
    PreambleLength {
        /// Length of the buffer given.
        got: usize,
    },
    /// The preamble's VERSION is not one we speak.
    #[error("unsupported stream preamble version {0} (expected 1)")]
    BadVersion(u8),
    /// A cell length (in a preamble, a cell or an output buffer) is not `link_cell_len(i)` for any
    /// `i < MAX_HOPS`.
    #[error("cell length {0} is not a valid link cell length")]
    BadCellLen(usize),
    /// A link cell carries a command this version does not know.
    #[error("unknown link command {0}")]
    UnknownLinkCommand(u8),
    /// A RELAY link cell's body does not have exactly `cell_len - 1` bytes.
    #[error("relay cell body of {got} bytes, expected {expected}")]
    RelayBodyLength {
        /// Body length given.
        got: usize,
        /// `cell_len - 1`.
        expected: usize,
    },
    /// A CREATE/CREATED handshake does not fit in the cell, or its HLEN points past the body.
    #[error("handshake of {len} bytes exceeds the {max}-byte room in the {what}")]
    HandshakeTooLong {
        /// Where the handshake is carried ("create cell", "created cell").
        what: &'static str,
        /// Handshake length (given or claimed by HLEN).
        len: usize,
        /// Room left for it.
        max: usize,
    },
    /// The input ended before a field could be read.
    #[error("truncated {what}: need {needed} more bytes, {got} left")]
    Truncated {
        /// The structure being read.
        what: &'static str,
        /// Bytes the next field needs.
        needed: usize,
        /// Bytes that were left.
        got: usize,
    },
    /// A relay-message area is smaller than the 5-byte relay header.
    #[error("relay-message area of {0} bytes is smaller than the 5-byte header")]
    AreaTooSmall(usize),
    /// A relay message's LENGTH (or the DATA to encode) exceeds the area after the header.
    #[error("relay message length {length} exceeds the {max}-byte area")]
    LengthExceedsArea {
        /// LENGTH read, or DATA length to encode.
        length: usize,
        /// Room for DATA: area length minus the 5-byte header.
        max: usize,
    },
    /// A DATA message with no bytes.
    #[error("relay DATA message with zero length")]
    EmptyData,
    /// A message's DATA has bytes left over after its command's layout.
    #[error("relay command {command}: {extra} trailing bytes after the message")]
    TrailingBytes {
        /// Relay command value.
        command: u8,
        /// Unused bytes.
        extra: usize,
    },
    /// A stream command carries stream id 0.
    #[error("relay command {command} needs a non-zero stream id")]
    StreamIdRequired {
        /// Relay command value.
        command: u8,
    },
    /// A circuit-level command carries a non-zero stream id.
    #[error("relay command {command} is circuit-level but carries stream id {stream_id}")]
    StreamIdForbidden {
        /// Relay command value.
        command: u8,
        /// The stream id found.
        stream_id: u16,
    },
    /// A HOST has a TYPE that is not 0, 4 or 6.
    #[error("unknown host type {0}")]
    BadHostType(u8),
    /// A HOST's LEN does not fit its TYPE.
    #[error("host type {host_type} with bad length {len}")]
    BadHostLength {
        /// The HOST TYPE.
        host_type: u8,
        /// Its LEN.
        len: usize,
    },
    /// A hostname is empty, longer than 255 bytes, or has a byte outside printable ASCII.
    #[error("invalid hostname: {reason}")]
    BadHostname {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A HOST type the command does not allow (CONNECTED carries an address, not a name).
    #[error("relay command {command} does not allow host type {host_type}")]
    HostTypeNotAllowed {
        /// Relay command value.
        command: u8,
        /// The HOST TYPE.
        host_type: u8,
    },
    /// An EXTEND's PEER_ID is empty or longer than [`MAX_PEER_ID_LEN`](crate::MAX_PEER_ID_LEN).
    #[error("extend peer id of {0} bytes (allowed 1..=64)")]
    BadPeerIdLength(usize),
    /// An EXTEND lists more than [`MAX_EXTEND_ADDRS`](crate::MAX_EXTEND_ADDRS) addresses.
    #[error("extend with {0} addresses (at most 8)")]
    TooManyAddrs(usize),
    /// An EXTEND address is empty or longer than [`MAX_ADDR_LEN`](crate::MAX_ADDR_LEN).
    #[error("extend address of {0} bytes (allowed 1..=255)")]
    BadAddrLength(usize),
    /// A RESOLVED with no answers or more than [`MAX_RESOLVED_ANSWERS`](crate::MAX_RESOLVED_ANSWERS).
    #[error("resolved with {0} answers (allowed 1..=16)")]
    BadAnswerCount(usize),
    /// A RESOLVED answer has an unknown TYPE.
    #[error("unknown resolved answer type {0}")]
    BadAnswerType(u8),
    /// A RESOLVED answer's LEN does not fit its TYPE.
    #[error("resolved answer type {answer_type} with bad length {len}")]
    BadAnswerLength {
        /// The answer TYPE.
        answer_type: u8,
        /// Its LEN.
        len: usize,
    },
    /// A RESOLVED error answer is not the only answer.
    #[error("resolved error answer mixed with {0} other answers")]
    ErrorAnswerNotAlone(usize),
    /// `RelayMsg::Unknown` was asked to encode a command value this version knows.
    #[error("relay command {0} is known and cannot be encoded as unknown")]
    UnknownIsKnown(u8),
}

impl HasKind for CellError {
    /// Every variant is the peer's fault when a decoder of remote input returns it (specs/01
    /// §7); an encoder returns one only for a value it was given wrongly, which the encoders'
    /// callers never do with remote input.
    fn kind(&self) -> ErrorKind {
        ErrorKind::Protocol
    }
}
