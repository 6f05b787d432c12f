//! One task per circuit: runs a sans-IO [`ClientCircuit`] over its link-0 stream. This is the
//! only client-side circuit driver: the circuit manager uses it, and so does every test that
//! needs a client (through [`CircuitHandle`]).
//!
//! The task is a single hand-written poll loop (the shape of quinn's endpoint driver): it reads
//! every byte the link has and hands in every whole cell, moves bytes between each stream and
//! its application channels, and writes every queued cell in one batched write (specs/01 §4.3:
//! one write per batch of cells, not per cell). Reading and writing progress independently, so
//! a link that does not take our writes never stops us reading (which the relay's backward
//! queue needs, specs/03 §11.4). Per-stream channels are bounded; a stream whose application
//! does not read stops being read out of the circuit, so it stops granting credit while the
//! others go on (specs/08 §3).
//!
//! The driver reports what happened and decides nothing: a refused EXTEND leaves the circuit
//! as it was (specs/03: TRUNCATED keeps the hops built), and whoever asked for the hop decides
//! whether to extend elsewhere or let the circuit go.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::io::{AsyncRead, AsyncWrite};
use shallot_cell::{DestroyReason, Host, ResolvedAnswer, StreamId};
use shallot_error::{ErrorKind, HasKind};
use shallot_p2p::{CIRCUIT_PROTOCOL, Multiaddr, PeerId, StreamControl};
use shallot_proto::{ClientCircuit, ClientEvent, HopSpec, ProtoError};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::PollSender;
use tracing::{debug, trace};

use crate::err::StreamFailure;
use crate::metrics::Metrics;
use crate::stream::{APP_CHUNK, CircuitEnd, DataStream, stream_pair};

/// Commands a circuit task accepts at once.
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

/// Why a circuit could not be built or extended. `hops_built` is how many hops the circuit had
/// when it failed: 0 means the first hop (the guard) itself failed (specs/05 §5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildFailure {
    /// No circuit stream to the first hop could be opened (no connection, protocol refused).
    #[error("cannot open a circuit stream to the first hop")]
    Dial,
    /// The last hop answered EXTEND with TRUNCATED: it could not reach hop number `hop`
    /// (1-based). The circuit keeps the hops it had.
    #[error("hop {hop} unreachable from the one before it: {reason:?}")]
    ExtendRefused {
        /// The hop that could not be reached (1-based; the guard is hop 1).
        hop: usize,
        /// The reason the last hop gave.
        reason: DestroyReason,
    },
    /// A relay destroyed the circuit during the build (a refused CREATE, a limit).
    #[error("destroyed after {hops_built} hops: {reason:?}")]
    Destroyed {
        /// Hops built before the DESTROY.
        hops_built: usize,
        /// The DESTROY's reason.
        reason: DestroyReason,
    },
    /// The link to the first hop closed during the build.
    #[error("link closed after {hops_built} hops")]
    LinkClosed {
        /// Hops built before the link closed.
        hops_built: usize,
    },
    /// A CREATE or EXTEND was not answered within the build timeout.
    #[error("no answer within the build timeout after {hops_built} hops")]
    Timeout {
        /// Hops built before the timeout.
        hops_built: usize,
    },
    /// The circuit refused the request (a bug in the caller or the driver) or broke the
    /// protocol during the build.
    #[error("internal error after {hops_built} hops")]
    Internal {
        /// Hops built before the error.
        hops_built: usize,
    },
}

impl BuildFailure {
    /// Hops the circuit had when the build failed.
    pub fn hops_built(&self) -> usize {
        match *self {
            Self::Dial => 0,
            Self::ExtendRefused { hop, .. } => hop.saturating_sub(1),
            Self::Destroyed { hops_built, .. }
            | Self::LinkClosed { hops_built }
            | Self::Timeout { hops_built }
            | Self::Internal { hops_built } => hops_built,
        }
    }

    /// The `reason` label of `shallot_circuit_failures_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Dial => "dial",
            Self::ExtendRefused { .. } => "extend_refused",
            Self::Destroyed { .. } => "destroyed",
            Self::LinkClosed { .. } => "link_closed",
            Self::Timeout { .. } => "timeout",
            Self::Internal { .. } => "internal",
        }
    }
}

/// Commands to a circuit task.
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
    /// Extend the built circuit by one hop (EXTEND).
    Extend {
        /// The next hop.
        hop: HopSpec,
        /// Where the outcome goes.
        reply: oneshot::Sender<Result<(), BuildFailure>>,
    },
}

/// State readable without asking the task.
#[derive(Debug, Default)]
pub(crate) struct CircuitShared {
    /// Hops built so far (0 until the first hop answered CREATE).
    hops: AtomicUsize,
    /// The task has ended: the circuit is gone.
    closed: AtomicBool,
    /// Why the circuit was destroyed, once it was.
    destroyed: OnceLock<DestroyReason>,
    /// Notified when the task ends.
    ended: Notify,
}

/// What a driver is started with besides its link and path.
pub(crate) struct DriverOptions {
    /// The circuit's local id (logs only).
    pub(crate) id: u64,
    /// Longest wait for each CREATED or EXTENDED.
    pub(crate) build_timeout: Duration,
    /// When the build began (the dial included), for the build-time measurement.
    pub(crate) started: Instant,
    /// Where streams and bytes are counted.
    pub(crate) metrics: Metrics,
    /// Called once when the task ends, whatever the reason.
    pub(crate) on_end: Option<Box<dyn FnOnce() + Send>>,
}

/// A client circuit driven by its own task. Clones share the circuit; the circuit is destroyed
/// (DESTROY FINISHED) once every clone is dropped.
#[derive(Debug, Clone)]
pub struct CircuitHandle {
    commands: mpsc::Sender<CircuitCommand>,
    shared: Arc<CircuitShared>,
}

impl CircuitHandle {
    /// Opens a circuit stream to the first hop of `path` over `control`, then builds the
    /// circuit through every hop of `path` (CREATE, then EXTEND for each further hop), each
    /// step bounded by `build_timeout`.
    pub async fn build(
        control: &mut StreamControl,
        path: Vec<HopSpec>,
        build_timeout: Duration,
    ) -> Result<Self, BuildFailure> {
        let options = DriverOptions {
            id: 0,
            build_timeout,
            started: Instant::now(),
            metrics: Metrics::new(),
            on_end: None,
        };
        build(control, path, options)
            .await
            .map(|(handle, _)| handle)
    }

    /// Extends the circuit by `hop` and waits for EXTENDED. A refusal
    /// ([`BuildFailure::ExtendRefused`]) leaves the circuit as it was.
    pub async fn extend(&self, hop: HopSpec) -> Result<(), BuildFailure> {
        let hops_built = self.hops();
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(CircuitCommand::Extend { hop, reply })
            .await
            .is_err()
        {
            return Err(self.gone(hops_built));
        }
        answer.await.unwrap_or_else(|_| Err(self.gone(hops_built)))
    }

    /// Opens a stream to `host:port` at the exit and waits for CONNECTED; the exit's END comes
    /// back as [`StreamFailure::End`]. Dropping the stream closes it (END DONE).
    pub async fn connect(&self, host: Host, port: u16) -> Result<DataStream, StreamFailure> {
        let (mut handle, end) = stream_pair();
        self.send(CircuitCommand::Open { host, port, end }).await?;
        handle.wait_connected().await?;
        Ok(handle.into_data_stream())
    }

    /// Asks the exit to resolve `host` (a name, or an address for a reverse lookup).
    pub async fn resolve(&self, host: Host) -> Result<Vec<ResolvedAnswer>, StreamFailure> {
        let (reply, answer) = oneshot::channel();
        self.send(CircuitCommand::Resolve { host, reply }).await?;
        answer.await.unwrap_or(Err(StreamFailure::CircuitFailed))
    }

    /// Hops built so far.
    pub fn hops(&self) -> usize {
        self.shared.hops.load(Ordering::Relaxed)
    }

    /// Why the circuit was destroyed, if it was (by a relay, by the link, or by us).
    pub fn destroyed(&self) -> Option<DestroyReason> {
        self.shared.destroyed.get().copied()
    }

    /// Whether the circuit's task has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Relaxed)
    }

    /// Lets go of the circuit and waits until its task has ended; if this was the last handle,
    /// the DESTROY is written first.
    pub async fn close(self) {
        let Self { commands, shared } = self;
        drop(commands);
        let ended = shared.ended.notified();
        tokio::pin!(ended);
        ended.as_mut().enable();
        if !shared.closed.load(Ordering::Acquire) {
            ended.await;
        }
    }

    pub(crate) async fn send(&self, cmd: CircuitCommand) -> Result<(), StreamFailure> {
        self.commands
            .send(cmd)
            .await
            .map_err(|_| StreamFailure::CircuitFailed)
    }

    /// The failure to report when the task is gone.
    fn gone(&self, hops_built: usize) -> BuildFailure {
        match self.destroyed() {
            Some(reason) => BuildFailure::Destroyed { hops_built, reason },
            None => BuildFailure::LinkClosed { hops_built },
        }
    }
}

/// Opens a circuit stream to `path[0]` and builds through `path`. Returns the circuit and the
/// build time (from `options.started`, the dial included).
pub(crate) async fn build(
    control: &mut StreamControl,
    path: Vec<HopSpec>,
    options: DriverOptions,
) -> Result<(CircuitHandle, Duration), BuildFailure> {
    let first = path
        .first()
        .ok_or(BuildFailure::Internal { hops_built: 0 })?;
    let guard = PeerId::from_bytes(&first.peer_id).map_err(|_| BuildFailure::Dial)?;
    // The whole build, dial included, is bounded by the build timeout; each CREATE and EXTEND
    // is too (by the state machine), so a hop that never answers is noticed without this.
    let deadline = tokio::time::Instant::from_std(options.started + options.build_timeout);
    // Only at the addresses its signed descriptor lists (specs/04 §6.3): never over a
    // connection the swarm made elsewhere, nor at an address Kademlia or identify learned.
    let guard_addrs: Vec<Multiaddr> = first
        .addrs
        .iter()
        .filter_map(|a| Multiaddr::try_from(a.clone()).ok())
        .collect();
    let link = tokio::time::timeout_at(
        deadline,
        control.open_stream_at(guard, &guard_addrs, CIRCUIT_PROTOCOL),
    )
    .await
    .map_err(|_| BuildFailure::Timeout { hops_built: 0 })?
    .map_err(|_| BuildFailure::Dial)?;
    let id = options.id;
    trace!(circuit = id, since_start = ?options.started.elapsed(), "stream to the first hop open");
    let (handle, built) = spawn(link, path, options)?;
    match tokio::time::timeout_at(deadline, built).await {
        Ok(Ok(Ok(took))) => Ok((handle, took)),
        Ok(Ok(Err(failure))) => Err(failure),
        Ok(Err(_)) => Err(handle.gone(handle.hops())),
        Err(_) => Err(BuildFailure::Timeout {
            hops_built: handle.hops(),
        }),
    }
}

/// Starts a circuit task over `link` (a fresh circuit stream to `path[0]`) that builds the
/// circuit through `path`. The receiver resolves with the build time once every hop answered,
/// or with the failure.
pub(crate) fn spawn<L>(
    link: L,
    path: Vec<HopSpec>,
    options: DriverOptions,
) -> Result<
    (
        CircuitHandle,
        oneshot::Receiver<Result<Duration, BuildFailure>>,
    ),
    BuildFailure,
>
where
    L: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut path = VecDeque::from(path);
    let first = path
        .pop_front()
        .ok_or(BuildFailure::Internal { hops_built: 0 })?;
    let now = Instant::now();
    let circ = ClientCircuit::new(
        &first,
        shallot_proto::ClientConfig {
            build_timeout: options.build_timeout,
            ..shallot_proto::ClientConfig::default()
        },
        now,
    )
    .map_err(|_| BuildFailure::Internal { hops_built: 0 })?;
    let (commands, commands_rx) = mpsc::channel(CIRCUIT_COMMANDS);
    let (built_tx, built) = oneshot::channel();
    let shared = Arc::new(CircuitShared::default());
    let mut wbuf = Vec::with_capacity(WRITE_BATCH_MAX);
    wbuf.extend_from_slice(&ClientCircuit::preamble());
    let mut driver = Driver {
        id: options.id,
        circ,
        link,
        goal: path,
        started: options.started,
        waiter: Some(BuildWaiter::Initial(built_tx)),
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
        metrics: options.metrics,
        counted_open: false,
    };
    let on_end = options.on_end;
    tokio::spawn(async move {
        futures::future::poll_fn(|cx| driver.poll_drive(cx)).await;
        driver.finish();
        if let Some(on_end) = on_end {
            on_end();
        }
    });
    Ok((CircuitHandle { commands, shared }, built))
}

/// Who waits for the hops being added.
enum BuildWaiter {
    /// The build of the whole initial path: answered with the build time.
    Initial(oneshot::Sender<Result<Duration, BuildFailure>>),
    /// One [`CircuitCommand::Extend`].
    Extend(oneshot::Sender<Result<(), BuildFailure>>),
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
    /// Hops still to add, in order.
    goal: VecDeque<HopSpec>,
    started: Instant,
    /// Who waits for the hops of `goal` (none once they were added or failed).
    waiter: Option<BuildWaiter>,
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

    /// After the loop: fail everything still waiting, and tell whoever waits for the end.
    fn finish(&mut self) {
        if !self.circ.is_closed() {
            self.circ.handle_link_closed(Instant::now());
        }
        self.handle_events();
        self.mark_over();
        self.shared.closed.store(true, Ordering::Release);
        self.shared.ended.notify_waiters();
        debug!(circuit = self.id, "circuit task ended");
    }

    /// The circuit is over: fails whatever waits on it, marks it closed for the manager and
    /// takes it out of the open-circuits gauge (once).
    fn mark_over(&mut self) {
        self.fail_all();
        if self.counted_open {
            self.counted_open = false;
            self.metrics.circuits_open.dec();
        }
    }

    fn fail_all(&mut self) {
        let failure = self.close_failure();
        self.fail_build(failure);
        for (_, slot) in std::mem::take(&mut self.slots) {
            if let Some(tx) = slot.connected {
                let _ = tx.send(Err(StreamFailure::CircuitFailed));
            }
            self.metrics.streams_open.dec();
        }
        for (_, tx) in self.resolves.drain() {
            let _ = tx.send(Err(StreamFailure::CircuitFailed));
        }
    }

    /// Why a build in progress failed, now that the circuit is closed.
    fn close_failure(&self) -> BuildFailure {
        let hops_built = self.circ.hops();
        match self.circ.close_error() {
            Some(err) if err.kind() == ErrorKind::Timeout => BuildFailure::Timeout { hops_built },
            Some(ProtoError::Destroyed(reason)) => BuildFailure::Destroyed {
                hops_built,
                reason: *reason,
            },
            Some(ProtoError::LinkClosed) => BuildFailure::LinkClosed { hops_built },
            // No error of ours: the peer sent DESTROY.
            None => match self.shared.destroyed.get() {
                Some(reason) => BuildFailure::Destroyed {
                    hops_built,
                    reason: *reason,
                },
                None => BuildFailure::Internal { hops_built },
            },
            Some(_) => BuildFailure::Internal { hops_built },
        }
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
                }
                Err(err) => {
                    debug!(circuit = self.id, %err, "cannot open a stream here");
                    let _ = end.connected.send(Err(StreamFailure::CircuitFailed));
                }
            },
            CircuitCommand::Resolve { host, reply } => match self.circ.resolve(host) {
                Ok(id) => {
                    self.resolves.insert(id.0, reply);
                }
                Err(_) => {
                    let _ = reply.send(Err(StreamFailure::CircuitFailed));
                }
            },
            CircuitCommand::Extend { hop, reply } => {
                let hops_built = self.circ.hops();
                if self.waiter.is_some() || self.circ.is_building() {
                    // One build at a time: the caller asked while hops were being added.
                    let _ = reply.send(Err(BuildFailure::Internal { hops_built }));
                } else if let Err(err) = self.circ.extend(&hop, Instant::now()) {
                    debug!(circuit = self.id, %err, "cannot extend");
                    let _ = reply.send(Err(BuildFailure::Internal { hops_built }));
                } else {
                    self.waiter = Some(BuildWaiter::Extend(reply));
                }
            }
        }
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
                    self.link_failed();
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
                if let Some(next) = self.goal.pop_front() {
                    if let Err(err) = self.circ.extend(&next, Instant::now()) {
                        debug!(circuit = self.id, %err, "cannot extend");
                        self.fail_build(BuildFailure::Internal { hops_built: n });
                    }
                } else {
                    self.build_done();
                }
            }
            ClientEvent::ExtendFailed { reason } => {
                let hop = self.circ.hops() + 1;
                debug!(circuit = self.id, hop, ?reason, "extend refused");
                self.fail_build(BuildFailure::ExtendRefused { hop, reason });
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
            }
            ClientEvent::Destroyed { reason } => {
                debug!(circuit = self.id, ?reason, "circuit destroyed");
                let _ = self.shared.destroyed.set(reason);
                if self.counted_open {
                    // A built circuit lost (build failures are counted by whoever built).
                    let label = match self.circ.close_error() {
                        Some(ProtoError::ClosedLocally) => None,
                        Some(ProtoError::LinkClosed) => Some("link_closed"),
                        // No error of ours: the peer sent DESTROY.
                        None | Some(ProtoError::Destroyed(_)) => Some("destroyed"),
                        Some(_) => Some("protocol"),
                    };
                    if let Some(label) = label {
                        self.metrics.circuit_failure(label);
                    }
                }
                self.mark_over();
            }
            _ => {}
        }
    }

    /// Every hop of the goal was added: tell the waiter.
    fn build_done(&mut self) {
        match self.waiter.take() {
            Some(BuildWaiter::Initial(tx)) => {
                self.metrics.circuits_open.inc();
                self.counted_open = true;
                let _ = tx.send(Ok(self.started.elapsed()));
            }
            Some(BuildWaiter::Extend(tx)) => {
                let _ = tx.send(Ok(()));
            }
            None => {}
        }
    }

    /// The hops being added will not be: tell the waiter, forget the rest of the goal.
    fn fail_build(&mut self, failure: BuildFailure) {
        self.goal.clear();
        match self.waiter.take() {
            Some(BuildWaiter::Initial(tx)) => {
                let _ = tx.send(Err(failure));
            }
            Some(BuildWaiter::Extend(tx)) => {
                let _ = tx.send(Err(failure));
            }
            None => {}
        }
    }

    fn remove_slot(&mut self, id: u16) {
        if self.slots.remove(&id).is_some() {
            self.metrics.streams_open.dec();
        }
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
            }
            Fate::Forgotten => {
                self.metrics.streams_open.dec();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_build_failure_says_how_far_it_got_and_has_a_label() {
        let reason = DestroyReason::ConnectFailed;
        let table = [
            (BuildFailure::Dial, 0, "dial"),
            (
                BuildFailure::ExtendRefused { hop: 3, reason },
                2,
                "extend_refused",
            ),
            (
                BuildFailure::Destroyed {
                    hops_built: 0,
                    reason: DestroyReason::ResourceLimit,
                },
                0,
                "destroyed",
            ),
            (BuildFailure::LinkClosed { hops_built: 1 }, 1, "link_closed"),
            (BuildFailure::Timeout { hops_built: 2 }, 2, "timeout"),
            (BuildFailure::Internal { hops_built: 1 }, 1, "internal"),
        ];
        let mut labels = std::collections::HashSet::new();
        for (failure, hops, label) in table {
            assert_eq!(failure.hops_built(), hops, "{failure:?}");
            assert_eq!(failure.label(), label, "{failure:?}");
            labels.insert(label);
        }
        assert_eq!(labels.len(), 6, "one label per kind");
    }
}
