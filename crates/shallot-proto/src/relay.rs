//! The relay side of a circuit: one hop's layer, forwarding both ways, EXTEND, and the exit's
//! streams.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::time::Instant;

use shallot_cell::{
    DestroyReason, EndReason, Host, LinkCell, OnionKeyId, Preamble, RelayFrame, RelayMsg,
    ResolvedAnswer, StreamId, encode_data_into, link_cell_len, link_command, max_data_len,
};
use shallot_crypto::{ForwardMarker, OnionKeyRing, RelayLayer, relay_handshake};

use crate::client::destroy_cell;
use crate::err::ProtoError;
use crate::flow::{
    CONTROL_RESERVE_CELLS, HALF_CLOSED_IDS, MAX_PENDING_ACTIONS, MAX_STREAMS_PER_CIRCUIT,
    OPTIMISTIC_DATA_MAX, RELAY_QUEUE_CELLS, RecvWindow, SendWindow,
};
use crate::queue::CellQueue;

/// Relay circuit settings.
#[derive(Clone, Debug, Default)]
pub struct RelayConfig {
    /// Whether this relay opens streams to the outside (BEGIN, RESOLVE). A non-exit answers
    /// BEGIN and RESOLVE with END(EXITPOLICY). The exit policy itself is the IO layer's:
    /// it answers [`RelayAction::Connect`] with `handle_exit_connect_failed(.., ExitPolicy)`.
    pub exit: bool,
}

/// Something the IO layer must do for a relay circuit; drained with
/// [`RelayCircuit::poll_action`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayAction {
    /// Open a circuit stream to the next relay, write `preamble` on it, then call
    /// [`RelayCircuit::handle_next_hop_opened`] (or `handle_next_hop_failed`).
    OpenNextHop {
        /// The next relay's PeerId bytes (the link must authenticate it).
        peer_id: Vec<u8>,
        /// Its multiaddrs (bytes), as the client sent them.
        addrs: Vec<Vec<u8>>,
        /// The preamble to write first on the new stream.
        preamble: [u8; Preamble::LEN],
    },
    /// Exit: connect to `host:port` (resolve, check the exit policy against the resolved
    /// address), then call `handle_exit_connected` or `handle_exit_connect_failed`.
    Connect {
        /// The stream.
        stream: StreamId,
        /// Where to (sensitive: never log it).
        host: Host,
        /// Port.
        port: u16,
    },
    /// Exit: resolve `host`, then call `handle_exit_resolved`.
    Resolve {
        /// The stream.
        stream: StreamId,
        /// What to resolve (sensitive).
        host: Host,
    },
    /// Exit: write these bytes to the stream's connection; report them with
    /// `handle_exit_written` once written (that returns credit to the client).
    ExitData {
        /// The stream.
        stream: StreamId,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Exit: close the stream's connection (the client ended it or the circuit is gone).
    CloseStream {
        /// The stream.
        stream: StreamId,
    },
    /// Exit: `handle_exit_data` on this stream took less than offered before; it can take more
    /// now (credit or queue room came back).
    ExitWritable {
        /// The stream.
        stream: StreamId,
    },
}

#[derive(Debug)]
enum NextHop {
    None,
    /// EXTEND received, waiting for the IO layer to open the stream.
    Opening {
        onion_key_id: OnionKeyId,
        handshake: Vec<u8>,
    },
    /// CREATE sent, waiting for CREATED.
    AwaitCreated,
    /// Forwarding.
    Open,
}

#[derive(Debug, PartialEq, Eq)]
enum ExitState {
    Connecting,
    Resolving,
    Open,
}

#[derive(Debug)]
struct ExitStream {
    state: ExitState,
    send: SendWindow,
    recv: RecvWindow,
    /// Optimistic data held until CONNECTED (specs/03 §11.5).
    optimistic: Vec<u8>,
    /// Bytes handed to the IO layer in `ExitData` and not yet reported written.
    outstanding: usize,
    blocked: bool,
}

/// One circuit as a relay sees it (sans-IO).
///
/// Created by [`RelayCircuit::accept`] from the preamble and the first cell (CREATE) read on a
/// circuit stream. Input: `handle_prev_cell`, `handle_next_cell`, `handle_next_hop_*`,
/// `handle_exit_*`. Output: [`poll_transmit_prev`](Self::poll_transmit_prev),
/// [`poll_transmit_next`](Self::poll_transmit_next), [`poll_action`](Self::poll_action).
///
/// Backpressure (specs/03 §11.4): read the previous hop's stream only while
/// [`wants_prev_cell`](Self::wants_prev_cell), the next hop's only while
/// [`wants_next_cell`](Self::wants_next_cell). Handing in a cell when the answer is `false`
/// destroys the circuit with [`ProtoError::QueueFull`]. Once [`is_closed`](Self::is_closed),
/// drain both transmit queues (the DESTROY cells) and the actions, then close both streams.
#[derive(Debug)]
pub struct RelayCircuit {
    cell_len: usize,
    link_index: usize,
    local_peer_id: Vec<u8>,
    layer: RelayLayer,
    config: RelayConfig,
    next: NextHop,
    next_cell_len: usize,
    /// Cells toward the previous hop, back to back (taken in batches by the IO layer).
    to_prev: CellQueue,
    /// Cells toward the next hop.
    to_next: CellQueue,
    actions: VecDeque<RelayAction>,
    streams: BTreeMap<u16, ExitStream>,
    /// Ids this hop closed (END or RESOLVED sent), most recent last; bounded (specs/03 §7.2).
    half_closed: VecDeque<u16>,
    closed: Option<DestroyReason>,
    close_error: Option<ProtoError>,
    updates_deferred: bool,
    queue_blocked: bool,
}

impl RelayCircuit {
    /// Accepts a circuit: checks the `preamble` (specs/01 §4), answers the first cell, which
    /// must be CREATE (specs/01 §5.3), and queues CREATED toward the previous hop.
    ///
    /// On `Err` no circuit exists: the IO layer writes [`RelayCircuit::refusal`] (DESTROY with
    /// reason PROTOCOL, specs/01 §5.3) if there is one, and closes the stream.
    pub fn accept(
        preamble: &[u8],
        create: &[u8],
        local_peer_id: &[u8],
        keys: &OnionKeyRing,
        config: RelayConfig,
        _now: Instant,
    ) -> Result<Self, ProtoError> {
        let p = Preamble::decode(preamble).map_err(ProtoError::Preamble)?;
        let cell_len = usize::from(p.cell_len);
        let link_index = p.link_index().ok_or(ProtoError::Unexpected {
            what: "preamble cell length",
        })?;
        if create.len() != cell_len {
            return Err(ProtoError::BadCellLength {
                expected: cell_len,
                got: create.len(),
            });
        }
        let (onion_key_id, hdata) = match LinkCell::decode(create) {
            Ok(LinkCell::Create {
                onion_key_id,
                handshake,
            }) => (onion_key_id, handshake),
            Ok(_) => {
                return Err(ProtoError::Unexpected {
                    what: "first cell is not CREATE",
                });
            }
            Err(source) => {
                return Err(ProtoError::Malformed {
                    what: "CREATE",
                    source,
                });
            }
        };
        let (hop_keys, reply) = relay_handshake(local_peer_id, keys, &onion_key_id, &hdata)
            .map_err(ProtoError::Handshake)?;
        let created = LinkCell::Created { handshake: reply }
            .encode(cell_len)
            .map_err(|source| ProtoError::Encode {
                what: "CREATED",
                source,
            })?;
        let mut to_prev = CellQueue::new(cell_len);
        to_prev
            .push_parts(&[&created])
            .ok_or(ProtoError::WrongState("CREATED of the wrong length"))?;
        let next_cell_len = link_cell_len(link_index + 1).unwrap_or(0);
        Ok(Self {
            cell_len,
            link_index,
            local_peer_id: local_peer_id.to_vec(),
            layer: RelayLayer::new(hop_keys),
            config,
            next: NextHop::None,
            next_cell_len,
            to_prev,
            to_next: CellQueue::new(next_cell_len),
            actions: VecDeque::new(),
            streams: BTreeMap::new(),
            half_closed: VecDeque::new(),
            closed: None,
            close_error: None,
            updates_deferred: false,
            queue_blocked: false,
        })
    }

    /// The cell to answer a refused circuit with: DESTROY(PROTOCOL) when `preamble` was valid
    /// (so that a cell length is known), else `None` (close the stream without a cell).
    pub fn refusal(preamble: &[u8]) -> Option<Vec<u8>> {
        let p = Preamble::decode(preamble).ok()?;
        Some(destroy_cell(
            usize::from(p.cell_len),
            DestroyReason::Protocol,
        ))
    }

    /// The cell length on the link from the previous hop.
    pub fn cell_len(&self) -> usize {
        self.cell_len
    }

    /// The cell length on the link to the next hop (0 if this relay cannot extend).
    pub fn next_cell_len(&self) -> usize {
        self.next_cell_len
    }

    /// Our position: the index of the link we were reached on (0 = the client's link).
    pub fn link_index(&self) -> usize {
        self.link_index
    }

    /// Whether the circuit is destroyed.
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// Why we tore the circuit down, when the cause was not returned by a `handle_*` call.
    pub fn close_error(&self) -> Option<&ProtoError> {
        self.close_error.as_ref()
    }

    /// Whether a next hop exists (opening or open): DESTROY will be sent to it too.
    pub fn has_next_hop(&self) -> bool {
        matches!(self.next, NextHop::AwaitCreated | NextHop::Open)
    }

    /// Exit streams open on this circuit.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Cells queued toward the previous hop.
    pub fn queued_prev(&self) -> usize {
        self.to_prev.len()
    }

    /// Cells queued toward the next hop.
    pub fn queued_next(&self) -> usize {
        self.to_next.len()
    }

    /// Actions not yet polled.
    pub fn pending_actions(&self) -> usize {
        self.actions.len()
    }

    /// Whether the IO layer may read a cell from the previous hop now (specs/03 §11.4).
    pub fn wants_prev_cell(&self) -> bool {
        self.closed.is_none()
            && self.to_next.len() < RELAY_QUEUE_CELLS
            && self.to_prev.len() < RELAY_QUEUE_CELLS
            && self.actions.len() < MAX_PENDING_ACTIONS
    }

    /// Whether the IO layer may read a cell from the next hop now (specs/03 §11.4).
    pub fn wants_next_cell(&self) -> bool {
        self.closed.is_none() && self.to_prev.len() < RELAY_QUEUE_CELLS
    }

    /// The next cell for the previous hop.
    pub fn poll_transmit_prev(&mut self) -> Option<Vec<u8>> {
        let cell = self.to_prev.pop_front()?;
        self.prev_room_freed();
        Some(cell)
    }

    /// Appends every cell queued for the previous hop to `batch`, back to back: the IO
    /// layer's batched write (specs/01 §4.3). When `batch` is empty it receives the queue's
    /// buffer without a copy. The batch is at most `RELAY_QUEUE_CELLS + CONTROL_RESERVE_CELLS`
    /// cells.
    pub fn transmit_prev_into(&mut self, batch: &mut Vec<u8>) {
        if self.to_prev.len() == 0 {
            return;
        }
        self.to_prev.take_into(batch);
        self.prev_room_freed();
    }

    /// Appends every cell queued for the next hop to `batch` (as
    /// [`transmit_prev_into`](Self::transmit_prev_into)).
    pub fn transmit_next_into(&mut self, batch: &mut Vec<u8>) {
        self.to_next.take_into(batch);
    }

    /// Room came back in the backward queue: send deferred WINDOW_UPDATEs, wake blocked exit
    /// streams.
    fn prev_room_freed(&mut self) {
        if self.closed.is_none() {
            if self.updates_deferred {
                self.updates_deferred = false;
                let due: Vec<u16> = self
                    .streams
                    .iter()
                    .filter(|(_, s)| s.recv.update_due())
                    .map(|(id, _)| *id)
                    .collect();
                for id in due {
                    if self.flush_update(id).is_err() {
                        break;
                    }
                }
            }
            if self.queue_blocked && self.to_prev.len() <= RELAY_QUEUE_CELLS / 2 {
                self.queue_blocked = false;
                for (id, s) in &mut self.streams {
                    if s.blocked && s.send.credit() > 0 {
                        s.blocked = false;
                        self.actions.push_back(RelayAction::ExitWritable {
                            stream: StreamId(*id),
                        });
                    }
                }
            }
        }
    }

    /// The next cell for the next hop.
    pub fn poll_transmit_next(&mut self) -> Option<Vec<u8>> {
        self.to_next.pop_front()
    }

    /// The next action for the IO layer.
    pub fn poll_action(&mut self) -> Option<RelayAction> {
        self.actions.pop_front()
    }

    /// One whole cell from the previous hop. An `Err` means the circuit is now destroyed
    /// (DESTROY queued both ways). After close, input is ignored.
    ///
    /// The cell is opened in place: pass a slice of the IO layer's read buffer, no copy is
    /// needed (a `Vec<u8>` works too).
    pub fn handle_prev_cell(
        &mut self,
        mut cell: impl AsMut<[u8]>,
        _now: Instant,
    ) -> Result<(), ProtoError> {
        if self.closed.is_some() {
            return Ok(());
        }
        let r = self.prev_cell_inner(cell.as_mut());
        self.fail_on_err(r)
    }

    fn prev_cell_inner(&mut self, cell: &mut [u8]) -> Result<(), ProtoError> {
        if !self.wants_prev_cell() {
            return Err(ProtoError::QueueFull("relay inbound from previous hop"));
        }
        let l = self.cell_len;
        if cell.len() != l {
            return Err(ProtoError::BadCellLength {
                expected: l,
                got: cell.len(),
            });
        }
        if cell[0] != link_command::RELAY {
            return match LinkCell::decode(cell) {
                Ok(LinkCell::Padding) => Ok(()),
                Ok(LinkCell::Destroy(reason)) => {
                    // specs/01 §5.6: propagate toward the next hop (as DESTROYED), nothing back.
                    let _ = reason;
                    self.teardown(None, None, true);
                    Ok(())
                }
                Ok(_) => Err(ProtoError::Unexpected {
                    what: "CREATE or CREATED from the previous hop",
                }),
                Err(source) => Err(ProtoError::Malformed {
                    what: "link cell",
                    source,
                }),
            };
        }
        let marker = self
            .layer
            .open_forward(&mut cell[1..])
            .map_err(ProtoError::Layer)?;
        match marker {
            ForwardMarker::Forward => {
                if !matches!(self.next, NextHop::Open) {
                    return Err(ProtoError::Unexpected {
                        what: "forward cell without a next hop",
                    });
                }
                // specs/02 §4.4: INNER = body[1..n-16] = cell[2..l-16] is the next link's RELAY
                // body: the command and INNER go into the queue, the one copy of the cell.
                self.to_next
                    .push_parts(&[&[link_command::RELAY], &cell[2..l - 16]])
                    .ok_or(ProtoError::WrongState("next link's cell length"))?;
                Ok(())
            }
            ForwardMarker::ForMe => {
                let frame = RelayFrame::decode(&cell[2..l - 16]).map_err(|source| {
                    ProtoError::Malformed {
                        what: "relay message",
                        source,
                    }
                })?;
                self.handle_for_me(frame)
            }
        }
    }

    /// Opens an exit stream for BEGIN or RESOLVE on `stream` in `state`; `Ok(false)` when it was
    /// refused with END (a non-exit, specs/03 §8; too many streams, specs/03 §11.6).
    fn admit_exit_stream(
        &mut self,
        stream: StreamId,
        state: ExitState,
    ) -> Result<bool, ProtoError> {
        let id = stream.0;
        self.check_new_stream(id)?;
        let refusal = if !self.config.exit {
            Some(EndReason::ExitPolicy)
        } else if self.streams.len() >= MAX_STREAMS_PER_CIRCUIT {
            Some(EndReason::ResourceLimit)
        } else {
            None
        };
        if let Some(reason) = refusal {
            self.mark_half_closed(id);
            self.send_own(stream, RelayMsg::End(reason))?;
            return Ok(false);
        }
        self.streams.insert(id, ExitStream::new(state));
        Ok(true)
    }

    fn handle_for_me(&mut self, frame: RelayFrame) -> Result<(), ProtoError> {
        // specs/03 §9: unknown commands 128..=255 are dropped, 0..=127 are fatal.
        if frame.msg.is_ignorable_unknown() {
            return Ok(());
        }
        if let RelayMsg::Unknown { command, .. } = frame.msg {
            return Err(ProtoError::UnknownRelayCommand(command));
        }
        let stream = frame.stream_id;
        let id = stream.0;
        match frame.msg {
            RelayMsg::Drop => Ok(()),
            RelayMsg::Extend(e) => {
                // specs/03 §4.6 (1): a second EXTEND, one past MAX_HOPS, or a handshake that
                // does not fit the next link's CREATE is a protocol violation.
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
                };
                self.actions.push_back(RelayAction::OpenNextHop {
                    peer_id: e.peer_id,
                    addrs: e.addrs,
                    preamble: p.encode(),
                });
                Ok(())
            }
            RelayMsg::Begin(b) => {
                if self.admit_exit_stream(stream, ExitState::Connecting)? {
                    self.actions.push_back(RelayAction::Connect {
                        stream,
                        host: b.host,
                        port: b.port,
                    });
                }
                Ok(())
            }
            RelayMsg::Resolve(host) => {
                if self.admit_exit_stream(stream, ExitState::Resolving)? {
                    self.actions
                        .push_back(RelayAction::Resolve { stream, host });
                }
                Ok(())
            }
            RelayMsg::Data(data) => {
                let Some(s) = self.streams.get_mut(&id) else {
                    return self.unknown_stream(id);
                };
                s.recv.receive(id, data.len())?;
                match s.state {
                    ExitState::Connecting => {
                        // specs/03 §11.5: bounded optimistic data.
                        if s.optimistic.len() + data.len() > OPTIMISTIC_DATA_MAX {
                            return Err(ProtoError::OptimisticDataExceeded(id));
                        }
                        s.optimistic.extend_from_slice(&data);
                    }
                    ExitState::Open => {
                        s.outstanding += data.len();
                        self.actions
                            .push_back(RelayAction::ExitData { stream, data });
                    }
                    ExitState::Resolving => {
                        return Err(ProtoError::Unexpected {
                            what: "DATA on a RESOLVE stream",
                        });
                    }
                }
                Ok(())
            }
            RelayMsg::End(_) => {
                if self.streams.remove(&id).is_some() {
                    self.actions.push_back(RelayAction::CloseStream { stream });
                    Ok(())
                } else {
                    self.unknown_stream(id)
                }
            }
            RelayMsg::WindowUpdate(inc) => {
                let Some(s) = self.streams.get_mut(&id) else {
                    return self.unknown_stream(id);
                };
                s.send.grant(id, inc)?;
                if s.blocked && s.state == ExitState::Open {
                    s.blocked = false;
                    self.actions.push_back(RelayAction::ExitWritable { stream });
                }
                Ok(())
            }
            _ => Err(ProtoError::Unexpected {
                what: "relay message for a relay",
            }),
        }
    }

    /// specs/03 §7.1: a BEGIN or RESOLVE on an id that is open or half-closed is a violation.
    fn check_new_stream(&mut self, id: u16) -> Result<(), ProtoError> {
        if self.streams.contains_key(&id) || self.half_closed.contains(&id) {
            return Err(ProtoError::StreamIdReuse(id));
        }
        Ok(())
    }

    /// specs/03 §7.2: remember that we closed `id`, in a bounded record.
    fn mark_half_closed(&mut self, id: u16) {
        if self.half_closed.len() >= HALF_CLOSED_IDS {
            self.half_closed.pop_front();
        }
        self.half_closed.push_back(id);
    }

    /// specs/03 §7.2: a stream message for an id we do not hold open is dropped silently.
    fn unknown_stream(&self, _id: u16) -> Result<(), ProtoError> {
        Ok(())
    }

    /// The stream to the next hop is open: send the pending CREATE on it.
    pub fn handle_next_hop_opened(&mut self, _now: Instant) -> Result<(), ProtoError> {
        if self.closed.is_some() {
            return Ok(());
        }
        let NextHop::Opening {
            onion_key_id,
            handshake,
        } = std::mem::replace(&mut self.next, NextHop::AwaitCreated)
        else {
            return Err(ProtoError::WrongState("no next hop is being opened"));
        };
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
        _now: Instant,
    ) -> Result<(), ProtoError> {
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

    /// The next hop sent no CREATED within the extend timeout: the extend failed with
    /// TRUNCATED(TIMEOUT) (specs/03 §4.8) and the circuit stays; the IO layer drops the
    /// stream it opened. Nothing happens in any other state.
    pub fn handle_created_timeout(&mut self, _now: Instant) {
        if self.closed.is_none() && matches!(self.next, NextHop::AwaitCreated) {
            self.truncate(DestroyReason::Timeout);
        }
    }

    /// Ends a pending extend: TRUNCATED(`reason`) to the client, no next hop.
    fn truncate(&mut self, reason: DestroyReason) {
        self.next = NextHop::None;
        let r = self.send_own(StreamId::CIRCUIT, RelayMsg::Truncated(reason));
        let _ = self.fail_on_err(r);
    }

    /// The stream to the next hop closed without DESTROY: if it was still being created, the
    /// extend failed (TRUNCATED); else the circuit is destroyed toward the previous hop.
    pub fn handle_next_closed(&mut self, _now: Instant) {
        if self.closed.is_some() {
            return;
        }
        match self.next {
            NextHop::AwaitCreated | NextHop::Opening { .. } => {
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

    /// The stream from the previous hop closed without DESTROY: destroy toward the next hop.
    pub fn handle_prev_closed(&mut self, _now: Instant) {
        if self.closed.is_none() {
            self.teardown(None, Some(ProtoError::LinkClosed), true);
        }
    }

    /// Tears the circuit down locally (e.g. the relay shuts down): DESTROY both ways.
    pub fn destroy(&mut self, reason: DestroyReason) {
        if self.closed.is_none() {
            self.teardown(Some(reason), Some(ProtoError::ClosedLocally), true);
        }
    }

    /// One whole cell from the next hop. An `Err` means the circuit is now destroyed.
    ///
    /// The sealed cell is built directly in the backward queue: pass a slice of the IO layer's
    /// read buffer (a `Vec<u8>` works too).
    pub fn handle_next_cell(
        &mut self,
        cell: impl AsRef<[u8]>,
        _now: Instant,
    ) -> Result<(), ProtoError> {
        if self.closed.is_some() {
            return Ok(());
        }
        let r = self.next_cell_inner(cell.as_ref());
        self.fail_on_err(r)
    }

    fn next_cell_inner(&mut self, cell: &[u8]) -> Result<(), ProtoError> {
        if !self.wants_next_cell() {
            return Err(ProtoError::QueueFull("relay inbound from next hop"));
        }
        if !self.has_next_hop() {
            return Err(ProtoError::WrongState(
                "cell from a next hop that does not exist",
            ));
        }
        let nl = self.next_cell_len;
        if cell.len() != nl {
            return Err(ProtoError::BadCellLength {
                expected: nl,
                got: cell.len(),
            });
        }
        if cell[0] == link_command::RELAY {
            if !matches!(self.next, NextHop::Open) {
                return Err(ProtoError::Unexpected {
                    what: "RELAY before CREATED",
                });
            }
            // specs/02 §4.5: the next hop's body becomes our INNER at body[1..n-16]; the
            // marker and the tag are written by the seal.
            let out = self
                .to_prev
                .push_parts(&[&[link_command::RELAY, 0], &cell[1..nl], &[0; 16]])
                .ok_or(ProtoError::WrongState("previous link's cell length"))?;
            let sealed = self.layer.seal_backward(false, &mut out[1..]);
            if let Err(e) = sealed {
                self.to_prev.pop_back();
                return Err(ProtoError::Layer(e));
            }
            return Ok(());
        }
        match LinkCell::decode(cell) {
            Ok(LinkCell::Padding) => Ok(()),
            Ok(LinkCell::Created { handshake }) if matches!(self.next, NextHop::AwaitCreated) => {
                self.next = NextHop::Open;
                self.send_own(StreamId::CIRCUIT, RelayMsg::Extended { handshake })
            }
            Ok(LinkCell::Destroy(reason)) => {
                if matches!(self.next, NextHop::AwaitCreated) {
                    // The next hop refused the CREATE: the extend failed, the circuit stays.
                    self.next = NextHop::None;
                    self.send_own(StreamId::CIRCUIT, RelayMsg::Truncated(reason))?;
                } else {
                    // specs/01 §5.6: propagate toward the previous hop, as DESTROYED.
                    let _ = reason;
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

    /// Exit: the stream's connection is up to `addr`; sends CONNECTED and hands over any
    /// optimistic data.
    pub fn handle_exit_connected(
        &mut self,
        stream: StreamId,
        addr: IpAddr,
        ttl: u32,
        _now: Instant,
    ) -> Result<(), ProtoError> {
        if self.closed.is_some() {
            return Ok(());
        }
        let s = self.exit_stream(stream, ExitState::Connecting)?;
        s.state = ExitState::Open;
        let optimistic = std::mem::take(&mut s.optimistic);
        if !optimistic.is_empty() {
            s.outstanding += optimistic.len();
        }
        let host = match addr {
            IpAddr::V4(a) => Host::V4(a),
            IpAddr::V6(a) => Host::V6(a),
        };
        let r = self.send_own(stream, RelayMsg::Connected { addr: host, ttl });
        if !optimistic.is_empty() {
            self.actions.push_back(RelayAction::ExitData {
                stream,
                data: optimistic,
            });
        }
        self.fail_on_err(r)
    }

    /// Exit: connecting failed; sends END(`reason`) and forgets the stream.
    pub fn handle_exit_connect_failed(
        &mut self,
        stream: StreamId,
        reason: EndReason,
        _now: Instant,
    ) -> Result<(), ProtoError> {
        if self.closed.is_some() {
            return Ok(());
        }
        self.exit_stream(stream, ExitState::Connecting)?;
        self.streams.remove(&stream.0);
        self.mark_half_closed(stream.0);
        let r = self.send_own(stream, RelayMsg::End(reason));
        self.fail_on_err(r)
    }

    /// Exit: bytes read from the stream's connection. Returns how many were taken, bounded by
    /// the client's credit for the stream and by the backward queue (specs/03 §11.4); keep the
    /// rest and offer it again after [`RelayAction::ExitWritable`].
    pub fn handle_exit_data(
        &mut self,
        stream: StreamId,
        data: &[u8],
        _now: Instant,
    ) -> Result<usize, ProtoError> {
        if self.closed.is_some() {
            return Err(ProtoError::CircuitClosed);
        }
        let room = RELAY_QUEUE_CELLS.saturating_sub(self.to_prev.len());
        let chunk = max_data_len(self.cell_len);
        let s = self.exit_stream(stream, ExitState::Open)?;
        let by_queue = room.saturating_mul(chunk);
        let take = data.len().min(s.send.credit()).min(by_queue);
        if take < data.len() {
            s.blocked = true;
        }
        s.send.spend(take);
        if by_queue < data.len() {
            self.queue_blocked = true;
        }
        let l = self.cell_len;
        let layer = &mut self.layer;
        for piece in data[..take].chunks(chunk.max(1)) {
            // Built and sealed in place in the queue: no allocation per cell.
            let r = self.to_prev.push_with(|cell| {
                cell[0] = link_command::RELAY;
                encode_data_into(stream, piece, &mut cell[2..l - 16]).map_err(|source| {
                    ProtoError::Encode {
                        what: "DATA",
                        source,
                    }
                })?;
                layer
                    .seal_backward(true, &mut cell[1..])
                    .map_err(ProtoError::Layer)
            });
            if let Err(e) = r {
                return self.fail(e).map(|()| 0);
            }
        }
        Ok(take)
    }

    /// Exit: `n` bytes of earlier [`RelayAction::ExitData`] were written to the connection;
    /// returns credit to the client once enough was written (specs/03 §11.3).
    pub fn handle_exit_written(
        &mut self,
        stream: StreamId,
        n: usize,
        _now: Instant,
    ) -> Result<(), ProtoError> {
        if self.closed.is_some() {
            return Ok(());
        }
        let Some(s) = self.streams.get_mut(&stream.0) else {
            // Closed meanwhile: nothing to credit.
            return Ok(());
        };
        if n > s.outstanding {
            return Err(ProtoError::WrongState("more written than handed out"));
        }
        s.outstanding -= n;
        s.recv.consumed(n);
        if s.recv.update_due() {
            let _ = self.flush_update(stream.0);
        }
        Ok(())
    }

    /// Exit: the connection reached EOF; sends END(DONE) after the data already taken.
    pub fn handle_exit_eof(&mut self, stream: StreamId, now: Instant) -> Result<(), ProtoError> {
        self.handle_exit_closed(stream, EndReason::Done, now)
    }

    /// Exit: the connection closed (reset, timeout, ...); sends END(`reason`).
    pub fn handle_exit_closed(
        &mut self,
        stream: StreamId,
        reason: EndReason,
        _now: Instant,
    ) -> Result<(), ProtoError> {
        if self.closed.is_some() {
            return Ok(());
        }
        if self.streams.remove(&stream.0).is_none() {
            return Err(ProtoError::UnknownStream(stream.0));
        }
        self.mark_half_closed(stream.0);
        let r = self.send_own(stream, RelayMsg::End(reason));
        self.fail_on_err(r)
    }

    /// Exit: the answer to a [`RelayAction::Resolve`]; sends RESOLVED (as many answers as fit)
    /// and forgets the stream.
    pub fn handle_exit_resolved(
        &mut self,
        stream: StreamId,
        mut answers: Vec<ResolvedAnswer>,
        _now: Instant,
    ) -> Result<(), ProtoError> {
        if self.closed.is_some() {
            return Ok(());
        }
        self.exit_stream(stream, ExitState::Resolving)?;
        self.streams.remove(&stream.0);
        self.mark_half_closed(stream.0);
        answers.truncate(shallot_cell::MAX_RESOLVED_ANSWERS);
        let area = self.cell_len - 18;
        while answers.len() > 1
            && (RelayFrame {
                stream_id: stream,
                msg: RelayMsg::Resolved(answers.clone()),
            })
            .encode(area)
            .is_err()
        {
            answers.pop();
        }
        if answers.is_empty() {
            answers.push(ResolvedAnswer::TransientError(0));
        }
        let r = self.send_own(stream, RelayMsg::Resolved(answers));
        self.fail_on_err(r)
    }

    fn exit_stream(
        &mut self,
        stream: StreamId,
        want: ExitState,
    ) -> Result<&mut ExitStream, ProtoError> {
        match self.streams.get_mut(&stream.0) {
            Some(s) if s.state == want => Ok(s),
            Some(_) => Err(ProtoError::WrongState("exit stream in another state")),
            None => Err(ProtoError::UnknownStream(stream.0)),
        }
    }

    fn flush_update(&mut self, id: u16) -> Result<(), ProtoError> {
        if self.to_prev.len() >= RELAY_QUEUE_CELLS + CONTROL_RESERVE_CELLS {
            self.updates_deferred = true;
            return Err(ProtoError::WouldBlock);
        }
        let Some(inc) = self.streams.get_mut(&id).and_then(|s| s.recv.take_update()) else {
            return Ok(());
        };
        let r = self.send_own(StreamId(id), RelayMsg::WindowUpdate(inc));
        self.fail_on_err(r)
    }

    /// Queues a message that originates here toward the previous hop. Control messages may
    /// use the reserve above the data bound; past it the circuit is destroyed (specs/03 §11.4).
    fn send_own(&mut self, stream_id: StreamId, msg: RelayMsg) -> Result<(), ProtoError> {
        if self.to_prev.len() >= RELAY_QUEUE_CELLS + CONTROL_RESERVE_CELLS {
            return Err(ProtoError::QueueFull("relay backward"));
        }
        let l = self.cell_len;
        let layer = &mut self.layer;
        self.to_prev.push_with(|cell| {
            cell[0] = link_command::RELAY;
            RelayFrame { stream_id, msg }
                .encode_into(&mut cell[2..l - 16])
                .map_err(|source| ProtoError::Encode {
                    what: "relay message",
                    source,
                })?;
            layer
                .seal_backward(true, &mut cell[1..])
                .map_err(ProtoError::Layer)
        })
    }

    fn fail_on_err(&mut self, r: Result<(), ProtoError>) -> Result<(), ProtoError> {
        match r {
            Ok(()) => Ok(()),
            Err(e) => self.fail(e),
        }
    }

    /// A local detection: destroy both ways and return the cause.
    fn fail(&mut self, e: ProtoError) -> Result<(), ProtoError> {
        if self.closed.is_none() {
            self.teardown(Some(e.destroy_reason()), None, true);
        }
        Err(e)
    }

    /// Destroys the circuit: drops every queued cell, queues DESTROY(`to_prev`) toward the
    /// previous hop and DESTROY(DESTROYED) toward the next hop (if `to_next` and one exists),
    /// closes every exit stream.
    /// Nothing else is emitted afterwards. specs/01 §5.6.
    fn teardown(
        &mut self,
        to_prev: Option<DestroyReason>,
        error: Option<ProtoError>,
        to_next: bool,
    ) {
        self.to_prev.clear();
        self.to_next.clear();
        self.actions.clear();
        let reason = to_prev.unwrap_or(DestroyReason::Destroyed);
        if let Some(r) = to_prev {
            let _ = self.to_prev.push_parts(&[&destroy_cell(self.cell_len, r)]);
        }
        // specs/01 §5.6, specs/03 §10: toward the next hop the reason is always DESTROYED,
        // so it cannot serve as a side channel along the circuit.
        if to_next && self.has_next_hop() {
            let _ = self
                .to_next
                .push_parts(&[&destroy_cell(self.next_cell_len, DestroyReason::Destroyed)]);
        }
        for id in std::mem::take(&mut self.streams).into_keys() {
            self.actions.push_back(RelayAction::CloseStream {
                stream: StreamId(id),
            });
        }
        self.closed = Some(reason);
        if error.is_some() {
            self.close_error = error;
        }
    }
}

impl ExitStream {
    fn new(state: ExitState) -> Self {
        Self {
            state,
            send: SendWindow::new(),
            recv: RecvWindow::new(),
            optimistic: Vec::new(),
            outstanding: 0,
            blocked: false,
        }
    }
}
