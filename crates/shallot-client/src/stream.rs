//! The two ends of a stream between an application connection and its circuit task.
//!
//! Each direction is a bounded channel of chunks, one pair per stream (specs/08 §3): a reader
//! that stops reading fills only its own channel, after which the circuit task stops reading
//! that stream out of the circuit, stops granting it credit, and only that stream's sender at
//! the exit stalls.

use std::pin::Pin;
use std::task::{Context, Poll};

use shallot_cell::Host;
use shallot_proto::OPTIMISTIC_DATA_MAX;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::PollSender;

use crate::err::StreamFailure;
use crate::manager::Lease;

/// Largest chunk moved through a stream's channels at once (bytes).
pub const APP_CHUNK: usize = 16 * 1024;
/// Chunks each direction of a stream buffers between the application and the circuit task.
/// With [`APP_CHUNK`] that is 128 KiB per direction, one stream window (specs/03 §11.6).
pub const APP_CHANNEL_CHUNKS: usize = 8;

/// How long a stream stays open for the exit's answer after the application's EOF.
pub const HALF_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// The circuit task's end of a stream.
#[derive(Debug)]
pub(crate) struct CircuitEnd {
    /// Bytes from the exit, toward the application.
    pub(crate) to_app: mpsc::Sender<Vec<u8>>,
    /// Bytes from the application, toward the exit.
    pub(crate) from_app: mpsc::Receiver<Vec<u8>>,
    /// Resolves (with an error) when the application dropped its end.
    pub(crate) gone: oneshot::Receiver<()>,
    /// Where to say whether the exit connected.
    pub(crate) connected: oneshot::Sender<Result<Host, StreamFailure>>,
}

/// The application's end of a stream.
#[derive(Debug)]
pub(crate) struct StreamHandle {
    to_circ: mpsc::Sender<Vec<u8>>,
    from_circ: mpsc::Receiver<Vec<u8>>,
    connected: Option<oneshot::Receiver<Result<Host, StreamFailure>>>,
    /// Dropped with the handle: tells the circuit task the application is gone.
    _alive: oneshot::Sender<()>,
    /// The stream's place on its circuit in the manager's pool, given back with the handle.
    lease: Option<Lease>,
}

/// A new stream's two ends.
pub(crate) fn stream_pair() -> (StreamHandle, CircuitEnd) {
    let (to_app, from_circ) = mpsc::channel(APP_CHANNEL_CHUNKS);
    let (to_circ, from_app) = mpsc::channel(APP_CHANNEL_CHUNKS);
    let (alive, gone) = oneshot::channel();
    let (connected_tx, connected_rx) = oneshot::channel();
    (
        StreamHandle {
            to_circ,
            from_circ,
            connected: Some(connected_rx),
            _alive: alive,
            lease: None,
        },
        CircuitEnd {
            to_app,
            from_app,
            gone,
            connected: connected_tx,
        },
    )
}

impl StreamHandle {
    /// Keeps `lease` until the stream is over.
    pub(crate) fn hold(&mut self, lease: Lease) {
        self.lease = Some(lease);
    }

    /// Waits for the exit's answer (CONNECTED or END), sending nothing meanwhile.
    pub(crate) async fn wait_connected(&mut self) -> Result<Host, StreamFailure> {
        match self.connected.take() {
            Some(answer) => answer.await.unwrap_or(Err(StreamFailure::CircuitFailed)),
            None => Err(StreamFailure::CircuitFailed),
        }
    }

    /// The handle as a byte stream for a program of our own (tests, embedders).
    pub(crate) fn into_data_stream(self) -> DataStream {
        DataStream {
            to_circ: PollSender::new(self.to_circ),
            from_circ: self.from_circ,
            unread: Vec::new(),
            unread_pos: 0,
            _alive: self._alive,
            _lease: self.lease,
        }
    }

    /// Waits for the exit's answer (CONNECTED or END). First sends `early` (bytes an earlier
    /// attempt already read), then reads what the application sends meanwhile and sends it
    /// as optimistic data, keeping a copy in `early` so a retry on another circuit can send
    /// it again; at most [`OPTIMISTIC_DATA_MAX`] bytes are read this way (specs/03 §11.5,
    /// specs/08 §5).
    pub(crate) async fn connected<S>(
        &mut self,
        io: &mut S,
        early: &mut Vec<u8>,
    ) -> Result<Host, StreamFailure>
    where
        S: AsyncRead + Unpin,
    {
        let Some(mut answer) = self.connected.take() else {
            return Err(StreamFailure::CircuitFailed);
        };
        for chunk in early.chunks(APP_CHUNK) {
            if self.to_circ.send(chunk.to_vec()).await.is_err() {
                return Err(StreamFailure::CircuitFailed);
            }
        }
        let mut buf = vec![0u8; APP_CHUNK.min(OPTIMISTIC_DATA_MAX)];
        let mut reading = true;
        loop {
            let room = OPTIMISTIC_DATA_MAX
                .saturating_sub(early.len())
                .min(buf.len());
            tokio::select! {
                biased;
                r = &mut answer => {
                    return r.unwrap_or(Err(StreamFailure::CircuitFailed));
                }
                n = io.read(&mut buf[..room]), if reading && room > 0 => {
                    match n {
                        Ok(0) | Err(_) => reading = false,
                        Ok(n) => {
                            early.extend_from_slice(&buf[..n]);
                            if self.to_circ.send(buf[..n].to_vec()).await.is_err() {
                                reading = false;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Copies bytes both ways between `io` and the stream until the exit ends the stream (or
    /// the circuit dies) or the application resets. An application's EOF does not end the
    /// stream (the protocol has no half-close): bytes from the exit keep flowing until it
    /// ends. Dropping the handle at the end closes the stream (END) if it is still open.
    pub(crate) async fn pump<S>(self, io: S)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (mut rd, mut wr) = tokio::io::split(io);
        let Self {
            to_circ,
            mut from_circ,
            _alive,
            lease,
            ..
        } = self;
        let up = async move {
            let mut buf = vec![0u8; APP_CHUNK];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) => return (to_circ, true),
                    Err(_) => return (to_circ, false),
                    Ok(n) => {
                        if to_circ.send(buf[..n].to_vec()).await.is_err() {
                            return (to_circ, true);
                        }
                    }
                }
            }
        };
        let down = async move {
            while let Some(chunk) = from_circ.recv().await {
                if wr.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            let _ = wr.shutdown().await;
        };
        let grace = tokio::time::sleep(HALF_CLOSE_GRACE);
        tokio::pin!(up, down, grace);
        let mut keep = None;
        loop {
            tokio::select! {
                (sender, clean) = &mut up, if keep.is_none() => {
                    if !clean {
                        break;
                    }
                    keep = Some(sender);
                    grace.as_mut().reset(tokio::time::Instant::now() + HALF_CLOSE_GRACE);
                }
                () = &mut down => break,
                // The application's EOF was long ago and the exit still has not ended.
                () = &mut grace, if keep.is_some() => break,
            }
        }
        drop(keep);
        drop(lease);
    }
}

/// A stream to a destination through a circuit, as a tokio byte stream (what
/// [`CircuitHandle::connect`](crate::CircuitHandle::connect) gives). Writes are cut into
/// chunks of at most [`APP_CHUNK`] bytes; shutting down the write side only stops writing (the
/// protocol has no half-close: the exit's bytes keep coming until it ends the stream). Dropping
/// it closes the stream (END DONE).
#[derive(Debug)]
pub struct DataStream {
    to_circ: PollSender<Vec<u8>>,
    from_circ: mpsc::Receiver<Vec<u8>>,
    /// A chunk from the circuit not yet read whole, and how much of it was.
    unread: Vec<u8>,
    unread_pos: usize,
    _alive: oneshot::Sender<()>,
    _lease: Option<Lease>,
}

impl AsyncRead for DataStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.unread_pos == self.unread.len() {
            match self.from_circ.poll_recv(cx) {
                Poll::Ready(Some(chunk)) => {
                    self.unread = chunk;
                    self.unread_pos = 0;
                }
                // The stream ended (or the circuit is gone): EOF.
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        let this = &mut *self;
        let n = buf.remaining().min(this.unread.len() - this.unread_pos);
        buf.put_slice(&this.unread[this.unread_pos..this.unread_pos + n]);
        this.unread_pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for DataStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        match self.to_circ.poll_reserve(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(_)) => Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
            Poll::Ready(Ok(())) => {
                let n = buf.len().min(APP_CHUNK);
                match self.to_circ.send_item(buf[..n].to_vec()) {
                    Ok(()) => Poll::Ready(Ok(n)),
                    Err(_) => Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.to_circ.close();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pump_moves_bytes_both_ways_and_ends_with_the_exit() {
        let (handle, mut end) = stream_pair();
        let (app, mut peer) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(handle.pump(app));
        peer.write_all(b"hello").await.expect("write");
        assert_eq!(end.from_app.recv().await.expect("chunk"), b"hello");
        end.to_app.send(b"world".to_vec()).await.expect("send");
        drop(end.to_app);
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"world");
        task.await.expect("pump");
        // The handle is gone: the circuit side sees it.
        assert!(end.gone.await.is_err());
    }

    #[tokio::test]
    async fn app_eof_keeps_the_stream_open_for_the_answer() {
        let (handle, mut end) = stream_pair();
        let (app, mut peer) = tokio::io::duplex(1024);
        let task = tokio::spawn(handle.pump(app));
        peer.write_all(b"req").await.expect("write");
        peer.shutdown().await.expect("half-close");
        assert_eq!(end.from_app.recv().await.expect("chunk"), b"req");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(
            !task.is_finished(),
            "EOF from the app must not end the stream"
        );
        end.to_app.send(b"answer".to_vec()).await.expect("send");
        drop(end.to_app);
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"answer");
        task.await.expect("pump");
    }

    #[tokio::test]
    async fn optimistic_data_is_bounded_and_sent_before_connected() {
        let (mut handle, mut end) = stream_pair();
        let (mut app, mut peer) = tokio::io::duplex(64 * 1024);
        peer.write_all(&vec![7u8; OPTIMISTIC_DATA_MAX + 5000])
            .await
            .expect("write");
        let waiter = tokio::spawn(async move {
            let mut early = Vec::new();
            let r = handle.connected(&mut app, &mut early).await;
            assert_eq!(early.len(), OPTIMISTIC_DATA_MAX);
            (r, handle, app)
        });
        let mut got = 0;
        while got < OPTIMISTIC_DATA_MAX {
            got += end.from_app.recv().await.expect("chunk").len();
        }
        assert_eq!(got, OPTIMISTIC_DATA_MAX);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(end.from_app.try_recv().is_err(), "no more than the bound");
        end.connected
            .send(Ok(Host::V4(std::net::Ipv4Addr::LOCALHOST)))
            .expect("answer");
        let (r, _handle, _app) = waiter.await.expect("join");
        assert_eq!(r, Ok(Host::V4(std::net::Ipv4Addr::LOCALHOST)));
    }

    #[tokio::test]
    async fn a_lost_circuit_fails_the_wait() {
        let (mut handle, end) = stream_pair();
        drop(end);
        let (mut app, _peer) = tokio::io::duplex(16);
        assert_eq!(
            handle.connected(&mut app, &mut Vec::new()).await,
            Err(StreamFailure::CircuitFailed)
        );
    }
}
