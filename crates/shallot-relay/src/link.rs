//! One circuit stream (a hop's link) as two small tasks: a reader that reads the stream in
//! bulk and hands over runs of whole cells, and a writer that writes batches of cells, each
//! behind a bounded channel.
//!
//! The circuit task takes cells out of a run only while its `RelayCircuit` wants one; it keeps
//! the rest of the run until it does, and takes no new run meanwhile, so the reader stops once
//! its channel is full, which stops the yamux window and so the sender (specs/03 §11.4).
//! Reading in runs rather than cell by cell (specs/01 §4.3) saves a buffer, a channel message
//! and a wake-up per cell. Writes are coalesced: the circuit task takes every queued cell into
//! one buffer and hands it over as one write. Reading and writing never wait on each other, so
//! two relays that both write to each other cannot deadlock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::io::{AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::memory::Waiting;
use crate::traffic::Traffic;

/// Bytes of cells read at most into one run (32 cells of the largest size).
pub const READ_RUN_BYTES: usize = 64 * 1024;
/// Runs a link's reader may hold for the circuit task besides the one it fills and the one
/// the circuit task works through: the read-ahead is at most `(READ_AHEAD_RUNS + 2) *
/// READ_RUN_BYTES` per link.
pub const READ_AHEAD_RUNS: usize = 1;
/// Batches waiting for a link's writer besides the one being written.
pub const WRITE_QUEUE_BATCHES: usize = 1;
/// Read buffer of a link, in cells: only the preamble and the first cell go through it (the
/// reader bypasses it for larger reads).
pub const READ_BUFFER_CELLS: usize = 1;

/// Spare buffers a link keeps of each kind (runs, batches).
pub const SPARE_BUFFERS: usize = 2;
/// Smallest write buffer (bytes of capacity) worth keeping as a spare.
pub const SPARE_MIN_BATCH: usize = 16 * 1024;
/// How long a link's reader waits without a byte before it frees the link's spare buffers, so
/// a circuit that went quiet holds no more than an idle one.
pub const SPARE_IDLE: Duration = Duration::from_secs(1);

/// A circuit stream from libp2p-stream.
pub(crate) type Stream = libp2p::Stream;
/// The reading half of a circuit stream, buffered.
pub(crate) type LinkReader = BufReader<ReadHalf<Stream>>;

/// A run of whole cells read from a link, `bytes[pos..end]` not yet handed to the circuit.
pub(crate) struct Run {
    pub(crate) bytes: Vec<u8>,
    pub(crate) pos: usize,
    pub(crate) end: usize,
}

impl Run {
    pub(crate) fn new(bytes: Vec<u8>, end: usize) -> Self {
        Self { bytes, pos: 0, end }
    }
}

/// Spare buffers of one link, shared by its reader, its writer and the circuit task, so that a
/// busy link allocates (and zeroes) nothing per run or batch: without them the allocator gave
/// the memory back and took it again (`brk`, page faults) about once per run, 5 % of the
/// relays' CPU. At most [`SPARE_BUFFERS`] of each kind; emptied after [`SPARE_IDLE`].
#[derive(Clone, Default)]
pub(crate) struct Spares(Arc<SparesShared>);

#[derive(Default)]
struct SparesShared {
    buffers: Mutex<SparesInner>,
    /// Bytes the buffers hold, kept with every change so that the circuit task's memory
    /// account (after each of its wake-ups) reads it without the lock.
    bytes: AtomicUsize,
}

#[derive(Default)]
struct SparesInner {
    /// Read buffers, each at its full length (already zeroed once).
    runs: Vec<Vec<u8>>,
    /// Empty write buffers with their capacity.
    batches: Vec<Vec<u8>>,
}

impl Spares {
    fn with<T>(&self, f: impl FnOnce(&mut SparesInner) -> T) -> T {
        let mut inner = self
            .0
            .buffers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let out = f(&mut inner);
        let bytes = inner.runs.iter().map(Vec::len).sum::<usize>()
            + inner.batches.iter().map(Vec::capacity).sum::<usize>();
        self.0.bytes.store(bytes, Ordering::Relaxed);
        out
    }

    /// A read buffer of `len` bytes.
    fn run(&self, len: usize) -> Vec<u8> {
        match self.with(|s| s.runs.pop()) {
            Some(b) if b.len() == len => b,
            _ => vec![0u8; len],
        }
    }

    pub(crate) fn give_run(&self, b: Vec<u8>) {
        self.with(|s| {
            if s.runs.len() < SPARE_BUFFERS {
                s.runs.push(b);
            }
        });
    }

    /// An empty write buffer (with room if one was given back).
    pub(crate) fn batch(&self) -> Vec<u8> {
        self.with(|s| s.batches.pop()).unwrap_or_default()
    }

    fn give_batch(&self, mut b: Vec<u8>) {
        // A small batch (a CREATED, a few control cells) is not worth keeping: the reader
        // frees spares only when it waits while holding some, and an idle circuit's reader
        // is already waiting when its CREATED is written.
        if b.capacity() < SPARE_MIN_BATCH {
            return;
        }
        b.clear();
        self.with(|s| {
            if s.batches.len() < SPARE_BUFFERS {
                s.batches.push(b);
            }
        });
    }

    fn is_empty(&self) -> bool {
        self.with(|s| s.runs.is_empty() && s.batches.is_empty())
    }

    /// Bytes the spare buffers hold.
    fn bytes(&self) -> usize {
        self.0.bytes.load(Ordering::Relaxed)
    }

    fn clear(&self) {
        self.with(|s| {
            s.runs = Vec::new();
            s.batches = Vec::new();
        });
    }
}

/// A running link: runs of cells in, batches out.
pub(crate) struct Link {
    /// Runs of whole cells (a buffer and the end of its cells); `None` from `recv` means the
    /// stream ended or failed.
    pub(crate) runs: mpsc::Receiver<(Vec<u8>, usize)>,
    /// The run being handed to the circuit, cell by cell, while it wants cells.
    pub(crate) run: Option<Run>,
    /// Batches to write; `None` once the link is being closed.
    pub(crate) batches: Option<mpsc::Sender<Vec<u8>>>,
    /// Buffers for runs and batches.
    pub(crate) spares: Spares,
    /// Bytes of the runs the reader makes.
    run_len: usize,
    /// Bytes handed to the writer and not yet written (the writer counts them down).
    unwritten: Arc<AtomicUsize>,
    /// What `held` last saw of `unwritten`, to tell when the writer made progress.
    last_unwritten: usize,
    /// A cell was taken from the run in hand since `held` last looked.
    took_cell: bool,
    /// Since when the runs read from the link have waited for the circuit.
    runs_waiting: Waiting,
    /// Since when the bytes handed to the writer have waited.
    unwritten_waiting: Waiting,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

/// Splits a stream into a buffered reader and a writer.
pub(crate) fn split(stream: Stream, cell_len: usize) -> (LinkReader, WriteHalf<Stream>) {
    let (r, w) = stream.split();
    (BufReader::with_capacity(READ_BUFFER_CELLS * cell_len, r), w)
}

impl Link {
    /// Starts the reader and writer tasks of a link whose cells are `cell_len` bytes; both
    /// count and pace their bytes with `traffic`.
    pub(crate) fn spawn(
        reader: LinkReader,
        writer: WriteHalf<Stream>,
        cell_len: usize,
        traffic: Arc<Traffic>,
    ) -> Self {
        let (run_tx, runs) = mpsc::channel(READ_AHEAD_RUNS);
        let (batches, batch_rx) = mpsc::channel(WRITE_QUEUE_BATCHES);
        let spares = Spares::default();
        let unwritten = Arc::new(AtomicUsize::new(0));
        Self {
            runs,
            run: None,
            batches: Some(batches),
            spares: spares.clone(),
            run_len: run_len(cell_len),
            unwritten: Arc::clone(&unwritten),
            last_unwritten: 0,
            took_cell: false,
            runs_waiting: Waiting::default(),
            unwritten_waiting: Waiting::default(),
            reader: tokio::spawn(read_runs(
                reader,
                cell_len,
                run_tx,
                spares.clone(),
                Arc::clone(&traffic),
            )),
            writer: tokio::spawn(write_batches(writer, batch_rx, spares, unwritten, traffic)),
        }
    }

    /// Hands a batch to the writer; `false` if the writer has no room or is gone (the batch is
    /// dropped then).
    pub(crate) fn hand_over(&self, batch: Vec<u8>) -> bool {
        let Some(tx) = self.batches.as_ref() else {
            return false;
        };
        let len = batch.len();
        // Counted before the send: the writer may write it and count it down at once.
        self.unwritten.fetch_add(len, Ordering::Relaxed);
        let handed = tx.try_send(batch).is_ok();
        if !handed {
            self.unwritten.fetch_sub(len, Ordering::Relaxed);
        }
        handed
    }

    /// The bytes this link holds for its circuit (runs read and not yet handled, batches not
    /// yet written, spare buffers) and since when the oldest of them has waited
    /// (crate::memory).
    pub(crate) fn held(&mut self, now: Instant) -> (usize, Option<Instant>) {
        // A full channel means the reader waits on it with one more run in hand.
        let queued_runs = self.runs.len() + usize::from(self.runs.len() >= READ_AHEAD_RUNS);
        let in_hand = self.run.as_ref().map_or(0, |r| r.bytes.len());
        if self.took_cell {
            self.took_cell = false;
            self.runs_waiting.progressed(now);
        }
        self.runs_waiting.note(in_hand > 0 || queued_runs > 0, now);
        let unwritten = self.unwritten.load(Ordering::Relaxed);
        if unwritten < self.last_unwritten {
            self.unwritten_waiting.progressed(now);
        }
        self.last_unwritten = unwritten;
        self.unwritten_waiting.note(unwritten > 0, now);
        let bytes = in_hand + queued_runs * self.run_len + unwritten + self.spares.bytes();
        let oldest =
            crate::memory::earliest(self.runs_waiting.since(), self.unwritten_waiting.since());
        (bytes, oldest)
    }

    /// Whether the link has cells in hand (a run not yet worked through).
    pub(crate) fn has_run(&self) -> bool {
        self.run.is_some()
    }

    /// The next cell of the run in hand, if any; the run's buffer goes back to the spares
    /// once worked through.
    pub(crate) fn next_cell(&mut self, cell_len: usize) -> Option<&mut [u8]> {
        let (start, end) = {
            let run = self.run.as_ref()?;
            (run.pos, run.pos + cell_len)
        };
        if cell_len == 0 || self.run.as_ref().is_some_and(|r| end > r.end) {
            self.settle();
            return None;
        }
        let run = self.run.as_mut()?;
        run.pos = end;
        self.took_cell = true;
        Some(&mut run.bytes[start..end])
    }

    /// Gives the run in hand back if it was worked through (or cannot hold another cell).
    pub(crate) fn settle(&mut self) {
        if let Some(run) = self.run.take() {
            if run.pos >= run.end || run.pos >= run.bytes.len() {
                self.spares.give_run(run.bytes);
            } else {
                self.run = Some(run);
            }
        }
    }

    /// Stops reading, lets the writer write what it was given (at most `grace`), closes the
    /// stream.
    pub(crate) async fn close(mut self, grace: std::time::Duration) {
        self.reader.abort();
        self.batches = None;
        let abort = self.writer.abort_handle();
        if tokio::time::timeout(grace, &mut self.writer).await.is_err() {
            abort.abort();
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // A link dropped without `close` (e.g. the relay shuts down) stops at once.
        self.reader.abort();
        if self.batches.is_some() {
            self.writer.abort();
        }
    }
}

/// Reads the stream in runs of whole cells. It waits for bytes with a one-cell buffer, so an
/// idle circuit holds no run buffer; once bytes arrive it takes a run buffer and reads what
/// else is already there without waiting, then hands over the whole cells and keeps the
/// partial one.
async fn read_runs(
    mut r: LinkReader,
    cell_len: usize,
    tx: mpsc::Sender<(Vec<u8>, usize)>,
    spares: Spares,
    traffic: Arc<Traffic>,
) {
    let run_len = run_len(cell_len);
    let mut head = vec![0u8; cell_len];
    // Bytes of a partial cell carried over in `head`.
    let mut carry = 0;
    loop {
        // specs/01 §4.3: a stream that ends inside a cell is a violation; either way the link
        // is gone, which the circuit task learns from the closed channel.
        let read = if spares.is_empty() {
            r.read(&mut head[carry..]).await
        } else {
            match tokio::time::timeout(SPARE_IDLE, r.read(&mut head[carry..])).await {
                Ok(read) => read,
                Err(_) => {
                    spares.clear();
                    r.read(&mut head[carry..]).await
                }
            }
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut run = spares.run(run_len);
        let mut filled = carry + n;
        run[..filled].copy_from_slice(&head[..filled]);
        let mut ended = false;
        while filled < run_len {
            match r.read(&mut run[filled..]).now_or_never() {
                Some(Ok(0) | Err(_)) => {
                    ended = true;
                    break;
                }
                Some(Ok(n)) => filled += n,
                None => break,
            }
        }
        // The bytes of this read, not the carried ones: those were counted when they came.
        let carried = carry;
        let whole = filled - filled % cell_len;
        carry = filled - whole;
        head[..carry].copy_from_slice(&run[whole..filled]);
        // Waits here when the bandwidth is limited: the stream's flow control then slows the
        // sender.
        traffic.received(filled - carried).await;
        if whole > 0 {
            if tx.send((run, whole)).await.is_err() {
                return;
            }
        } else {
            spares.give_run(run);
        }
        if ended {
            return;
        }
    }
}

/// Bytes of the runs a link reads cells of `cell_len` bytes in: whole cells, at most
/// [`READ_RUN_BYTES`] (at least one cell).
fn run_len(cell_len: usize) -> usize {
    (READ_RUN_BYTES / cell_len.max(1)).max(1) * cell_len
}

async fn write_batches(
    mut w: WriteHalf<Stream>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    spares: Spares,
    unwritten: Arc<AtomicUsize>,
    traffic: Arc<Traffic>,
) {
    loop {
        // As the reader does: spares held through a quiet second are freed (the reader may
        // have started waiting before this writer gave a batch back).
        let next = if spares.is_empty() {
            rx.recv().await
        } else {
            match tokio::time::timeout(SPARE_IDLE, rx.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    spares.clear();
                    rx.recv().await
                }
            }
        };
        let Some(batch) = next else {
            break;
        };
        traffic.sending(batch.len()).await;
        if w.write_all(&batch).await.is_err() || w.flush().await.is_err() {
            return;
        }
        unwritten.fetch_sub(batch.len(), Ordering::Relaxed);
        spares.give_batch(batch);
    }
    let _ = w.close().await;
}
