//! One task per circuit: drives a `RelayCircuit` (shallot-proto) between the previous hop's
//! stream, the next hop's stream and the exit's TCP connections. The loop is the IO half of
//! `shallot_proto::harness`: cells in through `handle_*`, cells out through `poll_transmit_*`
//! (batched), actions through `poll_action`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::io::AsyncWriteExt;
use shallot_cell::{DestroyReason, EndReason, Host, ResolvedAnswer, StreamId};
use shallot_p2p::{CIRCUIT_PROTOCOL, Multiaddr, PeerId};
use shallot_proto::{MAX_STREAMS_PER_CIRCUIT, RelayAction, RelayCircuit};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;
use tracing::debug;

use crate::limits::CircuitSlot;
use crate::link::{self, Link, Run, Stream};
use crate::memory::{CircuitAccount, Waiting, earliest};
use crate::relay::Context;
use crate::safelog::Sensitive;
use crate::traffic::{Hibernation, Traffic};

/// Bytes an exit reads from a destination at once (and holds until the circuit takes them).
pub const EXIT_READ_CHUNK: usize = 64 * 1024;
/// Events from a circuit's exit tasks waiting for the circuit task. Each stream has at most
/// one read, one write and one connect or close outstanding, so this never fills in practice;
/// if it does, the tasks wait.
pub const EXIT_EVENT_QUEUE: usize = 4 * MAX_STREAMS_PER_CIRCUIT;
/// Buffers waiting for an exit stream's writer (one in hand, one more for the last bytes
/// before a close).
const EXIT_WRITE_QUEUE: usize = 2;
/// How long closing streams may take to write what they hold (DESTROY cells, a closed exit
/// stream's last bytes) before they are cut.
pub const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// Passes of [`CircuitTask::pump`] per wake-up at most, so one busy circuit cannot starve
/// the other tasks of a single-threaded runtime.
const PUMP_ROUNDS: usize = 8;
/// Closed exit streams whose writers may still be finishing, per circuit; past it the oldest
/// is cut.
pub const MAX_CLOSING_STREAMS: usize = MAX_STREAMS_PER_CIRCUIT;

/// What the exit tasks of a circuit report.
enum ExitEvent {
    Connected {
        stream: StreamId,
        generation: u64,
        conn: TcpStream,
        addr: IpAddr,
        ttl: u32,
    },
    ConnectFailed {
        stream: StreamId,
        generation: u64,
        reason: EndReason,
    },
    Resolved {
        stream: StreamId,
        generation: u64,
        answers: Vec<ResolvedAnswer>,
    },
    Data {
        stream: StreamId,
        generation: u64,
        data: Vec<u8>,
    },
    /// The destination closed (`Done`) or failed.
    ReadEnd {
        stream: StreamId,
        generation: u64,
        reason: EndReason,
    },
    Written {
        stream: StreamId,
        generation: u64,
        n: usize,
    },
    WriteFailed {
        stream: StreamId,
        generation: u64,
    },
}

impl ExitEvent {
    fn key(&self) -> (StreamId, u64) {
        match self {
            Self::Connected {
                stream, generation, ..
            }
            | Self::ConnectFailed {
                stream, generation, ..
            }
            | Self::Resolved {
                stream, generation, ..
            }
            | Self::Data {
                stream, generation, ..
            }
            | Self::ReadEnd {
                stream, generation, ..
            }
            | Self::Written {
                stream, generation, ..
            }
            | Self::WriteFailed { stream, generation } => (*stream, *generation),
        }
    }
}

/// One exit stream's IO state.
struct ExitConn {
    generation: u64,
    /// The connect or resolve task, while it runs.
    setup: Option<AbortHandle>,
    reader: Option<AbortHandle>,
    /// Gives the reader its buffer back, emptied: permission to read again (capacity 1).
    reader_go: Option<mpsc::Sender<Vec<u8>>>,
    writer: Option<JoinHandle<()>>,
    writer_tx: Option<mpsc::Sender<Vec<u8>>>,
    /// A buffer is with the writer.
    writing: bool,
    /// Bytes of the buffer with the writer.
    writing_bytes: usize,
    /// Bytes for the destination not yet handed to the writer; bounded by the stream's credit
    /// window, which the client may not exceed (specs/03 §11.2).
    out: Vec<u8>,
    /// Bytes read from the destination that the circuit has not taken yet: the reader's one
    /// buffer, held from its `Data` event until everything in it was taken.
    pending_in: Vec<u8>,
    pending_off: usize,
    /// `pending_in` is the reader's buffer, to be given back once taken. Exactly one buffer
    /// goes back per read, so the reader never reads ahead of what the circuit took.
    holding_read: bool,
    /// The destination's side ended; reported once `pending_in` is taken.
    read_end: Option<EndReason>,
    /// Since when the oldest byte held for this stream has waited (crate::memory).
    waiting: Waiting,
}

impl ExitConn {
    fn new(generation: u64, setup: AbortHandle) -> Self {
        Self {
            generation,
            setup: Some(setup),
            reader: None,
            reader_go: None,
            writer: None,
            writer_tx: None,
            writing: false,
            writing_bytes: 0,
            out: Vec::new(),
            pending_in: Vec::new(),
            pending_off: 0,
            holding_read: false,
            read_end: None,
            waiting: Waiting::default(),
        }
    }

    /// Bytes held for this stream: for the destination (not yet written) and from it (the
    /// reader's buffer, until the circuit took all of it).
    fn held(&self) -> usize {
        let from_destination = if self.holding_read {
            self.pending_in.capacity()
        } else {
            0
        };
        self.out.len() + self.writing_bytes + from_destination
    }
}

/// What woke the circuit task.
enum Wake {
    /// A run of cells from the previous hop (`None`: the link is gone).
    PrevRun(Option<(Vec<u8>, usize)>),
    NextRun(Option<(Vec<u8>, usize)>),
    /// Whether the previous hop's writer can take a batch (`false`: it is gone).
    PrevRoom(bool),
    NextRoom(bool),
    Opened(Opened),
    Exit(ExitEvent),
    Timer,
    /// The relay's memory budget chose this circuit to destroy.
    OverBudget,
    Shutdown,
    /// The relay's hibernation changed (crate::traffic): with its allowance spent it carries
    /// nothing more, so its circuits go.
    Hibernation,
}

enum Next {
    None,
    Opening(JoinHandle<Result<Stream, DestroyReason>>),
    Open(Link),
}

/// A circuit and its IO.
pub(crate) struct CircuitTask {
    ctx: Arc<Context>,
    circ: RelayCircuit,
    prev_peer: PeerId,
    prev: Option<Link>,
    next: Next,
    exits: HashMap<u16, ExitConn>,
    events_tx: mpsc::Sender<ExitEvent>,
    events: mpsc::Receiver<ExitEvent>,
    generation: u64,
    /// Closed exit streams' writers finishing what they hold: the end of their grace, the
    /// writer, the bytes handed to it.
    closing: Vec<(Instant, JoinHandle<()>, usize)>,
    /// This circuit's share of the relay's memory budget (crate::memory).
    account: CircuitAccount,
    /// Since when the cells queued toward each side have waited.
    prev_queue: Waiting,
    next_queue: Waiting,
    /// Destroyed by the memory budget: close without grace.
    over_budget: bool,
    /// One timer for the circuit's deadlines, re-armed only when the deadline changes: a new
    /// timer per pass of the loop would register and cancel one in tokio's wheel per batch.
    timer: Pin<Box<tokio::time::Sleep>>,
    /// The deadline `timer` is armed for; `None` once it fired (or while there is none).
    timer_at: Option<Instant>,
    _slot: CircuitSlot,
}

impl CircuitTask {
    pub(crate) fn new(
        ctx: Arc<Context>,
        circ: RelayCircuit,
        prev_peer: PeerId,
        prev: Link,
        slot: CircuitSlot,
    ) -> Self {
        let (events_tx, events) = mpsc::channel(EXIT_EVENT_QUEUE);
        Self {
            account: ctx.memory.open(),
            ctx,
            circ,
            prev_peer,
            prev: Some(prev),
            next: Next::None,
            exits: HashMap::new(),
            events_tx,
            events,
            generation: 0,
            closing: Vec::new(),
            prev_queue: Waiting::default(),
            next_queue: Waiting::default(),
            over_budget: false,
            timer: Box::pin(tokio::time::sleep_until(Instant::now())),
            timer_at: None,
            _slot: slot,
        }
    }

    /// Runs the circuit until it is destroyed (or the relay shuts down), then closes both
    /// streams after writing the DESTROY cells.
    pub(crate) async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut hibernation = self.ctx.traffic.watch_hibernation();
        let mut destroyed_hibernating = false;
        loop {
            if !destroyed_hibernating && *hibernation.borrow_and_update() == Hibernation::Hard {
                destroyed_hibernating = true;
                self.ctx.stats.circuits_destroyed_hibernating.inc();
                self.circ.destroy(DestroyReason::Hibernating);
            }
            self.run_actions();
            if self.circ.is_closed() {
                break;
            }
            let now = Instant::now();
            self.account_memory(now);
            let wants_prev = self.prev.is_some() && self.circ.wants_prev_cell();
            let wants_next = matches!(self.next, Next::Open { .. }) && self.circ.wants_next_cell();
            let prev_run = self.prev.as_ref().is_some_and(Link::has_run);
            let next_run = matches!(&self.next, Next::Open(link) if link.has_run());
            if (wants_prev && prev_run) || (wants_next && next_run) {
                // `pump` stopped after its rounds with cells in hand that the circuit wants:
                // let the other tasks run, then go on (no `select!` branch waits for these).
                tokio::task::yield_now().await;
                self.pump(Instant::now());
                continue;
            }
            let send_prev = self.prev.is_some() && self.circ.queued_prev() > 0;
            let send_next = matches!(self.next, Next::Open { .. }) && self.circ.queued_next() > 0;
            let deadline = self.next_deadline();
            if let Some(at) = deadline
                && self.timer_at != Some(at)
            {
                self.timer.as_mut().reset(at);
            }
            self.timer_at = deadline;
            let Self {
                prev,
                next,
                events,
                timer,
                timer_at,
                account,
                over_budget,
                ..
            } = &mut self;
            let armed = timer_at.is_some();
            let accounted = !*over_budget;
            let (prev_cells, prev_batches) = link_parts(prev.as_mut());
            let (next_cells, next_batches, next_opening) = match next {
                Next::Open(link) => {
                    let (c, b) = link_parts(Some(link));
                    (c, b, None)
                }
                Next::Opening(h) => (None, None, Some(h)),
                Next::None => (None, None, None),
            };
            let wake = tokio::select! {
                run = recv(prev_cells), if wants_prev => Wake::PrevRun(run),
                run = recv(next_cells), if wants_next => Wake::NextRun(run),
                // The permit is dropped at once: only this task sends, so the slot it proved
                // free stays free for the `try_send` below.
                permit = reserve(prev_batches), if send_prev => Wake::PrevRoom(permit.is_some()),
                permit = reserve(next_batches), if send_next => Wake::NextRoom(permit.is_some()),
                opened = opening(next_opening) => Wake::Opened(opened),
                Some(ev) = events.recv() => Wake::Exit(ev),
                () = timer.as_mut(), if armed => Wake::Timer,
                () = account.destroyed(), if accounted => Wake::OverBudget,
                _ = shutdown.changed() => Wake::Shutdown,
                Ok(()) = hibernation.changed() => Wake::Hibernation,
            };
            self.wake(wake, now);
            self.pump(now);
        }
        self.close().await;
    }

    /// Moves whatever is ready without waiting: the cells the links already read (while the
    /// circuit wants them), cell by cell out of their runs, and the batches their writers
    /// have room for. One pass of the `select!` per cell cost more than the cell's crypto;
    /// this handles a whole read-ahead per pass (specs/01 §4.3, batching).
    fn pump(&mut self, now: Instant) {
        let t = now.into_std();
        let prev_len = self.circ.cell_len();
        let next_len = self.circ.next_cell_len();
        for _ in 0..PUMP_ROUNDS {
            let mut moved = false;
            while !self.circ.is_closed() && self.circ.wants_prev_cell() {
                let Some(link) = self.prev.as_mut() else {
                    break;
                };
                if let Some(cell) = link.next_cell(prev_len) {
                    moved = true;
                    if let Err(e) = self.circ.handle_prev_cell(cell, t) {
                        debug!(error = %e, "circuit destroyed on a cell from the previous hop");
                    }
                    continue;
                }
                match link.runs.try_recv() {
                    Ok((bytes, end)) => link.run = Some(Run::new(bytes, end)),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        self.prev = None;
                        self.circ.handle_prev_closed(t);
                        break;
                    }
                }
            }
            while !self.circ.is_closed() && self.circ.wants_next_cell() {
                let Next::Open(link) = &mut self.next else {
                    break;
                };
                if let Some(cell) = link.next_cell(next_len) {
                    moved = true;
                    if let Err(e) = self.circ.handle_next_cell(cell, t) {
                        debug!(error = %e, "circuit destroyed on a cell from the next hop");
                    }
                    self.drop_next_if_gone();
                    continue;
                }
                match link.runs.try_recv() {
                    Ok((bytes, end)) => link.run = Some(Run::new(bytes, end)),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        self.next = Next::None;
                        self.circ.handle_next_closed(t);
                        break;
                    }
                }
            }
            if let Some(l) = self.prev.as_mut() {
                l.settle();
            }
            if let Next::Open(link) = &mut self.next {
                link.settle();
            }
            if self.circ.queued_prev() > 0
                && let Some(l) = self.prev.as_ref()
                && let Some(tx) = l.batches.as_ref()
                && tx.capacity() > 0
            {
                moved = true;
                let batch = drain(&mut self.circ, true, l.spares.batch());
                self.prev_queue.progressed(t);
                if !l.hand_over(batch) {
                    self.prev = None;
                    self.circ.handle_prev_closed(t);
                }
            }
            if self.circ.queued_next() > 0
                && let Next::Open(link) = &self.next
                && let Some(tx) = link.batches.as_ref()
                && tx.capacity() > 0
            {
                moved = true;
                let batch = drain(&mut self.circ, false, link.spares.batch());
                self.next_queue.progressed(t);
                if !link.hand_over(batch) {
                    self.next = Next::None;
                    self.circ.handle_next_closed(t);
                }
            }
            if !moved {
                break;
            }
        }
    }

    /// Tells the relay's memory budget what this circuit holds and since when its oldest byte
    /// has waited (crate::memory): cells queued either way, its links' runs, unwritten batches
    /// and spares, and its exit streams' bytes either way.
    fn account_memory(&mut self, now: Instant) {
        let t = now.into_std();
        let to_prev = self.circ.queued_prev() * self.circ.cell_len();
        let to_next = self.circ.queued_next() * self.circ.next_cell_len();
        self.prev_queue.note(to_prev > 0, t);
        self.next_queue.note(to_next > 0, t);
        let mut bytes = to_prev + to_next;
        let mut oldest = earliest(self.prev_queue.since(), self.next_queue.since());
        let next = match &mut self.next {
            Next::Open(link) => Some(link),
            _ => None,
        };
        for link in self.prev.iter_mut().chain(next) {
            let (held, since) = link.held(t);
            bytes += held;
            oldest = earliest(oldest, since);
        }
        for c in self.exits.values_mut() {
            let held = c.held();
            c.waiting.note(held > 0, t);
            bytes += held;
            oldest = earliest(oldest, c.waiting.since());
        }
        bytes += self.closing.iter().map(|(_, _, b)| b).sum::<usize>();
        self.account.set(bytes, oldest, t);
    }

    fn wake(&mut self, wake: Wake, now: Instant) {
        let t = now.into_std();
        match wake {
            // The run is worked through by `pump`, right after this.
            Wake::PrevRun(Some((bytes, end))) => {
                if let Some(l) = self.prev.as_mut() {
                    l.run = Some(Run::new(bytes, end));
                }
            }
            Wake::NextRun(Some((bytes, end))) => {
                if let Next::Open(link) = &mut self.next {
                    link.run = Some(Run::new(bytes, end));
                }
            }
            Wake::PrevRun(None) | Wake::PrevRoom(false) => {
                self.prev = None;
                self.circ.handle_prev_closed(t);
            }
            Wake::NextRun(None) | Wake::NextRoom(false) => {
                self.next = Next::None;
                self.circ.handle_next_closed(t);
            }
            Wake::PrevRoom(true) => {
                if let Some(l) = self.prev.as_ref() {
                    let batch = drain(&mut self.circ, true, l.spares.batch());
                    self.prev_queue.progressed(t);
                    if !l.hand_over(batch) {
                        self.prev = None;
                        self.circ.handle_prev_closed(t);
                    }
                }
            }
            Wake::NextRoom(true) => {
                if let Next::Open(link) = &self.next {
                    let batch = drain(&mut self.circ, false, link.spares.batch());
                    self.next_queue.progressed(t);
                    if !link.hand_over(batch) {
                        self.next = Next::None;
                        self.circ.handle_next_closed(t);
                    }
                }
            }
            Wake::OverBudget => {
                // crate::memory: this circuit's data waited longest while the relay's queues
                // passed `max_queued_bytes`. Everything it holds goes now, with no grace for
                // writers: their bytes are what the budget needs back.
                debug!("circuit destroyed to keep the relay within its memory budget");
                self.ctx.stats.circuits_destroyed_memory.inc();
                // `close` then returns at once, and the task's drop aborts every helper.
                self.over_budget = true;
                self.circ.destroy(DestroyReason::ResourceLimit);
            }
            Wake::Opened(opened) => self.next_opened(opened),
            Wake::Exit(ev) => self.exit_event(ev),
            Wake::Timer => {
                // A fired timer stays ready: re-arm it next pass only if a deadline remains.
                self.timer_at = None;
                self.timers();
            }
            Wake::Shutdown => self.circ.destroy(DestroyReason::Hibernating),
            // The loop looks at the new state first thing.
            Wake::Hibernation => {}
        }
    }

    /// The next of the state machine's deadline (an extension in progress) and the closing
    /// exit connections' grace ends.
    fn next_deadline(&self) -> Option<Instant> {
        let circuit = self.circ.poll_timeout().map(Instant::from_std);
        let closing = self.closing.iter().map(|(t, _, _)| *t).min();
        earliest(circuit, closing)
    }

    fn timers(&mut self) {
        let now = Instant::now();
        self.closing.retain(|(t, h, _)| {
            if *t <= now {
                h.abort();
                false
            } else {
                !h.is_finished()
            }
        });
        if self
            .circ
            .poll_timeout()
            .is_some_and(|t| t <= now.into_std())
        {
            let extending = self.circ.is_extending();
            self.circ.handle_timeout(now.into_std());
            if self.circ.closed_idle() {
                // Nothing either way for the idle timeout (specs/03 §4.11): DESTROY(FINISHED)
                // is queued both ways.
                debug!("idle circuit closed");
                self.ctx.stats.circuits_closed_idle.inc();
            } else if extending && !self.circ.is_extending() {
                // The extension did not finish in time (specs/03 §4.8): the circuit answered
                // TRUNCATED(TIMEOUT) and stays; whatever was opened for it goes.
                debug!("next hop not reached, or no CREATED, within the extend timeout");
                self.ctx.stats.extends_failed.inc();
                self.drop_next_if_gone();
            }
        }
    }

    /// The state machine dropped its next hop (TRUNCATED after a refused CREATE or a timeout):
    /// drop ours, and stop opening one.
    fn drop_next_if_gone(&mut self) {
        match &self.next {
            Next::Open(_) if !self.circ.has_next_hop() => self.next = Next::None,
            Next::Opening(task) if !self.circ.is_extending() => {
                task.abort();
                self.next = Next::None;
            }
            _ => {}
        }
    }

    fn next_opened(&mut self, opened: Opened) {
        let now = Instant::now();
        let result = opened.unwrap_or(Err(DestroyReason::Internal));
        match result {
            Ok(stream) => {
                let cell_len = self.circ.next_cell_len();
                let (r, w) = link::split(stream, cell_len);
                let link = Link::spawn(r, w, cell_len, Arc::clone(&self.ctx.traffic));
                match self.circ.handle_next_hop_opened(now.into_std()) {
                    Ok(()) => {
                        self.next = Next::Open(link);
                    }
                    Err(e) => {
                        debug!(error = %e, "next hop opened but the CREATE was refused");
                        self.next = Next::None;
                    }
                }
            }
            Err(reason) => {
                self.next = Next::None;
                self.ctx.stats.extends_failed.inc();
                let _ = self.circ.handle_next_hop_failed(reason, now.into_std());
            }
        }
    }

    fn run_actions(&mut self) {
        while let Some(action) = self.circ.poll_action() {
            match action {
                RelayAction::OpenNextHop {
                    peer_id,
                    addrs,
                    preamble,
                } => self.open_next_hop(&peer_id, addrs, preamble),
                RelayAction::Connect { stream, host, port } => {
                    self.exit_connect(stream, host, port)
                }
                RelayAction::Resolve { stream, host } => self.exit_resolve(stream, host),
                RelayAction::ExitData { stream, data } => {
                    if let Some(c) = self.exits.get_mut(&stream.0) {
                        c.out.extend_from_slice(&data);
                        flush_writes(c);
                    }
                }
                RelayAction::CloseStream { stream } => self.close_exit(stream),
                RelayAction::ExitWritable { stream } => self.offer(stream),
                _ => {}
            }
        }
    }

    fn open_next_hop(&mut self, peer_id: &[u8], addrs: Vec<Vec<u8>>, preamble: [u8; 4]) {
        let now = Instant::now().into_std();
        let peer = match PeerId::from_bytes(peer_id) {
            // specs/03 §4.6 (2): not back to the previous hop.
            Ok(p) if p != self.prev_peer => p,
            other => {
                debug!(
                    bad_peer_id = other.is_err(),
                    "extend refused: not a PeerId, or back to the previous hop"
                );
                let _ = self
                    .circ
                    .handle_next_hop_failed(DestroyReason::ConnectFailed, now);
                return;
            }
        };
        let addrs = match next_hop_addrs(&self.ctx, peer, &addrs) {
            Ok(addrs) => addrs,
            Err(why) => {
                debug!(
                    peer = %Sensitive::new(peer, self.ctx.safe_logging),
                    why,
                    "extend refused"
                );
                self.ctx.stats.extends_refused.inc();
                let _ = self
                    .circ
                    .handle_next_hop_failed(DestroyReason::ConnectFailed, now);
                return;
            }
        };
        self.ctx.stats.extends.inc();
        let ctx = Arc::clone(&self.ctx);
        // No deadline here: the state machine's (poll_timeout) ends the extension, and
        // drop_next_if_gone aborts this task.
        self.next = Next::Opening(tokio::spawn(open_next(ctx, peer, addrs, preamble)));
    }

    fn exit_connect(&mut self, stream: StreamId, host: Host, port: u16) {
        let Some(exit) = self.ctx.exit.clone() else {
            // RelayCircuit answers BEGIN at a non-exit itself; nothing to do.
            return;
        };
        self.generation += 1;
        let generation = self.generation;
        let events = self.events_tx.clone();
        let safe = self.ctx.safe_logging;
        let ctx = Arc::clone(&self.ctx);
        let task = tokio::spawn(async move {
            let is_relay = |addr: std::net::SocketAddr| ctx.is_relay_address(addr);
            let ev = match exit.connect(&host, port, &is_relay).await {
                Ok((conn, addr, ttl)) => ExitEvent::Connected {
                    stream,
                    generation,
                    conn,
                    addr,
                    ttl,
                },
                Err(reason) => {
                    debug!(
                        target_host = %Sensitive::new(&host, safe),
                        port,
                        ?reason,
                        "exit connect failed"
                    );
                    ExitEvent::ConnectFailed {
                        stream,
                        generation,
                        reason,
                    }
                }
            };
            let _ = events.send(ev).await;
        });
        self.exits
            .insert(stream.0, ExitConn::new(generation, task.abort_handle()));
    }

    fn exit_resolve(&mut self, stream: StreamId, host: Host) {
        let Some(exit) = self.ctx.exit.clone() else {
            return;
        };
        self.generation += 1;
        let generation = self.generation;
        let events = self.events_tx.clone();
        let task = tokio::spawn(async move {
            let answers = exit.resolve(&host).await;
            let _ = events
                .send(ExitEvent::Resolved {
                    stream,
                    generation,
                    answers,
                })
                .await;
        });
        self.exits
            .insert(stream.0, ExitConn::new(generation, task.abort_handle()));
    }

    fn exit_event(&mut self, ev: ExitEvent) {
        let (stream, generation) = ev.key();
        // Events of a stream that was closed meanwhile (or of an older stream on a reused id)
        // are dropped.
        if self
            .exits
            .get(&stream.0)
            .is_none_or(|c| c.generation != generation)
        {
            return;
        }
        let now = Instant::now().into_std();
        match ev {
            ExitEvent::Connected {
                conn, addr, ttl, ..
            } => {
                if self
                    .circ
                    .handle_exit_connected(stream, addr, ttl, now)
                    .is_err()
                {
                    self.forget_exit(stream);
                    return;
                }
                self.ctx.stats.exit_connects.inc();
                self.start_exit_io(stream, generation, conn);
            }
            ExitEvent::ConnectFailed { reason, .. } => {
                self.ctx.stats.exit_connect_failures.inc();
                self.exits.remove(&stream.0);
                let _ = self.circ.handle_exit_connect_failed(stream, reason, now);
            }
            ExitEvent::Resolved { answers, .. } => {
                self.exits.remove(&stream.0);
                let _ = self.circ.handle_exit_resolved(stream, answers, now);
            }
            ExitEvent::Data { data, .. } => {
                if let Some(c) = self.exits.get_mut(&stream.0) {
                    c.pending_in = data;
                    c.pending_off = 0;
                    c.holding_read = true;
                }
                self.offer(stream);
            }
            ExitEvent::ReadEnd { reason, .. } => {
                if let Some(c) = self.exits.get_mut(&stream.0) {
                    c.read_end = Some(reason);
                }
                self.offer(stream);
            }
            ExitEvent::Written { n, .. } => {
                let _ = self.circ.handle_exit_written(stream, n, now);
                if let Some(c) = self.exits.get_mut(&stream.0) {
                    c.writing = false;
                    c.writing_bytes = 0;
                    c.waiting.progressed(now);
                    flush_writes(c);
                }
            }
            ExitEvent::WriteFailed { .. } => {
                self.forget_exit(stream);
                let _ = self
                    .circ
                    .handle_exit_closed(stream, EndReason::ConnReset, now);
            }
        }
    }

    fn start_exit_io(&mut self, stream: StreamId, generation: u64, conn: TcpStream) {
        let Some(c) = self.exits.get_mut(&stream.0) else {
            return;
        };
        let (r, w) = conn.into_split();
        let (go_tx, go_rx) = mpsc::channel(1);
        let (write_tx, write_rx) = mpsc::channel(EXIT_WRITE_QUEUE);
        let reader = tokio::spawn(exit_reader(
            r,
            stream,
            generation,
            self.events_tx.clone(),
            go_rx,
            Arc::clone(&self.ctx.traffic),
        ));
        let writer = tokio::spawn(exit_writer(
            w,
            stream,
            generation,
            self.events_tx.clone(),
            write_rx,
            Arc::clone(&self.ctx.traffic),
        ));
        c.setup = None;
        c.reader = Some(reader.abort_handle());
        c.reader_go = Some(go_tx);
        c.writer = Some(writer);
        c.writer_tx = Some(write_tx);
        // Optimistic data may already be waiting (ExitData right after CONNECTED).
        flush_writes(c);
    }

    /// Hands the destination's bytes to the circuit as far as its credit and queue allow;
    /// reports the end of the destination's side once everything was taken.
    fn offer(&mut self, stream: StreamId) {
        let now = Instant::now().into_std();
        let Some(c) = self.exits.get_mut(&stream.0) else {
            return;
        };
        while c.pending_off < c.pending_in.len() {
            match self
                .circ
                .handle_exit_data(stream, &c.pending_in[c.pending_off..], now)
            {
                Ok(0) => return,
                Ok(n) => {
                    c.pending_off += n;
                    c.waiting.progressed(now);
                }
                Err(_) => {
                    // The stream or the circuit is gone.
                    self.forget_exit(stream);
                    return;
                }
            }
        }
        c.pending_off = 0;
        if let Some(reason) = c.read_end {
            let _ = self.circ.handle_exit_closed(stream, reason, now);
            self.close_exit(stream);
        } else if c.holding_read {
            c.holding_read = false;
            let mut buf = std::mem::take(&mut c.pending_in);
            buf.clear();
            if let Some(go) = &c.reader_go {
                // Never full: the reader has no buffer until this one arrives.
                let _ = go.try_send(buf);
            }
        }
    }

    /// The stream is over (END either way): stop reading, let the writer finish what it has
    /// (within [`CLOSE_GRACE`]), close the connection.
    fn close_exit(&mut self, stream: StreamId) {
        let Some(mut c) = self.exits.remove(&stream.0) else {
            return;
        };
        if let Some(h) = c.setup.take() {
            h.abort();
        }
        if let Some(h) = c.reader.take() {
            h.abort();
        }
        let mut unwritten = c.writing_bytes;
        if let Some(tx) = c.writer_tx.take()
            && !c.out.is_empty()
        {
            unwritten += c.out.len();
            let _ = tx.try_send(std::mem::take(&mut c.out));
        }
        if let Some(w) = c.writer.take() {
            if self.closing.len() >= MAX_CLOSING_STREAMS {
                let (_, oldest, _) = self.closing.remove(0);
                oldest.abort();
            }
            self.closing
                .push((Instant::now() + CLOSE_GRACE, w, unwritten));
        }
    }

    /// The stream is gone without a goodbye: stop everything at once.
    fn forget_exit(&mut self, stream: StreamId) {
        if let Some(mut c) = self.exits.remove(&stream.0) {
            for h in [c.setup.take(), c.reader.take()].into_iter().flatten() {
                h.abort();
            }
            if let Some(w) = c.writer.take() {
                w.abort();
            }
        }
    }

    async fn close(mut self) {
        if self.over_budget {
            // Drop aborts the links' and the exit streams' tasks: nothing waits on a peer.
            self.ctx.stats.circuits_closed.inc();
            return;
        }
        self.run_actions();
        let prev_batch = drain(&mut self.circ, true, Vec::new());
        let next_batch = drain(&mut self.circ, false, Vec::new());
        let mut closing = Vec::new();
        if let Some(link) = self.prev.take() {
            closing.push((link, prev_batch));
        }
        match std::mem::replace(&mut self.next, Next::None) {
            Next::Open(link) => closing.push((link, next_batch)),
            Next::Opening(h) => h.abort(),
            Next::None => {}
        }
        let closes = closing.into_iter().map(|(link, batch)| async move {
            if !batch.is_empty()
                && let Some(tx) = &link.batches
            {
                let _ = tokio::time::timeout(CLOSE_GRACE, tx.send(batch)).await;
            }
            link.close(CLOSE_GRACE).await;
        });
        let ids: Vec<u16> = self.exits.keys().copied().collect();
        for id in ids {
            self.close_exit(StreamId(id));
        }
        let writers = std::mem::take(&mut self.closing);
        let writers = async move {
            for (deadline, mut w, _) in writers {
                if tokio::time::timeout_at(deadline, &mut w).await.is_err() {
                    w.abort();
                }
            }
        };
        futures::join!(futures::future::join_all(closes), writers);
        self.ctx.stats.circuits_closed.inc();
    }
}

impl Drop for CircuitTask {
    /// A task that is cut (the relay stops) stops its helpers too.
    fn drop(&mut self) {
        for (_, c) in self.exits.drain() {
            for h in [c.setup, c.reader].into_iter().flatten() {
                h.abort();
            }
            if let Some(w) = c.writer {
                w.abort();
            }
        }
        for (_, w, _) in self.closing.drain(..) {
            w.abort();
        }
        if let Next::Opening(h) = &self.next {
            h.abort();
        }
    }
}

/// Takes every cell queued toward one side as one batch: the queue's own buffer, no copy
/// (the queue keeps `spare`, an empty buffer the writer gave back, to fill next). The batch is
/// bounded by the circuit's queue bound (specs/03 §11.4: `RELAY_QUEUE_CELLS` plus the control
/// reserve).
fn drain(circ: &mut RelayCircuit, prev: bool, spare: Vec<u8>) -> Vec<u8> {
    let mut batch = spare;
    if prev {
        circ.transmit_prev_into(&mut batch);
    } else {
        circ.transmit_next_into(&mut batch);
    }
    batch
}

fn flush_writes(c: &mut ExitConn) {
    if c.writing || c.out.is_empty() {
        return;
    }
    let Some(tx) = &c.writer_tx else {
        return;
    };
    let len = c.out.len();
    if tx.try_send(std::mem::take(&mut c.out)).is_ok() {
        c.writing = true;
        c.writing_bytes = len;
    }
}

/// The parts of a link the select loop waits on: its runs of cells and its batch sender.
type LinkParts<'a> = (
    Option<&'a mut mpsc::Receiver<(Vec<u8>, usize)>>,
    Option<&'a mpsc::Sender<Vec<u8>>>,
);

fn link_parts(link: Option<&mut Link>) -> LinkParts<'_> {
    match link {
        Some(l) => (Some(&mut l.runs), l.batches.as_ref()),
        None => (None, None),
    }
}

async fn recv(runs: Option<&mut mpsc::Receiver<(Vec<u8>, usize)>>) -> Option<(Vec<u8>, usize)> {
    match runs {
        Some(c) => c.recv().await,
        None => std::future::pending().await,
    }
}

async fn reserve(tx: Option<&mpsc::Sender<Vec<u8>>>) -> Option<mpsc::Permit<'_, Vec<u8>>> {
    match tx {
        Some(tx) => tx.reserve().await.ok(),
        None => None,
    }
}

type Opened = Result<Result<Stream, DestroyReason>, tokio::task::JoinError>;

async fn opening(handle: Option<&mut JoinHandle<Result<Stream, DestroyReason>>>) -> Opened {
    match handle {
        Some(h) => h.await,
        None => std::future::pending().await,
    }
}

/// Where an EXTEND may go (specs/03 §4.6 step 3): the addresses of `peer` that both the EXTEND
/// and the relay's signed descriptor in this relay's store list, that this relay dials at all.
/// `Err` says why there are none.
fn next_hop_addrs(
    ctx: &Context,
    peer: PeerId,
    extend_addrs: &[Vec<u8>],
) -> Result<Vec<Multiaddr>, &'static str> {
    let entry = ctx
        .node
        .directory()
        .and_then(|d| d.get(&peer))
        .ok_or("not a relay in this relay's directory")?;
    let signed = &entry.descriptor.descriptor().addrs;
    let addrs: Vec<Multiaddr> = extend_addrs
        .iter()
        .filter_map(|bytes| Multiaddr::try_from(bytes.clone()).ok())
        .map(|mut addr| {
            if matches!(
                addr.iter().last(),
                Some(libp2p::multiaddr::Protocol::P2p(_))
            ) {
                addr.pop();
            }
            addr
        })
        .filter(|addr| signed.contains(addr))
        .filter(|addr| ctx.node.may_dial(addr))
        .collect();
    if addrs.is_empty() {
        return Err("no address of the EXTEND is in the relay's descriptor and dialable");
    }
    Ok(addrs)
}

/// Opens the circuit stream to the next hop (specs/03 §4.6 steps 3–4) at `addrs` only, and
/// writes the preamble.
async fn open_next(
    ctx: Arc<Context>,
    peer: PeerId,
    addrs: Vec<Multiaddr>,
    preamble: [u8; 4],
) -> Result<Stream, DestroyReason> {
    let unreachable = |step: &'static str, error: &dyn std::fmt::Display| {
        debug!(
            peer = %Sensitive::new(peer, ctx.safe_logging),
            step,
            %error,
            "cannot reach the next hop"
        );
        DestroyReason::ConnectFailed
    };
    let mut control = ctx.node.stream_control();
    let mut stream = control
        .open_stream_at(peer, &addrs, CIRCUIT_PROTOCOL)
        .await
        .map_err(|e| unreachable("opening its stream", &e))?;
    stream
        .write_all(&preamble)
        .await
        .map_err(|e| unreachable("writing the preamble", &e))?;
    Ok(stream)
}

async fn exit_reader(
    r: OwnedReadHalf,
    stream: StreamId,
    generation: u64,
    events: mpsc::Sender<ExitEvent>,
    mut go: mpsc::Receiver<Vec<u8>>,
    traffic: Arc<Traffic>,
) {
    // One buffer, lent to the circuit with each read and given back once taken: no copy and
    // no allocation per read while the destination has more at once. A reader that has to
    // wait drops it first, so a quiet stream holds no read buffer (crate::memory counts only
    // what the circuit holds). `try_read_buf` fills spare capacity without zeroing it first.
    let mut spare: Option<Vec<u8>> = None;
    loop {
        let mut buf = match spare.take() {
            Some(buf) => buf,
            None => {
                if let Err(e) = r.readable().await {
                    let _ = events
                        .send(ExitEvent::ReadEnd {
                            stream,
                            generation,
                            reason: crate::exit::end_reason_of(&e),
                        })
                        .await;
                    return;
                }
                Vec::with_capacity(EXIT_READ_CHUNK)
            }
        };
        let ev = match r.try_read_buf(&mut buf) {
            Ok(0) => ExitEvent::ReadEnd {
                stream,
                generation,
                reason: EndReason::Done,
            },
            Ok(_) => ExitEvent::Data {
                stream,
                generation,
                data: buf,
            },
            // Not readable after all (or no longer): wait again, without the buffer.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => ExitEvent::ReadEnd {
                stream,
                generation,
                reason: crate::exit::end_reason_of(&e),
            },
        };
        if let ExitEvent::Data { data, .. } = &ev {
            traffic.received(data.len()).await;
        }
        let more = matches!(ev, ExitEvent::Data { .. });
        if events.send(ev).await.is_err() || !more {
            return;
        }
        // One read outstanding: wait until the circuit took all of it.
        match go.recv().await {
            Some(returned) => spare = Some(returned),
            None => return,
        }
    }
}

async fn exit_writer(
    mut w: OwnedWriteHalf,
    stream: StreamId,
    generation: u64,
    events: mpsc::Sender<ExitEvent>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    traffic: Arc<Traffic>,
) {
    while let Some(buf) = rx.recv().await {
        traffic.sending(buf.len()).await;
        if w.write_all(&buf).await.is_err() {
            let _ = events
                .send(ExitEvent::WriteFailed { stream, generation })
                .await;
            return;
        }
        // The circuit may be gone (closing): then the send fails and we go on writing.
        let _ = events
            .send(ExitEvent::Written {
                stream,
                generation,
                n: buf.len(),
            })
            .await;
    }
    let _ = w.shutdown().await;
}
