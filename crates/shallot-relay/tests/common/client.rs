//! A client-side driver: a `ClientCircuit` run over a real libp2p circuit stream, with batched
//! writes, exposing build, extend, and open/read/write/close of streams. The client crate will
//! lift this; it is kept free of test assertions for that reason.
//!
//! Two tasks move bytes: a reader that cuts the stream into cells and hands each to the circuit,
//! and a writer that drains every queued cell into one buffer (at most [`MAX_BATCH`]) and
//! writes it at once. The application calls lock the circuit briefly, then wake the writer.
//! Nothing here waits without a caller's timeout around it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::io::{AsyncReadExt, AsyncWriteExt};
use shallot_cell::{DestroyReason, EndReason, Host, ResolvedAnswer, StreamId};
use shallot_p2p::{CIRCUIT_PROTOCOL, PeerId, StreamControl};
use shallot_proto::{ClientCircuit, ClientConfig, ClientEvent, HopSpec, ProtoError};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Largest write of cells at once.
pub const MAX_BATCH: usize = 64 * 1024;
/// How often the writer checks the circuit's build timeout when nothing else happens.
const TIMER_TICK: Duration = Duration::from_millis(250);

/// Why a driver call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverError {
    /// The stream to the first hop could not be opened or written.
    Link(String),
    /// The circuit is gone, with the DESTROY reason.
    Destroyed(DestroyReason),
    /// The last hop answered the EXTEND with TRUNCATED.
    Truncated(DestroyReason),
    /// The exit ended the stream.
    Ended(EndReason),
    /// The circuit refused the call.
    Proto(String),
}

#[derive(Default)]
struct State {
    hops: usize,
    extend_failures: Vec<DestroyReason>,
    connected: HashMap<u16, Host>,
    ended: HashMap<u16, EndReason>,
    resolved: HashMap<u16, Vec<ResolvedAnswer>>,
    destroyed: Option<DestroyReason>,
}

struct Inner {
    circ: ClientCircuit,
    state: State,
}

impl Inner {
    fn pump_events(&mut self) {
        while let Some(ev) = self.circ.poll_event() {
            match ev {
                ClientEvent::HopAdded(n) => self.state.hops = n,
                ClientEvent::ExtendFailed { reason } => self.state.extend_failures.push(reason),
                ClientEvent::StreamConnected { stream, addr } => {
                    self.state.connected.insert(stream.0, addr);
                }
                ClientEvent::StreamEnded { stream, reason } => {
                    self.state.ended.insert(stream.0, reason);
                }
                ClientEvent::Resolved { stream, answers } => {
                    self.state.resolved.insert(stream.0, answers);
                }
                ClientEvent::Destroyed { reason } => self.state.destroyed = Some(reason),
                _ => {}
            }
        }
    }
}

struct Shared {
    inner: Mutex<Inner>,
    /// Something changed for the application (events, readable bytes, room).
    changed: Notify,
    /// Cells may be waiting for the writer.
    wake_writer: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A client circuit over a libp2p stream. Dropping it stops its tasks (the stream closes).
pub struct ClientDriver {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for ClientDriver {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl ClientDriver {
    /// Opens a circuit stream to `first`, sends CREATE and waits for CREATED (or the refusal).
    pub async fn connect(
        control: &mut StreamControl,
        first: &HopSpec,
    ) -> Result<Self, DriverError> {
        let peer = PeerId::from_bytes(&first.peer_id)
            .map_err(|e| DriverError::Link(format!("bad peer id: {e}")))?;
        let circ = ClientCircuit::new(first, ClientConfig::default(), Instant::now())
            .map_err(|e| DriverError::Proto(e.to_string()))?;
        let mut stream = control
            .open_stream(peer, CIRCUIT_PROTOCOL)
            .await
            .map_err(|e| DriverError::Link(e.to_string()))?;
        stream
            .write_all(&ClientCircuit::preamble())
            .await
            .map_err(|e| DriverError::Link(e.to_string()))?;
        let cell_len = circ.cell_len();
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                circ,
                state: State::default(),
            }),
            changed: Notify::new(),
            wake_writer: Notify::new(),
        });
        let (r, w) = stream.split();
        let tasks = vec![
            tokio::spawn(read_cells(Arc::clone(&shared), r, cell_len)),
            tokio::spawn(write_cells(Arc::clone(&shared), w)),
        ];
        let driver = Self { shared, tasks };
        driver.shared.wake_writer.notify_one();
        driver
            .wait(|i| {
                if i.state.hops >= 1 {
                    Some(Ok(()))
                } else {
                    i.state.destroyed.map(|r| Err(DriverError::Destroyed(r)))
                }
            })
            .await?;
        Ok(driver)
    }

    /// Waits until `f` returns `Some`.
    async fn wait<T>(&self, mut f: impl FnMut(&mut Inner) -> Option<T>) -> T {
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = f(&mut self.shared.lock()) {
                self.shared.wake_writer.notify_one();
                return v;
            }
            notified.await;
        }
    }

    /// Runs `f` on the circuit, then wakes the writer.
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let v = f(&mut self.shared.lock());
        self.shared.wake_writer.notify_one();
        v
    }

    /// Hops in the circuit.
    pub fn hops(&self) -> usize {
        self.shared.lock().state.hops
    }

    /// Extends the circuit to `hop` and waits for EXTENDED (or TRUNCATED).
    pub async fn extend(&self, hop: &HopSpec) -> Result<(), DriverError> {
        let (before, failures) = self.with(|i| {
            let r = i.circ.extend(hop, Instant::now());
            (r.map(|()| i.state.hops), i.state.extend_failures.len())
        });
        let before = before.map_err(|e| DriverError::Proto(e.to_string()))?;
        self.wait(|i| {
            if i.state.hops > before {
                Some(Ok(()))
            } else if let Some(r) = i.state.destroyed {
                Some(Err(DriverError::Destroyed(r)))
            } else {
                i.state
                    .extend_failures
                    .get(failures)
                    .map(|r| Err(DriverError::Truncated(*r)))
            }
        })
        .await
    }

    /// Opens a stream to `host:port` and waits for CONNECTED; END gives its reason.
    pub async fn begin(&self, host: Host, port: u16) -> Result<StreamId, DriverError> {
        let id = self
            .with(|i| i.circ.open_stream(host, port))
            .map_err(|e| DriverError::Proto(e.to_string()))?;
        self.wait(|i| {
            if i.state.connected.contains_key(&id.0) {
                Some(Ok(id))
            } else if let Some(r) = i.state.ended.get(&id.0) {
                Some(Err(DriverError::Ended(*r)))
            } else {
                i.state.destroyed.map(|r| Err(DriverError::Destroyed(r)))
            }
        })
        .await
    }

    /// Asks the exit to resolve `host`.
    pub async fn resolve(&self, host: Host) -> Result<Vec<ResolvedAnswer>, DriverError> {
        let id = self
            .with(|i| i.circ.resolve(host))
            .map_err(|e| DriverError::Proto(e.to_string()))?;
        self.wait(|i| {
            if let Some(a) = i.state.resolved.remove(&id.0) {
                Some(Ok(a))
            } else if let Some(r) = i.state.ended.get(&id.0) {
                Some(Err(DriverError::Ended(*r)))
            } else {
                i.state.destroyed.map(|r| Err(DriverError::Destroyed(r)))
            }
        })
        .await
    }

    /// Writes all of `data` on `stream`, waiting for credit as needed.
    pub async fn write_all(&self, stream: StreamId, mut data: &[u8]) -> Result<(), DriverError> {
        while !data.is_empty() {
            let n = self
                .wait(|i| {
                    if let Some(r) = i.state.destroyed {
                        return Some(Err(DriverError::Destroyed(r)));
                    }
                    match i.circ.write_stream(stream, data) {
                        Ok(0) => None,
                        Ok(n) => Some(Ok(n)),
                        Err(e) => Some(Err(DriverError::Proto(e.to_string()))),
                    }
                })
                .await?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Reads what `stream` has (waiting for some); `Ok(0)` is the end of the stream.
    pub async fn read(&self, stream: StreamId, buf: &mut [u8]) -> Result<usize, DriverError> {
        self.wait(|i| match i.circ.read_stream(stream, buf) {
            Ok(n) => Some(Ok(n)),
            Err(ProtoError::WouldBlock) => {
                i.state.destroyed.map(|r| Err(DriverError::Destroyed(r)))
            }
            Err(e) => Some(Err(DriverError::Proto(e.to_string()))),
        })
        .await
    }

    /// Reads exactly `n` bytes (fewer if the stream ends first).
    pub async fn read_n(&self, stream: StreamId, n: usize) -> Result<Vec<u8>, DriverError> {
        let mut out = Vec::with_capacity(n);
        let mut buf = vec![0u8; 64 * 1024];
        while out.len() < n {
            let want = (n - out.len()).min(buf.len());
            let got = self.read(stream, &mut buf[..want]).await?;
            if got == 0 {
                break;
            }
            out.extend_from_slice(&buf[..got]);
        }
        Ok(out)
    }

    /// Closes `stream` (END DONE).
    pub fn close_stream(&self, stream: StreamId) -> Result<(), DriverError> {
        self.with(|i| i.circ.close_stream(stream))
            .map_err(|e| DriverError::Proto(e.to_string()))
    }

    /// Why the circuit is gone, if it is.
    pub fn destroyed(&self) -> Option<DestroyReason> {
        self.shared.lock().state.destroyed
    }

    /// Tears the circuit down (DESTROY REQUESTED) and waits until the DESTROY was written.
    pub async fn destroy(self) {
        self.with(|i| i.circ.destroy(DestroyReason::Requested));
        self.wait(|i| (i.circ.queued_cells() == 0).then_some(()))
            .await;
        // Give the writer a moment to hand the last batch to the stream before it is dropped.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn read_cells(
    shared: Arc<Shared>,
    mut r: futures::io::ReadHalf<libp2p::Stream>,
    cell_len: usize,
) {
    let mut r = futures::io::BufReader::with_capacity(16 * cell_len, &mut r);
    loop {
        let mut cell = vec![0u8; cell_len];
        let ok = r.read_exact(&mut cell).await.is_ok();
        {
            let mut inner = shared.lock();
            if ok {
                let _ = inner.circ.handle_cell(cell, Instant::now());
            } else {
                inner.circ.handle_link_closed(Instant::now());
            }
            inner.pump_events();
        }
        shared.changed.notify_waiters();
        shared.wake_writer.notify_one();
        if !ok {
            return;
        }
    }
}

async fn write_cells(shared: Arc<Shared>, mut w: futures::io::WriteHalf<libp2p::Stream>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        batch.clear();
        let closed = {
            let mut inner = shared.lock();
            inner.circ.handle_timeout(Instant::now());
            while batch.len() < MAX_BATCH {
                match inner.circ.poll_transmit() {
                    Some(cell) => batch.extend_from_slice(&cell),
                    None => break,
                }
            }
            inner.pump_events();
            inner.circ.is_closed() && inner.circ.queued_cells() == 0
        };
        // Taking cells may have made room for writers.
        shared.changed.notify_waiters();
        if !batch.is_empty() {
            if w.write_all(&batch).await.is_err() || w.flush().await.is_err() {
                shared.lock().circ.handle_link_closed(Instant::now());
                shared.changed.notify_waiters();
                return;
            }
            continue;
        }
        if closed {
            let _ = w.close().await;
            return;
        }
        let _ = tokio::time::timeout(TIMER_TICK, shared.wake_writer.notified()).await;
    }
}
