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

use rand::Rng;
use shallot_cell::{Host, ResolvedAnswer};
use shallot_directory::{NetworkView, ViewEntry};
use shallot_error::{ErrorKind, HasKind};
use shallot_onion::SpecialName;
use shallot_p2p::{Node, PeerId};
use shallot_path::{PathBias, PathError, RelayIndex};
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
    BuildVerdict, CircuitId, CircuitSummary, Decision, Isolation, MAX_CLEAN_CIRCUITS, Pool,
    PoolConfig, Request, WaiterId,
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
    /// Failed; with the relay a refused EXTEND named, which the waiting stream's retries leave
    /// out (specs/05 §9.1 rule 7).
    Failed(StreamFailure, Option<PeerId>),
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

    /// Runs `f` on the pool, then settles the path-bias uses of the circuits it removed
    /// unanswered (outside the pool's lock: the path state has its own).
    fn with_pool<T>(&self, f: impl FnOnce(&mut Pool<Link>) -> T) -> T {
        let (out, unanswered) = self.with_locked(|l| {
            let out = f(&mut l.pool);
            (out, l.pool.take_unanswered_uses())
        });
        if !unanswered.is_empty() {
            for guard in &unanswered {
                self.paths.use_unanswered(guard);
            }
            self.metrics.guard_states(&self.paths.guard_bias());
        }
        out
    }

    /// A path from the view for `port`, leaving out the relays this stream's own failed
    /// builds named (`avoid_relays`) and the exits in `avoid_exits`.
    fn select_path(
        &self,
        port: Option<u16>,
        avoid_exits: &[PeerId],
        avoid_relays: &[PeerId],
    ) -> Result<Vec<ViewEntry>, PathError> {
        self.with_view(|view| {
            choose_path(
                &self.paths,
                view,
                avoid_relays,
                port,
                avoid_exits,
                &mut rand::rng(),
            )
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
        let (known, bias_changed) = self.with_view(|v| {
            self.metrics.relays_known.set(v.len() as i64);
            let known = v
                .entries()
                .map(|e| e.descriptor.peer_id())
                .collect::<HashSet<_>>();
            (known, self.paths.view_refreshed(v))
        });
        if bias_changed {
            self.metrics.guard_states(&self.paths.guard_bias());
        }
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

    /// The pinned guards and their path-bias records (specs/05 §5.6).
    pub(crate) fn guards(&self) -> Vec<(PeerId, PathBias)> {
        self.paths.guard_bias()
    }

    /// A stream was sent on circuit `id`: a path-bias use attempt, once per circuit.
    fn stream_sent(&self, id: CircuitId) {
        if let Some(guard) = self.with_pool(|p| p.stream_sent(id)) {
            self.paths.use_attempted(&guard);
            self.metrics.guard_states(&self.paths.guard_bias());
        }
    }

    /// The exit answered a stream on circuit `id` (CONNECTED, RESOLVED or its own refusal):
    /// the circuit carries cells both ways, a path-bias use success.
    fn stream_answered(&self, id: CircuitId) {
        if let Some(guard) = self.with_pool(|p| p.stream_answered(id)) {
            self.paths.use_succeeded(&guard);
            self.metrics.guard_states(&self.paths.guard_bias());
        }
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
        refuse_special_name(host)?;
        self.with_pool(|p| p.note_port(port, Instant::now()));
        let mut avoid_exits: Vec<PeerId> = Vec::new();
        let mut avoid_circuits: Vec<CircuitId> = Vec::new();
        let mut avoid_relays: Vec<PeerId> = Vec::new();
        let mut last = StreamFailure::CircuitFailed;
        for attempt in 0..self.config.max_stream_attempts {
            let leased = match self
                .lease(
                    iso,
                    Some(port),
                    &avoid_exits,
                    &avoid_circuits,
                    &mut avoid_relays,
                )
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
            self.stream_sent(leased.id);
            stream.hold(leased.lease);
            let answer =
                tokio::time::timeout(self.config.stream_timeout(), stream.connected(io, early))
                    .await
                    .unwrap_or(Err(StreamFailure::Timeout));
            if matches!(answer, Ok(_) | Err(StreamFailure::End(_))) {
                self.stream_answered(leased.id);
            }
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
        refuse_special_name(host)?;
        let mut avoid_circuits = Vec::new();
        let mut avoid_relays = Vec::new();
        let mut last = StreamFailure::CircuitFailed;
        for _ in 0..self.config.max_stream_attempts {
            let leased = match self
                .lease(iso, None, &[], &avoid_circuits, &mut avoid_relays)
                .await
            {
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
            self.stream_sent(leased.id);
            let result = tokio::time::timeout(self.config.stream_timeout(), answer)
                .await
                .map_err(|_| StreamFailure::Timeout)
                .and_then(|r| r.unwrap_or(Err(StreamFailure::CircuitFailed)));
            if matches!(result, Ok(_) | Err(StreamFailure::ResolveFailed)) {
                self.stream_answered(leased.id);
            }
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
    /// info, the client's failures to carry it as warnings (names refused before any circuit
    /// are said where they are refused).
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
    /// Waits at most `stream_timeout_secs`. A build for it that an EXTEND refusal ends adds
    /// the relay named to `avoid_relays`, for this stream's retries only.
    async fn lease(
        &self,
        iso: &Isolation,
        port: Option<u16>,
        avoid_exits: &[PeerId],
        avoid_circuits: &[CircuitId],
        avoid_relays: &mut Vec<PeerId>,
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
                    avoid_relays,
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
                        let avoid_relays = avoid_relays.clone();
                        tokio::spawn(async move {
                            me.build(id, port, avoid_exits, avoid_relays, status).await;
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
            return self
                .await_built(id, link, lease, deadline, avoid_relays)
                .await;
        }
    }

    /// Waits (until `deadline`) for the build of `id` if it is not built, then hands the
    /// circuit out with `lease`. A failed build's named relay goes to `avoid_relays`.
    async fn await_built(
        &self,
        id: CircuitId,
        mut link: Link,
        lease: Lease,
        deadline: tokio::time::Instant,
        avoid_relays: &mut Vec<PeerId>,
    ) -> Result<Leased, StreamFailure> {
        let status = tokio::time::timeout_at(
            deadline,
            link.status.wait_for(|s| *s != BuildStatus::Building),
        )
        .await
        .map_err(|_| StreamFailure::Timeout)?
        .map(|s| s.clone())
        .unwrap_or(BuildStatus::Failed(StreamFailure::CircuitFailed, None));
        if let BuildStatus::Failed(failure, named) = status {
            // One relay per failed build, and a stream fails at most `max_stream_attempts`
            // builds: the list is bounded by that.
            if let Some(peer) = named
                && !avoid_relays.contains(&peer)
            {
                avoid_relays.push(peer);
            }
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
        avoid_relays: Vec<PeerId>,
        status: watch::Sender<BuildStatus>,
    ) -> bool {
        // specs/04 §6.1: a path that cannot be made now waits for the next scheduled refresh;
        // no refresh is ever tied to a stream (it would tell DHT nodes when this client uses
        // the network).
        let path = match self.select_path(port, &avoid_exits, &avoid_relays) {
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
                status.send_replace(BuildStatus::Failed(failure, None));
                return false;
            }
        };
        let specs: Vec<HopSpec> = path.iter().map(hop_spec).collect();
        let peers: Vec<PeerId> = path.iter().map(|e| e.descriptor.peer_id()).collect();
        // The path log (guard first): what a test of the path rules (specs/05 §5) reads, kept
        // out of logs under safe logging.
        debug!(
            circuit = id,
            path = %Sensitive(peers.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")),
            "path chosen"
        );
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
            status.send_replace(BuildStatus::Failed(StreamFailure::CircuitFailed, None));
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
        let ok = result.is_ok();
        let (verdict, removed) = match result {
            Ok((handle, took)) => {
                self.metrics.build_seconds.observe(took.as_secs_f64());
                self.with_pool(|p| {
                    settle_build(p, &self.paths, id, Ok(took), |link| {
                        link.handle = Some(handle);
                    })
                })
            }
            Err(failure) => {
                debug!(circuit = id, %failure, "circuit build failed");
                self.metrics.circuit_failure(failure.label());
                self.with_pool(|p| settle_build(p, &self.paths, id, Err(failure), |_| {}))
            }
        };
        drop(removed);
        if verdict.bias.is_some() {
            self.metrics.guard_states(&self.paths.guard_bias());
        }
        if ok {
            self.first_built.send_replace(true);
            status.send_replace(BuildStatus::Built);
        } else {
            status.send_replace(BuildStatus::Failed(
                StreamFailure::CircuitFailed,
                verdict.named,
            ));
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
            if !self.build(id, port, Vec::new(), Vec::new(), status).await {
                return;
            }
        }
    }

    /// Closes every circuit (shutdown).
    pub(crate) fn close_all(&self) {
        self.paths.flush();
        let closed = self.with_pool(Pool::close_all);
        info!(circuits = closed.len(), "closed all circuits");
    }
}

/// A path for `port` from `view` without the relays in `left_out` (those a stream's own failed
/// builds named), never through an exit in `avoid_exits`. The network-free half of choosing a build's path, so that its rules are
/// tested with a seeded `rng` and no node.
fn choose_path<R: Rng + ?Sized>(
    paths: &Paths,
    view: &NetworkView,
    left_out: &[PeerId],
    port: Option<u16>,
    avoid_exits: &[PeerId],
    rng: &mut R,
) -> Result<Vec<ViewEntry>, PathError> {
    if left_out.is_empty() {
        return paths.select_with(view, port, avoid_exits, rng);
    }
    paths.select_with(&view.without(left_out), port, avoid_exits, rng)
}

/// Records how the build of `id` went, in the pool and in the guard's record: the
/// network-free half of finishing a build.
fn settle_build<C: Clone>(
    pool: &mut Pool<C>,
    paths: &Paths,
    id: CircuitId,
    result: Result<Duration, circuit::BuildFailure>,
    update: impl FnOnce(&mut C),
) -> (BuildVerdict, Option<C>) {
    let (verdict, removed) = pool.build_finished(id, result, update);
    if let Some((guard, ok)) = verdict.guard {
        paths.guard_outcome(&guard, ok);
    }
    if let Some((guard, built)) = verdict.bias {
        paths.circuit_outcome(&guard, built, verdict.adding);
    }
    (verdict, removed)
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

/// Names that must never reach an exit's resolver: `.shallot` (an onion service, or a typo of
/// one) and Tor's `.onion` (RFC 7686). Refused before any circuit is asked, with their own
/// SOCKS replies (specs/07 §5, specs/09 §2).
fn refuse_special_name(host: &Host) -> Result<(), StreamFailure> {
    let Host::Name(name) = host else {
        return Ok(());
    };
    let failure = match SpecialName::of(name) {
        SpecialName::Ordinary => return Ok(()),
        SpecialName::Shallot(Err(e)) => StreamFailure::OnionAddressInvalid(e),
        SpecialName::Shallot(Ok(_)) => StreamFailure::OnionServiceUnreachable,
        SpecialName::TorOnion => StreamFailure::TorOnionName,
    };
    info!(%failure, dest = ?Sensitive(host), "stream refused before any circuit: the name is never sent to an exit");
    Err(failure)
}

#[cfg(test)]
mod tests {
    use shallot_cell::DestroyReason;
    use shallot_crypto::OnionPublicKey;
    use shallot_directory::{
        DESCRIPTOR_LIFETIME_SECS, Descriptor, PROTOCOL_CIRCUIT_V1, RelayFlags, ViewConfig,
        WallClock,
    };
    use shallot_p2p::identity::ed25519;
    use shallot_path::BiasState;

    use super::*;
    use crate::circuit::BuildFailure;
    use crate::timeout::BuildTimes;

    /// The descriptors' publication time, and the clock of the tests.
    const NOW: u64 = 1_800_000_000;
    /// Relays in the hostile-guard network: half exits, each in its own /16.
    const RELAYS: u8 = 12;
    /// Builds the hostile-guard test runs.
    const BUILDS: usize = 100;

    /// `RELAYS` relays seen long enough ago to be guards, with identity keys derived from
    /// `seed` so every run draws the same paths.
    fn network(seed: u8) -> NetworkView {
        let mut view = NetworkView::new(ViewConfig {
            max_relays_per_subnet: usize::MAX,
            max_relays_per_block: usize::MAX,
            ..ViewConfig::default()
        });
        for i in 1..=RELAYS {
            let mut secret = [seed; 32];
            secret[31] = i;
            let keypair = ed25519::Keypair::from(
                ed25519::SecretKey::try_from_bytes(&mut secret).expect("32 bytes"),
            );
            let exit = i % 2 == 0;
            let descriptor = Descriptor {
                identity: keypair.public(),
                published_at: NOW,
                expires_at: NOW + DESCRIPTOR_LIFETIME_SECS,
                protocols: PROTOCOL_CIRCUIT_V1,
                flags: RelayFlags(if exit { RelayFlags::EXIT } else { 0 }),
                addrs: vec![format!("/ip4/10.{i}.0.1/tcp/1").parse().expect("address")],
                onion_key: OnionPublicKey([7; 32]),
                previous_onion_key: None,
                family: Vec::new(),
                policy_summary: if exit {
                    b"accept 1-65535".to_vec()
                } else {
                    Vec::new()
                },
            };
            let signed = descriptor.sign(&keypair).expect("sign");
            view.offer(signed, NOW - 30 * 24 * 3600);
        }
        view
    }

    /// What one run of builds through a hostile first guard showed.
    struct Run {
        hostile: PeerId,
        favoured: PeerId,
        /// The middle of each circuit built, and its guard.
        built: Vec<(PeerId, PeerId)>,
        /// Builds through the hostile guard.
        through_hostile: usize,
        paths: Paths,
    }

    /// Builds `BUILDS` circuits through the pool and the path selector, as the manager does,
    /// where the first guard refuses every EXTEND except to one middle (Borisov et al.'s
    /// selective denial of service): the favoured middle is the first non-exit that is not a
    /// pinned guard.
    fn hostile_guard_run(seed: u8) -> Run {
        let view = network(seed);
        let paths = Paths::open(None, WallClock::from_fn(|| NOW)).expect("paths");
        let mut pool: Pool<()> = Pool::new(
            PoolConfig {
                max_circuits: 32,
                reuse: Duration::from_secs(600),
            },
            BuildTimes::new(
                Duration::from_secs(60),
                Duration::from_secs(5),
                Duration::from_secs(120),
            ),
        );
        let mut rng: rand::rngs::StdRng = rand::SeedableRng::seed_from_u64(u64::from(seed));
        let t0 = Instant::now();
        let mut hostile_and_favoured: Option<(PeerId, PeerId)> = None;
        let mut built = Vec::new();
        let mut through_hostile = 0;
        for n in 0..BUILDS {
            // One build every 100 ms: the whole run is 10 s of the client's time.
            let now = t0 + Duration::from_millis(100 * n as u64);
            let Decision::Build { id, .. } = pool.choose(
                &Request {
                    iso: &Isolation::None,
                    port: Some(80),
                    avoid_exits: &[],
                    avoid_circuits: &[],
                    avoid_relays: &[],
                    waiter: None,
                },
                now,
                || (),
            ) else {
                panic!("build {n}: the pool did not ask for a build");
            };
            let path = choose_path(&paths, &view, &[], Some(80), &[], &mut rng)
                .unwrap_or_else(|err| panic!("build {n}: no path: {err}"));
            let peers: Vec<PeerId> = path.iter().map(|e| e.descriptor.peer_id()).collect();
            let (hostile, favoured) = *hostile_and_favoured.get_or_insert_with(|| {
                let guards = paths.guard_bias();
                let favoured = view
                    .entries()
                    .map(|e| e.descriptor.peer_id())
                    .find(|p| {
                        !guards.iter().any(|(g, _)| g == p)
                            && view
                                .get(p)
                                .is_some_and(|e| !e.descriptor.descriptor().flags.is_exit())
                    })
                    .expect("a non-exit that is not a guard");
                (peers[0], favoured)
            });
            assert!(pool.path_chosen(id, peers.clone(), None));
            let result = if peers[0] == hostile {
                through_hostile += 1;
                if peers[1] == favoured {
                    Ok(Duration::from_millis(3))
                } else {
                    Err(BuildFailure::ExtendRefused {
                        hop: 2,
                        reason: DestroyReason::ConnectFailed,
                    })
                }
            } else {
                Ok(Duration::from_millis(3))
            };
            let ok = result.is_ok();
            settle_build(&mut pool, &paths, id, result, |_| {});
            // A view refresh every second of the client's time: failures are judged two
            // refreshes after they happen, against the guard while the relay is still listed.
            if n % 10 == 9 {
                paths.view_refreshed(&view);
            }
            if ok {
                built.push((peers[1], peers[0]));
                assert_eq!(pool.closed(id), Some(()));
            }
        }
        let (hostile, favoured) = hostile_and_favoured.expect("at least one build");
        Run {
            hostile,
            favoured,
            built,
            through_hostile,
            paths,
        }
    }

    /// Must-show 4 of issue 13: a guard that refuses every EXTEND except to one middle M is
    /// dropped by path bias (specs/05 §5.6), and M's share of the circuits built stays near the
    /// uniform 1 / (RELAYS - 2) (every relay but the guard and the exit can be the middle).
    /// The bound is twice that; with 10 candidates and about 80 circuits, an honest run passes
    /// it with probability above 99.6 %, and the seeds make the runs the same every time.
    #[test]
    fn a_guard_that_refuses_every_extend_but_one_is_dropped_and_cannot_steer_middles() {
        for seed in [1u8, 2, 3] {
            let run = hostile_guard_run(seed);
            let uniform = 1.0 / f64::from(RELAYS - 2);
            let favoured = run.built.iter().filter(|(m, _)| *m == run.favoured).count();
            let share = favoured as f64 / run.built.len() as f64;
            let late: Vec<PeerId> = run.built.iter().rev().take(20).map(|(_, g)| *g).collect();
            assert!(
                share <= 2.0 * uniform,
                "seed {seed}: the favoured middle carries {favoured} of {} circuits built \
                 ({:.0} %, uniform is {:.0} %); {} of {BUILDS} builds went through the hostile guard",
                run.built.len(),
                share * 100.0,
                uniform * 100.0,
                run.through_hostile,
            );
            let hostile = run
                .paths
                .guard_bias()
                .into_iter()
                .find(|(g, _)| *g == run.hostile)
                .map(|(_, bias)| bias)
                .expect("the hostile guard stays pinned");
            assert_eq!(
                hostile.state(),
                BiasState::Disabled,
                "seed {seed}: the hostile guard is still in use: {hostile:?}"
            );
            assert!(
                late.iter().all(|g| *g != run.hostile),
                "seed {seed}: the last 20 circuits still use the hostile guard"
            );
            assert!(
                run.built.len() >= BUILDS / 2,
                "seed {seed}: only {} of {BUILDS} builds succeeded: the check above was vacuous",
                run.built.len()
            );
        }
    }
}
