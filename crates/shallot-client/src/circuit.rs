//! One task per circuit: runs a sans-IO [`ClientCircuit`] over its link-0 stream.
//!
//! The task is a single hand-written poll loop (the shape of quinn's endpoint driver): it reads
//! every byte the link has and hands in every whole cell, moves bytes between each stream and
//! its application channels, and writes every queued cell in one batched write (specs/01 §4.3,
//! DESIGN "Batch writes"). Reading and writing progress independently, so a link that does
//! not take our writes never stops us reading (which the relay's backward queue needs,
//! specs/03 §11.4). Per-stream channels are bounded; a stream whose application does not read
//! stops being read out of the circuit, so it stops granting credit while the others go on
//! (specs/08 §3).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::io::{AsyncRead, AsyncWrite};
use shallot_cell::{DestroyReason, Host, ResolvedAnswer, StreamId};
use shallot_proto::{ClientCircuit, ClientEvent, ErrorKind as ProtoKind, HopSpec, ProtoError};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::PollSender;
use tracing::{debug, trace};

use crate::err::StreamFailure;
use crate::metrics::Metrics;
use crate::stream::{APP_CHUNK, CircuitEnd};

/// Commands a circuit task accepts at once from the manager.
pub(crate) const CIRCUIT_COMMANDS: usize = 16;
/// Bytes the task reads from the link per read (32 cells of 2048 bytes).
const LINK_READ_BUF: usize = 64 * 1024;
/// Most bytes written in one batch.
const WRITE_BATCH_MAX: usize = 256 * 1024;
/// Rounds of work per poll before yielding to the runtime.
const MAX_ROUNDS_PER_POLL: usize = 16;
/// Chunks read out of one stream per round (fairness among streams).
const READS_PER_STREAM_ROUND: usize = 4;
/// Chunks written into one stream per round.
const WRITES_PER_STREAM_ROUND: usize = 2;

/// Why a build failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BuildFailure {
    /// A CREATE or EXTEND took longer than the build timeout.
    #[error("build timed out")]
    Timeout,
    /// A hop refused or failed (TRUNCATED, DESTROY, a bad handshake, the link closed).
    #[error("build failed: {0}")]
    Failed(&'static str),
}

impl BuildFailure {
    /// The `reason` label of `shallot_circuit_failures_total`.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Failed(what) => what,
        }
    }
}

/// Commands from the manager to a circuit task.
#[derive(Debug)]
pub(crate) enum CircuitCommand {
    /// Open a stream (BEGIN) to `host:port` and attach `end` to it.
    Open {
        /// Destination (sensitive).
        host: Host,
        /// Port.
        port: u16,
        /// The circuit's end of the stream's channels.
        end: CircuitEnd,
    },
    /// Resolve `host` at the exit (RESOLVE).
    Resolve {
        /// What to resolve (sensitive).
        host: Host,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<Vec<ResolvedAnswer>, StreamFailure>>,
    },
}

/// State the manager reads without asking the task.
#[derive(Debug, Default)]
pub(crate) struct CircuitShared {
    /// Streams (and lookups) open on the circuit.
    pub(crate) streams: AtomicUsize,
    /// The circuit is built and has not closed.
    pub(crate) built: AtomicBool,
    /// The circuit is gone.
    pub(crate) closed: AtomicBool,
    /// Hops built so far (0 until the guard answered CREATE).
    pub(crate) hops: AtomicUsize,
}

/// What [`spawn`] returns.
pub(crate) struct Spawned {
    /// Commands into the task; dropping it closes the circuit.
    pub(crate) commands: mpsc::Sender<CircuitCommand>,
    /// Resolves once the circuit is built (with its build time) or failed.
    pub(crate) built: oneshot::Receiver<Result<Duration, BuildFailure>>,
    /// State readable from outside.
    pub(crate) shared: Arc<CircuitShared>,
}

/// Starts a circuit over `link` (a fresh circuit stream to `path[0]`) and builds it through
/// `path`, each CREATE/EXTEND bounded by `build_timeout`. `started` is when the build began
/// (the link dial included), for the build-time measurement.
pub(crate) fn spawn<L>(
    id: u64,
    link: L,
    path: Vec<HopSpec>,
    build_timeout: Duration,
    started: Instant,
    metrics: Metrics,
) -> Result<Spawned, ProtoError>
where
    L: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let first = path.first().ok_or(ProtoError::WrongState("empty path"))?;
    let now = Instant::now();
    let circ = ClientCircuit::new(first, shallot_proto::ClientConfig { build_timeout }, now)?;
    let (commands, commands_rx) = mpsc::channel(CIRCUIT_COMMANDS);
    let (built_tx, built) = oneshot::channel();
    let shared = Arc::new(CircuitShared::default());
    let mut wbuf = Vec::with_capacity(WRITE_BATCH_MAX);
    wbuf.extend_from_slice(&ClientCircuit::preamble());
    let mut driver = Driver {
        id,
        circ,
        link,
        path,
        started,
        built: Some(built_tx),
        commands: commands_rx,
        commands_open: true,
        slots: BTreeMap::new(),
        resolves: HashMap::new(),
        pending_close: Vec::new(),
        rbuf: vec![0u8; LINK_READ_BUF],
        rlen: 0,
        wbuf,
        wpos: 0,
        need_flush: false,
        timer: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
        timer_at: None,
        link_dead: false,
        shared: Arc::clone(&shared),
        metrics,
        counted_open: false,
    };
    tokio::spawn(async move {
        futures::future::poll_fn(|cx| driver.poll_drive(cx)).await;
        driver.finish();
    });
    Ok(Spawned {
        commands,
        built,
        shared,
    })
}

struct Slot {
    to_app: Option<PollSender<Vec<u8>>>,
    from_app: mpsc::Receiver<Vec<u8>>,
    gone: oneshot::Receiver<()>,
    connected: Option<oneshot::Sender<Result<Host, StreamFailure>>>,
    /// A chunk from the application not yet fully taken by the circuit.
    out: Option<(Vec<u8>, usize)>,
    write_blocked: bool,
    readable: bool,
    /// The exit sent END: nothing more may be written.
    ended: bool,
}

/// What happens to a stream's slot after a round.
enum Fate {
    /// Still open.
    Keep,
    /// The application left: send END (unless the exit ended it) and forget it.
    Close,
    /// The circuit already forgot it (ended and drained, or circuit closed).
    Forgotten,
}

struct Driver<L> {
    id: u64,
    circ: ClientCircuit,
    link: L,
    path: Vec<HopSpec>,
    started: Instant,
    built: Option<oneshot::Sender<Result<Duration, BuildFailure>>>,
    commands: mpsc::Receiver<CircuitCommand>,
    commands_open: bool,
    slots: BTreeMap<u16, Slot>,
    resolves: HashMap<u16, oneshot::Sender<Result<Vec<ResolvedAnswer>, StreamFailure>>>,
    /// Streams whose END found no room in the send queue; retried every round.
    pending_close: Vec<u16>,
    rbuf: Vec<u8>,
    rlen: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    need_flush: bool,
    timer: Pin<Box<tokio::time::Sleep>>,
    timer_at: Option<Instant>,
    link_dead: bool,
    shared: Arc<CircuitShared>,
    metrics: Metrics,
    counted_open: bool,
}

impl<L> Driver<L>
where
    L: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        for _ in 0..MAX_ROUNDS_PER_POLL {
            let mut progress = self.poll_commands(cx);
            progress |= self.poll_link_read(cx);
            progress |= self.poll_timer(cx);
            progress |= self.handle_events();
            progress |= self.poll_streams(cx);
            progress |= self.handle_events();
            progress |= self.poll_link_write(cx);
            if self.is_finished() {
                return Poll::Ready(());
            }
            if !progress {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn is_finished(&self) -> bool {
        if self.link_dead {
            return true;
        }
        self.circ.is_closed() && self.wpos == self.wbuf.len() && self.circ.queued_cells() == 0
    }

    /// After the loop: fail everything still waiting.
    fn finish(&mut self) {
        if !self.circ.is_closed() {
            self.circ.handle_link_closed(Instant::now());
        }
        self.handle_events();
        self.mark_over();
        debug!(circuit = self.id, "circuit task ended");
    }

    /// The circuit is over: fails whatever waits on it, marks it closed for the manager and
    /// takes it out of the open-circuits gauge (once).
    fn mark_over(&mut self) {
        self.fail_all();
        self.shared.closed.store(true, Ordering::Relaxed);
        self.shared.built.store(false, Ordering::Relaxed);
        if self.counted_open {
            self.counted_open = false;
            self.metrics.circuits_open.dec();
        }
    }

    fn fail_all(&mut self) {
        if let Some(built) = self.built.take() {
            let _ = built.send(Err(BuildFailure::Failed("destroyed")));
        }
        for (_, slot) in std::mem::take(&mut self.slots) {
            if let Some(tx) = slot.connected {
                let _ = tx.send(Err(StreamFailure::CircuitFailed));
            }
            self.metrics.streams_open.dec();
        }
        for (_, tx) in self.resolves.drain() {
            let _ = tx.send(Err(StreamFailure::CircuitFailed));
        }
        self.shared.streams.store(0, Ordering::Relaxed);
    }

    fn poll_commands(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while self.commands_open {
            match self.commands.poll_recv(cx) {
                Poll::Ready(Some(cmd)) => {
                    progress = true;
                    self.handle_command(cmd);
                }
                Poll::Ready(None) => {
                    // The manager let go of the circuit (expired, retired, shutting down).
                    progress = true;
                    self.commands_open = false;
                    self.circ.destroy(DestroyReason::Finished);
                }
                Poll::Pending => break,
            }
        }
        progress
    }

    fn handle_command(&mut self, cmd: CircuitCommand) {
        match cmd {
            CircuitCommand::Open { host, port, end } => match self.circ.open_stream(host, port) {
                Ok(id) => {
                    self.slots.insert(
                        id.0,
                        Slot {
                            to_app: Some(PollSender::new(end.to_app)),
                            from_app: end.from_app,
                            gone: end.gone,
                            connected: Some(end.connected),
                            out: None,
                            write_blocked: false,
                            readable: false,
                            ended: false,
                        },
                    );
                    self.metrics.streams_open.inc();
                    self.count_streams();
                }
                Err(err) => {
                    debug!(circuit = self.id, %err, "cannot open a stream here");
                    let _ = end.connected.send(Err(StreamFailure::CircuitFailed));
                }
            },
            CircuitCommand::Resolve { host, reply } => match self.circ.resolve(host) {
                Ok(id) => {
                    self.resolves.insert(id.0, reply);
                    self.count_streams();
                }
                Err(_) => {
                    let _ = reply.send(Err(StreamFailure::CircuitFailed));
                }
            },
        }
    }

    fn count_streams(&self) {
        self.shared
            .streams
            .store(self.slots.len() + self.resolves.len(), Ordering::Relaxed);
    }

    fn poll_link_read(&mut self, cx: &mut Context<'_>) -> bool {
        if self.link_dead {
            return false;
        }
        let mut progress = false;
        for _ in 0..4 {
            let r = Pin::new(&mut self.link).poll_read(cx, &mut self.rbuf[self.rlen..]);
            match r {
                Poll::Ready(Ok(n)) if n > 0 => {
                    progress = true;
                    self.rlen += n;
                    self.handle_cells();
                }
                Poll::Ready(_) => {
                    progress = true;
                    self.link_dead = true;
                    self.circ.handle_link_closed(Instant::now());
                    if self.built.is_some() {
                        self.metrics.circuit_failure("link_closed");
                    }
                    break;
                }
                Poll::Pending => break,
            }
        }
        progress
    }

    /// Hands every whole cell in the read buffer to the circuit.
    fn handle_cells(&mut self) {
        let cell_len = self.circ.cell_len();
        let now = Instant::now();
        let mut off = 0;
        while self.rlen - off >= cell_len {
            // Opened in place in the read buffer: no copy per cell.
            let cell = &mut self.rbuf[off..off + cell_len];
            off += cell_len;
            if let Err(err) = self.circ.handle_cell(cell, now) {
                debug!(circuit = self.id, %err, "circuit destroyed on a bad cell");
                if err.kind() != ProtoKind::Closed {
                    self.metrics.circuit_failure("protocol");
                }
            }
        }
        self.rbuf.copy_within(off..self.rlen, 0);
        self.rlen -= off;
    }

    fn poll_timer(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(at) = self.circ.poll_timeout() else {
            self.timer_at = None;
            return false;
        };
        if self.timer_at != Some(at) {
            self.timer_at = Some(at);
            self.timer
                .as_mut()
                .reset(tokio::time::Instant::from_std(at));
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            self.timer_at = None;
            self.circ.handle_timeout(Instant::now());
            return true;
        }
        false
    }

    fn handle_events(&mut self) -> bool {
        let mut progress = false;
        while let Some(event) = self.circ.poll_event() {
            progress = true;
            self.handle_event(event);
        }
        progress
    }

    fn handle_event(&mut self, event: ClientEvent) {
        match event {
            ClientEvent::HopAdded(n) => {
                self.shared.hops.store(n, Ordering::Relaxed);
                trace!(circuit = self.id, hops = n, since_start = ?self.started.elapsed(), "hop added");
                if let Some(next) = self.path.get(n) {
                    if let Err(err) = self.circ.extend(next, Instant::now()) {
                        debug!(circuit = self.id, %err, "cannot extend");
                        self.fail_build(BuildFailure::Failed("extend"));
                        self.circ.destroy(DestroyReason::Internal);
                    }
                } else if let Some(built) = self.built.take() {
                    self.shared.built.store(true, Ordering::Relaxed);
                    self.metrics.circuits_open.inc();
                    self.counted_open = true;
                    let _ = built.send(Ok(self.started.elapsed()));
                }
            }
            ClientEvent::ExtendFailed { reason } => {
                debug!(circuit = self.id, ?reason, "extend refused");
                self.fail_build(BuildFailure::Failed("extend_failed"));
                self.circ.destroy(DestroyReason::Requested);
            }
            ClientEvent::StreamConnected { stream, addr } => {
                if let Some(tx) = self
                    .slots
                    .get_mut(&stream.0)
                    .and_then(|s| s.connected.take())
                {
                    let _ = tx.send(Ok(addr));
                }
            }
            ClientEvent::StreamReadable(stream) => {
                if let Some(slot) = self.slots.get_mut(&stream.0) {
                    slot.readable = true;
                }
            }
            ClientEvent::StreamWritable(stream) => {
                if let Some(slot) = self.slots.get_mut(&stream.0) {
                    slot.write_blocked = false;
                }
            }
            ClientEvent::StreamEnded { stream, reason } => {
                if let Some(tx) = self.resolves.remove(&stream.0) {
                    // The exit refused the RESOLVE (specs/03 §4.9).
                    let _ = tx.send(Err(StreamFailure::End(reason)));
                    self.count_streams();
                    return;
                }
                let Some(slot) = self.slots.get_mut(&stream.0) else {
                    return;
                };
                slot.ended = true;
                slot.out = None;
                if let Some(tx) = slot.connected.take() {
                    // Refused before CONNECTED: report the reason, forget the stream.
                    let _ = tx.send(Err(StreamFailure::End(reason)));
                    let _ = self.circ.close_stream(stream);
                    self.remove_slot(stream.0);
                } else {
                    // Drain what is buffered, then EOF.
                    slot.readable = true;
                }
            }
            ClientEvent::Resolved { stream, answers } => {
                if let Some(tx) = self.resolves.remove(&stream.0) {
                    let result = if answers.iter().all(ResolvedAnswer::is_error) {
                        Err(StreamFailure::ResolveFailed)
                    } else {
                        Ok(answers)
                    };
                    let _ = tx.send(result);
                }
                self.count_streams();
            }
            ClientEvent::Destroyed { reason } => {
                debug!(circuit = self.id, ?reason, "circuit destroyed");
                if self.built.is_some() {
                    let failure = match self.circ.close_error().map(ProtoError::kind) {
                        Some(ProtoKind::Timeout) => BuildFailure::Timeout,
                        _ => BuildFailure::Failed("destroyed"),
                    };
                    self.fail_build(failure);
                } else if !matches!(reason, DestroyReason::Finished | DestroyReason::Requested) {
                    self.metrics.circuit_failure("destroyed");
                }
                self.mark_over();
            }
            _ => {}
        }
    }

    fn fail_build(&mut self, failure: BuildFailure) {
        if let Some(built) = self.built.take() {
            self.metrics.circuit_failure(failure.label());
            let _ = built.send(Err(failure));
        }
    }

    fn remove_slot(&mut self, id: u16) {
        if self.slots.remove(&id).is_some() {
            self.metrics.streams_open.dec();
        }
        self.count_streams();
    }

    fn poll_streams(&mut self, cx: &mut Context<'_>) -> bool {
        if self.circ.is_closed() {
            return false;
        }
        let mut progress = false;
        // ENDs that found no room before.
        let retry = std::mem::take(&mut self.pending_close);
        for id in retry {
            if let Err(ProtoError::WouldBlock) = self.circ.close_stream(StreamId(id)) {
                self.pending_close.push(id);
            } else {
                progress = true;
            }
        }
        // Lookups whose asker gave up.
        let abandoned: Vec<u16> = self
            .resolves
            .iter()
            .filter(|(_, tx)| tx.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in abandoned {
            self.resolves.remove(&id);
            let _ = self.circ.close_stream(StreamId(id));
            self.count_streams();
        }
        let ids: Vec<u16> = self.slots.keys().copied().collect();
        for id in ids {
            progress |= self.poll_stream(cx, id);
        }
        progress
    }

    fn poll_stream(&mut self, cx: &mut Context<'_>, id: u16) -> bool {
        let Some(mut slot) = self.slots.remove(&id) else {
            return false;
        };
        let (progress, fate) = self.drive_slot(cx, StreamId(id), &mut slot);
        match fate {
            Fate::Keep => {
                self.slots.insert(id, slot);
            }
            Fate::Close => {
                self.metrics.streams_open.dec();
                if let Err(ProtoError::WouldBlock) = self.circ.close_stream(StreamId(id)) {
                    self.pending_close.push(id);
                }
                self.count_streams();
            }
            Fate::Forgotten => {
                self.metrics.streams_open.dec();
                self.count_streams();
            }
        }
        progress
    }

    fn drive_slot(&mut self, cx: &mut Context<'_>, sid: StreamId, slot: &mut Slot) -> (bool, Fate) {
        if Pin::new(&mut slot.gone).poll(cx).is_ready() {
            return (true, Fate::Close);
        }
        let mut progress = false;
        // Exit → application, only while the application's channel has room.
        if slot.readable {
            for _ in 0..READS_PER_STREAM_ROUND {
                let Some(tx) = slot.to_app.as_mut() else {
                    break;
                };
                match tx.poll_reserve(cx) {
                    Poll::Pending => break,
                    // The application stopped reading for good.
                    Poll::Ready(Err(_)) => return (true, Fate::Close),
                    Poll::Ready(Ok(())) => {}
                }
                progress = true;
                let before = self.circ.readable_bytes(sid);
                // Read straight into the chunk for the application: one copy out of the
                // circuit (at least one byte, so that an ended stream reports its end).
                let mut chunk = vec![0u8; before.clamp(1, APP_CHUNK)];
                match self.circ.read_stream(sid, &mut chunk) {
                    Ok(0) => {
                        // Ended and drained: EOF to the application (the circuit already
                        // forgot the stream).
                        tx.abort_send();
                        slot.to_app = None;
                        return (true, Fate::Forgotten);
                    }
                    Ok(n) => {
                        self.metrics.bytes_down.inc_by(n as u64);
                        chunk.truncate(n);
                        let _ = tx.send_item(chunk);
                    }
                    Err(ProtoError::WouldBlock) => {
                        tx.abort_send();
                        slot.readable = false;
                        break;
                    }
                    Err(_) => {
                        tx.abort_send();
                        return (true, Fate::Forgotten);
                    }
                }
            }
        }
        // Application → exit, while the stream takes bytes (credit, optimistic bound, queue).
        for _ in 0..WRITES_PER_STREAM_ROUND {
            if slot.write_blocked || slot.ended {
                break;
            }
            if slot.out.is_none() {
                match slot.from_app.poll_recv(cx) {
                    Poll::Ready(Some(data)) => slot.out = Some((data, 0)),
                    Poll::Ready(None) | Poll::Pending => break,
                }
            }
            let Some((data, pos)) = slot.out.as_mut() else {
                break;
            };
            match self.circ.write_stream(sid, &data[*pos..]) {
                Ok(n) => {
                    progress |= n > 0;
                    self.metrics.bytes_up.inc_by(n as u64);
                    *pos += n;
                    if *pos == data.len() {
                        slot.out = None;
                    } else {
                        slot.write_blocked = true;
                    }
                }
                Err(_) => {
                    slot.out = None;
                    slot.ended = true;
                }
            }
        }
        (progress, Fate::Keep)
    }

    fn poll_link_write(&mut self, cx: &mut Context<'_>) -> bool {
        if self.link_dead {
            return false;
        }
        let mut progress = false;
        loop {
            if self.wpos == self.wbuf.len() {
                if self.need_flush {
                    match Pin::new(&mut self.link).poll_flush(cx) {
                        Poll::Ready(Ok(())) => self.need_flush = false,
                        Poll::Ready(Err(_)) => return self.link_failed(),
                        Poll::Pending => return progress,
                    }
                }
                self.wbuf.clear();
                self.wpos = 0;
                while self.wbuf.len() < WRITE_BATCH_MAX {
                    match self.circ.poll_transmit() {
                        Some(cell) => self.wbuf.extend_from_slice(&cell),
                        None => break,
                    }
                }
                if self.wbuf.is_empty() {
                    return progress;
                }
            }
            match Pin::new(&mut self.link).poll_write(cx, &self.wbuf[self.wpos..]) {
                Poll::Ready(Ok(n)) if n > 0 => {
                    progress = true;
                    self.wpos += n;
                    self.need_flush = true;
                }
                Poll::Ready(_) => return self.link_failed(),
                Poll::Pending => return progress,
            }
        }
    }

    fn link_failed(&mut self) -> bool {
        self.link_dead = true;
        self.circ.handle_link_closed(Instant::now());
        true
    }
}
