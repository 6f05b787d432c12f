//! The client side of a circuit: build it hop by hop, carry streams over it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use shallot_cell::{
    Begin, DestroyReason, EndReason, Extend, Host, LINK_CELL_LEN, LinkCell, MAX_HOPS, Preamble,
    RelayFrame, RelayMsg, ResolvedAnswer, StreamId, decode_data, encode_data_into, link_cell_len,
    link_command, max_data_len,
};
use shallot_crypto::{ClientHandshake, ClientLayers, OnionPublicKey};

use crate::err::ProtoError;
use crate::flow::{
    CIRCUIT_WINDOW_GROWTH_MAX, CLIENT_QUEUE_CELLS, CONTROL_RESERVE_CELLS, OPTIMISTIC_DATA_MAX,
};
use crate::streams::{Flow, FlowStream, StreamTable};

/// Default time a CREATE or an EXTEND may take before the circuit is abandoned.
pub const DEFAULT_BUILD_TIMEOUT: Duration = Duration::from_secs(60);

/// What the client needs to know about a relay to add it to a circuit.
#[derive(Clone, Debug)]
pub struct HopSpec {
    /// The relay's identity (libp2p PeerId bytes); bound into the handshake prologue.
    pub peer_id: Vec<u8>,
    /// Its multiaddrs (bytes), sent in EXTEND so the previous hop can reach it.
    pub addrs: Vec<Vec<u8>>,
    /// Its current onion key (from its descriptor).
    pub onion_key: OnionPublicKey,
}

/// Client circuit settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// How long each CREATE and each EXTEND may take; past it the circuit is destroyed with
    /// [`ProtoError::BuildTimeout`]. Default: [`DEFAULT_BUILD_TIMEOUT`].
    pub build_timeout: Duration,
    /// How long a built circuit with open streams may hear nothing before it sends a DROP to
    /// its last hop, so that the relays' idle timeout spares it (specs/03 §4.11); `None`:
    /// never. Default: [`KEEPALIVE_INTERVAL`].
    pub keepalive_interval: Option<Duration>,
}

/// Default [`ClientConfig::keepalive_interval`]: fifteen minutes, an eighth of the relays'
/// default idle timeout, so a few lost DROPs do not matter.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15 * 60);

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            build_timeout: DEFAULT_BUILD_TIMEOUT,
            keepalive_interval: Some(KEEPALIVE_INTERVAL),
        }
    }
}

/// What happened on a client circuit; drained with [`ClientCircuit::poll_event`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A hop was added: the circuit now has this many hops.
    HopAdded(usize),
    /// The last hop answered an EXTEND with TRUNCATED: the circuit keeps its hops and may be
    /// extended again.
    ExtendFailed {
        /// Why the extend failed.
        reason: DestroyReason,
    },
    /// The exit connected the stream.
    StreamConnected {
        /// The stream.
        stream: StreamId,
        /// The address the exit connected to.
        addr: Host,
    },
    /// The stream has bytes to read (edge-triggered: sent again only after a read drained the
    /// buffer).
    StreamReadable(StreamId),
    /// The stream can take more bytes after a write was cut short (credit or queue room came
    /// back).
    StreamWritable(StreamId),
    /// The peer ended the stream; buffered bytes stay readable, then reads return 0.
    StreamEnded {
        /// The stream.
        stream: StreamId,
        /// Why.
        reason: EndReason,
    },
    /// The answer to [`ClientCircuit::resolve`]; the stream is finished.
    Resolved {
        /// The RESOLVE stream.
        stream: StreamId,
        /// The answers.
        answers: Vec<ResolvedAnswer>,
    },
    /// The circuit is gone; [`ClientCircuit::close_error`] says why when we tore it down.
    Destroyed {
        /// The reason carried by (or sent in) the DESTROY.
        reason: DestroyReason,
    },
}

#[derive(Debug, PartialEq, Eq)]
enum StreamState {
    /// BEGIN sent, no CONNECTED yet: optimistic data allowed.
    Connecting,
    /// CONNECTED received.
    Open,
    /// RESOLVE sent.
    Resolving,
}

#[derive(Debug)]
struct ClientStream {
    hop: usize,
    state: StreamState,
    flow: Flow,
    /// Received, not yet read. Bounded by the receive window (specs/03 §11.3).
    buf: VecDeque<u8>,
    optimistic_sent: usize,
    ended: Option<EndReason>,
    readable_signalled: bool,
}

impl ClientStream {
    fn new(hop: usize, state: StreamState) -> Self {
        Self {
            hop,
            state,
            flow: Flow::new(),
            buf: VecDeque::new(),
            optimistic_sent: 0,
            ended: None,
            readable_signalled: false,
        }
    }
}

impl FlowStream for ClientStream {
    fn flow(&self) -> &Flow {
        &self.flow
    }
    fn flow_mut(&mut self) -> &mut Flow {
        &mut self.flow
    }
    fn takes_updates(&self) -> bool {
        self.ended.is_none()
    }
    fn writable(&self) -> bool {
        self.state == StreamState::Open
    }
}

#[derive(Debug)]
struct PendingHop {
    handshake: ClientHandshake,
    deadline: Instant,
    /// When the CREATE or EXTEND was queued.
    sent: Instant,
    /// `None` for the first hop (CREATE), else EXTEND.
    extend: bool,
}

/// The client's end of one circuit (sans-IO).
///
/// Input: [`handle_cell`](Self::handle_cell), [`handle_timeout`](Self::handle_timeout), and the
/// application calls (`open_stream`, `write_stream`, `read_stream`, ...). Output:
/// [`poll_transmit`](Self::poll_transmit) (whole link-0 cells, in order),
/// [`poll_event`](Self::poll_event), [`poll_timeout`](Self::poll_timeout).
///
/// The IO layer opens the stream to hop 1, writes [`preamble`](Self::preamble) once, then the
/// cells from `poll_transmit`. Reads of the link never need to pause: everything a peer may
/// send is bounded by the credit we gave (specs/03 §11).
#[derive(Debug)]
pub struct ClientCircuit {
    config: ClientConfig,
    layers: ClientLayers,
    pending: Option<PendingHop>,
    out: VecDeque<Vec<u8>>,
    events: VecDeque<ClientEvent>,
    streams: StreamTable<ClientStream>,
    next_stream: u32,
    closed: Option<DestroyReason>,
    close_error: Option<ProtoError>,
    /// The time of the latest input (reads follow received cells closely).
    last_now: Instant,
    /// Round trip of the newest hop's CREATE/EXTEND: the window auto-tuning's RTT.
    rtt: Option<Duration>,
    /// The latest cell received, or DROP sent as a keep-alive.
    last_heard: Instant,
    /// When the keep-alive is looked at next. It moves only when it is reached, not with every
    /// cell: the IO layer's timer is reset when the deadline changes, and a deadline that moved
    /// with every cell would cost a timer reset per cell.
    keepalive_check: Instant,
}

/// The link-0 cell length.
const CELL_LEN: usize = LINK_CELL_LEN;
/// The RELAY body length on link 0.
const BODY_LEN: usize = LINK_CELL_LEN - 1;

impl ClientCircuit {
    /// Starts a circuit to `first` and queues its CREATE. specs/01 §5.3.
    pub fn new(first: &HopSpec, config: ClientConfig, now: Instant) -> Result<Self, ProtoError> {
        let (handshake, hdata) = ClientHandshake::start(&first.peer_id, &first.onion_key)
            .map_err(ProtoError::HandshakeStart)?;
        let create = LinkCell::Create {
            onion_key_id: first.onion_key.id(),
            handshake: hdata,
        }
        .encode(CELL_LEN)
        .map_err(|source| ProtoError::Encode {
            what: "CREATE",
            source,
        })?;
        let deadline = now + config.build_timeout;
        let mut out = VecDeque::with_capacity(CLIENT_QUEUE_CELLS);
        out.push_back(create);
        Ok(Self {
            config,
            layers: ClientLayers::new(),
            pending: Some(PendingHop {
                handshake,
                deadline,
                sent: now,
                extend: false,
            }),
            out,
            events: VecDeque::new(),
            streams: StreamTable::new(),
            next_stream: 1,
            closed: None,
            close_error: None,
            last_now: now,
            rtt: None,
            last_heard: now,
            // Reached at once once a stream is open; it then moves to `last_heard` + interval.
            keepalive_check: now,
        })
    }

    /// The 4-byte preamble the IO layer writes first on the stream to hop 1. specs/01 §4.
    pub fn preamble() -> [u8; Preamble::LEN] {
        Preamble {
            version: shallot_cell::PREAMBLE_VERSION,
            cell_len: CELL_LEN as u16,
        }
        .encode()
    }

    /// The cell length on the link to hop 1.
    pub fn cell_len(&self) -> usize {
        CELL_LEN
    }

    /// Hops the circuit has now (those whose handshake finished).
    pub fn hops(&self) -> usize {
        self.layers.hops()
    }

    /// Whether a CREATE or EXTEND is in flight.
    pub fn is_building(&self) -> bool {
        self.pending.is_some()
    }

    /// Whether the circuit is destroyed.
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// Why we tore the circuit down, if we did (not set when the peer sent DESTROY).
    pub fn close_error(&self) -> Option<&ProtoError> {
        self.close_error.as_ref()
    }

    /// Number of streams open (including ended streams not yet drained or closed).
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Cells waiting in the send queue.
    pub fn queued_cells(&self) -> usize {
        self.out.len()
    }

    /// Largest DATA payload in one cell for `hop`.
    pub fn max_data_len(hop: usize) -> usize {
        link_cell_len(hop).map_or(0, max_data_len)
    }

    /// Extends the circuit by one hop: sends EXTEND to the current last hop. specs/03 §4.6.
    pub fn extend(&mut self, hop: &HopSpec, now: Instant) -> Result<(), ProtoError> {
        self.check_open()?;
        if self.pending.is_some() || self.layers.hops() == 0 {
            return Err(ProtoError::WrongState("extend while a hop is being built"));
        }
        if self.layers.hops() >= MAX_HOPS {
            return Err(ProtoError::TooManyHops);
        }
        self.check_control_room()?;
        let (handshake, hdata) = ClientHandshake::start(&hop.peer_id, &hop.onion_key)
            .map_err(ProtoError::HandshakeStart)?;
        let frame = RelayFrame {
            stream_id: StreamId::CIRCUIT,
            msg: RelayMsg::Extend(Extend {
                peer_id: hop.peer_id.clone(),
                addrs: hop.addrs.clone(),
                onion_key_id: hop.onion_key.id(),
                handshake: hdata,
            }),
        };
        let last = self.layers.hops() - 1;
        self.send_frame(last, &frame, "EXTEND")?;
        self.pending = Some(PendingHop {
            handshake,
            deadline: now + self.config.build_timeout,
            sent: now,
            extend: true,
        });
        Ok(())
    }

    /// Opens a stream to `host:port` at the last hop (BEGIN). The id is allocated here: ids
    /// increase and are never reused on a circuit (specs/03 §11.6). DATA may follow at once
    /// (optimistic data, bounded by [`OPTIMISTIC_DATA_MAX`]).
    pub fn open_stream(&mut self, host: Host, port: u16) -> Result<StreamId, ProtoError> {
        let msg = RelayMsg::Begin(Begin {
            host,
            port,
            flags: 0,
        });
        self.open(msg, StreamState::Connecting)
    }

    /// Asks the last hop to resolve `host` (RESOLVE); the answer comes as
    /// [`ClientEvent::Resolved`].
    pub fn resolve(&mut self, host: Host) -> Result<StreamId, ProtoError> {
        self.open(RelayMsg::Resolve(host), StreamState::Resolving)
    }

    fn open(&mut self, msg: RelayMsg, state: StreamState) -> Result<StreamId, ProtoError> {
        self.check_open()?;
        if self.pending.is_some() || self.layers.hops() == 0 {
            return Err(ProtoError::WrongState(
                "stream open while the circuit is building",
            ));
        }
        if self.streams.is_full() {
            return Err(ProtoError::TooManyStreams);
        }
        let id = u16::try_from(self.next_stream).map_err(|_| ProtoError::StreamIdsExhausted)?;
        self.check_control_room()?;
        let hop = self.layers.hops() - 1;
        let stream_id = StreamId(id);
        self.send_frame(hop, &RelayFrame { stream_id, msg }, "BEGIN")?;
        self.next_stream += 1;
        self.streams.insert(id, ClientStream::new(hop, state))?;
        Ok(stream_id)
    }

    /// Queues up to `data.len()` bytes on `stream` and returns how many were taken: bounded by
    /// the stream's credit, the optimistic-data bound before CONNECTED, and the circuit's send
    /// queue. A short count means backpressure: wait for [`ClientEvent::StreamWritable`].
    pub fn write_stream(&mut self, stream: StreamId, data: &[u8]) -> Result<usize, ProtoError> {
        self.check_open()?;
        let room_cells = (CLIENT_QUEUE_CELLS).saturating_sub(self.out.len());
        let s = self
            .streams
            .get_mut(stream.0)
            .ok_or(ProtoError::UnknownStream(stream.0))?;
        if s.ended.is_some() {
            return Err(ProtoError::StreamClosed(stream.0));
        }
        let mut limit = s.flow.send.credit();
        match s.state {
            StreamState::Open => {}
            // specs/03 §11.5: at most OPTIMISTIC_DATA_MAX bytes before CONNECTED.
            StreamState::Connecting => {
                limit = limit.min(OPTIMISTIC_DATA_MAX.saturating_sub(s.optimistic_sent));
            }
            StreamState::Resolving => return Err(ProtoError::WrongState("write to a RESOLVE")),
        }
        let hop = s.hop;
        let chunk = Self::max_data_len(hop);
        limit = limit.min(room_cells.saturating_mul(chunk));
        let take = data.len().min(limit);
        let queue_cut = take < data.len() && room_cells.saturating_mul(chunk) < data.len();
        if take < data.len() {
            s.flow.write_blocked = true;
        }
        s.flow.send.spend(take);
        if s.state == StreamState::Connecting {
            s.optimistic_sent += take;
        }
        if queue_cut {
            self.streams.note_queue_blocked();
        }
        for piece in data[..take].chunks(chunk.max(1)) {
            let mut cell = new_client_cell();
            let range = ClientLayers::message_range(BODY_LEN, hop);
            encode_data_into(stream, piece, &mut cell[1..][range]).map_err(|source| {
                ProtoError::Encode {
                    what: "DATA",
                    source,
                }
            })?;
            self.seal_and_queue(hop, cell)?;
        }
        Ok(take)
    }

    /// Reads buffered bytes of `stream` into `buf`. `Ok(0)` (with a non-empty `buf`) means the
    /// stream ended and everything was read (the stream is then forgotten);
    /// [`ProtoError::WouldBlock`] means nothing is buffered yet, and is never returned once bytes
    /// were copied. Reading grants the sender new credit (WINDOW_UPDATE) once enough was
    /// consumed (specs/03 §11.3); when the send queue is full the update is deferred to the next
    /// [`poll_transmit`](Self::poll_transmit), not lost.
    pub fn read_stream(&mut self, stream: StreamId, buf: &mut [u8]) -> Result<usize, ProtoError> {
        self.check_open()?;
        let s = self
            .streams
            .get_mut(stream.0)
            .ok_or(ProtoError::UnknownStream(stream.0))?;
        if buf.is_empty() {
            return Ok(0);
        }
        if s.buf.is_empty() {
            s.readable_signalled = false;
            if s.ended.is_some() {
                self.streams.remove(stream.0);
                return Ok(0);
            }
            return Err(ProtoError::WouldBlock);
        }
        let n = buf.len().min(s.buf.len());
        let (a, b) = s.buf.as_slices();
        let from_a = n.min(a.len());
        buf[..from_a].copy_from_slice(&a[..from_a]);
        buf[from_a..n].copy_from_slice(&b[..n - from_a]);
        s.buf.drain(..n);
        if s.buf.is_empty() {
            s.readable_signalled = false;
        }
        s.flow.recv.consumed(n);
        if s.ended.is_none() && s.flow.recv.update_due() {
            match self.flush_update(stream.0) {
                // Deferred (flush_update marked it): the bytes are the caller's either way.
                Ok(()) | Err(ProtoError::WouldBlock) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// Bytes buffered for `stream` and not read yet.
    pub fn readable_bytes(&self, stream: StreamId) -> usize {
        self.streams.get(stream.0).map_or(0, |s| s.buf.len())
    }

    /// Bytes `stream` may send now by credit alone (ignoring the queue bound).
    pub fn send_credit(&self, stream: StreamId) -> usize {
        self.streams
            .get(stream.0)
            .map_or(0, |s| s.flow.send.credit())
    }

    /// Closes `stream`: sends END(DONE) unless the peer already ended it, and forgets it.
    pub fn close_stream(&mut self, stream: StreamId) -> Result<(), ProtoError> {
        self.check_open()?;
        let s = self
            .streams
            .get(stream.0)
            .ok_or(ProtoError::UnknownStream(stream.0))?;
        if s.ended.is_none() && s.state != StreamState::Resolving {
            self.check_control_room()?;
            let hop = s.hop;
            let frame = RelayFrame {
                stream_id: stream,
                msg: RelayMsg::End(EndReason::Done),
            };
            self.send_frame(hop, &frame, "END")?;
        }
        self.streams.remove(stream.0);
        Ok(())
    }

    /// Sends a DROP (long-range padding) to `hop`.
    pub fn send_drop(&mut self, hop: usize) -> Result<(), ProtoError> {
        self.check_open()?;
        if hop >= self.layers.hops() {
            return Err(ProtoError::WrongState("no such hop"));
        }
        self.check_control_room()?;
        let frame = RelayFrame {
            stream_id: StreamId::CIRCUIT,
            msg: RelayMsg::Drop,
        };
        self.send_frame(hop, &frame, "DROP")
    }

    /// Tears the circuit down from the application: sends DESTROY(`reason`).
    pub fn destroy(&mut self, reason: DestroyReason) {
        if self.closed.is_none() {
            self.teardown(reason, Some(ProtoError::ClosedLocally), true);
        }
    }

    /// The IO layer lost the link to hop 1: the circuit is gone (nothing is sent).
    pub fn handle_link_closed(&mut self, _now: Instant) {
        if self.closed.is_none() {
            self.teardown(
                DestroyReason::ChannelClosed,
                Some(ProtoError::LinkClosed),
                false,
            );
        }
    }

    /// The next cell to write on the link to hop 1 (after the preamble).
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let cell = self.out.pop_front()?;
        if self.closed.is_none() {
            for id in self.streams.take_deferred_updates() {
                // Cannot fail for lack of room after a pop unless the queue refills.
                if self.flush_update(id).is_err() {
                    break;
                }
            }
            for id in self
                .streams
                .take_writable(self.out.len(), CLIENT_QUEUE_CELLS)
            {
                self.events
                    .push_back(ClientEvent::StreamWritable(StreamId(id)));
            }
        }
        Some(cell)
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed.is_some() {
            return None;
        }
        match &self.pending {
            Some(p) => Some(p.deadline),
            None => self.keepalive_due(),
        }
    }

    /// When a keep-alive DROP is due: only on a built circuit with open streams (an unused
    /// one is the pool's to retire, well within the relays' idle timeout).
    fn keepalive_due(&self) -> Option<Instant> {
        self.config.keepalive_interval?;
        (self.pending.is_none() && self.layers.hops() > 0 && self.streams.len() > 0)
            .then_some(self.keepalive_check)
    }

    /// Time passed: a CREATE or EXTEND past its deadline destroys the circuit; a circuit with
    /// open streams that heard nothing for the keep-alive interval sends a DROP to its last
    /// hop (specs/03 §4.11).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed.is_some() {
            return;
        }
        if self.pending.as_ref().is_some_and(|p| now >= p.deadline) {
            self.teardown(DestroyReason::Timeout, Some(ProtoError::BuildTimeout), true);
            return;
        }
        if let Some(interval) = self.config.keepalive_interval
            && self.keepalive_due().is_some_and(|t| now >= t)
        {
            if now >= self.last_heard + interval {
                self.last_heard = now;
                // No room in the send queue means cells are moving anyway.
                let _ = self.send_drop(self.layers.hops() - 1);
            }
            self.keepalive_check = self.last_heard + interval;
        }
    }

    /// One whole cell read from the link to hop 1. An `Err` means the cell broke the protocol
    /// and the circuit is now destroyed (DESTROY queued, [`ClientEvent::Destroyed`] emitted).
    /// After the circuit is closed, input is ignored.
    ///
    /// The cell is opened in place: pass a slice of the IO layer's read buffer, no copy is
    /// needed (a `Vec<u8>` works too).
    pub fn handle_cell(
        &mut self,
        mut cell: impl AsMut<[u8]>,
        now: Instant,
    ) -> Result<(), ProtoError> {
        if self.closed.is_some() {
            return Ok(());
        }
        self.last_now = self.last_now.max(now);
        self.last_heard = self.last_heard.max(now);
        let r = self.handle_cell_inner(cell.as_mut());
        self.fail_on_err(r)
    }

    fn handle_cell_inner(&mut self, cell: &mut [u8]) -> Result<(), ProtoError> {
        if cell.len() != CELL_LEN {
            return Err(ProtoError::BadCellLength {
                expected: CELL_LEN,
                got: cell.len(),
            });
        }
        if cell[0] == link_command::RELAY {
            return self.handle_relay(cell);
        }
        let decoded = LinkCell::decode(cell).map_err(|source| ProtoError::Malformed {
            what: "link cell",
            source,
        })?;
        match decoded {
            LinkCell::Padding => Ok(()),
            LinkCell::Created { handshake } => match self.pending.take() {
                Some(p) if !p.extend => self.finish_hop(p, &handshake),
                _ => Err(ProtoError::Unexpected {
                    what: "CREATED without CREATE",
                }),
            },
            LinkCell::Destroy(reason) => {
                // specs/01 §5.6: the peer destroyed the circuit; nothing is sent back.
                self.teardown(reason, None, false);
                Ok(())
            }
            LinkCell::Create { .. } | LinkCell::Relay(_) => Err(ProtoError::Unexpected {
                what: "CREATE from a relay",
            }),
        }
    }

    fn finish_hop(&mut self, p: PendingHop, reply: &[u8]) -> Result<(), ProtoError> {
        let keys = p.handshake.finish(reply).map_err(ProtoError::Handshake)?;
        self.layers.push_hop(keys);
        self.rtt = Some(self.last_now.saturating_duration_since(p.sent));
        self.events
            .push_back(ClientEvent::HopAdded(self.layers.hops()));
        Ok(())
    }

    fn handle_relay(&mut self, cell: &mut [u8]) -> Result<(), ProtoError> {
        if self.layers.hops() == 0 {
            return Err(ProtoError::Unexpected {
                what: "RELAY before CREATED",
            });
        }
        let body = &mut cell[1..];
        let (hop, range) = self.layers.open_backward(body).map_err(ProtoError::Layer)?;
        if self.take_data(hop, &body[range.clone()])? {
            return Ok(());
        }
        let frame = RelayFrame::decode(&body[range]).map_err(|source| ProtoError::Malformed {
            what: "relay message",
            source,
        })?;
        self.handle_frame(hop, frame)
    }

    /// Hot path: DATA for an open stream goes straight from the opened cell into the stream's
    /// buffer, without decoding into a `RelayFrame` (which copies the bytes into a `Vec`).
    /// Returns `Ok(false)` for anything else (another command, a stream in another state),
    /// which [`handle_frame`](Self::handle_frame) then handles with all its checks.
    fn take_data(&mut self, hop: usize, area: &[u8]) -> Result<bool, ProtoError> {
        let (stream_id, data) = match decode_data(area) {
            None => return Ok(false),
            Some(Ok(d)) => d,
            Some(Err(source)) => {
                return Err(ProtoError::Malformed {
                    what: "relay message",
                    source,
                });
            }
        };
        let id = stream_id.0;
        let Some(s) = self.streams.get_mut(id) else {
            return Ok(false);
        };
        if s.hop != hop || s.ended.is_some() || s.state != StreamState::Open {
            return Ok(false);
        }
        s.flow.recv.receive(id, data.len())?;
        s.buf.extend(data);
        if !s.readable_signalled {
            s.readable_signalled = true;
            self.events
                .push_back(ClientEvent::StreamReadable(stream_id));
        }
        Ok(true)
    }

    fn handle_frame(&mut self, hop: usize, frame: RelayFrame) -> Result<(), ProtoError> {
        // specs/03 §9: unknown commands 128..=255 are dropped, 0..=127 are fatal.
        if frame.msg.is_ignorable_unknown() {
            return Ok(());
        }
        if let RelayMsg::Unknown { command, .. } = frame.msg {
            return Err(ProtoError::UnknownRelayCommand(command));
        }
        let id = frame.stream_id.0;
        if id == 0 {
            return self.handle_circuit_msg(hop, frame.msg);
        }
        let Some(s) = self.streams.get_mut(id) else {
            // specs/03 §7.2: half-closed (our END crossed the peer's messages) or unknown:
            // dropped silently.
            return Ok(());
        };
        if s.hop != hop {
            return Err(ProtoError::Unexpected {
                what: "stream message from another hop",
            });
        }
        if s.ended.is_some() {
            // The peer sent END; anything after it is a violation.
            return Err(ProtoError::Unexpected {
                what: "message after END",
            });
        }
        match frame.msg {
            RelayMsg::Connected { addr, .. } if s.state == StreamState::Connecting => {
                s.state = StreamState::Open;
                self.events.push_back(ClientEvent::StreamConnected {
                    stream: frame.stream_id,
                    addr,
                });
                if s.flow.write_blocked {
                    s.flow.write_blocked = false;
                    self.events
                        .push_back(ClientEvent::StreamWritable(frame.stream_id));
                }
                Ok(())
            }
            RelayMsg::Data(data) if s.state == StreamState::Open => {
                s.flow.recv.receive(id, data.len())?;
                s.buf.extend(data.iter());
                if !s.readable_signalled {
                    s.readable_signalled = true;
                    self.events
                        .push_back(ClientEvent::StreamReadable(frame.stream_id));
                }
                Ok(())
            }
            RelayMsg::WindowUpdate(inc) if s.state != StreamState::Resolving => {
                s.flow.send.grant(id, inc)?;
                if s.flow.write_blocked && s.state == StreamState::Open {
                    s.flow.write_blocked = false;
                    self.events
                        .push_back(ClientEvent::StreamWritable(frame.stream_id));
                }
                Ok(())
            }
            RelayMsg::End(reason) if s.state != StreamState::Resolving => {
                s.ended = Some(reason);
                s.flow.write_blocked = false;
                self.events.push_back(ClientEvent::StreamEnded {
                    stream: frame.stream_id,
                    reason,
                });
                Ok(())
            }
            // specs/03 §4.9: an exit that cannot serve a RESOLVE answers END; the stream is
            // then over (nothing to drain).
            RelayMsg::End(reason) if s.state == StreamState::Resolving => {
                self.streams.remove(id);
                self.events.push_back(ClientEvent::StreamEnded {
                    stream: frame.stream_id,
                    reason,
                });
                Ok(())
            }
            RelayMsg::Resolved(answers) if s.state == StreamState::Resolving => {
                self.streams.remove(id);
                self.events.push_back(ClientEvent::Resolved {
                    stream: frame.stream_id,
                    answers,
                });
                Ok(())
            }
            _ => Err(ProtoError::Unexpected {
                what: "stream message in this state",
            }),
        }
    }

    fn handle_circuit_msg(&mut self, hop: usize, msg: RelayMsg) -> Result<(), ProtoError> {
        let last = self.layers.hops() - 1;
        let extending = self.pending.as_ref().is_some_and(|p| p.extend);
        match msg {
            RelayMsg::Drop => Ok(()),
            RelayMsg::Extended { handshake } if extending && hop == last => {
                match self.pending.take() {
                    Some(p) => self.finish_hop(p, &handshake),
                    None => Ok(()),
                }
            }
            RelayMsg::Truncated(reason) if extending && hop == last => {
                self.pending = None;
                self.events.push_back(ClientEvent::ExtendFailed { reason });
                Ok(())
            }
            // specs/03 §8: TRUNCATED without a pending EXTEND to that hop is a violation.
            _ => Err(ProtoError::Unexpected {
                what: "circuit message for the client",
            }),
        }
    }

    /// Queues a WINDOW_UPDATE for `id` if one is due and there is room; else defers it.
    fn flush_update(&mut self, id: u16) -> Result<(), ProtoError> {
        self.streams
            .room_for_update(self.out.len() >= CLIENT_QUEUE_CELLS + CONTROL_RESERVE_CELLS)?;
        let Some(s) = self.streams.get_mut(id) else {
            return Ok(());
        };
        let hop = s.hop;
        if !s.flow.recv.update_due() {
            return Ok(());
        }
        // specs/03 §11.3: growth comes out of the circuit's budget, so the circuit's buffer
        // bound (MAX_CIRCUIT_STREAM_BUFFER) holds whatever its streams do.
        let used: u64 = self.streams.values().map(|s| s.flow.recv.growth()).sum();
        let budget = CIRCUIT_WINDOW_GROWTH_MAX.saturating_sub(used);
        let (now, rtt) = (self.last_now, self.rtt);
        let Some(s) = self.streams.get_mut(id) else {
            return Ok(());
        };
        let Some((inc, _)) = s.flow.recv.take_update_tuned(now, rtt, budget) else {
            return Ok(());
        };
        let frame = RelayFrame {
            stream_id: StreamId(id),
            msg: RelayMsg::WindowUpdate(inc),
        };
        self.send_frame(hop, &frame, "WINDOW_UPDATE")
    }

    fn check_open(&self) -> Result<(), ProtoError> {
        if self.closed.is_some() {
            Err(ProtoError::CircuitClosed)
        } else {
            Ok(())
        }
    }

    fn check_control_room(&self) -> Result<(), ProtoError> {
        if self.out.len() >= CLIENT_QUEUE_CELLS + CONTROL_RESERVE_CELLS {
            Err(ProtoError::WouldBlock)
        } else {
            Ok(())
        }
    }

    fn send_frame(
        &mut self,
        hop: usize,
        frame: &RelayFrame,
        what: &'static str,
    ) -> Result<(), ProtoError> {
        let mut cell = new_client_cell();
        let range = ClientLayers::message_range(BODY_LEN, hop);
        frame
            .encode_into(&mut cell[1..][range])
            .map_err(|source| ProtoError::Encode { what, source })?;
        self.seal_and_queue(hop, cell)
    }

    fn seal_and_queue(&mut self, hop: usize, mut cell: Vec<u8>) -> Result<(), ProtoError> {
        if let Err(e) = self.layers.seal_forward(hop, &mut cell[1..]) {
            // Counter exhaustion: the circuit cannot carry more cells.
            let err = ProtoError::Layer(e);
            self.teardown(DestroyReason::Internal, None, true);
            return Err(err);
        }
        self.out.push_back(cell);
        Ok(())
    }

    fn fail_on_err(&mut self, r: Result<(), ProtoError>) -> Result<(), ProtoError> {
        match r {
            Ok(()) => Ok(()),
            Err(e) => {
                if self.closed.is_none() {
                    let reason = e.destroy_reason();
                    // Keep the error for close_error(); return an equivalent kind to the caller.
                    self.teardown(reason, None, true);
                }
                Err(e)
            }
        }
    }

    /// Destroys the circuit: drops every queued cell, queues DESTROY (if `send`), reports
    /// [`ClientEvent::Destroyed`]. Nothing is emitted afterwards.
    fn teardown(&mut self, reason: DestroyReason, error: Option<ProtoError>, send: bool) {
        self.out.clear();
        self.events.clear();
        self.streams.clear();
        self.pending = None;
        if send {
            self.out.push_back(destroy_cell(CELL_LEN, reason));
        }
        self.closed = Some(reason);
        if error.is_some() {
            self.close_error = error;
        }
        self.events.push_back(ClientEvent::Destroyed { reason });
    }
}

fn new_client_cell() -> Vec<u8> {
    let mut cell = vec![0u8; CELL_LEN];
    cell[0] = link_command::RELAY;
    cell
}

/// A DESTROY cell of `cell_len` bytes. specs/01 §5.6.
pub(crate) fn destroy_cell(cell_len: usize, reason: DestroyReason) -> Vec<u8> {
    let mut cell = vec![0u8; cell_len];
    cell[0] = link_command::DESTROY;
    if cell_len > 1 {
        cell[1] = u8::from(reason);
    }
    cell
}
