//! The relay side of a circuit (sans-IO): one hop's layer and forwarding both ways, in this
//! file; the extension to a next hop in `extend.rs` (specs/03 §4.6–§4.8); the exit's streams in
//! `exit.rs` (specs/03 §4.1–§4.5, §4.9–§4.10, §11).
//!
//! The state machine owns its only timer, the deadline of an extension in progress: the IO
//! layer sleeps until [`RelayCircuit::poll_timeout`] and calls
//! [`RelayCircuit::handle_timeout`], and keeps no deadline of its own.

mod exit;
mod extend;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use shallot_cell::{
    DestroyReason, Host, LinkCell, Preamble, RelayFrame, RelayMsg, StreamId, link_cell_len,
    link_command,
};
use shallot_crypto::{ForwardMarker, OnionKeyRing, RelayLayer, relay_handshake};

use crate::client::destroy_cell;
use crate::err::ProtoError;
use crate::flow::{CONTROL_RESERVE_CELLS, MAX_PENDING_ACTIONS, RELAY_QUEUE_CELLS};
use crate::queue::CellQueue;
use crate::streams::StreamTable;

use exit::ExitStream;
use extend::NextHop;

/// How long an extension may take by default, from the EXTEND to the next hop's CREATED.
pub const DEFAULT_EXTEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Relay circuit settings.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Whether this relay opens streams to the outside (BEGIN, RESOLVE). A non-exit answers
    /// BEGIN and RESOLVE with END(EXITPOLICY). The exit policy itself is the IO layer's:
    /// it answers [`RelayAction::Connect`] with `handle_exit_connect_failed(.., ExitPolicy)`.
    pub exit: bool,
    /// How long an extension may take, from the EXTEND to the next hop's CREATED (reaching
    /// the next relay included); past it the EXTEND is answered TRUNCATED(TIMEOUT) (specs/03
    /// §4.6). Default [`DEFAULT_EXTEND_TIMEOUT`].
    pub extend_timeout: Duration,
    /// How long the circuit may carry no cell either way (and, at an exit, no byte from a
    /// destination) before it is destroyed with FINISHED (specs/03 §4.11): idle circuits
    /// would otherwise hold their slots for as long as a peer likes. `None`: never.
    /// Default [`DEFAULT_IDLE_TIMEOUT`].
    pub idle_timeout: Option<Duration>,
}

/// Default [`RelayConfig::idle_timeout`]: two hours, twice the longest a client keeps an
/// unused circuit, and far above its keep-alive interval on a circuit with open streams
/// (specs/03 §4.11).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(2 * 3600);

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            exit: false,
            extend_timeout: DEFAULT_EXTEND_TIMEOUT,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
        }
    }
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

/// One circuit as a relay sees it (sans-IO).
///
/// Created by [`RelayCircuit::accept`] from the preamble and the first cell (CREATE) read on a
/// circuit stream. Input: `handle_prev_cell`, `handle_next_cell`, `handle_next_hop_*`,
/// `handle_exit_*`, `handle_timeout`. Output: [`poll_transmit_prev`](Self::poll_transmit_prev),
/// [`poll_transmit_next`](Self::poll_transmit_next), [`poll_action`](Self::poll_action),
/// [`poll_timeout`](Self::poll_timeout).
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
    streams: StreamTable<ExitStream>,
    closed: Option<DestroyReason>,
    close_error: Option<ProtoError>,
    /// The time of the latest input.
    now: Instant,
    /// The time of the latest cell either way or byte from a destination.
    last_activity: Instant,
    /// When idleness is looked at next. It moves only when it is reached, not with every cell:
    /// a deadline that moved with every cell would make the IO layer re-arm its timer per cell.
    idle_check: Instant,
    /// Destroyed for carrying nothing for `idle_timeout`.
    closed_idle: bool,
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
        now: Instant,
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
        let idle_check = now + config.idle_timeout.unwrap_or_default();
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
            streams: StreamTable::new(),
            closed: None,
            close_error: None,
            now,
            last_activity: now,
            idle_check,
            closed_idle: false,
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

    /// Room came back in the backward queue: send deferred WINDOW_UPDATEs, wake exit streams
    /// the queue's bound cut short.
    fn prev_room_freed(&mut self) {
        if self.closed.is_none() {
            for id in self.streams.take_deferred_updates() {
                if self.flush_update(id).is_err() {
                    break;
                }
            }
            for id in self
                .streams
                .take_writable(self.to_prev.len(), RELAY_QUEUE_CELLS)
            {
                self.actions.push_back(RelayAction::ExitWritable {
                    stream: StreamId(id),
                });
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

    /// When [`handle_timeout`](Self::handle_timeout) must be called next: the deadline of the
    /// extension in progress, or when the circuit counts as idle.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed.is_some() {
            return None;
        }
        let idle = self.idle_deadline();
        match (self.next.deadline(), idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn idle_deadline(&self) -> Option<Instant> {
        self.config.idle_timeout.map(|_| self.idle_check)
    }

    /// Whether the circuit was destroyed for carrying nothing for the idle timeout.
    pub fn closed_idle(&self) -> bool {
        self.closed_idle
    }

    /// Something moved on the circuit: it is not idle.
    fn active(&mut self, now: Instant) {
        self.last_activity = self.last_activity.max(now);
    }

    /// Time passed: an extension past its deadline fails with TRUNCATED(TIMEOUT) and the
    /// circuit stays (specs/03 §4.6, §4.8); the IO layer then drops the next hop it was
    /// opening or had opened ([`is_extending`](Self::is_extending) and
    /// [`has_next_hop`](Self::has_next_hop) are both false).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.saw(now);
        if let Some(timeout) = self.config.idle_timeout
            && self.closed.is_none()
            && now >= self.idle_check
            && now < self.last_activity + timeout
        {
            self.idle_check = self.last_activity + timeout;
        }
        if self.closed.is_none() && self.idle_deadline().is_some_and(|d| now >= d) {
            self.closed_idle = true;
            self.teardown(
                Some(DestroyReason::Finished),
                Some(ProtoError::ClosedLocally),
                true,
            );
            return;
        }
        if self.closed.is_none() && self.next.deadline().is_some_and(|d| now >= d) {
            self.truncate(DestroyReason::Timeout);
        }
    }

    /// Remembers the time of the latest input (time never goes back here).
    fn saw(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    /// One whole cell from the previous hop. An `Err` means the circuit is now destroyed
    /// (DESTROY queued both ways). After close, input is ignored.
    ///
    /// The cell is opened in place: pass a slice of the IO layer's read buffer, no copy is
    /// needed (a `Vec<u8>` works too).
    pub fn handle_prev_cell(
        &mut self,
        mut cell: impl AsMut<[u8]>,
        now: Instant,
    ) -> Result<(), ProtoError> {
        if self.closed.is_some() {
            return Ok(());
        }
        self.saw(now);
        self.active(now);
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

    fn handle_for_me(&mut self, frame: RelayFrame) -> Result<(), ProtoError> {
        // specs/03 §9: unknown commands 128..=255 are dropped, 0..=127 are fatal.
        if frame.msg.is_ignorable_unknown() {
            return Ok(());
        }
        if let RelayMsg::Unknown { command, .. } = frame.msg {
            return Err(ProtoError::UnknownRelayCommand(command));
        }
        let stream = frame.stream_id;
        match frame.msg {
            RelayMsg::Drop => Ok(()),
            RelayMsg::Extend(e) => self.handle_extend(e),
            RelayMsg::Begin(b) => self.handle_begin(stream, b.host, b.port),
            RelayMsg::Resolve(host) => self.handle_resolve(stream, host),
            RelayMsg::Data(data) => self.handle_data(stream, data),
            RelayMsg::End(_) => self.handle_end(stream),
            RelayMsg::WindowUpdate(inc) => self.handle_window_update(stream, inc),
            _ => Err(ProtoError::Unexpected {
                what: "relay message for a relay",
            }),
        }
    }

    /// The stream from the previous hop closed without DESTROY: destroy toward the next hop.
    pub fn handle_prev_closed(&mut self, now: Instant) {
        self.saw(now);
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
        now: Instant,
    ) -> Result<(), ProtoError> {
        if self.closed.is_some() {
            return Ok(());
        }
        self.saw(now);
        self.active(now);
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
        self.next_link_cell(cell)
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
        for id in self.streams.clear() {
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
