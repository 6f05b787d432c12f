//! The circuit manager: which circuit carries a new stream, and when circuits are built,
//! reused and dropped (the job of Tor's `circuituse.c`, Arti's `tor-circmgr`).
//!
//! - **Isolation** (Tor's IsolateSOCKSAuth): every stream has an [`Isolation`] key (its SOCKS
//!   username/password, or none). A circuit is *clean* until its first stream; the first
//!   stream's key then owns it, and only streams with an equal key use it.
//! - **Reuse**: a circuit takes new streams for `circuit_reuse_secs` after its first use, then
//!   only finishes the ones it has.
//! - **Build ahead**: a clean circuit is kept ready for each preemptive or recently used port.
//! - **Build timeout**: learned from recent build times (`timeout.rs`).
//! - **Retry**: a failed build, a destroyed circuit, a stream timeout or an exit refusal that
//!   another exit may not share is retried on a different circuit (and, for a policy
//!   refusal, a different exit), at most `max_stream_attempts` times.
//! - **Departed relays**: after each view refresh, circuits through relays that left the view
//!   take no new streams and close once idle.
//! - **Refresh on demand**: when the view cannot make a path (no exit for the port, too few
//!   relays once the unreachable ones are left out), a build asks for a view refresh now and
//!   tries once more with what it brings (specs/04 §6.1): a young view may miss relays that
//!   published after it was fetched.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use shallot_cell::{Host, ResolvedAnswer};
use shallot_directory::{NetworkView, ViewEntry};
use shallot_exit_policy::PolicySummary;
use shallot_p2p::{CIRCUIT_PROTOCOL, Node, PeerId};
use shallot_path::{ErrorKind as PathErrorKind, PathError, RelayIndex};
use shallot_proto::{HopSpec, MAX_STREAMS_PER_CIRCUIT};
use tokio::io::AsyncRead;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tracing::{debug, info, trace, warn};

use crate::circuit::{self, BuildFailure, CircuitCommand, CircuitShared};
use crate::config::ClientConfig;
use crate::err::StreamFailure;
use crate::metrics::Metrics;
use crate::path::Paths;
use crate::sensitive::Sensitive;
use crate::stream::{StreamHandle, stream_pair};
use crate::timeout::BuildTimes;

/// Ports remembered as "recently used" for building ahead.
pub(crate) const MAX_RECENT_PORTS: usize = 16;
/// How long a port counts as recently used.
const RECENT_PORT_TTL: Duration = Duration::from_secs(3600);
/// How long a relay a circuit could not be extended to stays out of new paths. Long enough for
/// a retry to go elsewhere, short enough that a relay that was only briefly away comes back
/// before the next view refresh.
const UNREACHABLE_FOR: Duration = Duration::from_secs(60);
/// Most relays left out at once (a bound against a network that fails every extend).
const MAX_UNREACHABLE: usize = 256;
/// Most clean circuits kept ready at once.
pub(crate) const MAX_CLEAN_CIRCUITS: usize = 6;
/// A clean circuit nobody used is closed after this long.
const CLEAN_CIRCUIT_TTL: Duration = Duration::from_secs(3600);
/// How often the build-ahead and cleanup pass runs.
pub(crate) const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(5);
/// At most one view refresh on demand per this long: a program asking again and again for a
/// port no exit allows must not turn into a stream of DHT queries.
const DEMAND_REFRESH_EVERY: Duration = Duration::from_secs(10);
/// How long a build waits for the refresh it asked for. Below the stream timeout, so the
/// stream still gets its answer in time when the DHT is slow.
const DEMAND_REFRESH_WAIT: Duration = Duration::from_secs(5);

/// What keeps streams apart: streams with different keys never share a circuit.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub(crate) enum Isolation {
    /// No credentials given.
    #[default]
    None,
    /// SOCKS5 username/password (or HTTP Proxy-Authorization Basic credentials).
    Auth {
        /// Username bytes.
        user: Vec<u8>,
        /// Password bytes.
        pass: Vec<u8>,
    },
}

impl std::fmt::Debug for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("Isolation::None"),
            Self::Auth { .. } => f.write_str("Isolation::Auth([scrubbed])"),
        }
    }
}

/// A circuit known to the manager.
struct Entry {
    id: u64,
    commands: Option<mpsc::Sender<CircuitCommand>>,
    shared: Arc<CircuitShared>,
    path: Vec<PeerId>,
    exit_summary: Option<PolicySummary>,
    /// Which isolation group owns it (`None`: clean, never used).
    owner: Option<Isolation>,
    first_used: Option<Instant>,
    /// `Some` while building: resolves to whether the build succeeded.
    building: Option<watch::Receiver<Option<bool>>>,
    /// Takes no new streams (a relay left the view, or it was closed).
    retired: bool,
    created: Instant,
}

impl Entry {
    fn closed(&self) -> bool {
        self.shared.closed.load(Ordering::Relaxed)
    }

    fn allows(&self, port: Option<u16>) -> bool {
        match (port, &self.exit_summary) {
            (None, Some(s)) => !s.accepts_nothing(),
            (Some(p), Some(s)) => s.allows_port(p),
            (_, None) => false,
        }
    }

    /// Whether a new stream with `iso` to `port` may use this circuit (built or building).
    fn usable(&self, iso: &Isolation, port: Option<u16>, reuse: Duration, now: Instant) -> bool {
        !self.retired
            && !self.closed()
            && self.owner.as_ref().is_none_or(|o| o == iso)
            && self
                .first_used
                .is_none_or(|t| now.duration_since(t) < reuse)
            && self.allows(port)
            && self.shared.streams.load(Ordering::Relaxed) < MAX_STREAMS_PER_CIRCUIT
    }
}

/// A circuit chosen for a stream.
struct Chosen {
    id: u64,
    commands: mpsc::Sender<CircuitCommand>,
    exit: Option<PeerId>,
}

/// A snapshot of one circuit, for status views and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitSummary {
    /// The circuit's local id (never sent anywhere).
    pub id: u64,
    /// Its relays, guard first.
    pub path: Vec<PeerId>,
    /// Whether it is built (not building, not closed).
    pub built: bool,
    /// Whether an isolation group owns it (it carried a stream).
    pub claimed: bool,
    /// Streams open on it now.
    pub streams: usize,
    /// How long ago its build started.
    pub age: Duration,
}

/// The circuit manager. Shared by the front's connection tasks and the background tasks.
pub(crate) struct Manager {
    config: ClientConfig,
    node: Arc<Node>,
    view: RwLock<NetworkView>,
    paths: Paths,
    circuits: Mutex<Vec<Entry>>,
    build_times: Mutex<BuildTimes>,
    recent_ports: Mutex<HashMap<u16, Instant>>,
    next_id: AtomicU64,
    metrics: Metrics,
    /// Wakes the maintenance task (a clean circuit was claimed, the view changed).
    pub(crate) wake: Notify,
    /// Set once the first circuit is built.
    first_built: watch::Sender<bool>,
    /// Relays a circuit could not be extended to lately, and until when new paths leave them
    /// out: until the view drops a dead relay, a retry would otherwise pick it again.
    unreachable: Mutex<HashMap<PeerId, Instant>>,
    /// Wakes the view refresh task before its time (a build found no path).
    pub(crate) refresh_wanted: Notify,
    /// Counts finished view refreshes (failed ones too), so a build can wait for the one it
    /// asked for.
    refreshes: watch::Sender<u64>,
    /// The last refresh on demand: when it was asked, and the refresh count at that moment.
    last_demand: Mutex<Option<(Instant, u64)>>,
}

impl Manager {
    pub(crate) fn new(
        config: ClientConfig,
        node: Arc<Node>,
        view: NetworkView,
        paths: Paths,
        metrics: Metrics,
    ) -> Self {
        let build_times = BuildTimes::new(
            Duration::from_secs(config.build_timeout_initial_secs),
            Duration::from_secs(config.build_timeout_min_secs),
            Duration::from_secs(config.build_timeout_max_secs),
        );
        Self {
            config,
            node,
            view: RwLock::new(view),
            paths,
            circuits: Mutex::new(Vec::new()),
            build_times: Mutex::new(build_times),
            recent_ports: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            metrics,
            wake: Notify::new(),
            first_built: watch::Sender::new(false),
            unreachable: Mutex::new(HashMap::new()),
            refresh_wanted: Notify::new(),
            refreshes: watch::Sender::new(0),
            last_demand: Mutex::new(None),
        }
    }

    /// Called by the refresh task after each attempt, successful or not.
    pub(crate) fn view_refreshed(&self) {
        self.refreshes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The view could not make a path: asks the refresh task for a refresh now, or joins the
    /// one asked for less than [`DEMAND_REFRESH_EVERY`] ago if it has not finished, and waits
    /// for it at most [`DEMAND_REFRESH_WAIT`]. Whether a refresh finished meanwhile, so that
    /// one more try at a path may find what the view lacked.
    async fn refresh_on_demand(&self) -> bool {
        let mut finished = self.refreshes.subscribe();
        let now_count = *finished.borrow_and_update();
        let wait_for = {
            let mut last = match self.last_demand.lock() {
                Ok(l) => l,
                Err(poisoned) => poisoned.into_inner(),
            };
            match *last {
                Some((asked, count)) if asked.elapsed() < DEMAND_REFRESH_EVERY => {
                    if count != now_count {
                        // The recent refresh on demand has finished: another would bring the
                        // same view.
                        return false;
                    }
                    count
                }
                _ => {
                    *last = Some((Instant::now(), now_count));
                    debug!("no path in the view: refreshing it now");
                    self.refresh_wanted.notify_one();
                    now_count
                }
            }
        };
        tokio::time::timeout(DEMAND_REFRESH_WAIT, finished.wait_for(|n| *n != wait_for))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// A path from the view for `port`, leaving out the relays marked unreachable.
    fn select_path(
        &self,
        port: Option<u16>,
        avoid_exits: &[PeerId],
    ) -> Result<Vec<ViewEntry>, PathError> {
        let unreachable: Vec<PeerId> = self.unreachable().keys().copied().collect();
        self.with_view(|view| {
            if unreachable.is_empty() {
                return self.paths.select(view, port, avoid_exits);
            }
            self.paths
                .select(&view.without(&unreachable), port, avoid_exits)
        })
    }

    /// The relays left out of new paths, with the expired entries already dropped.
    fn unreachable(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, Instant>> {
        let mut unreachable = match self.unreachable.lock() {
            Ok(u) => u,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = Instant::now();
        unreachable.retain(|_, until| *until > now);
        unreachable
    }

    /// Leaves `peer` out of new paths for [`UNREACHABLE_FOR`].
    fn mark_unreachable(&self, peer: PeerId) {
        let mut unreachable = self.unreachable();
        if unreachable.len() < MAX_UNREACHABLE {
            unreachable.insert(peer, Instant::now() + UNREACHABLE_FOR);
        }
    }

    /// Whether `view` holds a usable path (to any exit).
    pub(crate) fn path_possible(&self, view: &NetworkView) -> bool {
        match self.paths.select(view, None, &[]) {
            Ok(_) => true,
            Err(err) => {
                if matches!(err.kind(), PathErrorKind::Storage | PathErrorKind::Internal) {
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
                .collect::<std::collections::HashSet<_>>()
        });
        let mut circuits = self.lock();
        for entry in circuits.iter_mut() {
            if !entry.retired && entry.path.iter().any(|p| !known.contains(p)) {
                debug!(
                    circuit = entry.id,
                    "a relay of the circuit left the view: retired"
                );
                entry.retired = true;
            }
        }
        drop(circuits);
        self.wake.notify_one();
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        match self.circuits.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// A snapshot of every circuit.
    pub(crate) fn circuits(&self) -> Vec<CircuitSummary> {
        self.lock()
            .iter()
            .filter(|e| !e.closed())
            .map(|e| CircuitSummary {
                id: e.id,
                path: e.path.clone(),
                built: e.building.is_none() && e.shared.built.load(Ordering::Relaxed),
                claimed: e.owner.is_some(),
                streams: e.shared.streams.load(Ordering::Relaxed),
                age: e.created.elapsed(),
            })
            .collect()
    }

    fn note_port(&self, port: u16) {
        let mut ports = match self.recent_ports.lock() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = Instant::now();
        ports.retain(|_, t| now.duration_since(*t) < RECENT_PORT_TTL);
        let oldest = ports.iter().min_by_key(|(_, t)| **t).map(|(p, _)| *p);
        if let Some(oldest) =
            oldest.filter(|_| !ports.contains_key(&port) && ports.len() >= MAX_RECENT_PORTS)
        {
            ports.remove(&oldest);
        }
        ports.insert(port, now);
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
        self.note_port(port);
        let mut avoid_exits: Vec<PeerId> = Vec::new();
        let mut avoid_circuits: Vec<u64> = Vec::new();
        let mut last = StreamFailure::CircuitFailed;
        for attempt in 0..self.config.max_stream_attempts {
            let chosen = match self
                .choose(iso, Some(port), &avoid_exits, &avoid_circuits)
                .await
            {
                Ok(c) => c,
                Err(StreamFailure::NoExitForPort) if !avoid_exits.is_empty() => return Err(last),
                Err(StreamFailure::CircuitFailed) => {
                    last = StreamFailure::CircuitFailed;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let (mut handle, end) = stream_pair();
            let open = CircuitCommand::Open {
                host: host.clone(),
                port,
                end,
            };
            if chosen.commands.send(open).await.is_err() {
                avoid_circuits.push(chosen.id);
                continue;
            }
            let answer =
                tokio::time::timeout(self.config.stream_timeout(), handle.connected(io, early))
                    .await
                    .unwrap_or(Err(StreamFailure::Timeout));
            match answer {
                Ok(addr) => return Ok((handle, addr)),
                Err(failure) => {
                    debug!(
                        attempt,
                        circuit = chosen.id,
                        %failure,
                        dest = ?Sensitive(host),
                        "stream attempt failed"
                    );
                    if !failure.retry_elsewhere() {
                        return Err(failure);
                    }
                    if failure == StreamFailure::End(shallot_cell::EndReason::ExitPolicy) {
                        avoid_exits.extend(chosen.exit);
                    }
                    avoid_circuits.push(chosen.id);
                    last = failure;
                }
            }
        }
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
            let chosen = match self.choose(iso, None, &[], &avoid_circuits).await {
                Ok(c) => c,
                Err(StreamFailure::CircuitFailed) => continue,
                Err(e) => return Err(e),
            };
            let (reply, answer) = oneshot::channel();
            let cmd = CircuitCommand::Resolve {
                host: host.clone(),
                reply,
            };
            if chosen.commands.send(cmd).await.is_err() {
                avoid_circuits.push(chosen.id);
                continue;
            }
            let result = tokio::time::timeout(self.config.stream_timeout(), answer)
                .await
                .map_err(|_| StreamFailure::Timeout)
                .and_then(|r| r.unwrap_or(Err(StreamFailure::CircuitFailed)));
            match result {
                Ok(answers) => return Ok(answers),
                Err(e) if e.retry_elsewhere() => {
                    avoid_circuits.push(chosen.id);
                    last = e;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Finds (or builds) a circuit for a stream with `iso` to `port`, and claims it for `iso`.
    async fn choose(
        &self,
        iso: &Isolation,
        port: Option<u16>,
        avoid_exits: &[PeerId],
        avoid_circuits: &[u64],
    ) -> Result<Chosen, StreamFailure> {
        // One wait for a build in progress, then our own build.
        for _ in 0..2 {
            let waiting = {
                let mut circuits = self.lock();
                let now = Instant::now();
                let reuse = self.config.circuit_reuse();
                let fits = |e: &Entry| {
                    e.usable(iso, port, reuse, now)
                        && !avoid_circuits.contains(&e.id)
                        && e.path.last().is_none_or(|x| !avoid_exits.contains(x))
                };
                // Prefer a circuit this group already owns, then a clean one.
                let ready = circuits
                    .iter()
                    .position(|e| e.building.is_none() && e.owner.is_some() && fits(e))
                    .or_else(|| {
                        circuits
                            .iter()
                            .position(|e| e.building.is_none() && fits(e))
                    });
                if let Some(i) = ready {
                    let entry = &mut circuits[i];
                    if let Some(commands) = entry.commands.clone() {
                        let was_clean = entry.owner.is_none();
                        entry.owner = Some(iso.clone());
                        entry.first_used.get_or_insert(now);
                        let chosen = Chosen {
                            id: entry.id,
                            commands,
                            exit: entry.path.last().copied(),
                        };
                        drop(circuits);
                        if was_clean {
                            // A clean circuit was used up: build another ahead.
                            self.wake.notify_one();
                        }
                        return Ok(chosen);
                    }
                }
                circuits
                    .iter()
                    .find(|e| e.building.is_some() && e.owner.as_ref() == Some(iso) && fits(e))
                    .and_then(|e| e.building.clone())
            };
            match waiting {
                Some(mut rx) => {
                    let _ = rx.wait_for(Option::is_some).await;
                }
                None => break,
            }
        }
        let id = self
            .build(port, avoid_exits, Some(iso.clone()))
            .await
            .map_err(|e| match e {
                BuildError::Path(err) if err.kind() == PathErrorKind::PolicyRefusal => {
                    StreamFailure::NoExitForPort
                }
                BuildError::Path(err) => {
                    if err.kind() != PathErrorKind::Retry {
                        warn!(%err, "path selection failed");
                    }
                    StreamFailure::NoPath
                }
                BuildError::TooMany => StreamFailure::TooManyCircuits,
                BuildError::Failed(failure) => {
                    debug!(%failure, "circuit for a stream failed");
                    StreamFailure::CircuitFailed
                }
            })?;
        let mut circuits = self.lock();
        let entry = circuits
            .iter_mut()
            .find(|e| e.id == id)
            .ok_or(StreamFailure::CircuitFailed)?;
        entry.first_used.get_or_insert(Instant::now());
        Ok(Chosen {
            id,
            commands: entry.commands.clone().ok_or(StreamFailure::CircuitFailed)?,
            exit: entry.path.last().copied(),
        })
    }

    /// Builds a circuit whose exit allows `port`, owned by `owner` (`None`: clean).
    pub(crate) async fn build(
        &self,
        port: Option<u16>,
        avoid_exits: &[PeerId],
        owner: Option<Isolation>,
    ) -> Result<u64, BuildError> {
        let path = match self.select_path(port, avoid_exits) {
            Err(err)
                if matches!(
                    err.kind(),
                    PathErrorKind::PolicyRefusal | PathErrorKind::Retry
                ) && self.refresh_on_demand().await =>
            {
                self.select_path(port, avoid_exits)
            }
            selected => selected,
        }
        .map_err(BuildError::Path)?;
        let specs: Vec<HopSpec> = path.iter().map(hop_spec).collect();
        let peers: Vec<PeerId> = path.iter().map(|e| e.descriptor.peer_id()).collect();
        let path_peers = peers.clone();
        let exit_summary = path.last().and_then(|e| {
            e.descriptor
                .descriptor()
                .exit_policy_summary()
                .ok()
                .flatten()
        });
        let guard = *peers
            .first()
            .ok_or(BuildError::Path(PathError::InvariantViolated("empty path")))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (done_tx, done_rx) = watch::channel(None);
        let mut shared = Arc::new(CircuitShared::default());
        {
            let mut circuits = self.lock();
            circuits.retain(|e| !e.closed() || e.building.is_some());
            if circuits.len() >= self.config.max_circuits {
                self.metrics.circuit_failure("too_many");
                return Err(BuildError::TooMany);
            }
            circuits.push(Entry {
                id,
                commands: None,
                shared: Arc::clone(&shared),
                path: peers,
                exit_summary,
                owner,
                first_used: None,
                building: Some(done_rx),
                retired: false,
                created: Instant::now(),
            });
        }
        let timeout = self.build_timeout();
        let started = Instant::now();
        let result = tokio::time::timeout(timeout, async {
            let mut control = self.node.stream_control();
            let link = control
                .open_stream(guard, CIRCUIT_PROTOCOL)
                .await
                .map_err(|_| BuildFailure::Failed("dial"))?;
            trace!(circuit = id, since_start = ?started.elapsed(), "stream to the guard open");
            let spawned = circuit::spawn(id, link, specs, timeout, started, self.metrics.clone())
                .map_err(|_| BuildFailure::Failed("internal"))?;
            {
                let mut circuits = self.lock();
                if let Some(e) = circuits.iter_mut().find(|e| e.id == id) {
                    e.commands = Some(spawned.commands);
                    e.shared = Arc::clone(&spawned.shared);
                }
            }
            shared = spawned.shared;
            spawned
                .built
                .await
                .unwrap_or(Err(BuildFailure::Failed("destroyed")))
        })
        .await
        .unwrap_or(Err(BuildFailure::Timeout));
        let mut circuits = self.lock();
        let ok = result.is_ok();
        match &result {
            Ok(took) => {
                self.metrics.build_seconds.observe(took.as_secs_f64());
                match self.build_times.lock() {
                    Ok(mut t) => t.record(*took),
                    Err(p) => p.into_inner().record(*took),
                }
                if let Some(e) = circuits.iter_mut().find(|e| e.id == id) {
                    e.building = None;
                }
                self.first_built.send_replace(true);
            }
            Err(failure) => {
                if matches!(
                    failure,
                    BuildFailure::Failed("dial") | BuildFailure::Timeout
                ) {
                    self.metrics.circuit_failure(failure.label());
                }
                // Dropping the entry drops its command sender: the task destroys the circuit.
                circuits.retain(|e| e.id != id);
            }
        }
        drop(circuits);
        // specs/05 §5.4: a build that never got past the guard (no link, or no CREATED from
        // it) counts against the guard; any later failure says nothing about it.
        let built_hops = shared.hops.load(Ordering::Relaxed);
        let at_guard = matches!(result, Err(BuildFailure::Failed("dial")))
            || (result.is_err() && built_hops == 0);
        if ok || at_guard {
            self.paths.guard_outcome(&guard, ok);
        }
        // A refused EXTEND (TRUNCATED) names the relay the last hop could not reach: the next
        // one after the hops built. Any other failure (a destroy, a timeout) could have happened
        // anywhere on the path, so it names nobody. Guards are left to the rules of specs/05.
        if matches!(result, Err(BuildFailure::Failed("extend_failed")))
            && built_hops >= 1
            && let Some(next) = path_peers.get(built_hops).copied()
        {
            debug!(
                circuit = id,
                "leaving an unreachable relay out of new paths for a while"
            );
            self.mark_unreachable(next);
        }
        let _ = done_tx.send(Some(ok));
        debug!(circuit = id, ok, "circuit build finished");
        result.map(|_| id).map_err(BuildError::Failed)
    }

    fn build_timeout(&self) -> Duration {
        match self.build_times.lock() {
            Ok(t) => t.timeout(),
            Err(p) => p.into_inner().timeout(),
        }
    }

    /// Closes circuits past their use (dirty and idle, retired and idle, clean for too
    /// long), then builds clean circuits ahead for the ports that need one, one at a time:
    /// a new circuit's exit often allows the other ports too, and builds that run together
    /// slow each other down (4 at once took 5.0–6.8 ms each on the test network).
    pub(crate) async fn maintain(self: &Arc<Self>) {
        for _ in 0..MAX_CLEAN_CIRCUITS {
            let Some(port) = self.next_build_ahead() else {
                return;
            };
            if let Err(err) = self.build(port, &[], None).await {
                debug!(?err, "building ahead failed");
                return;
            }
        }
    }

    /// Closes circuits past their use; then the port (`None`: any) the next clean circuit
    /// should be built for, if one is needed and some exit in the view allows it.
    fn next_build_ahead(&self) -> Option<Option<u16>> {
        let ports = self.ports_to_cover();
        let needed: Vec<Option<u16>> = {
            let mut circuits = self.lock();
            let now = Instant::now();
            let reuse = self.config.circuit_reuse();
            circuits.retain(|e| {
                if e.building.is_some() {
                    return true;
                }
                let idle = e.shared.streams.load(Ordering::Relaxed) == 0;
                let dirty = e.first_used.is_some_and(|t| now.duration_since(t) >= reuse);
                let stale_clean =
                    e.owner.is_none() && now.duration_since(e.created) >= CLEAN_CIRCUIT_TTL;
                !(e.closed() || (idle && (dirty || e.retired)) || stale_clean)
            });
            let clean: Vec<&Entry> = circuits
                .iter()
                .filter(|e| e.owner.is_none() && !e.retired && !e.closed())
                .collect();
            let room = MAX_CLEAN_CIRCUITS.saturating_sub(clean.len());
            let mut needed: Vec<Option<u16>> = ports
                .into_iter()
                .filter(|p| !clean.iter().any(|e| e.allows(Some(*p))))
                .map(Some)
                .collect();
            if clean.is_empty() && needed.is_empty() && !*self.first_built.borrow() {
                // Bootstrap: one circuit proves the network works.
                needed.push(None);
            }
            needed.truncate(room);
            // Leave a quarter of the circuit budget to on-demand builds.
            let budget = self
                .config
                .max_circuits
                .saturating_sub(circuits.len())
                .saturating_sub(self.config.max_circuits / 4);
            needed.truncate(budget.max(usize::from(circuits.is_empty())));
            needed
        };
        needed.into_iter().find(|port| {
            port.is_none_or(|port| {
                self.with_view(|v| {
                    let relays = RelayIndex::new(v);
                    v.entries()
                        .any(|e| relays.exit_allows(&e.descriptor.peer_id(), port))
                })
            })
        })
    }

    fn ports_to_cover(&self) -> Vec<u16> {
        let mut ports = self.config.preemptive_ports.clone();
        let recent = match self.recent_ports.lock() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = Instant::now();
        for (port, at) in recent.iter() {
            if now.duration_since(*at) < RECENT_PORT_TTL && !ports.contains(port) {
                ports.push(*port);
            }
        }
        ports
    }

    /// Closes every circuit (shutdown).
    pub(crate) fn close_all(&self) {
        let mut circuits = self.lock();
        let n = circuits.len();
        circuits.clear();
        info!(circuits = n, "closed all circuits");
    }
}

/// Why a build did not happen or failed.
#[derive(Debug)]
pub(crate) enum BuildError {
    /// No path.
    Path(PathError),
    /// The circuit limit is reached.
    TooMany,
    /// The build failed.
    Failed(BuildFailure),
}

/// What a circuit needs to know about a relay to use it as a hop.
fn hop_spec(entry: &ViewEntry) -> HopSpec {
    let d = entry.descriptor.descriptor();
    HopSpec {
        peer_id: entry.descriptor.peer_id().to_bytes(),
        addrs: d.addrs.iter().map(|a| a.to_vec()).collect(),
        onion_key: d.onion_key,
    }
}
