//! The stream preamble and link cells (specs/01 §4–§6).

use crate::CellError;
use crate::reader::{Reader, Writer};
use crate::size::{link_cell_len, link_index_for_cell_len};

/// The libp2p protocol name of a circuit-hop stream. specs/01 §4.1.
pub const CIRCUIT_PROTOCOL: &str = "/shallot/circuit/1.0.0";

/// The only preamble VERSION this implementation speaks. specs/01 §4.2.
pub const PREAMBLE_VERSION: u8 = 1;

/// Link command values (the first byte of every link cell). specs/01 §5.2.
pub mod link_command {
    /// PADDING: link padding, body ignored.
    pub const PADDING: u8 = 0;
    /// CREATE: first handshake message, opener → responder.
    pub const CREATE: u8 = 1;
    /// CREATED: second handshake message, responder → opener.
    pub const CREATED: u8 = 2;
    /// RELAY: an onion-layered body.
    pub const RELAY: u8 = 3;
    /// DESTROY: tear the circuit down.
    pub const DESTROY: u8 = 4;
}

/// The 4 bytes the opener of a circuit-hop stream writes before its first cell. specs/01 §4.2.
///
/// `VERSION [1] | RESERVED [1] | CELL_LEN [2, big-endian]`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Preamble {
    /// Protocol version; [`PREAMBLE_VERSION`].
    pub version: u8,
    /// Length of every cell on this stream, both ways.
    pub cell_len: u16,
}

impl Preamble {
    /// Encoded length.
    pub const LEN: usize = 4;

    /// The preamble for link `link_index`, or `None` when `link_index >= MAX_HOPS`.
    #[must_use]
    pub fn for_link(link_index: usize) -> Option<Self> {
        let cell_len = u16::try_from(link_cell_len(link_index)?).ok()?;
        Some(Self {
            version: PREAMBLE_VERSION,
            cell_len,
        })
    }

    /// The link index this preamble's cell length stands for, if it is a valid one.
    #[must_use]
    pub fn link_index(&self) -> Option<usize> {
        link_index_for_cell_len(usize::from(self.cell_len))
    }

    /// Encodes with RESERVED = 0.
    #[must_use]
    pub fn encode(&self) -> [u8; 4] {
        let [hi, lo] = self.cell_len.to_be_bytes();
        [self.version, 0, hi, lo]
    }

    /// Decodes exactly [`Self::LEN`] bytes and validates them: VERSION must be 1 and CELL_LEN a
    /// valid link cell length; RESERVED is ignored. specs/01 §4.2.
    pub fn decode(b: &[u8]) -> Result<Self, CellError> {
        let &[version, _reserved, hi, lo] = b else {
            return Err(CellError::PreambleLength { got: b.len() });
        };
        if version != PREAMBLE_VERSION {
            return Err(CellError::BadVersion(version));
        }
        let cell_len = u16::from_be_bytes([hi, lo]);
        if link_index_for_cell_len(usize::from(cell_len)).is_none() {
            return Err(CellError::BadCellLen(usize::from(cell_len)));
        }
        Ok(Self { version, cell_len })
    }
}

/// Identifies which of a relay's onion keys a CREATE or EXTEND is for. specs/01 §5.3.
///
/// shallot-crypto computes it from the onion public key; on the wire it is 8 opaque bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OnionKeyId(pub [u8; 8]);

/// Why a circuit was destroyed (DESTROY, TRUNCATED). Tor's values. specs/01 §5.6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DestroyReason {
    /// 0: no reason given.
    None,
    /// 1: protocol violation.
    Protocol,
    /// 2: internal error.
    Internal,
    /// 3: a client sent a TRUNCATE or the circuit is no longer wanted.
    Requested,
    /// 4: the relay is hibernating.
    Hibernating,
    /// 5: out of memory, sockets or circuit ids.
    ResourceLimit,
    /// 6: unable to reach the next relay.
    ConnectFailed,
    /// 7: the next relay's identity was not the one expected.
    OrIdentity,
    /// 8: the link carrying this circuit closed.
    ChannelClosed,
    /// 9: the circuit has expired.
    Finished,
    /// 10: circuit construction took too long.
    Timeout,
    /// 11: the circuit was destroyed without a client TRUNCATE.
    Destroyed,
    /// Any value not listed above (receivers treat it as [`DestroyReason::None`]). Holds only
    /// unlisted values when produced by the decoder.
    Other(u8),
}

impl From<u8> for DestroyReason {
    fn from(v: u8) -> Self {
        match v {
            0 => Self::None,
            1 => Self::Protocol,
            2 => Self::Internal,
            3 => Self::Requested,
            4 => Self::Hibernating,
            5 => Self::ResourceLimit,
            6 => Self::ConnectFailed,
            7 => Self::OrIdentity,
            8 => Self::ChannelClosed,
            9 => Self::Finished,
            10 => Self::Timeout,
            11 => Self::Destroyed,
            other => Self::Other(other),
        }
    }
}

impl From<DestroyReason> for u8 {
    fn from(r: DestroyReason) -> u8 {
        match r {
            DestroyReason::None => 0,
            DestroyReason::Protocol => 1,
            DestroyReason::Internal => 2,
            DestroyReason::Requested => 3,
            DestroyReason::Hibernating => 4,
            DestroyReason::ResourceLimit => 5,
            DestroyReason::ConnectFailed => 6,
            DestroyReason::OrIdentity => 7,
            DestroyReason::ChannelClosed => 8,
            DestroyReason::Finished => 9,
            DestroyReason::Timeout => 10,
            DestroyReason::Destroyed => 11,
            DestroyReason::Other(v) => v,
        }
    }
}

/// One fixed-size link cell: `COMMAND [1] | BODY [CELL_LEN - 1]`. specs/01 §5.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkCell {
    /// Link padding; the body is zeros on send and ignored on receipt. specs/01 §6.
    Padding,
    /// First handshake message. specs/01 §5.3.
    Create {
        /// Which onion key of the responder the handshake uses.
        onion_key_id: OnionKeyId,
        /// HDATA: the handshake message.
        handshake: Vec<u8>,
    },
    /// Second handshake message. specs/01 §5.4.
    Created {
        /// HDATA: the handshake reply.
        handshake: Vec<u8>,
    },
    /// An onion-layered body, exactly `cell_len - 1` bytes, opaque to this crate. specs/01 §5.5.
    Relay(Vec<u8>),
    /// Tear the circuit down. specs/01 §5.6.
    Destroy(DestroyReason),
}

/// CREATE body before HDATA: `ONION_KEY_ID [8] | HLEN [2]`.
const CREATE_FIXED: usize = 8 + 2;
/// CREATED body before HDATA: `HLEN [2]`.
const CREATED_FIXED: usize = 2;

impl LinkCell {
    /// This cell's COMMAND value.
    #[must_use]
    pub fn command(&self) -> u8 {
        match self {
            Self::Padding => link_command::PADDING,
            Self::Create { .. } => link_command::CREATE,
            Self::Created { .. } => link_command::CREATED,
            Self::Relay(_) => link_command::RELAY,
            Self::Destroy(_) => link_command::DESTROY,
        }
    }

    /// Largest handshake a CREATE can carry in a `cell_len`-byte cell.
    #[must_use]
    pub fn max_create_handshake(cell_len: usize) -> usize {
        cell_len.saturating_sub(1 + CREATE_FIXED)
    }

    /// Largest handshake a CREATED can carry in a `cell_len`-byte cell.
    #[must_use]
    pub fn max_created_handshake(cell_len: usize) -> usize {
        cell_len.saturating_sub(1 + CREATED_FIXED)
    }

    /// Encodes into a new buffer of exactly `cell_len` bytes (zero padding). `cell_len` must be a
    /// valid link cell length.
    pub fn encode(&self, cell_len: usize) -> Result<Vec<u8>, CellError> {
        let mut out = vec![0u8; cell_len];
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Encodes into `out`, whose length is the cell length (a valid link cell length), writing
    /// every byte (padding is zeroed). specs/01 §5.
    pub fn encode_into(&self, out: &mut [u8]) -> Result<(), CellError> {
        let cell_len = out.len();
        if link_index_for_cell_len(cell_len).is_none() {
            return Err(CellError::BadCellLen(cell_len));
        }
        let mut w = Writer::new(out);
        w.u8(self.command())?;
        match self {
            Self::Padding => {}
            Self::Create {
                onion_key_id,
                handshake,
            } => {
                let max = Self::max_create_handshake(cell_len);
                let hlen = checked_hlen(handshake.len(), max, "create cell")?;
                w.put(&onion_key_id.0)?;
                w.u16(hlen)?;
                w.put(handshake)?;
            }
            Self::Created { handshake } => {
                let max = Self::max_created_handshake(cell_len);
                let hlen = checked_hlen(handshake.len(), max, "created cell")?;
                w.u16(hlen)?;
                w.put(handshake)?;
            }
            Self::Relay(body) => {
                if body.len() != cell_len - 1 {
                    return Err(CellError::RelayBodyLength {
                        got: body.len(),
                        expected: cell_len - 1,
                    });
                }
                w.put(body)?;
            }
            Self::Destroy(reason) => w.u8(u8::from(*reason))?,
        }
        w.zero_rest();
        Ok(())
    }

    /// Decodes one whole cell; `cell.len()` is the link's cell length and must be valid.
    /// Padding after a message is ignored (specs/01 §6). specs/01 §5, §7.
    pub fn decode(cell: &[u8]) -> Result<Self, CellError> {
        if link_index_for_cell_len(cell.len()).is_none() {
            return Err(CellError::BadCellLen(cell.len()));
        }
        let Some((&command, body)) = cell.split_first() else {
            return Err(CellError::BadCellLen(cell.len()));
        };
        match command {
            link_command::PADDING => Ok(Self::Padding),
            link_command::CREATE => {
                let mut r = Reader::new(body, "create cell");
                let onion_key_id = OnionKeyId(r.array()?);
                let handshake = read_hdata(&mut r, "create cell")?;
                Ok(Self::Create {
                    onion_key_id,
                    handshake,
                })
            }
            link_command::CREATED => {
                let mut r = Reader::new(body, "created cell");
                let handshake = read_hdata(&mut r, "created cell")?;
                Ok(Self::Created { handshake })
            }
            link_command::RELAY => Ok(Self::Relay(body.to_vec())),
            link_command::DESTROY => {
                let mut r = Reader::new(body, "destroy cell");
                Ok(Self::Destroy(DestroyReason::from(r.u8()?)))
            }
            other => Err(CellError::UnknownLinkCommand(other)),
        }
    }
}

/// Checks a handshake length against the room for it and converts it to HLEN.
fn checked_hlen(len: usize, max: usize, what: &'static str) -> Result<u16, CellError> {
    match u16::try_from(len) {
        Ok(hlen) if len <= max => Ok(hlen),
        _ => Err(CellError::HandshakeTooLong { what, len, max }),
    }
}

/// Reads `HLEN [2] | HDATA [HLEN]`; the rest of the body is padding.
fn read_hdata(r: &mut Reader<'_>, what: &'static str) -> Result<Vec<u8>, CellError> {
    let hlen = usize::from(r.u16()?);
    if hlen > r.remaining() {
        return Err(CellError::HandshakeTooLong {
            what,
            len: hlen,
            max: r.remaining(),
        });
    }
    Ok(r.take(hlen)?.to_vec())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::size::LINK_CELL_LEN;

    #[test]
    fn preamble_for_every_link_round_trips() {
        for i in 0..crate::MAX_HOPS {
            let p = Preamble::for_link(i).unwrap();
            assert_eq!(p.link_index(), Some(i));
            assert_eq!(Preamble::decode(&p.encode()), Ok(p));
        }
        assert_eq!(Preamble::for_link(crate::MAX_HOPS), None);
    }

    #[test]
    fn preamble_reserved_is_ignored() {
        let mut b = Preamble::for_link(0).unwrap().encode();
        b[1] = 0xff;
        assert_eq!(
            Preamble::decode(&b).unwrap(),
            Preamble::for_link(0).unwrap()
        );
    }

    #[test]
    fn destroy_reason_byte_round_trip() {
        for v in 0..=u8::MAX {
            assert_eq!(u8::from(DestroyReason::from(v)), v);
        }
        assert_eq!(DestroyReason::from(12), DestroyReason::Other(12));
    }

    #[test]
    fn handshake_that_fills_the_body_fits() {
        let max = LinkCell::max_create_handshake(LINK_CELL_LEN);
        let cell = LinkCell::Create {
            onion_key_id: OnionKeyId([7; 8]),
            handshake: vec![1; max],
        };
        let bytes = cell.encode(LINK_CELL_LEN).unwrap();
        assert_eq!(LinkCell::decode(&bytes).unwrap(), cell);
        let too_big = LinkCell::Create {
            onion_key_id: OnionKeyId([7; 8]),
            handshake: vec![1; max + 1],
        };
        assert!(matches!(
            too_big.encode(LINK_CELL_LEN),
            Err(CellError::HandshakeTooLong { .. })
        ));
    }
}
