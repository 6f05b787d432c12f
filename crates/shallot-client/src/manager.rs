//! The circuit manager: the async work the pool's decisions call for (the job of Tor's
//! `circuituse.c`, Arti's `tor-circmgr`). The rules themselves (isolation, reuse, budget,
//! build-ahead, eviction, build outcomes) live in `pool.rs`; this file chooses paths, runs
//! builds in their own tasks, waits for them and for room, and opens streams.
//!
//! - **Retry**: a failed build, a destroyed circuit, a stream timeout or an exit refusal that
//!   another exit may not share is retried on a different circuit (and, for a policy refusal,
//!   a different exit), at most `max_stream_attempts` times.
//! - **Waiting**: a stream whose circuit is being built waits for it; one that finds no room
//!   waits in the pool's queue, in order, at most `stream_timeout_secs`.
//! - **Builds** run in their own tasks, so a stream that gives up never leaves a build half
//!   done; every build is bounded by the learned build timeout (`timeout.rs`).
//! - **Departed relays**: after each view refresh, circuits through relays that left the view
//!   take no new streams and close once idle.
//! - **No refresh on demand**: when the view cannot make a path, the stream fails with the
//!   reason; the view refreshes only on its schedule (specs/04 §6.1), so no DHT query ever
//!   follows from a stream.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant};

use shallot_cell::{Host, ResolvedAnswer};
use shallot_directory::{NetworkView, ViewEntry};
use shallot_error::{ErrorKind, HasKind};
use shallot_p2p::{Node, PeerId};
use shallot_path::{PathError, RelayIndex};
use shallot_proto::HopSpec;
use tokio::io::AsyncRead;
use tokio::sync::{Notify, oneshot, watch};
use tracing::{debug, info, warn};

use crate::circuit::{self, CircuitCommand, CircuitHandle, DriverOptions};
use crate::config::ClientConfig;
use crate::err::StreamFailure;
use crate::metrics::Metrics;
use crate::path::Paths;

use crate::pool::{
    CircuitId, CircuitSummary, Decision, Isolation, MAX_CLEAN_CIRCUITS, Pool, PoolConfig, Request,
    WaiterId,
};
use crate::sensitive::Sensitive;
use crate::stream::{StreamHandle, stream_pair};
use crate::timeout::BuildTimes;

/// How often the build-ahead and cleanup pass runs.
pub(crate) const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(5);

/// How a circuit's build is going, for the streams waiting for it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BuildStatus {
    Building,
    Built,
    Failed(StreamFailure),
}

/// The manager's handle on a circuit of the pool.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    status: watch::Receiver<BuildStatus>,
    /// The circuit's task, once built.
    handle: Option<CircuitHandle>,
}

/// A stream's place on a circuit: given back to the pool when dropped.
pub(crate) struct Lease {
    manager: Weak<Manager>,
    id: CircuitId,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("circuit", &self.id).finish()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(manager) = self.manager.upgrade() {
            manager.with_pool(|pool| pool.release(self.id, Instant::now()));
        }
    }
}

/// A place in the pool's queue: left when dropped (served, timed out, or the stream's task
/// was cancelled).
struct Queued<'a> {
    manager: &'a Manager,
    id: WaiterId,
    woken: Arc<Notify>,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.manager.with_locked(|l| {
            l.wakers.remove(&self.id);
            l.pool.dequeue(self.id);
        });
    }
}

/// The pool and the wakers of its queued streams, under one lock.
struct Locked {
    pool: Pool<Link>,
    wakers: HashMap<WaiterId, Arc<Notify>>,
}

/// A circuit given to a stream.
struct Leased {
    lease: Lease,
    id: CircuitId,
    handle: CircuitHandle,
    exit: Option<PeerId>,
}

/// The circuit manager. Shared by the front's connection tasks and the background tasks.
pub(crate) struct Manager {
    /// Itself, for the tasks it spawns and the leases it hands out.
    me: Weak<Manager>,
    config: ClientConfig,
    node: Arc<Node>,
    view: RwLock<NetworkView>,
    paths: Paths,
    locked: Mutex<Locked>,
    metrics: Metrics,
    /// Wakes the maintenance task (a clean circuit was claimed, the view changed).
    pub(crate) wake: Notify,
    /// Set once the first circuit is built.
    first_built: watch::Sender<bool>,
}

impl Manager {
    pub(crate) fn new(
        config: ClientConfig,
        node: Arc<Node>,
        view: NetworkView,
        paths: Paths,
        metrics: Metrics,
    ) -> Arc<Self> {
        let build_times = BuildTimes::new(
            Duration::from_secs(config.build_timeout_initial_secs),
            Duration::from_secs(config.build_timeout_min_secs),
            Duration::from_secs(config.build_timeout_max_secs),
        );
        let pool = Pool::new(
            PoolConfig {
                max_circuits: config.max_circuits,
                reuse: config.circuit_reuse(),
            },
            build_times,
        );
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            config,
            node,
            view: RwLock::new(view),
            paths,
            locked: Mutex::new(Locked {
                pool,
                wakers: HashMap::new(),
            }),
            metrics,
            wake: Notify::new(),
            first_built: watch::Sender::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Locked> {
        match self.locked.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Runs `f` on the pool and its wakers, then wakes the streams the pool named. What `f`
    /// returns is dropped after the lock is released (closing a circuit can take a moment).
    fn with_locked<T>(&self, f: impl FnOnce(&mut Locked) -> T) -> T {
        let mut locked = self.lock();
        let out = f(&mut locked);
        for w in locked.pool.take_wakeups() {
            if let Some(n) = locked.wakers.get(&w) {
                n.notify_one();
            }
        }
        drop(locked);
        out
    }

    fn with_pool<T>(&self, f: impl FnOnce(&mut Pool<Link>) -> T) -> T {
        self.with_locked(|l| f(&mut l.pool))
    }

    /// A path from the view for `port`, leaving out the relays marked unreachable.
    fn select_path(
        &self,
        port: Option<u16>,
        avoid_exits: &[PeerId],
    ) -> Result<Vec<ViewEntry>, PathError> {
        let unreachable = self.with_pool(|p| p.unreachable(Instant::now()));
        self.with_view(|view| {
            if unreachable.is_empty() {
                return self.paths.select(view, port, avoid_exits);
            }
            self.paths
                .select(&view.without(&unreachable), port, avoid_exits)
        })
    }

    /// Whether `view` holds a usable path (to any exit).
    pub(crate) fn path_possible(&self, view: &NetworkView) -> bool {
        match self.paths.select(view, None, &[]) {
            Ok(_) => true,
            Err(err) => {
                if matches!(err.kind(), ErrorKind::Storage | ErrorKind::Internal) {
                    warn!(%err, "path selection failed");
                }
                false
            }
        }
    }

    /// Waits until the first circuit was built.
    pub(crate) fn first_built(&self) -> watch::Receiver<bool> {
        self.first_built.subscribe()
    }

    /// Runs `f` on the view.
    pub(crate) fn with_view<T>(&self, f: impl FnOnce(&NetworkView) -> T) -> T {
        match self.view.read() {
            Ok(view) => f(&view),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    /// Changes the view, then retires circuits through relays that left it.
    pub(crate) fn update_view<T>(&self, f: impl FnOnce(&mut NetworkView) -> T) -> T {
        let out = match self.view.write() {
            Ok(mut view) => f(&mut view),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        };
        let known = self.with_view(|v| {
            self.metrics.relays_known.set(v.len() as i64);
            v.entries()
                .map(|e| e.descriptor.peer_id())
                .collect::<HashSet<_>>()
        });
        let retired = self.with_pool(|p| p.retire_departed(|peer| known.contains(peer)));
        if retired > 0 {
            debug!(
                retired,
                "circuits through relays that left the view retired"
            );
        }
        self.wake.notify_one();
        out
    }

    /// A snapshot of every circuit.
    pub(crate) fn circuits(&self) -> Vec<CircuitSummary> {
        self.with_pool(|p| p.summaries(Instant::now()))
    }

    /// Opens a stream to `host:port` for `iso` and waits for the exit to connect it, reading
    /// optimistic data from `io` meanwhile (kept in `early` so a retry can send it again).
    pub(crate) async fn connect<S>(
        &self,
        iso: &Isolation,
        host: &Host,
        port: u16,
        io: &mut S,
        early: &mut Vec<u8>,
    ) -> Result<(StreamHandle, Host), StreamFailure>
    where
        S: AsyncRead + Unpin,
    {
        self.with_pool(|p| p.note_port(port, Instant::now()));
        let mut avoid_exits: Vec<PeerId> = Vec::new();
        let mut avoid_circuits: Vec<CircuitId> = Vec::new();
        let mut last = StreamFailure::CircuitFailed;
        for attempt in 0..self.config.max_stream_attempts {
            let leased = match self
                .lease(iso, Some(port), &avoid_exits, &avoid_circuits)
                .await
            {
                Ok(l) => l,
                Err(StreamFailure::NoExitForPort) if !avoid_exits.is_empty() => break,
                Err(StreamFailure::CircuitFailed) => {
                    last = StreamFailure::CircuitFailed;
                    continue;
                }
                Err(e) => {
                    last = e;
                    break;
                }
            };
            let (mut stream, end) = stream_pair();
            let open = CircuitCommand::Open {
                host: host.clone(),
                port,
                end,
            };
            if leased.handle.send(open).await.is_err() {
                avoid_circuits.push(leased.id);
                continue;
            }
            stream.hold(leased.lease);
            let answer =
                tokio::time::timeout(self.config.stream_timeout(), stream.connected(io, early))
                    .await
                    .unwrap_or(Err(StreamFailure::Timeout));
            match answer {
                Ok(addr) => return Ok((stream, addr)),
                Err(failure) => {
                    debug!(
                        attempt,
                        circuit = leased.id,
                        %failure,
                        dest = ?Sensitive(host),
                        "stream attempt failed"
                    );
                    last = failure;
                    if !last.retry_elsewhere() {
                        break;
                    }
                    if last == StreamFailure::End(shallot_cell::EndReason::ExitPolicy) {
                        avoid_exits.extend(leased.exit);
                    }
                    avoid_circuits.push(leased.id);
                }
            }
        }
        self.report_failure(&last, host);
        Err(last)
    }

    /// Asks an exit to resolve `host` (a name, or an address for a reverse lookup).
    pub(crate) async fn resolve(
        &self,
        iso: &Isolation,
        host: &Host,
    ) -> Result<Vec<ResolvedAnswer>, StreamFailure> {
        let mut avoid_circuits = Vec::new();
        let mut last = StreamFailure::CircuitFailed;
        for _ in 0..self.config.max_stream_attempts {
            let leased = match self.lease(iso, None, &[], &avoid_circuits).await {
                Ok(l) => l,
                Err(StreamFailure::CircuitFailed) => continue,
                Err(e) => {
                    last = e;
                    break;
                }
            };
            let (reply, answer) = oneshot::channel();
            let cmd = CircuitCommand::Resolve {
                host: host.clone(),
                reply,
            };
            if leased.handle.send(cmd).await.is_err() {
                avoid_circuits.push(leased.id);
                continue;
            }
            let result = tokio::time::timeout(self.config.stream_timeout(), answer)
                .await
                .map_err(|_| StreamFailure::Timeout)
                .and_then(|r| r.unwrap_or(Err(StreamFailure::CircuitFailed)));
            match result {
                Ok(answers) => return Ok(answers),
                Err(e) if e.retry_elsewhere() => {
                    avoid_circuits.push(leased.id);
                    last = e;
                }
                Err(e) => {
                    last = e;
                    break;
                }
            }
        }
        self.report_failure(&last, host);
        Err(last)
    }

    /// The log line of a stream that failed for good: the destination's own refusals at
    /// info, the client's failures to carry it as warnings.
    fn report_failure(&self, failure: &StreamFailure, host: &Host) {
        match failure {
            StreamFailure::End(_) | StreamFailure::ResolveFailed | StreamFailure::NoExitForPort => {
                info!(%failure, dest = ?Sensitive(host), "stream refused")
            }
            StreamFailure::ShuttingDown => {}
            _ => warn!(%failure, dest = ?Sensitive(host), "stream failed"),
        }
    }

    /// A circuit for a stream with `iso` to `port`, with a lease on it: one the pool gives at
    /// once, one being built for it, or a place in the queue until one of those is possible.
    /// Waits at most `stream_timeout_secs`.
    async fn lease(
        &self,
        iso: &Isolation,
        port: Option<u16>,
        avoid_exits: &[PeerId],
        avoid_circuits: &[CircuitId],
    ) -> Result<Leased, StreamFailure> {
        let deadline = tokio::time::Instant::now() + self.config.stream_timeout();
        let mut queued: Option<Queued<'_>> = None;
        loop {
            let mut build_status = None;
            let decision = self.with_locked(|l| {
                let req = Request {
                    iso,
                    port,
                    avoid_exits,
                    avoid_circuits,
                    waiter: queued.as_ref().map(|q| q.id),
                };
                l.pool.choose(&req, Instant::now(), || {
                    let (tx, rx) = watch::channel(BuildStatus::Building);
                    build_status = Some(tx);
                    Link {
                        status: rx,
                        handle: None,
                    }
                })
            });
            let (id, link) = match decision {
                Decision::Use {
                    id,
                    circuit,
                    claimed_clean,
                } => {
                    if claimed_clean {
                        // A clean circuit was used up: build another ahead.
                        self.wake.notify_one();
                    }
                    (id, circuit)
                }
                Decision::Wait { id, circuit } => (id, circuit),
                Decision::Build {
                    id,
                    circuit,
                    evicted,
                } => {
                    if evicted.is_some() {
                        debug!(
                            circuit = id,
                            "closed the least recently used idle circuit to make room"
                        );
                    }
                    drop(evicted);
                    if let (Some(status), Some(me)) = (build_status, self.me.upgrade()) {
                        let avoid_exits = avoid_exits.to_vec();
                        tokio::spawn(async move {
                            me.build(id, port, avoid_exits, status).await;
                        });
                    }
                    (id, circuit)
                }
                Decision::Full => {
                    let woken = match &queued {
                        Some(q) => Arc::clone(&q.woken),
                        None => {
                            let woken = Arc::new(Notify::new());
                            let id = self.with_locked(|l| {
                                let id = l.pool.enqueue(iso)?;
                                l.wakers.insert(id, Arc::clone(&woken));
                                Some(id)
                            });
                            let Some(id) = id else {
                                warn!("too many streams wait for a circuit: refused");
                                return Err(StreamFailure::TooManyCircuits);
                            };
                            queued = Some(Queued {
                                manager: self,
                                id,
                                woken: Arc::clone(&woken),
                            });
                            woken
                        }
                    };
                    if tokio::time::timeout_at(deadline, woken.notified())
                        .await
                        .is_err()
                    {
                        let (circuits, waiting) = self.with_pool(|p| (p.len(), p.waiting()));
                        warn!(
                            circuits,
                            waiting,
                            timeout = ?self.config.stream_timeout(),
                            "no circuit had room for a stream in time: every circuit carries streams"
                        );
                        return Err(StreamFailure::TooManyCircuits);
                    }
                    continue;
                }
            };
            // The pool gave this stream a lease (and served it, if it was queued).
            let lease = Lease {
                manager: self.me.clone(),
                id,
            };
            drop(queued.take());
            return self.await_built(id, link, lease, deadline).await;
        }
    }

    /// Waits (until `deadline`) for the build of `id` if it is not built, then hands the
    /// circuit out with `lease`.
    async fn await_built(
        &self,
        id: CircuitId,
        mut link: Link,
        lease: Lease,
        deadline: tokio::time::Instant,
    ) -> Result<Leased, StreamFailure> {
        let status = tokio::time::timeout_at(
            deadline,
            link.status.wait_for(|s| *s != BuildStatus::Building),
        )
        .await
        .map_err(|_| StreamFailure::Timeout)?
        .map(|s| s.clone())
        .unwrap_or(BuildStatus::Failed(StreamFailure::CircuitFailed));
        if let BuildStatus::Failed(failure) = status {
            return Err(failure);
        }
        let (handle, exit) = self
            .with_pool(|p| {
                let handle = p.circuit(id).and_then(|l| l.handle.clone())?;
                Some((handle, p.exit_of(id)))
            })
            .ok_or(StreamFailure::CircuitFailed)?;
        Ok(Leased {
            lease,
            id,
            handle,
            exit,
        })
    }

    /// Builds circuit `id` (reserved in the pool) for `port`, and says how it went on
    /// `status`. Runs in its own task or in the maintenance task, never in a stream's.
    async fn build(
        self: &Arc<Self>,
        id: CircuitId,
        port: Option<u16>,
        avoid_exits: Vec<PeerId>,
        status: watch::Sender<BuildStatus>,
    ) -> bool {
        // specs/04 §6.1: a path that cannot be made now waits for the next scheduled refresh;
        // no refresh is ever tied to a stream (it would tell DHT nodes when this client uses
        // the network).
        let path = match self.select_path(port, &avoid_exits) {
            Ok(path) => path,
            Err(err) => {
                let failure = if err.kind() == ErrorKind::PolicyRefusal {
                    StreamFailure::NoExitForPort
                } else {
                    if err.kind() != ErrorKind::Transient {
                        warn!(%err, "path selection failed");
                    }
                    StreamFailure::NoPath
                };
                drop(self.with_pool(|p| p.cancel(id)));
                status.send_replace(BuildStatus::Failed(failure));
                return false;
            }
        };
        let specs: Vec<HopSpec> = path.iter().map(hop_spec).collect();
        let peers: Vec<PeerId> = path.iter().map(|e| e.descriptor.peer_id()).collect();
        let exit_summary = path.last().and_then(|e| {
            e.descriptor
                .descriptor()
                .exit_policy_summary()
                .ok()
                .flatten()
        });
        let (chosen, build_timeout) =
            self.with_pool(|p| (p.path_chosen(id, peers, exit_summary), p.build_timeout()));
        if !chosen {
            status.send_replace(BuildStatus::Failed(StreamFailure::CircuitFailed));
            return false;
        }
        let me = self.me.clone();
        let options = DriverOptions {
            id,
            build_timeout,
            started: Instant::now(),
            metrics: self.metrics.clone(),
            on_end: Some(Box::new(move || {
                if let Some(m) = me.upgrade() {
                    drop(m.with_pool(|p| p.closed(id)));
                }
            })),
        };
        let mut control = self.node.stream_control();
        let result = circuit::build(&mut control, specs, options).await;
        let now = Instant::now();
        let ok = result.is_ok();
        let (verdict, removed) = match result {
            Ok((handle, took)) => {
                self.metrics.build_seconds.observe(took.as_secs_f64());
                self.with_pool(|p| {
                    p.build_finished(id, Ok(took), now, |link| link.handle = Some(handle))
                })
            }
            Err(failure) => {
                debug!(circuit = id, %failure, "circuit build failed");
                self.metrics.circuit_failure(failure.label());
                self.with_pool(|p| p.build_finished(id, Err(failure), now, |_| {}))
            }
        };
        drop(removed);
        if let Some((guard, ok)) = verdict.guard {
            self.paths.guard_outcome(&guard, ok);
        }
        if verdict.unreachable.is_some() {
            debug!(
                circuit = id,
                "leaving an unreachable relay out of new paths for a while"
            );
        }
        if ok {
            self.first_built.send_replace(true);
            status.send_replace(BuildStatus::Built);
        } else {
            status.send_replace(BuildStatus::Failed(StreamFailure::CircuitFailed));
        }
        debug!(circuit = id, ok, "circuit build finished");
        ok
    }

    /// Closes circuits past their use, then builds clean circuits ahead for the ports that
    /// need one, one at a time: a new circuit's exit often allows the other ports too, and
    /// builds that run together slow each other down (4 at once took 5.0–6.8 ms each on the
    /// test network).
    pub(crate) async fn maintain(self: &Arc<Self>) {
        for _ in 0..MAX_CLEAN_CIRCUITS {
            let now = Instant::now();
            drop(self.with_pool(|p| p.expire(now)));
            let ports = self.with_pool(|p| p.ports_to_cover(&self.config.preemptive_ports, now));
            let allowed: HashSet<u16> = self.with_view(|v| {
                let relays = RelayIndex::new(v);
                ports
                    .iter()
                    .copied()
                    .filter(|port| {
                        v.entries()
                            .any(|e| relays.exit_allows(&e.descriptor.peer_id(), *port))
                    })
                    .collect()
            });
            let mut status = None;
            let reserved = self.with_pool(|p| {
                p.build_ahead(
                    &self.config.preemptive_ports,
                    |port| allowed.contains(&port),
                    now,
                    || {
                        let (tx, rx) = watch::channel(BuildStatus::Building);
                        status = Some(tx);
                        Link {
                            status: rx,
                            handle: None,
                        }
                    },
                )
            });
            let (Some((id, _link, port)), Some(status)) = (reserved, status) else {
                return;
            };
            if !self.build(id, port, Vec::new(), status).await {
                return;
            }
        }
    }

    /// Closes every circuit (shutdown).
    pub(crate) fn close_all(&self) {
        let closed = self.with_pool(Pool::close_all);
        info!(circuits = closed.len(), "closed all circuits");
    }
}

/// What a circuit needs to know about a relay to use it as a hop: its proven addresses only
/// (specs/04 §6.3), the only ones it may be reached at.
fn hop_spec(entry: &ViewEntry) -> HopSpec {
    HopSpec {
        peer_id: entry.descriptor.peer_id().to_bytes(),
        addrs: entry.proven_addrs().map(|a| a.to_vec()).collect(),
        onion_key: entry.descriptor.descriptor().onion_key,
    }
}
