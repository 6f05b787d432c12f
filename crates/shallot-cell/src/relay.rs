//! Relay messages: the plaintext inside the innermost onion layer. specs/03.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::CellError;
use crate::host::{Host, host_from_parts, host_type, hostname_from_bytes, hostname_len};
use crate::link::{DestroyReason, OnionKeyId};
use crate::reader::{Reader, Writer};
use crate::size::RELAY_HEADER_LEN;

/// Longest EXTEND PEER_ID, in bytes. specs/03 §4.6.
pub const MAX_PEER_ID_LEN: usize = 64;
/// Most addresses in one EXTEND. specs/03 §4.6.
pub const MAX_EXTEND_ADDRS: usize = 8;
/// Longest EXTEND address (a binary multiaddr), in bytes. specs/03 §4.6.
pub const MAX_ADDR_LEN: usize = 255;
/// Most answers in one RESOLVED. specs/03 §4.10.
pub const MAX_RESOLVED_ANSWERS: usize = 16;

/// Relay command values. specs/03 §4.
pub mod relay_command {
    /// BEGIN: open a stream (client → exit).
    pub const BEGIN: u8 = 1;
    /// DATA: stream bytes (both ways).
    pub const DATA: u8 = 2;
    /// END: close a stream (both ways).
    pub const END: u8 = 3;
    /// CONNECTED: the exit's answer to BEGIN.
    pub const CONNECTED: u8 = 4;
    /// WINDOW_UPDATE: per-stream flow-control credit (both ways).
    pub const WINDOW_UPDATE: u8 = 5;
    /// EXTEND: ask the last hop to extend the circuit (client → hop).
    pub const EXTEND: u8 = 6;
    /// EXTENDED: the hop's answer to EXTEND.
    pub const EXTENDED: u8 = 7;
    /// TRUNCATED: the circuit beyond this hop is gone (hop → client).
    pub const TRUNCATED: u8 = 8;
    /// RESOLVE: DNS lookup at the exit (client → exit).
    pub const RESOLVE: u8 = 9;
    /// RESOLVED: the exit's answer to RESOLVE.
    pub const RESOLVED: u8 = 10;
    /// DROP: long-range padding, ignored (both ways).
    pub const DROP: u8 = 11;

    /// Smallest command value in the "ignorable unknown" range. specs/03 §9.
    pub const FIRST_IGNORABLE: u8 = 128;

    /// Whether this version knows `command`.
    #[must_use]
    pub const fn is_known(command: u8) -> bool {
        matches!(command, BEGIN..=DROP)
    }

    /// The stream-id rule of a known command, `None` for unknown commands. specs/03 §3.3.
    #[must_use]
    pub const fn stream_id_rule(command: u8) -> Option<super::StreamIdRule> {
        use super::StreamIdRule::{Circuit, Stream};
        match command {
            BEGIN | DATA | END | CONNECTED | WINDOW_UPDATE | RESOLVE | RESOLVED => Some(Stream),
            EXTEND | EXTENDED | TRUNCATED | DROP => Some(Circuit),
            _ => None,
        }
    }
}

/// RESOLVED answer TYPE values. specs/03 §4.10.
pub mod answer_type {
    /// A hostname (reverse lookup).
    pub const NAME: u8 = 0;
    /// An IPv4 address.
    pub const V4: u8 = 4;
    /// An IPv6 address.
    pub const V6: u8 = 6;
    /// Transient error: retrying may help.
    pub const TRANSIENT_ERROR: u8 = 0xF0;
    /// Permanent error: retrying will not help.
    pub const PERMANENT_ERROR: u8 = 0xF1;
}

/// Which stream ids a command may carry. specs/03 §3.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamIdRule {
    /// Circuit-level command: the stream id MUST be 0.
    Circuit,
    /// Stream command: the stream id MUST NOT be 0.
    Stream,
}

/// A stream id inside a circuit; 0 means "the circuit itself". specs/03 §7.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u16);

impl StreamId {
    /// The circuit-level id, 0.
    pub const CIRCUIT: Self = Self(0);

    /// Whether this is the circuit-level id 0.
    #[must_use]
    pub const fn is_circuit(self) -> bool {
        self.0 == 0
    }
}

/// Why a stream ended (END). Tor's values. specs/03 §6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// 1: catch-all for unlisted reasons.
    Misc,
    /// 2: the hostname could not be resolved.
    ResolveFailed,
    /// 3: the remote host refused the connection.
    ConnectRefused,
    /// 4: the exit policy refuses the destination, or the hop is not an exit.
    ExitPolicy,
    /// 5: the circuit is being destroyed.
    Destroy,
    /// 6: the connection was closed normally.
    Done,
    /// 7: the connection timed out, or the exit gave up.
    Timeout,
    /// 8: no route to the host.
    NoRoute,
    /// 9: the relay is hibernating.
    Hibernating,
    /// 10: internal error at the exit.
    Internal,
    /// 11: the exit has no resources for the stream.
    ResourceLimit,
    /// 12: the connection was reset.
    ConnReset,
    /// 13: protocol violation (Tor's "TORPROTOCOL").
    TorProtocol,
    /// Any value not listed above (receivers treat it as [`EndReason::Misc`]). Holds only
    /// unlisted values when produced by the decoder.
    Other(u8),
}

impl From<u8> for EndReason {
    fn from(v: u8) -> Self {
        match v {
            1 => Self::Misc,
            2 => Self::ResolveFailed,
            3 => Self::ConnectRefused,
            4 => Self::ExitPolicy,
            5 => Self::Destroy,
            6 => Self::Done,
            7 => Self::Timeout,
            8 => Self::NoRoute,
            9 => Self::Hibernating,
            10 => Self::Internal,
            11 => Self::ResourceLimit,
            12 => Self::ConnReset,
            13 => Self::TorProtocol,
            other => Self::Other(other),
        }
    }
}

impl From<EndReason> for u8 {
    fn from(r: EndReason) -> u8 {
        match r {
            EndReason::Misc => 1,
            EndReason::ResolveFailed => 2,
            EndReason::ConnectRefused => 3,
            EndReason::ExitPolicy => 4,
            EndReason::Destroy => 5,
            EndReason::Done => 6,
            EndReason::Timeout => 7,
            EndReason::NoRoute => 8,
            EndReason::Hibernating => 9,
            EndReason::Internal => 10,
            EndReason::ResourceLimit => 11,
            EndReason::ConnReset => 12,
            EndReason::TorProtocol => 13,
            EndReason::Other(v) => v,
        }
    }
}

/// BEGIN: open a stream to `host:port`. specs/03 §4.1.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Begin {
    /// Destination host.
    pub host: Host,
    /// Destination port.
    pub port: u16,
    /// FLAGS: reserved, sent as 0, unknown bits ignored by the exit.
    pub flags: u32,
}

/// EXTEND: ask the last hop to open a stream to the next relay and forward a handshake.
/// specs/03 §4.6.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Extend {
    /// The next relay's libp2p PeerId bytes (1..=64).
    pub peer_id: Vec<u8>,
    /// Binary multiaddrs to reach it (0..=8, each 1..=255 bytes).
    pub addrs: Vec<Vec<u8>>,
    /// Which of the next relay's onion keys the handshake uses.
    pub onion_key_id: OnionKeyId,
    /// The handshake message, sent on in CREATE.
    pub handshake: Vec<u8>,
}

/// One RESOLVED answer; the `u32` is the TTL in seconds. specs/03 §4.10.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ResolvedAnswer {
    /// A hostname (reverse lookup answer).
    Name(String, u32),
    /// An IPv4 address.
    V4(Ipv4Addr, u32),
    /// An IPv6 address.
    V6(Ipv6Addr, u32),
    /// Lookup failed; retrying may help.
    TransientError(u32),
    /// Lookup failed; retrying will not help.
    PermanentError(u32),
}

impl ResolvedAnswer {
    /// Whether this is one of the two error answers.
    #[must_use]
    pub fn is_error(&self) -> bool {
        matches!(self, Self::TransientError(_) | Self::PermanentError(_))
    }

    fn encoded_len(&self) -> usize {
        2 + 4
            + match self {
                Self::Name(n, _) => n.len(),
                Self::V4(..) => 4,
                Self::V6(..) => 16,
                Self::TransientError(_) | Self::PermanentError(_) => 0,
            }
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), CellError> {
        let ttl = match self {
            Self::Name(n, ttl) => {
                let len = hostname_len(n.as_bytes())?;
                w.u8(answer_type::NAME)?;
                w.u8(len)?;
                w.put(n.as_bytes())?;
                ttl
            }
            Self::V4(a, ttl) => {
                w.u8(answer_type::V4)?;
                w.u8(4)?;
                w.put(&a.octets())?;
                ttl
            }
            Self::V6(a, ttl) => {
                w.u8(answer_type::V6)?;
                w.u8(16)?;
                w.put(&a.octets())?;
                ttl
            }
            Self::TransientError(ttl) => {
                w.u8(answer_type::TRANSIENT_ERROR)?;
                w.u8(0)?;
                ttl
            }
            Self::PermanentError(ttl) => {
                w.u8(answer_type::PERMANENT_ERROR)?;
                w.u8(0)?;
                ttl
            }
        };
        w.u32(*ttl)
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, CellError> {
        let t = r.u8()?;
        let len = usize::from(r.u8()?);
        let value = r.take(len)?;
        let ttl = r.u32()?;
        match t {
            answer_type::TRANSIENT_ERROR | answer_type::PERMANENT_ERROR if len != 0 => {
                Err(CellError::BadAnswerLength {
                    answer_type: t,
                    len,
                })
            }
            answer_type::TRANSIENT_ERROR => Ok(Self::TransientError(ttl)),
            answer_type::PERMANENT_ERROR => Ok(Self::PermanentError(ttl)),
            answer_type::NAME => Ok(Self::Name(hostname_from_bytes(value)?, ttl)),
            answer_type::V4 | answer_type::V6 => match host_from_parts(t, value)? {
                Host::V4(a) => Ok(Self::V4(a, ttl)),
                Host::V6(a) => Ok(Self::V6(a, ttl)),
                Host::Name(_) => Err(CellError::BadAnswerType(t)),
            },
            other => Err(CellError::BadAnswerType(other)),
        }
    }
}

/// A relay message, by command. specs/03 §4.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RelayMsg {
    /// BEGIN (1). specs/03 §4.1.
    Begin(Begin),
    /// DATA (2): 1..=`max_data_len` stream bytes. specs/03 §4.2.
    Data(Vec<u8>),
    /// END (3). specs/03 §4.3.
    End(EndReason),
    /// CONNECTED (4): the address connected to (IPv4 or IPv6) and its DNS TTL. specs/03 §4.4.
    Connected {
        /// The address the exit connected to; never [`Host::Name`].
        addr: Host,
        /// Seconds the client may cache the name → address mapping.
        ttl: u32,
    },
    /// WINDOW_UPDATE (5): bytes of credit. specs/03 §4.5.
    WindowUpdate(u32),
    /// EXTEND (6). specs/03 §4.6.
    Extend(Extend),
    /// EXTENDED (7). specs/03 §4.7.
    Extended {
        /// The handshake reply from the new hop's CREATED.
        handshake: Vec<u8>,
    },
    /// TRUNCATED (8): why the extend or the next hop failed. specs/03 §4.8.
    Truncated(DestroyReason),
    /// RESOLVE (9): a hostname (forward lookup) or an address (reverse lookup). specs/03 §4.9.
    Resolve(Host),
    /// RESOLVED (10): 1..=16 answers. specs/03 §4.10.
    Resolved(Vec<ResolvedAnswer>),
    /// DROP (11): long-range padding; its DATA is ignored. specs/03 §4.11.
    Drop,
    /// A command this version does not know; see [`RelayMsg::is_ignorable_unknown`]. specs/03 §9.
    Unknown {
        /// The command value (never a known one).
        command: u8,
        /// The message's DATA.
        data: Vec<u8>,
    },
}

impl RelayMsg {
    /// The RELAY_CMD value.
    #[must_use]
    pub fn command(&self) -> u8 {
        use relay_command as c;
        match self {
            Self::Begin(_) => c::BEGIN,
            Self::Data(_) => c::DATA,
            Self::End(_) => c::END,
            Self::Connected { .. } => c::CONNECTED,
            Self::WindowUpdate(_) => c::WINDOW_UPDATE,
            Self::Extend(_) => c::EXTEND,
            Self::Extended { .. } => c::EXTENDED,
            Self::Truncated(_) => c::TRUNCATED,
            Self::Resolve(_) => c::RESOLVE,
            Self::Resolved(_) => c::RESOLVED,
            Self::Drop => c::DROP,
            Self::Unknown { command, .. } => *command,
        }
    }

    /// The stream-id rule of this message; `None` for [`RelayMsg::Unknown`]. specs/03 §3.3.
    #[must_use]
    pub fn stream_id_rule(&self) -> Option<StreamIdRule> {
        relay_command::stream_id_rule(self.command())
    }

    /// An unknown command in 128..=255: the receiver drops it silently. specs/03 §9.
    #[must_use]
    pub fn is_ignorable_unknown(&self) -> bool {
        matches!(self, Self::Unknown { command, .. } if *command >= relay_command::FIRST_IGNORABLE)
    }

    /// An unknown command in 0..=127: a protocol violation, the receiver destroys the circuit
    /// with reason PROTOCOL. specs/03 §9.
    #[must_use]
    pub fn is_fatal_unknown(&self) -> bool {
        matches!(self, Self::Unknown { command, .. } if *command < relay_command::FIRST_IGNORABLE)
    }

    /// The length of this message's DATA once encoded.
    #[must_use]
    pub fn data_len(&self) -> usize {
        match self {
            Self::Begin(b) => 2 + b.host.encoded_len() + 4,
            Self::Data(d) => d.len(),
            Self::End(_) | Self::Truncated(_) => 1,
            Self::Connected { addr, .. } => addr.encoded_len() + 4,
            Self::WindowUpdate(_) => 4,
            Self::Extend(e) => {
                1 + e.peer_id.len()
                    + 1
                    + e.addrs.iter().map(|a| 2 + a.len()).sum::<usize>()
                    + 8
                    + 2
                    + e.handshake.len()
            }
            Self::Extended { handshake } => 2 + handshake.len(),
            Self::Resolve(h) => h.encoded_len(),
            Self::Resolved(answers) => {
                1 + answers
                    .iter()
                    .map(ResolvedAnswer::encoded_len)
                    .sum::<usize>()
            }
            Self::Drop => 0,
            Self::Unknown { data, .. } => data.len(),
        }
    }

    /// Checks every limit that the decoder checks, so that what we encode decodes.
    fn validate(&self) -> Result<(), CellError> {
        match self {
            Self::Begin(b) => b.host.validate(),
            Self::Data(d) if d.is_empty() => Err(CellError::EmptyData),
            Self::Connected { addr, .. } => match addr {
                Host::Name(_) => Err(CellError::HostTypeNotAllowed {
                    command: relay_command::CONNECTED,
                    host_type: host_type::NAME,
                }),
                Host::V4(_) | Host::V6(_) => Ok(()),
            },
            Self::Extend(e) => {
                if e.peer_id.is_empty() || e.peer_id.len() > MAX_PEER_ID_LEN {
                    return Err(CellError::BadPeerIdLength(e.peer_id.len()));
                }
                if e.addrs.len() > MAX_EXTEND_ADDRS {
                    return Err(CellError::TooManyAddrs(e.addrs.len()));
                }
                if let Some(a) = e
                    .addrs
                    .iter()
                    .find(|a| a.is_empty() || a.len() > MAX_ADDR_LEN)
                {
                    return Err(CellError::BadAddrLength(a.len()));
                }
                check_u16_handshake(e.handshake.len(), "extend message")
            }
            Self::Extended { handshake } => {
                check_u16_handshake(handshake.len(), "extended message")
            }
            Self::Resolve(h) => h.validate(),
            Self::Resolved(answers) => {
                if answers.is_empty() || answers.len() > MAX_RESOLVED_ANSWERS {
                    return Err(CellError::BadAnswerCount(answers.len()));
                }
                if answers.len() > 1 && answers.iter().any(ResolvedAnswer::is_error) {
                    return Err(CellError::ErrorAnswerNotAlone(answers.len() - 1));
                }
                for a in answers {
                    if let ResolvedAnswer::Name(n, _) = a {
                        hostname_len(n.as_bytes())?;
                    }
                }
                Ok(())
            }
            Self::Unknown { command, .. } if relay_command::is_known(*command) => {
                Err(CellError::UnknownIsKnown(*command))
            }
            Self::Data(_)
            | Self::End(_)
            | Self::WindowUpdate(_)
            | Self::Truncated(_)
            | Self::Drop
            | Self::Unknown { .. } => Ok(()),
        }
    }

    /// Writes DATA (exactly `data_len()` bytes, already checked to fit).
    fn write_data(&self, w: &mut Writer<'_>) -> Result<(), CellError> {
        match self {
            Self::Begin(b) => {
                w.u16(b.port)?;
                b.host.write(w)?;
                w.u32(b.flags)
            }
            Self::Data(d) => w.put(d),
            Self::End(r) => w.u8(u8::from(*r)),
            Self::Connected { addr, ttl } => {
                addr.write(w)?;
                w.u32(*ttl)
            }
            Self::WindowUpdate(inc) => w.u32(*inc),
            Self::Extend(e) => {
                // Lengths were validated: PEER_ID ≤ 64, ≤ 8 addrs of ≤ 255 bytes, HLEN ≤ u16::MAX.
                w.u8(small_len(e.peer_id.len())?)?;
                w.put(&e.peer_id)?;
                w.u8(small_len(e.addrs.len())?)?;
                for a in &e.addrs {
                    w.u16(u16::from(small_len(a.len())?))?;
                    w.put(a)?;
                }
                w.put(&e.onion_key_id.0)?;
                w.u16(u16_len(e.handshake.len())?)?;
                w.put(&e.handshake)
            }
            Self::Extended { handshake } => {
                w.u16(u16_len(handshake.len())?)?;
                w.put(handshake)
            }
            Self::Truncated(r) => w.u8(u8::from(*r)),
            Self::Resolve(h) => h.write(w),
            Self::Resolved(answers) => {
                w.u8(small_len(answers.len())?)?;
                answers.iter().try_for_each(|a| a.write(w))
            }
            Self::Drop => Ok(()),
            Self::Unknown { data, .. } => w.put(data),
        }
    }

    /// Parses DATA for `command`. Trailing bytes are an error (specs/03 §3.2).
    fn read_data(command: u8, data: &[u8]) -> Result<Self, CellError> {
        use relay_command as c;
        let mut r = Reader::new(data, "relay message");
        let msg = match command {
            c::BEGIN => {
                let port = r.u16()?;
                let host = Host::read(&mut r)?;
                let flags = r.u32()?;
                Self::Begin(Begin { host, port, flags })
            }
            c::DATA if data.is_empty() => return Err(CellError::EmptyData),
            c::DATA => return Ok(Self::Data(data.to_vec())),
            c::END => Self::End(EndReason::from(r.u8()?)),
            c::CONNECTED => {
                let addr = Host::read(&mut r)?;
                if let Host::Name(_) = addr {
                    return Err(CellError::HostTypeNotAllowed {
                        command,
                        host_type: host_type::NAME,
                    });
                }
                let ttl = r.u32()?;
                Self::Connected { addr, ttl }
            }
            c::WINDOW_UPDATE => Self::WindowUpdate(r.u32()?),
            c::EXTEND => Self::Extend(read_extend(&mut r)?),
            c::EXTENDED => {
                let hlen = usize::from(r.u16()?);
                let handshake = r.take(hlen)?.to_vec();
                Self::Extended { handshake }
            }
            c::TRUNCATED => Self::Truncated(DestroyReason::from(r.u8()?)),
            c::RESOLVE => Self::Resolve(Host::read(&mut r)?),
            c::RESOLVED => {
                let n = usize::from(r.u8()?);
                if n == 0 || n > MAX_RESOLVED_ANSWERS {
                    return Err(CellError::BadAnswerCount(n));
                }
                let mut answers = Vec::with_capacity(n);
                for _ in 0..n {
                    answers.push(ResolvedAnswer::read(&mut r)?);
                }
                if n > 1 && answers.iter().any(ResolvedAnswer::is_error) {
                    return Err(CellError::ErrorAnswerNotAlone(n - 1));
                }
                Self::Resolved(answers)
            }
            // specs/03 §4.11: DROP's DATA is ignored, whatever its length.
            c::DROP => return Ok(Self::Drop),
            // specs/03 §9: the state machine decides what an unknown command means.
            _ => {
                return Ok(Self::Unknown {
                    command,
                    data: data.to_vec(),
                });
            }
        };
        r.finish(command)?;
        Ok(msg)
    }
}

fn read_extend(r: &mut Reader<'_>) -> Result<Extend, CellError> {
    let peer_len = usize::from(r.u8()?);
    if peer_len == 0 || peer_len > MAX_PEER_ID_LEN {
        return Err(CellError::BadPeerIdLength(peer_len));
    }
    let peer_id = r.take(peer_len)?.to_vec();
    let n_addrs = usize::from(r.u8()?);
    if n_addrs > MAX_EXTEND_ADDRS {
        return Err(CellError::TooManyAddrs(n_addrs));
    }
    let mut addrs = Vec::with_capacity(n_addrs);
    for _ in 0..n_addrs {
        let len = usize::from(r.u16()?);
        if len == 0 || len > MAX_ADDR_LEN {
            return Err(CellError::BadAddrLength(len));
        }
        addrs.push(r.take(len)?.to_vec());
    }
    let onion_key_id = OnionKeyId(r.array()?);
    let hlen = usize::from(r.u16()?);
    let handshake = r.take(hlen)?.to_vec();
    Ok(Extend {
        peer_id,
        addrs,
        onion_key_id,
        handshake,
    })
}

fn check_u16_handshake(len: usize, what: &'static str) -> Result<(), CellError> {
    u16_len(len)
        .map(|_| ())
        .map_err(|_| CellError::HandshakeTooLong {
            what,
            len,
            max: usize::from(u16::MAX),
        })
}

/// A length known to fit one byte (validated before); an error rather than a panic otherwise.
fn small_len(len: usize) -> Result<u8, CellError> {
    u8::try_from(len).map_err(|_| CellError::LengthExceedsArea {
        length: len,
        max: usize::from(u8::MAX),
    })
}

fn u16_len(len: usize) -> Result<u16, CellError> {
    u16::try_from(len).map_err(|_| CellError::LengthExceedsArea {
        length: len,
        max: usize::from(u16::MAX),
    })
}

/// A relay message with its stream id: the content of a relay-message area. specs/03 §2.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelayFrame {
    /// The stream; [`StreamId::CIRCUIT`] for circuit-level commands.
    pub stream_id: StreamId,
    /// The message.
    pub msg: RelayMsg,
}

impl RelayFrame {
    /// Encodes into `out`, which is the whole relay-message area (its length is
    /// `relay_payload_len(cell_len)`); writes every byte, padding with zeros. Refuses what the
    /// decoder would reject. specs/03 §2.
    pub fn encode_into(&self, out: &mut [u8]) -> Result<(), CellError> {
        let max = data_room(out.len())?;
        check_stream_rule(self.msg.command(), self.stream_id)?;
        self.msg.validate()?;
        let len = self.msg.data_len();
        let length = match u16::try_from(len) {
            Ok(l) if len <= max => l,
            _ => return Err(CellError::LengthExceedsArea { length: len, max }),
        };
        let mut w = Writer::new(out);
        w.u8(self.msg.command())?;
        w.u16(self.stream_id.0)?;
        w.u16(length)?;
        self.msg.write_data(&mut w)?;
        w.zero_rest();
        Ok(())
    }

    /// Encodes into a new area of `area_len` bytes (see [`RelayFrame::encode_into`]).
    pub fn encode(&self, area_len: usize) -> Result<Vec<u8>, CellError> {
        let mut out = vec![0u8; area_len];
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Decodes a whole relay-message area: header, LENGTH check, stream-id rule, the command's
    /// layout (no trailing bytes). Padding after DATA is ignored. specs/03 §2–§4.
    pub fn decode(area: &[u8]) -> Result<Self, CellError> {
        let (command, stream_id, data) = decode_header(area)?;
        let msg = RelayMsg::read_data(command, data)?;
        Ok(Self { stream_id, msg })
    }
}

/// The header of a relay-message area: command, stream id (checked against the command's
/// rule) and the LENGTH bytes of body, borrowed from `area`. specs/03 §2–§3.
fn decode_header(area: &[u8]) -> Result<(u8, StreamId, &[u8]), CellError> {
    let max = data_room(area.len())?;
    let mut r = Reader::new(area, "relay header");
    let command = r.u8()?;
    let stream_id = StreamId(r.u16()?);
    let length = usize::from(r.u16()?);
    if length > max {
        return Err(CellError::LengthExceedsArea { length, max });
    }
    let data = r.take(length)?;
    check_stream_rule(command, stream_id)?;
    Ok((command, stream_id, data))
}

/// Hot path: if the relay-message area `area` holds a DATA message, returns its stream id and
/// its bytes, borrowed from `area` (no allocation, no copy); `None` for any other command
/// (decode those with [`RelayFrame::decode`]). Same checks as [`RelayFrame::decode`] for DATA.
/// specs/03 §4.2.
pub fn decode_data(area: &[u8]) -> Option<Result<(StreamId, &[u8]), CellError>> {
    if area.first() != Some(&relay_command::DATA) {
        return None;
    }
    Some(decode_header(area).and_then(|(_, stream_id, data)| {
        if data.is_empty() {
            return Err(CellError::EmptyData);
        }
        Ok((stream_id, data))
    }))
}

/// Hot path: writes a DATA message for `stream_id` into the relay-message area `out` without
/// building a [`RelayFrame`]. Same checks as [`RelayFrame::encode_into`]. specs/03 §4.2.
pub fn encode_data_into(stream_id: StreamId, data: &[u8], out: &mut [u8]) -> Result<(), CellError> {
    let max = data_room(out.len())?;
    if stream_id.is_circuit() {
        return Err(CellError::StreamIdRequired {
            command: relay_command::DATA,
        });
    }
    if data.is_empty() {
        return Err(CellError::EmptyData);
    }
    let length = match u16::try_from(data.len()) {
        Ok(l) if data.len() <= max => l,
        _ => {
            return Err(CellError::LengthExceedsArea {
                length: data.len(),
                max,
            });
        }
    };
    let mut w = Writer::new(out);
    w.u8(relay_command::DATA)?;
    w.u16(stream_id.0)?;
    w.u16(length)?;
    w.put(data)?;
    w.zero_rest();
    Ok(())
}

/// Room for DATA in an area of `area_len` bytes.
fn data_room(area_len: usize) -> Result<usize, CellError> {
    area_len
        .checked_sub(RELAY_HEADER_LEN)
        .ok_or(CellError::AreaTooSmall(area_len))
}

/// specs/03 §3.3: stream commands need a non-zero id, circuit commands need 0; unknown commands
/// are not checked.
fn check_stream_rule(command: u8, stream_id: StreamId) -> Result<(), CellError> {
    match relay_command::stream_id_rule(command) {
        Some(StreamIdRule::Stream) if stream_id.is_circuit() => {
            Err(CellError::StreamIdRequired { command })
        }
        Some(StreamIdRule::Circuit) if !stream_id.is_circuit() => {
            Err(CellError::StreamIdForbidden {
                command,
                stream_id: stream_id.0,
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod decode_data_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn decode_data_agrees_with_decode() {
        let mut area = vec![0u8; 64];
        encode_data_into(StreamId(7), b"hello", &mut area).unwrap();
        let (id, data) = decode_data(&area).unwrap().unwrap();
        assert_eq!((id, data), (StreamId(7), &b"hello"[..]));
        let frame = RelayFrame::decode(&area).unwrap();
        assert_eq!(frame.msg, RelayMsg::Data(b"hello".to_vec()));
        // Other commands are not its business; bad DATA fails as in `decode`.
        let end = RelayFrame {
            stream_id: StreamId(7),
            msg: RelayMsg::End(EndReason::Done),
        }
        .encode(64)
        .unwrap();
        assert!(decode_data(&end).is_none());
        area[3] = 0xff;
        assert!(decode_data(&area).unwrap().is_err());
        assert!(RelayFrame::decode(&area).is_err());
        let mut zero_id = vec![0u8; 64];
        zero_id[0] = relay_command::DATA;
        zero_id[4] = 1;
        assert!(decode_data(&zero_id).unwrap().is_err());
        assert!(decode_data(&[relay_command::DATA]).unwrap().is_err());
    }
}
