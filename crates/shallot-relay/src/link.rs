//! One circuit stream (a hop's link) as two small tasks: a reader that cuts the stream into
//! cells and a writer that writes batches of cells, each behind a bounded channel.
//!
//! The circuit task takes a cell from the reader only while its `RelayCircuit` wants one; the
//! reader then stops reading once its channel is full, which stops the yamux window and so the
//! sender (specs/03 §11.4). Writes are coalesced: the circuit task drains every queued cell into
//! one buffer of at most [`MAX_BATCH_BYTES`] and hands it over as one write (specs/01 §4.3).
//! Reading and writing never wait on each other, so two relays that both write to each other
//! cannot deadlock.

use futures::io::{AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Bytes of cells written at most in one write.
pub const MAX_BATCH_BYTES: usize = 64 * 1024;
/// Cells a link's reader may hold for the circuit task (read ahead of `wants_*`).
pub const READ_AHEAD_CELLS: usize = 32;
/// Batches waiting for a link's writer besides the one being written.
pub const WRITE_QUEUE_BATCHES: usize = 1;
/// Read buffer of a link, in cells.
pub const READ_BUFFER_CELLS: usize = 1;

/// A circuit stream from libp2p-stream.
pub(crate) type Stream = libp2p::Stream;
/// The reading half of a circuit stream, buffered.
pub(crate) type LinkReader = BufReader<ReadHalf<Stream>>;

/// A running link: cells in, batches out.
pub(crate) struct Link {
    /// Whole cells read; `None` from `recv` means the stream ended or failed.
    pub(crate) cells: mpsc::Receiver<Vec<u8>>,
    /// Batches to write; `None` once the link is being closed.
    pub(crate) batches: Option<mpsc::Sender<Vec<u8>>>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

/// Splits a stream into a buffered reader and a writer.
pub(crate) fn split(stream: Stream, cell_len: usize) -> (LinkReader, WriteHalf<Stream>) {
    let (r, w) = stream.split();
    (BufReader::with_capacity(READ_BUFFER_CELLS * cell_len, r), w)
}

impl Link {
    /// Starts the reader and writer tasks of a link whose cells are `cell_len` bytes.
    pub(crate) fn spawn(reader: LinkReader, writer: WriteHalf<Stream>, cell_len: usize) -> Self {
        let (cell_tx, cells) = mpsc::channel(READ_AHEAD_CELLS);
        let (batches, batch_rx) = mpsc::channel(WRITE_QUEUE_BATCHES);
        Self {
            cells,
            batches: Some(batches),
            reader: tokio::spawn(read_cells(reader, cell_len, cell_tx)),
            writer: tokio::spawn(write_batches(writer, batch_rx)),
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

async fn read_cells(mut r: LinkReader, cell_len: usize, tx: mpsc::Sender<Vec<u8>>) {
    loop {
        let mut cell = vec![0u8; cell_len];
        // specs/01 §4.3: a stream that ends inside a cell is a violation; either way the link
        // is gone, which the circuit task learns from the closed channel.
        if r.read_exact(&mut cell).await.is_err() {
            return;
        }
        if tx.send(cell).await.is_err() {
            return;
        }
    }
}

async fn write_batches(mut w: WriteHalf<Stream>, mut rx: mpsc::Receiver<Vec<u8>>) {
    while let Some(batch) = rx.recv().await {
        if w.write_all(&batch).await.is_err() || w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.close().await;
}
