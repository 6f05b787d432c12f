//! The extension to a next hop: EXTEND, the stream the IO layer opens, CREATE, and CREATED or
//! its failure (specs/03 §4.6–§4.8). One extension at a time, bounded by the extend timeout
//! from the EXTEND to the CREATED.

use std::time::Instant;

use shallot_cell::{DestroyReason, Extend, LinkCell, OnionKeyId, Preamble, RelayMsg, StreamId};

use super::{RelayAction, RelayCircuit};
use crate::err::ProtoError;

/// Where the circuit's next hop is.
#[derive(Debug)]
pub(super) enum NextHop {
    None,
    /// EXTEND received, waiting for the IO layer to open the stream.
    Opening {
        onion_key_id: OnionKeyId,
        handshake: Vec<u8>,
        deadline: Instant,
    },
    /// CREATE sent, waiting for CREATED.
    AwaitCreated {
        deadline: Instant,
    },
    /// Forwarding.
    Open,
}

impl NextHop {
    /// The deadline of the extension in progress.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match self {
            Self::Opening { deadline, .. } | Self::AwaitCreated { deadline } => Some(*deadline),
            Self::None | Self::Open => None,
        }
    }
}

impl RelayCircuit {
    /// Whether a next hop exists (being created or open): DESTROY will be sent to it too.
    pub fn has_next_hop(&self) -> bool {
        matches!(self.next, NextHop::AwaitCreated { .. } | NextHop::Open)
    }

    /// Whether an extension is in progress: the IO layer is opening the next hop's stream, or
    /// waits for its CREATED.
    pub fn is_extending(&self) -> bool {
        self.next.deadline().is_some()
    }

    /// EXTEND from the client.
    pub(super) fn handle_extend(&mut self, e: Extend) -> Result<(), ProtoError> {
        // specs/03 §4.6 (1): a second EXTEND, one past MAX_HOPS, or a handshake that does not
        // fit the next link's CREATE is a protocol violation.
        if !matches!(self.next, NextHop::None) {
            return Err(ProtoError::Unexpected {
                what: "EXTEND with a next hop",
            });
        }
        let Some(p) = Preamble::for_link(self.link_index + 1) else {
            return Err(ProtoError::Unexpected {
                what: "EXTEND past MAX_HOPS",
            });
        };
        if e.handshake.len() > LinkCell::max_create_handshake(self.next_cell_len) {
            return Err(ProtoError::Unexpected {
                what: "EXTEND handshake too long for the next link",
            });
        }
        // specs/03 §4.6 (2): refuse to extend to ourselves.
        if e.peer_id == self.local_peer_id {
            return self.send_own(
                StreamId::CIRCUIT,
                RelayMsg::Truncated(DestroyReason::ConnectFailed),
            );
        }
        self.next = NextHop::Opening {
            onion_key_id: e.onion_key_id,
            handshake: e.handshake,
            deadline: self.now + self.config.extend_timeout,
        };
        self.actions.push_back(RelayAction::OpenNextHop {
            peer_id: e.peer_id,
            addrs: e.addrs,
            preamble: p.encode(),
        });
        Ok(())
    }

    /// The stream to the next hop is open: send the pending CREATE on it.
    pub fn handle_next_hop_opened(&mut self, now: Instant) -> Result<(), ProtoError> {
        self.saw(now);
        if self.closed.is_some() {
            return Ok(());
        }
        let NextHop::Opening {
            onion_key_id,
            handshake,
            deadline,
        } = std::mem::replace(&mut self.next, NextHop::None)
        else {
            return Err(ProtoError::WrongState("no next hop is being opened"));
        };
        self.next = NextHop::AwaitCreated { deadline };
        let create = LinkCell::Create {
            onion_key_id,
            handshake,
        }
        .encode(self.next_cell_len);
        match create {
            Ok(cell) => {
                self.to_next
                    .push_parts(&[&cell])
                    .ok_or(ProtoError::WrongState("CREATE of the wrong length"))?;
                Ok(())
            }
            Err(source) => {
                // The client's handshake does not fit: refuse the extend.
                self.next = NextHop::None;
                self.send_own(
                    StreamId::CIRCUIT,
                    RelayMsg::Truncated(DestroyReason::Protocol),
                )?;
                Err(ProtoError::Encode {
                    what: "CREATE",
                    source,
                })
            }
        }
    }

    /// The next hop could not be reached: answer the EXTEND with TRUNCATED(`reason`).
    pub fn handle_next_hop_failed(
        &mut self,
        reason: DestroyReason,
        now: Instant,
    ) -> Result<(), ProtoError> {
        self.saw(now);
        if self.closed.is_some() {
            return Ok(());
        }
        if !matches!(self.next, NextHop::Opening { .. }) {
            return Err(ProtoError::WrongState("no next hop is being opened"));
        }
        self.next = NextHop::None;
        let r = self.send_own(StreamId::CIRCUIT, RelayMsg::Truncated(reason));
        self.fail_on_err(r)
    }

    /// Ends a pending extend: TRUNCATED(`reason`) to the client, no next hop.
    pub(super) fn truncate(&mut self, reason: DestroyReason) {
        self.next = NextHop::None;
        let r = self.send_own(StreamId::CIRCUIT, RelayMsg::Truncated(reason));
        let _ = self.fail_on_err(r);
    }

    /// The stream to the next hop closed without DESTROY: if it was still being created, the
    /// extend failed (TRUNCATED); else the circuit is destroyed toward the previous hop.
    pub fn handle_next_closed(&mut self, now: Instant) {
        self.saw(now);
        if self.closed.is_some() {
            return;
        }
        match self.next {
            NextHop::AwaitCreated { .. } | NextHop::Opening { .. } => {
                self.truncate(DestroyReason::ChannelClosed);
            }
            NextHop::Open => {
                // specs/01 §5.6: as if DESTROY(CHANNEL_CLOSED) came from the next hop.
                self.teardown(
                    Some(DestroyReason::Destroyed),
                    Some(ProtoError::LinkClosed),
                    false,
                );
            }
            NextHop::None => {}
        }
    }

    /// A link cell (not RELAY) from the next hop: CREATED, its refusal, or a DESTROY.
    pub(super) fn next_link_cell(&mut self, cell: &[u8]) -> Result<(), ProtoError> {
        let creating = matches!(self.next, NextHop::AwaitCreated { .. });
        match LinkCell::decode(cell) {
            Ok(LinkCell::Padding) => Ok(()),
            Ok(LinkCell::Created { handshake }) if creating => {
                self.next = NextHop::Open;
                self.send_own(StreamId::CIRCUIT, RelayMsg::Extended { handshake })
            }
            Ok(LinkCell::Destroy(reason)) => {
                if creating {
                    // The next hop refused the CREATE: the extend failed, the circuit stays.
                    self.next = NextHop::None;
                    self.send_own(StreamId::CIRCUIT, RelayMsg::Truncated(reason))?;
                } else {
                    // specs/01 §5.6: propagate toward the previous hop, as DESTROYED.
                    self.teardown(Some(DestroyReason::Destroyed), None, false);
                }
                Ok(())
            }
            Ok(_) => Err(ProtoError::Unexpected {
                what: "unexpected cell from the next hop",
            }),
            Err(source) => Err(ProtoError::Malformed {
                what: "link cell",
                source,
            }),
        }
    }
}
