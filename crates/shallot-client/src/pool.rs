//! The circuit pool: every rule about which circuit carries a stream and when circuits are
//! built, reused, closed or left out, as plain state. Each method takes `now` and returns a
//! decision; nothing here sleeps, dials or reads a clock, so every rule is unit-tested with
//! synthetic instants (Arti's `tor-circmgr` keeps its rules behind abstract circuits for the
//! same reason). The manager (`manager.rs`) does the async work the decisions call for.
//!
//! - **Isolation** (Tor's IsolateSOCKSAuth): every stream has an [`Isolation`] key. A circuit is
//!   *clean* until its first stream; that stream's key then owns it, and only streams with an
//!   equal key use it.
//! - **Reuse**: a circuit takes new streams for `reuse` after its first use (Tor's
//!   MaxCircuitDirtiness), then only finishes the ones it has.
//! - **Leases**: each stream holds a lease on its circuit from the moment it is assigned (while
//!   the circuit is still being built, too) until it ends; a circuit takes at most
//!   [`MAX_STREAMS_PER_CIRCUIT`] leases. Counting assignments, not streams the circuit task has
//!   opened, is what lets a burst of streams spread over the circuits being built for it instead
//!   of each stream building its own.
//! - **Budget**: at most `max_circuits` circuits, built, building or reserved. At the cap, the
//!   least recently used built circuit without a lease is closed to make room, so a new
//!   isolation group never fails because old ones hold circuits. When every circuit carries
//!   streams, a stream that needs room waits in a bounded queue, oldest first.
//! - **Build ahead**: a clean circuit is kept ready for each preemptive or recently used port
//!   (at most [`MAX_CLEAN_CIRCUITS`]), within three quarters of the budget.
//! - **Build outcomes**: a build that never got past the guard counts against it (specs/05
//!   §5.4); one that got past it counts for or against it in path bias (§5.6), and so does
//!   whether the circuit carried a stream. A refused EXTEND names the relay that could not be
//!   reached, which only the retries of the stream the build was for leave out (§9.1 rule 7):
//!   the pool keeps no list of relays to avoid, so no hop's word reaches another path.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use shallot_exit_policy::PolicySummary;
use shallot_p2p::PeerId;
use shallot_proto::MAX_STREAMS_PER_CIRCUIT;

use crate::circuit::BuildFailure;
use crate::timeout::BuildTimes;

/// Ports remembered as "recently used" for building ahead.
pub(crate) const MAX_RECENT_PORTS: usize = 16;
/// How long a port counts as recently used.
pub(crate) const RECENT_PORT_TTL: Duration = Duration::from_secs(3600);
/// Most clean circuits kept ready at once.
pub(crate) const MAX_CLEAN_CIRCUITS: usize = 6;
/// A clean circuit nobody used is closed after this long.
pub(crate) const CLEAN_CIRCUIT_TTL: Duration = Duration::from_secs(3600);
/// Most streams waiting for room at once; one more is refused at once. Above the front's
/// default connection limit (1,024) with room for a configured higher one.
pub(crate) const MAX_WAITING_STREAMS: usize = 16_384;
/// Unanswered uses held for the manager between two looks at the pool (it looks after every
/// change); past it the guard's use stays pending, which is the lenient side.
pub(crate) const MAX_UNANSWERED_USES: usize = 256;
/// A circuit's id in the pool (local, never sent anywhere).
pub(crate) type CircuitId = u64;
/// A queued stream's ticket.
pub(crate) type WaiterId = u64;

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
    /// The DNS port's lookups (specs/07 §8.4): never on a circuit of a SOCKS or HTTP user, so
    /// an exit cannot tie a name looked up by the system to an application's streams.
    Dns,
}

impl std::fmt::Debug for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("Isolation::None"),
            Self::Auth { .. } => f.write_str("Isolation::Auth([scrubbed])"),
            Self::Dns => f.write_str("Isolation::Dns"),
        }
    }
}

/// Where a circuit is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Its slot is taken; its path is being chosen.
    Reserved,
    /// Its path is known; hops are being added.
    Building,
    /// Built: it carries streams.
    Built,
}

/// How far a built circuit got in carrying streams, for path bias (specs/05 §5.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    /// No stream sent on it yet.
    Unused,
    /// A stream was sent; the exit has not answered one.
    Attempted,
    /// The exit answered a stream on it.
    Answered,
}

/// A circuit of the pool. `C` is the manager's handle on it.
#[derive(Debug)]
struct Entry<C> {
    id: CircuitId,
    circuit: C,
    phase: Phase,
    /// Its relays, guard first (empty while reserved).
    path: Vec<PeerId>,
    /// What its exit allows (unknown while reserved).
    exit: Option<PolicySummary>,
    /// The port it is being built for (`None`: any exit), which stands in for the exit's policy
    /// until the path is known.
    built_for: Option<u16>,
    /// Which isolation group owns it (`None`: clean).
    owner: Option<Isolation>,
    /// Takes no new streams (a relay left the view).
    retired: bool,
    created: Instant,
    first_used: Option<Instant>,
    last_used: Instant,
    leases: usize,
    used: Use,
}

impl<C> Entry<C> {
    fn allows(&self, port: Option<u16>) -> bool {
        match (&self.exit, port) {
            (Some(s), None) => !s.accepts_nothing(),
            (Some(s), Some(p)) => s.allows_port(p),
            // Not chosen yet: a circuit built for a port allows it; one built for any exit
            // is only known to allow something.
            (None, None) => self.phase == Phase::Reserved,
            (None, Some(p)) => self.phase == Phase::Reserved && self.built_for == Some(p),
        }
    }

    fn dirty(&self, reuse: Duration, now: Instant) -> bool {
        self.first_used
            .is_some_and(|t| now.saturating_duration_since(t) >= reuse)
    }
}

/// What a stream asks of the pool.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request<'a> {
    /// Its isolation key.
    pub(crate) iso: &'a Isolation,
    /// Its port (`None`: a RESOLVE, any exit).
    pub(crate) port: Option<u16>,
    /// Exits that refused it before.
    pub(crate) avoid_exits: &'a [PeerId],
    /// Circuits it failed on before.
    pub(crate) avoid_circuits: &'a [CircuitId],
    /// Relays a refused EXTEND of one of its own builds named (specs/05 §9.1 rule 7).
    pub(crate) avoid_relays: &'a [PeerId],
    /// Its place in the queue, if it waits there.
    pub(crate) waiter: Option<WaiterId>,
}

/// The pool's answer to a [`Request`]. Every answer but `Full` gives the stream a lease on the
/// circuit named, to be given back with [`Pool::release`].
#[derive(Debug)]
pub(crate) enum Decision<C> {
    /// Use this built circuit.
    Use {
        /// The circuit.
        id: CircuitId,
        /// The manager's handle on it.
        circuit: C,
        /// It was clean: build another ahead.
        claimed_clean: bool,
    },
    /// Wait for this circuit's build, then use it.
    Wait {
        /// The circuit.
        id: CircuitId,
        /// The manager's handle on it.
        circuit: C,
    },
    /// Build a new circuit for the request (its slot is reserved); `evicted` was closed to make
    /// room.
    Build {
        /// The new circuit.
        id: CircuitId,
        /// The manager's handle on it (made by the caller's closure).
        circuit: C,
        /// The circuit closed to make room, if one was.
        evicted: Option<C>,
    },
    /// Every circuit is busy and the budget is spent: wait in the queue.
    Full,
}

/// What a finished build means beyond the circuit itself.
#[derive(Debug, PartialEq, Eq, Default)]
pub(crate) struct BuildVerdict {
    /// The guard, and whether the build counts for (`true`) or against (`false`) its
    /// reachability (specs/05 §5.4); `None` when the build says nothing about it.
    pub(crate) guard: Option<(PeerId, bool)>,
    /// The guard, and whether the circuit was built (`true`) or failed after the guard
    /// answered (`false`): a path-bias observation (specs/05 §5.6).
    pub(crate) bias: Option<(PeerId, bool)>,
    /// For a failure in `bias`: the relay the circuit was adding when it failed, so that the
    /// failure is not held against the guard if that relay turns out to be gone (§5.6).
    pub(crate) adding: Option<PeerId>,
    /// The relay a refused EXTEND named, which the retries of the stream this build was for
    /// may leave out (specs/05 §9.1 rule 7), and nothing else.
    pub(crate) named: Option<PeerId>,
}

/// A snapshot of one circuit, for status views and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitSummary {
    /// The circuit's local id (never sent anywhere).
    pub id: u64,
    /// Its relays, guard first.
    pub path: Vec<PeerId>,
    /// Whether it is built.
    pub built: bool,
    /// Whether an isolation group owns it (it carried a stream).
    pub claimed: bool,
    /// Streams assigned to it now.
    pub streams: usize,
    /// How long ago its build started.
    pub age: Duration,
}

/// Settings of the pool.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolConfig {
    /// Most circuits at once (built, building or reserved).
    pub(crate) max_circuits: usize,
    /// How long a circuit takes new streams after its first use.
    pub(crate) reuse: Duration,
}

/// The pool. `C` is the manager's handle on a circuit; it is dropped when the pool closes it.
#[derive(Debug)]
pub(crate) struct Pool<C> {
    config: PoolConfig,
    entries: Vec<Entry<C>>,
    next_id: CircuitId,
    /// Streams waiting for room, oldest first, with their keys.
    queue: VecDeque<(WaiterId, Isolation)>,
    next_waiter: WaiterId,
    /// Waiters to wake since the caller last asked.
    wake: Vec<WaiterId>,
    recent_ports: HashMap<u16, Instant>,
    build_times: BuildTimes,
    first_built: bool,
    /// Guards of circuits removed with a use attempt unanswered, for the manager to settle.
    unanswered_uses: Vec<PeerId>,
}

impl<C: Clone> Pool<C> {
    pub(crate) fn new(config: PoolConfig, build_times: BuildTimes) -> Self {
        Self {
            config,
            entries: Vec::new(),
            next_id: 1,
            queue: VecDeque::new(),
            next_waiter: 1,
            wake: Vec::new(),
            recent_ports: HashMap::new(),
            build_times,
            first_built: false,
            unanswered_uses: Vec::new(),
        }
    }

    fn fits(&self, e: &Entry<C>, req: &Request<'_>, now: Instant) -> bool {
        !e.retired
            && e.owner.as_ref().is_none_or(|o| o == req.iso)
            && !e.dirty(self.config.reuse, now)
            && e.allows(req.port)
            && e.leases < MAX_STREAMS_PER_CIRCUIT
            && !req.avoid_circuits.contains(&e.id)
            && (e.phase == Phase::Reserved && req.avoid_relays.is_empty()
                || e.phase != Phase::Reserved
                    && !e.path.iter().any(|p| req.avoid_relays.contains(p)))
            && match e.path.last() {
                Some(exit) => !req.avoid_exits.contains(exit),
                // Its exit is not chosen yet, and will not be chosen with this stream's
                // exclusions.
                None => req.avoid_exits.is_empty(),
            }
    }

    /// Chooses a circuit for `req`: a built one it may use (its group's own first, then a clean
    /// one), else one being built for it, else a new one if the budget (or an idle circuit to
    /// close) allows and no older stream waits for room; else [`Decision::Full`]. `make` gives
    /// the handle of a new circuit.
    pub(crate) fn choose(
        &mut self,
        req: &Request<'_>,
        now: Instant,
        make: impl FnOnce() -> C,
    ) -> Decision<C> {
        let decision = self.decide(req, now, make);
        if let Some(waiter) = req.waiter
            && !matches!(decision, Decision::Full)
        {
            self.dequeue(waiter);
        }
        decision
    }

    fn decide(&mut self, req: &Request<'_>, now: Instant, make: impl FnOnce() -> C) -> Decision<C> {
        let built = |e: &Entry<C>| e.phase == Phase::Built;
        let owned = self
            .entries
            .iter()
            .position(|e| built(e) && e.owner.is_some() && self.fits(e, req, now));
        let ready = owned.or_else(|| {
            self.entries
                .iter()
                .position(|e| built(e) && self.fits(e, req, now))
        });
        if let Some(i) = ready {
            let claimed_clean = self.entries[i].owner.is_none();
            let e = self.claim(i, req.iso, now);
            return Decision::Use {
                id: e.id,
                circuit: e.circuit.clone(),
                claimed_clean,
            };
        }
        if let Some(i) = self
            .entries
            .iter()
            .position(|e| !built(e) && self.fits(e, req, now))
        {
            let e = self.claim(i, req.iso, now);
            return Decision::Wait {
                id: e.id,
                circuit: e.circuit.clone(),
            };
        }
        // Room is given in queue order: a stream that finds others waiting queues behind them.
        if self
            .queue
            .front()
            .is_some_and(|(w, _)| Some(*w) != req.waiter)
        {
            return Decision::Full;
        }
        let evicted = if self.entries.len() < self.config.max_circuits {
            None
        } else {
            let idle = self
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| built(e) && e.leases == 0)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i);
            match idle {
                Some(i) => Some(self.entries.swap_remove(i).circuit),
                None => return Decision::Full,
            }
        };
        let circuit = make();
        let id = self.reserve(req.port, Some(req.iso.clone()), now, circuit.clone());
        if let Some(e) = self.entries.last_mut() {
            e.leases = 1;
            e.first_used = Some(now);
        }
        Decision::Build {
            id,
            circuit,
            evicted,
        }
    }

    /// Gives the entry at `i` one more lease for `iso`.
    fn claim(&mut self, i: usize, iso: &Isolation, now: Instant) -> &Entry<C> {
        let e = &mut self.entries[i];
        if e.owner.is_none() {
            e.owner = Some(iso.clone());
        }
        e.first_used.get_or_insert(now);
        e.last_used = now;
        e.leases += 1;
        &self.entries[i]
    }

    fn reserve(
        &mut self,
        port: Option<u16>,
        owner: Option<Isolation>,
        now: Instant,
        circuit: C,
    ) -> CircuitId {
        let id = self.next_id;
        self.next_id += 1;
        self.entries.push(Entry {
            id,
            circuit,
            phase: Phase::Reserved,
            path: Vec::new(),
            exit: None,
            built_for: port,
            owner,
            retired: false,
            created: now,
            first_used: None,
            last_used: now,
            leases: 0,
            used: Use::Unused,
        });
        id
    }

    fn index(&self, id: CircuitId) -> Option<usize> {
        self.entries.iter().position(|e| e.id == id)
    }

    /// Removes circuit `id` (its handle is returned, to be dropped) and wakes the head of the
    /// queue: there is room now.
    fn remove(&mut self, id: CircuitId) -> Option<C> {
        let i = self.index(id)?;
        let e = self.entries.swap_remove(i);
        if e.used == Use::Attempted
            && let Some(guard) = e.path.first()
            && self.unanswered_uses.len() < MAX_UNANSWERED_USES
        {
            self.unanswered_uses.push(*guard);
        }
        self.wake_head();
        Some(e.circuit)
    }

    /// The guards of circuits that went with a stream sent and none answered since the last
    /// call: path-bias use failures (specs/05 §5.6), settled when the circuit is gone.
    pub(crate) fn take_unanswered_uses(&mut self) -> Vec<PeerId> {
        std::mem::take(&mut self.unanswered_uses)
    }

    /// Puts a stream that got [`Decision::Full`] in the queue; `None` when the queue is full.
    pub(crate) fn enqueue(&mut self, iso: &Isolation) -> Option<WaiterId> {
        if self.queue.len() >= MAX_WAITING_STREAMS {
            return None;
        }
        let id = self.next_waiter;
        self.next_waiter += 1;
        self.queue.push_back((id, iso.clone()));
        Some(id)
    }

    /// Takes `waiter` out of the queue (served or given up); the next one may try.
    pub(crate) fn dequeue(&mut self, waiter: WaiterId) {
        let was_head = self.queue.front().is_some_and(|(w, _)| *w == waiter);
        self.queue.retain(|(w, _)| *w != waiter);
        if was_head {
            self.wake_head();
        }
    }

    fn wake_head(&mut self) {
        if let Some((w, _)) = self.queue.front()
            && !self.wake.contains(w)
        {
            self.wake.push(*w);
        }
    }

    /// Wakes the oldest waiter of `owner`'s group (any, for a clean circuit): a circuit of
    /// that group has room for it now.
    fn wake_group(&mut self, owner: Option<&Isolation>) {
        let w = self
            .queue
            .iter()
            .find(|(_, iso)| owner.is_none_or(|o| o == iso))
            .map(|(w, _)| *w);
        if let Some(w) = w
            && !self.wake.contains(&w)
        {
            self.wake.push(w);
        }
    }

    /// The waiters to wake since the last call.
    pub(crate) fn take_wakeups(&mut self) -> Vec<WaiterId> {
        std::mem::take(&mut self.wake)
    }

    /// Streams waiting for room.
    pub(crate) fn waiting(&self) -> usize {
        self.queue.len()
    }

    /// A stream gave its lease on `id` back.
    pub(crate) fn release(&mut self, id: CircuitId, now: Instant) {
        let Some(i) = self.index(id) else {
            return;
        };
        let e = &mut self.entries[i];
        e.leases = e.leases.saturating_sub(1);
        e.last_used = now;
        let idle = e.leases == 0 && e.phase == Phase::Built;
        let owner = e.owner.clone();
        self.wake_group(owner.as_ref());
        if idle && self.entries.len() >= self.config.max_circuits {
            // It can be closed to make room.
            self.wake_head();
        }
    }

    /// The path of reserved circuit `id` was chosen. `false` if the circuit is gone.
    pub(crate) fn path_chosen(
        &mut self,
        id: CircuitId,
        path: Vec<PeerId>,
        exit: Option<PolicySummary>,
    ) -> bool {
        let Some(i) = self.index(id) else {
            return false;
        };
        let e = &mut self.entries[i];
        e.path = path;
        e.exit = exit;
        e.phase = Phase::Building;
        true
    }

    /// No path could be chosen for reserved circuit `id`: it goes.
    pub(crate) fn cancel(&mut self, id: CircuitId) -> Option<C> {
        self.remove(id)
    }

    /// The build of `id` finished: `Ok` with its build time, or how it failed. A built circuit
    /// takes streams (`update` may change its handle, e.g. to add the circuit's commands); a
    /// failed one goes (its handle is returned). The verdict says what the outcome means for
    /// the guard and for the relays of the path.
    pub(crate) fn build_finished(
        &mut self,
        id: CircuitId,
        result: Result<Duration, BuildFailure>,
        update: impl FnOnce(&mut C),
    ) -> (BuildVerdict, Option<C>) {
        let Some(i) = self.index(id) else {
            return (BuildVerdict::default(), None);
        };
        let guard = self.entries[i].path.first().copied();
        match result {
            Ok(took) => {
                self.build_times.record(took);
                self.first_built = true;
                let e = &mut self.entries[i];
                e.phase = Phase::Built;
                update(&mut e.circuit);
                let owner = e.owner.clone();
                self.wake_group(owner.as_ref());
                (
                    BuildVerdict {
                        guard: guard.map(|g| (g, true)),
                        bias: guard.map(|g| (g, true)),
                        adding: None,
                        named: None,
                    },
                    None,
                )
            }
            Err(failure) => {
                // specs/05 §5.4: a build that never got past the guard (no link, or no CREATED
                // from it) counts against the guard's reachability.
                let past_guard = failure.hops_built() > 0;
                let reach = guard.filter(|_| !past_guard).map(|g| (g, false));
                // §5.6: one that got past it counts against it in path bias, whatever the
                // reason given: the guard is in every such path and can fail any of them and
                // blame the next hop. Our own bug counts against nobody.
                let own_bug = matches!(failure, BuildFailure::Internal { .. });
                let bias = guard.filter(|_| past_guard && !own_bug).map(|g| (g, false));
                // A refused EXTEND names the relay the last hop could not reach. Any other
                // failure could have happened anywhere on the path, so it names nobody.
                let named = match failure {
                    BuildFailure::ExtendRefused { hop, .. } if hop >= 2 => {
                        self.entries[i].path.get(hop - 1).copied()
                    }
                    _ => None,
                };
                let adding =
                    bias.and_then(|_| self.entries[i].path.get(failure.hops_built()).copied());
                let removed = self.remove(id);
                (
                    BuildVerdict {
                        guard: reach,
                        bias,
                        adding,
                        named,
                    },
                    removed,
                )
            }
        }
    }

    /// The circuit's task ended (destroyed, link lost, or closed by us): it goes.
    pub(crate) fn closed(&mut self, id: CircuitId) -> Option<C> {
        self.remove(id)
    }

    /// The handle of circuit `id`, if it is in the pool.
    pub(crate) fn circuit(&self, id: CircuitId) -> Option<&C> {
        self.index(id).map(|i| &self.entries[i].circuit)
    }

    /// The exit of circuit `id`, once its path is known.
    pub(crate) fn exit_of(&self, id: CircuitId) -> Option<PeerId> {
        self.index(id)
            .and_then(|i| self.entries[i].path.last().copied())
    }

    /// Takes out the circuits past their use: built and without a lease, and dirty or retired;
    /// clean ones nobody claimed for [`CLEAN_CIRCUIT_TTL`]. Their handles are returned.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<C> {
        let reuse = self.config.reuse;
        let done: Vec<CircuitId> = self
            .entries
            .iter()
            .filter(|e| {
                e.phase == Phase::Built
                    && e.leases == 0
                    && (e.dirty(reuse, now)
                        || e.retired
                        || (e.owner.is_none()
                            && now.saturating_duration_since(e.created) >= CLEAN_CIRCUIT_TTL))
            })
            .map(|e| e.id)
            .collect();
        done.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    /// Retires every circuit through a relay `known` says is no longer in the view: it takes no
    /// new streams and closes once idle. Returns how many were retired now.
    pub(crate) fn retire_departed(&mut self, known: impl Fn(&PeerId) -> bool) -> usize {
        let mut n = 0;
        for e in &mut self.entries {
            if !e.retired && e.path.iter().any(|p| !known(p)) {
                e.retired = true;
                n += 1;
            }
        }
        n
    }

    /// Remembers that a stream asked for `port` (for building ahead).
    pub(crate) fn note_port(&mut self, port: u16, now: Instant) {
        self.recent_ports
            .retain(|_, t| now.saturating_duration_since(*t) < RECENT_PORT_TTL);
        if !self.recent_ports.contains_key(&port) && self.recent_ports.len() >= MAX_RECENT_PORTS {
            let oldest = self
                .recent_ports
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(p, _)| *p);
            if let Some(oldest) = oldest {
                self.recent_ports.remove(&oldest);
            }
        }
        self.recent_ports.insert(port, now);
    }

    /// The preemptive ports and those used within [`RECENT_PORT_TTL`].
    pub(crate) fn ports_to_cover(&self, preemptive: &[u16], now: Instant) -> Vec<u16> {
        let mut ports = preemptive.to_vec();
        let mut recent: Vec<u16> = self
            .recent_ports
            .iter()
            .filter(|(p, t)| {
                now.saturating_duration_since(**t) < RECENT_PORT_TTL && !ports.contains(p)
            })
            .map(|(p, _)| *p)
            .collect();
        recent.sort_unstable();
        ports.extend(recent);
        ports
    }

    /// Reserves the next clean circuit to build ahead, if one is needed: one per port to cover
    /// that no clean circuit allows (`exit_allows(port)`: some exit in the view allows it), at
    /// most [`MAX_CLEAN_CIRCUITS`] clean ones, within three quarters of the budget (the rest is
    /// for streams), never while streams wait for room. Before the first build, one circuit to
    /// any exit proves the network works. Returns the circuit and the port it is for.
    pub(crate) fn build_ahead(
        &mut self,
        preemptive: &[u16],
        exit_allows: impl Fn(u16) -> bool,
        now: Instant,
        make: impl FnOnce() -> C,
    ) -> Option<(CircuitId, C, Option<u16>)> {
        if !self.queue.is_empty() {
            return None;
        }
        let ports = self.ports_to_cover(preemptive, now);
        let clean: Vec<&Entry<C>> = self
            .entries
            .iter()
            .filter(|e| e.owner.is_none() && !e.retired)
            .collect();
        let mut needed: Vec<Option<u16>> = ports
            .into_iter()
            .filter(|p| !clean.iter().any(|e| e.allows(Some(*p))))
            .map(Some)
            .collect();
        if clean.is_empty() && needed.is_empty() && !self.first_built {
            needed.push(None);
        }
        let room = MAX_CLEAN_CIRCUITS.saturating_sub(clean.len());
        let max = self.config.max_circuits;
        let budget = max
            .saturating_sub(self.entries.len())
            .saturating_sub(max / 4)
            .max(usize::from(self.entries.is_empty()));
        let port = needed
            .into_iter()
            .take(room.min(budget))
            .find(|p| p.is_none_or(&exit_allows))?;
        let circuit = make();
        let id = self.reserve(port, None, now, circuit.clone());
        Some((id, circuit, port))
    }

    /// A stream was sent on built circuit `id`: its guard, the first time (a path-bias use
    /// attempt, specs/05 §5.6).
    pub(crate) fn stream_sent(&mut self, id: CircuitId) -> Option<PeerId> {
        let i = self.index(id)?;
        let e = &mut self.entries[i];
        if e.phase != Phase::Built || e.used != Use::Unused {
            return None;
        }
        e.used = Use::Attempted;
        e.path.first().copied()
    }

    /// The exit answered a stream on circuit `id`: its guard, the first time after
    /// [`Self::stream_sent`] (a path-bias use success).
    pub(crate) fn stream_answered(&mut self, id: CircuitId) -> Option<PeerId> {
        let i = self.index(id)?;
        let e = &mut self.entries[i];
        if e.used != Use::Attempted {
            return None;
        }
        e.used = Use::Answered;
        e.path.first().copied()
    }

    /// The build timeout for the next build, learned from recent ones.
    pub(crate) fn build_timeout(&self) -> Duration {
        self.build_times.timeout()
    }

    /// A snapshot of every circuit whose path is known.
    pub(crate) fn summaries(&self, now: Instant) -> Vec<CircuitSummary> {
        self.entries
            .iter()
            .filter(|e| e.phase != Phase::Reserved)
            .map(|e| CircuitSummary {
                id: e.id,
                path: e.path.clone(),
                built: e.phase == Phase::Built,
                claimed: e.owner.is_some(),
                streams: e.leases,
                age: now.saturating_duration_since(e.created),
            })
            .collect()
    }

    /// Circuits in the pool.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Takes out every circuit (shutdown).
    pub(crate) fn close_all(&mut self) -> Vec<C> {
        self.queue.clear();
        self.entries.drain(..).map(|e| e.circuit).collect()
    }
}

#[cfg(test)]
mod tests {
    use shallot_cell::DestroyReason;

    use super::*;

    const REUSE: Duration = Duration::from_secs(600);

    /// A pool whose handles are numbers (the n-th circuit made gets n).
    struct Fixture {
        pool: Pool<u32>,
        made: u32,
        t0: Instant,
    }

    fn iso(name: &str) -> Isolation {
        Isolation::Auth {
            user: name.as_bytes().to_vec(),
            pass: Vec::new(),
        }
    }

    fn summary(s: &str) -> PolicySummary {
        PolicySummary::decode(s).expect("summary")
    }

    fn req<'a>(iso: &'a Isolation, port: Option<u16>) -> Request<'a> {
        Request {
            iso,
            port,
            avoid_exits: &[],
            avoid_circuits: &[],
            avoid_relays: &[],
            waiter: None,
        }
    }

    impl Fixture {
        /// A fixture with one build under way on a random three-hop path.
        fn building_on_a_path() -> (Self, u64, Vec<PeerId>) {
            let mut f = Fixture::new(4);
            let Decision::Build { id, .. } = f.choose(&req(&Isolation::None, Some(80)), f.at(0))
            else {
                panic!("build");
            };
            let path: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
            f.pool.path_chosen(id, path.clone(), None);
            (f, id, path)
        }

        fn new(max_circuits: usize) -> Self {
            let times = BuildTimes::new(
                Duration::from_secs(60),
                Duration::from_secs(5),
                Duration::from_secs(120),
            );
            Self {
                pool: Pool::new(
                    PoolConfig {
                        max_circuits,
                        reuse: REUSE,
                    },
                    times,
                ),
                made: 0,
                t0: Instant::now(),
            }
        }

        fn at(&self, secs: u64) -> Instant {
            self.t0 + Duration::from_secs(secs)
        }

        fn choose(&mut self, req: &Request<'_>, now: Instant) -> Decision<u32> {
            let next = self.made + 1;
            let d = self.pool.choose(req, now, || next);
            if matches!(d, Decision::Build { .. }) {
                self.made = next;
            }
            d
        }

        /// Chooses for `req`, expects a new circuit, and builds it through a fresh path whose
        /// exit allows `exit`. Returns the circuit and its path.
        fn build(
            &mut self,
            req: &Request<'_>,
            exit: &str,
            now: Instant,
        ) -> (CircuitId, Vec<PeerId>) {
            let Decision::Build { id, .. } = self.choose(req, now) else {
                panic!("expected a build");
            };
            let path = self.finish(id, exit);
            (id, path)
        }

        /// Gives reserved circuit `id` a fresh path and finishes its build.
        fn finish(&mut self, id: CircuitId, exit: &str) -> Vec<PeerId> {
            let path: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
            assert!(self.pool.path_chosen(id, path.clone(), Some(summary(exit))));
            let (verdict, removed) =
                self.pool
                    .build_finished(id, Ok(Duration::from_millis(3)), |_| {});
            assert_eq!(verdict.guard, Some((path[0], true)));
            assert!(removed.is_none());
            path
        }
    }

    fn used(d: &Decision<u32>) -> Option<CircuitId> {
        match d {
            Decision::Use { id, .. } => Some(*id),
            _ => None,
        }
    }

    #[test]
    fn a_new_stream_builds_and_later_ones_wait_for_that_build_up_to_the_stream_cap() {
        let mut f = Fixture::new(32);
        let a = iso("a");
        let now = f.at(0);
        let Decision::Build { id, evicted, .. } = f.choose(&req(&a, Some(80)), now) else {
            panic!("the first stream builds");
        };
        assert!(evicted.is_none());
        for _ in 1..MAX_STREAMS_PER_CIRCUIT {
            match f.choose(&req(&a, Some(80)), now) {
                Decision::Wait { id: w, .. } => assert_eq!(w, id),
                other => panic!("expected to wait for the build, got {other:?}"),
            }
        }
        // The circuit being built is full: the next stream starts another build.
        assert!(matches!(
            f.choose(&req(&a, Some(80)), now),
            Decision::Build { id: second, .. } if second != id
        ));
        // A stream for another port does not wait for a circuit built for port 80.
        assert!(matches!(
            f.choose(&req(&a, Some(443)), now),
            Decision::Build { .. }
        ));
    }

    #[test]
    fn a_burst_of_1000_streams_builds_one_circuit_per_64_and_none_is_refused() {
        let mut f = Fixture::new(32);
        let none = Isolation::None;
        let now = f.at(0);
        let mut builds = 0;
        for i in 0..1000 {
            match f.choose(&req(&none, Some(80)), now) {
                Decision::Build { .. } => builds += 1,
                Decision::Wait { .. } => {}
                other => panic!("stream {i}: {other:?}"),
            }
        }
        assert_eq!(builds, 1000_usize.div_ceil(MAX_STREAMS_PER_CIRCUIT));
    }

    #[test]
    fn a_built_circuit_serves_its_own_group_only() {
        let mut f = Fixture::new(32);
        let (a, b) = (iso("a"), iso("b"));
        let (id, _) = f.build(&req(&a, Some(80)), "accept 1-65535", f.at(0));
        assert_eq!(used(&f.choose(&req(&a, Some(80)), f.at(1))), Some(id));
        assert!(matches!(
            f.choose(&req(&b, Some(80)), f.at(1)),
            Decision::Build { .. }
        ));
        assert!(matches!(
            f.choose(&req(&Isolation::None, Some(80)), f.at(1)),
            Decision::Build { .. }
        ));
    }

    #[test]
    fn a_clean_circuit_goes_to_the_first_group_that_uses_it() {
        let mut f = Fixture::new(32);
        let (a, b) = (iso("a"), iso("b"));
        let (id, _, port) = f
            .pool
            .build_ahead(&[80], |_| true, f.at(0), || 1)
            .expect("one built ahead");
        assert_eq!(port, Some(80));
        f.finish(id, "accept 80");
        match f.choose(&req(&a, Some(80)), f.at(1)) {
            Decision::Use {
                id: got,
                claimed_clean,
                ..
            } => {
                assert_eq!(got, id);
                assert!(claimed_clean);
            }
            other => panic!("expected the clean circuit, got {other:?}"),
        }
        assert!(matches!(
            f.choose(&req(&b, Some(80)), f.at(1)),
            Decision::Build { .. }
        ));
        assert!(matches!(
            f.choose(&req(&a, Some(80)), f.at(2)),
            Decision::Use {
                claimed_clean: false,
                ..
            }
        ));
    }

    #[test]
    fn a_circuit_takes_new_streams_for_the_reuse_time_after_its_first_use() {
        let mut f = Fixture::new(32);
        let a = iso("a");
        let (id, _) = f.build(&req(&a, Some(80)), "accept 1-65535", f.at(0));
        let almost = f.t0 + REUSE - Duration::from_secs(1);
        assert_eq!(used(&f.choose(&req(&a, Some(80)), almost)), Some(id));
        assert!(matches!(
            f.choose(&req(&a, Some(80)), f.t0 + REUSE),
            Decision::Build { .. }
        ));
    }

    #[test]
    fn an_exit_that_refuses_the_port_is_not_used() {
        let mut f = Fixture::new(32);
        let a = iso("a");
        let (id, _) = f.build(&req(&a, Some(80)), "accept 80", f.at(0));
        assert_eq!(used(&f.choose(&req(&a, Some(80)), f.at(1))), Some(id));
        assert!(matches!(
            f.choose(&req(&a, Some(443)), f.at(1)),
            Decision::Build { .. }
        ));
        // A RESOLVE takes any exit that allows something.
        assert_eq!(used(&f.choose(&req(&a, None), f.at(1))), Some(id));
    }

    #[test]
    fn circuits_and_exits_a_stream_failed_on_are_not_used_again() {
        let mut f = Fixture::new(32);
        let a = iso("a");
        let (id, path) = f.build(&req(&a, Some(80)), "accept 1-65535", f.at(0));
        let avoid_circuit = Request {
            avoid_circuits: &[id],
            ..req(&a, Some(80))
        };
        assert!(matches!(
            f.choose(&avoid_circuit, f.at(1)),
            Decision::Build { .. }
        ));
        let exit = [path[2]];
        let avoid_exit = Request {
            avoid_exits: &exit,
            ..req(&a, Some(80))
        };
        assert!(matches!(
            f.choose(&avoid_exit, f.at(1)),
            Decision::Build { .. }
        ));
    }

    #[test]
    fn at_the_cap_the_least_recently_used_idle_circuit_is_closed_to_make_room() {
        let mut f = Fixture::new(3);
        let groups: Vec<Isolation> = (0..4).map(|i| iso(&i.to_string())).collect();
        let mut ids = Vec::new();
        for (i, g) in groups.iter().take(3).enumerate() {
            let (id, _) = f.build(&req(g, Some(80)), "accept 1-65535", f.at(0));
            ids.push(id);
            // Group 1 stops using its circuit first, then 0, then 2.
            let order = [2, 1, 3][i];
            f.pool.release(id, f.at(order));
        }
        match f.choose(&req(&groups[3], Some(80)), f.at(10)) {
            Decision::Build { evicted, .. } => assert_eq!(evicted, Some(2), "group 1's"),
            other => panic!("expected room to be made, got {other:?}"),
        }
        assert_eq!(f.pool.len(), 3);
        let left: Vec<CircuitId> = f.pool.summaries(f.at(10)).iter().map(|s| s.id).collect();
        assert!(!left.contains(&ids[1]));
    }

    /// A browser that isolates sites (Tor Browser's first-party isolation, one set of SOCKS
    /// credentials per site) keeps an idle keep-alive connection open to each site it visited
    /// in the last couple of minutes (Firefox: 115 s), so each of those sites holds a lease on
    /// its circuit. With the default budget, the sites a browser keeps open at once must each
    /// get a circuit: with 32, the 33rd waited `stream_timeout_secs` and failed.
    #[test]
    fn a_browser_with_many_isolated_sites_open_gets_a_circuit_for_each() {
        const OPEN_SITES: usize = 100;
        let mut f = Fixture::new(crate::config::DEFAULT_MAX_CIRCUITS);
        let sites: Vec<Isolation> = (0..OPEN_SITES).map(|i| iso(&format!("site-{i}"))).collect();
        for (i, site) in sites.iter().enumerate() {
            // Each build keeps its lease: the site's keep-alive stream stays open.
            match f.choose(&req(site, Some(443)), f.at(1)) {
                Decision::Build { id, .. } => {
                    f.finish(id, "accept 1-65535");
                }
                _ => panic!("site {} of {OPEN_SITES} got no circuit", i + 1),
            }
        }
        const _: () = assert!(OPEN_SITES < crate::config::DEFAULT_MAX_CIRCUITS);
    }

    #[test]
    fn at_the_cap_with_every_circuit_busy_streams_queue_and_room_goes_in_order() {
        let mut f = Fixture::new(2);
        let (a, b, c, d) = (iso("a"), iso("b"), iso("c"), iso("d"));
        let (id_a, _) = f.build(&req(&a, Some(80)), "accept 1-65535", f.at(0));
        f.build(&req(&b, Some(80)), "accept 1-65535", f.at(0));
        assert!(matches!(
            f.choose(&req(&c, Some(80)), f.at(1)),
            Decision::Full
        ));
        let wc = f.pool.enqueue(&c).expect("queued");
        assert!(matches!(
            f.choose(&req(&d, Some(80)), f.at(1)),
            Decision::Full
        ));
        let wd = f.pool.enqueue(&d).expect("queued");
        assert!(f.pool.take_wakeups().is_empty());
        // a's stream ends: its circuit can be closed; the oldest waiter is woken.
        f.pool.release(id_a, f.at(2));
        assert_eq!(f.pool.take_wakeups(), vec![wc]);
        // The younger waiter may not take the room first.
        let d_req = Request {
            waiter: Some(wd),
            ..req(&d, Some(80))
        };
        assert!(matches!(f.choose(&d_req, f.at(2)), Decision::Full));
        let c_req = Request {
            waiter: Some(wc),
            ..req(&c, Some(80))
        };
        assert!(matches!(
            f.choose(&c_req, f.at(2)),
            Decision::Build {
                evicted: Some(1),
                ..
            }
        ));
        // Served, c left the queue, and d (now first) is woken to try.
        assert_eq!(f.pool.waiting(), 1);
        assert_eq!(f.pool.take_wakeups(), vec![wd]);
        // A stream arriving now queues behind d.
        assert!(matches!(
            f.choose(&req(&a, Some(80)), f.at(3)),
            Decision::Full
        ));
    }

    #[test]
    fn a_waiter_is_woken_when_its_own_group_gets_room_on_a_circuit() {
        let mut f = Fixture::new(1);
        let a = iso("a");
        let (id, _) = f.build(&req(&a, Some(80)), "accept 1-65535", f.at(0));
        for _ in 1..MAX_STREAMS_PER_CIRCUIT {
            assert_eq!(used(&f.choose(&req(&a, Some(80)), f.at(1))), Some(id));
        }
        assert!(matches!(
            f.choose(&req(&a, Some(80)), f.at(1)),
            Decision::Full
        ));
        let w = f.pool.enqueue(&a).expect("queued");
        f.pool.release(id, f.at(2));
        assert_eq!(f.pool.take_wakeups(), vec![w]);
        let again = Request {
            waiter: Some(w),
            ..req(&a, Some(80))
        };
        assert_eq!(used(&f.choose(&again, f.at(2))), Some(id));
        assert_eq!(f.pool.waiting(), 0);
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut f = Fixture::new(1);
        let a = iso("a");
        for _ in 0..MAX_WAITING_STREAMS {
            assert!(f.pool.enqueue(&a).is_some());
        }
        assert_eq!(f.pool.enqueue(&a), None);
        assert_eq!(f.pool.waiting(), MAX_WAITING_STREAMS);
    }

    #[test]
    fn a_hundred_groups_in_a_row_never_find_the_pool_full() {
        let mut f = Fixture::new(32);
        for i in 0..100u64 {
            let g = iso(&i.to_string());
            let (id, _) = f.build(&req(&g, Some(80)), "accept 1-65535", f.at(i));
            f.pool.release(id, f.at(i));
            assert!(f.pool.len() <= 32);
        }
        assert_eq!(f.pool.len(), 32);
    }

    #[test]
    fn a_failed_or_cancelled_build_frees_its_slot_and_wakes_the_queue() {
        let mut f = Fixture::new(1);
        let (a, b) = (iso("a"), iso("b"));
        let Decision::Build { id, .. } = f.choose(&req(&a, Some(80)), f.at(0)) else {
            panic!("build");
        };
        assert!(matches!(
            f.choose(&req(&b, Some(80)), f.at(0)),
            Decision::Full
        ));
        let w = f.pool.enqueue(&b).expect("queued");
        assert_eq!(f.pool.cancel(id), Some(1));
        assert_eq!(f.pool.take_wakeups(), vec![w]);
        assert_eq!(f.pool.len(), 0);
        // A build failure after the path was chosen frees the slot too.
        let again = Request {
            waiter: Some(w),
            ..req(&b, Some(80))
        };
        let Decision::Build { id, .. } = f.choose(&again, f.at(1)) else {
            panic!("build");
        };
        f.pool.path_chosen(id, vec![PeerId::random()], None);
        let (_, removed) =
            f.pool
                .build_finished(id, Err(BuildFailure::LinkClosed { hops_built: 1 }), |_| {});
        assert_eq!(removed, Some(2));
        assert_eq!(f.pool.len(), 0);
    }

    #[test]
    fn a_closed_circuit_leaves_the_pool() {
        let mut f = Fixture::new(4);
        let a = iso("a");
        let (id, _) = f.build(&req(&a, Some(80)), "accept 1-65535", f.at(0));
        assert_eq!(f.pool.closed(id), Some(1));
        assert_eq!(f.pool.closed(id), None);
        assert!(matches!(
            f.choose(&req(&a, Some(80)), f.at(1)),
            Decision::Build { .. }
        ));
    }

    #[test]
    fn build_failures_at_the_guard_count_against_it_and_later_ones_do_not() {
        let reason = DestroyReason::ResourceLimit;
        let cases = [
            (BuildFailure::Dial, true),
            (BuildFailure::Timeout { hops_built: 0 }, true),
            (
                BuildFailure::Destroyed {
                    hops_built: 0,
                    reason,
                },
                true,
            ),
            (BuildFailure::LinkClosed { hops_built: 0 }, true),
            (BuildFailure::Timeout { hops_built: 1 }, false),
            (
                BuildFailure::Destroyed {
                    hops_built: 2,
                    reason,
                },
                false,
            ),
            (BuildFailure::ExtendRefused { hop: 2, reason }, false),
            (BuildFailure::Internal { hops_built: 1 }, false),
        ];
        for (failure, against_guard) in cases {
            let (mut f, id, path) = Fixture::building_on_a_path();
            let (verdict, _) = f.pool.build_finished(id, Err(failure), |_| {});
            let expected = against_guard.then_some((path[0], false));
            assert_eq!(verdict.guard, expected, "{failure:?}");
        }
    }

    #[test]
    fn build_failures_past_the_guard_count_against_it_in_path_bias() {
        let reason = DestroyReason::ResourceLimit;
        let cases = [
            (Ok(Duration::from_millis(3)), Some(true)),
            (Err(BuildFailure::Dial), None),
            (Err(BuildFailure::Timeout { hops_built: 0 }), None),
            (
                Err(BuildFailure::ExtendRefused { hop: 2, reason }),
                Some(false),
            ),
            (
                Err(BuildFailure::ExtendRefused { hop: 3, reason }),
                Some(false),
            ),
            (
                Err(BuildFailure::Destroyed {
                    hops_built: 1,
                    reason,
                }),
                Some(false),
            ),
            (Err(BuildFailure::LinkClosed { hops_built: 2 }), Some(false)),
            (Err(BuildFailure::Timeout { hops_built: 2 }), Some(false)),
            (Err(BuildFailure::Internal { hops_built: 2 }), None),
        ];
        for (result, built) in cases {
            let (mut f, id, path) = Fixture::building_on_a_path();
            let (verdict, _) = f.pool.build_finished(id, result, |_| {});
            assert_eq!(verdict.bias, built.map(|b| (path[0], b)), "{result:?}");
        }
    }

    #[test]
    fn a_refused_extend_names_the_next_relay_for_its_stream_alone() {
        let mut f = Fixture::new(4);
        let Decision::Build { id, .. } = f.choose(&req(&Isolation::None, Some(80)), f.at(0)) else {
            panic!("build");
        };
        let path: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        f.pool.path_chosen(id, path.clone(), None);
        let failure = BuildFailure::ExtendRefused {
            hop: 3,
            reason: DestroyReason::ConnectFailed,
        };
        let (verdict, _) = f.pool.build_finished(id, Err(failure), |_| {});
        assert_eq!(
            verdict.named,
            Some(path[2]),
            "the exit could not be reached"
        );
        // Another stream's circuit through the named relay still serves it...
        let a = iso("a");
        let (through_named, _) = {
            let Decision::Build { id, .. } = f.choose(&req(&a, Some(80)), f.at(1)) else {
                panic!("build");
            };
            f.pool
                .path_chosen(id, path.clone(), Some(summary("accept 1-65535")));
            f.pool
                .build_finished(id, Ok(Duration::from_millis(3)), |_| {});
            (id, ())
        };
        assert_eq!(
            used(&f.choose(&req(&a, Some(80)), f.at(2))),
            Some(through_named)
        );
        // ...but not the stream whose build it refused, on its retry.
        let retry = Request {
            avoid_relays: &path[2..],
            ..req(&a, Some(80))
        };
        assert!(matches!(f.choose(&retry, f.at(2)), Decision::Build { .. }));
        // A reserved circuit's path is not known yet: the retry does not wait for it.
        assert!(matches!(f.choose(&retry, f.at(2)), Decision::Build { .. }));
    }

    /// A circuit reserved for a stream of group "a" and given a random 3-hop path, not built.
    fn reserved_with_path(f: &mut Fixture) -> (CircuitId, Vec<PeerId>) {
        let a = iso("a");
        let Decision::Build { id, .. } = f.choose(&req(&a, Some(80)), f.at(0)) else {
            panic!("build");
        };
        let path: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        f.pool.path_chosen(id, path.clone(), None);
        (id, path)
    }

    #[test]
    fn a_circuit_counts_one_use_attempt_and_one_use_success() {
        let mut f = Fixture::new(4);
        let (id, path) = reserved_with_path(&mut f);
        assert_eq!(f.pool.stream_sent(id), None, "not built yet");
        assert_eq!(f.pool.stream_answered(id), None, "nothing sent");
        f.pool
            .build_finished(id, Ok(Duration::from_millis(3)), |_| {});
        assert_eq!(f.pool.stream_sent(id), Some(path[0]));
        assert_eq!(f.pool.stream_sent(id), None, "once per circuit");
        assert_eq!(f.pool.stream_answered(id), Some(path[0]));
        assert_eq!(f.pool.stream_answered(id), None, "once per circuit");
        assert_eq!(f.pool.stream_sent(99), None, "no such circuit");
        // Answered, then gone: nothing to settle.
        f.pool.closed(id);
        assert_eq!(f.pool.take_unanswered_uses(), vec![]);
    }

    #[test]
    fn a_circuit_gone_with_its_stream_unanswered_is_a_use_failure_of_its_guard() {
        let mut f = Fixture::new(4);
        let (id, path) = reserved_with_path(&mut f);
        f.pool
            .build_finished(id, Ok(Duration::from_millis(3)), |_| {});
        assert_eq!(f.pool.stream_sent(id), Some(path[0]));
        // Still open: pending, not a failure.
        assert_eq!(f.pool.take_unanswered_uses(), vec![]);
        f.pool.closed(id);
        assert_eq!(f.pool.take_unanswered_uses(), vec![path[0]]);
        assert_eq!(f.pool.take_unanswered_uses(), vec![]);
    }

    #[test]
    fn expire_takes_only_idle_circuits_past_their_use() {
        let mut f = Fixture::new(32);
        let (a, b, c) = (iso("a"), iso("b"), iso("c"));
        let (dirty_idle, _) = f.build(&req(&a, Some(80)), "accept 1-65535", f.at(0));
        f.pool.release(dirty_idle, f.at(1));
        let (dirty_busy, _) = f.build(&req(&b, Some(80)), "accept 1-65535", f.at(0));
        let (retired, path) = f.build(&req(&c, Some(80)), "accept 1-65535", f.at(599));
        f.pool.release(retired, f.at(599));
        let (clean, _, _) = f
            .pool
            .build_ahead(&[443], |_| true, f.at(0), || 99)
            .expect("build ahead");
        f.finish(clean, "accept 443");
        let gone = path[1];
        assert_eq!(f.pool.retire_departed(|p| *p != gone), 1);
        assert!(
            matches!(
                f.choose(&req(&c, Some(80)), f.at(600)),
                Decision::Build { .. }
            ),
            "a retired circuit takes no new stream"
        );
        let expired = f.pool.expire(f.at(600));
        assert_eq!(
            expired.len(),
            2,
            "the dirty idle and the retired idle circuit"
        );
        let left: Vec<CircuitId> = f.pool.summaries(f.at(600)).iter().map(|s| s.id).collect();
        assert!(left.contains(&dirty_busy) && left.contains(&clean));
        // A clean circuit nobody claimed goes after its TTL.
        let expired = f.pool.expire(f.t0 + CLEAN_CIRCUIT_TTL);
        assert_eq!(expired, vec![99]);
    }

    #[test]
    fn build_ahead_covers_each_port_once_within_its_bounds() {
        let mut f = Fixture::new(32);
        let ports: Vec<u16> = (1..=10).collect();
        let mut covered = Vec::new();
        while let Some((id, _, port)) = f.pool.build_ahead(&ports, |_| true, f.at(0), || 0) {
            covered.push(port);
            f.finish(id, &format!("accept {}", port.expect("a port")));
        }
        assert_eq!(covered.len(), MAX_CLEAN_CIRCUITS);
        assert_eq!(covered, (1..=6).map(Some).collect::<Vec<_>>());
        // Ports no exit allows are skipped.
        let mut f = Fixture::new(32);
        let got = f.pool.build_ahead(&[25, 80], |p| p != 25, f.at(0), || 0);
        assert_eq!(got.map(|(_, _, p)| p), Some(Some(80)));
    }

    #[test]
    fn build_ahead_leaves_a_quarter_of_the_budget_to_streams() {
        let mut f = Fixture::new(8);
        for i in 0..6 {
            let g = iso(&i.to_string());
            f.build(&req(&g, Some(80)), "accept 1-65535", f.at(0));
        }
        assert!(
            f.pool
                .build_ahead(&[443], |_| true, f.at(0), || 0)
                .is_none()
        );
        let mut f = Fixture::new(8);
        for i in 0..5 {
            let g = iso(&i.to_string());
            f.build(&req(&g, Some(80)), "accept 1-65535", f.at(0));
        }
        assert!(
            f.pool
                .build_ahead(&[443], |_| true, f.at(0), || 0)
                .is_some()
        );
    }

    #[test]
    fn before_any_build_one_circuit_to_any_exit_proves_the_network() {
        let mut f = Fixture::new(32);
        let (id, _, port) = f
            .pool
            .build_ahead(&[], |_| true, f.at(0), || 0)
            .expect("a bootstrap circuit");
        assert_eq!(port, None);
        assert!(
            f.pool.build_ahead(&[], |_| true, f.at(0), || 0).is_none(),
            "one at a time"
        );
        f.finish(id, "accept 1-65535");
        f.pool.closed(id);
        assert!(
            f.pool.build_ahead(&[], |_| true, f.at(1), || 0).is_none(),
            "only before the first build"
        );
    }

    #[test]
    fn nothing_is_built_ahead_while_streams_wait_for_room() {
        let mut f = Fixture::new(1);
        let (a, b) = (iso("a"), iso("b"));
        f.build(&req(&a, Some(80)), "accept 1-65535", f.at(0));
        assert!(matches!(
            f.choose(&req(&b, Some(80)), f.at(0)),
            Decision::Full
        ));
        f.pool.enqueue(&b).expect("queued");
        assert!(
            f.pool
                .build_ahead(&[443], |_| true, f.at(0), || 0)
                .is_none()
        );
    }

    #[test]
    fn a_reserved_circuit_stands_for_its_port_until_its_exit_is_known() {
        let mut f = Fixture::new(32);
        let none = Isolation::None;
        let Decision::Build { id, .. } = f.choose(&req(&none, None), f.at(0)) else {
            panic!("build");
        };
        // Built for any exit: a RESOLVE may wait for it, a stream to a port may not.
        assert!(
            matches!(f.choose(&req(&none, None), f.at(0)), Decision::Wait { id: w, .. } if w == id)
        );
        assert!(matches!(
            f.choose(&req(&none, Some(80)), f.at(0)),
            Decision::Build { .. }
        ));
        // Once the path is chosen, the exit's policy decides.
        f.pool
            .path_chosen(id, vec![PeerId::random()], Some(summary("accept 80")));
        assert!(
            matches!(f.choose(&req(&none, Some(80)), f.at(0)), Decision::Wait { id: w, .. } if w == id)
        );
    }

    #[test]
    fn recent_ports_are_bounded_and_forgotten() {
        let mut f = Fixture::new(32);
        for p in 0..(MAX_RECENT_PORTS as u16 + 4) {
            f.pool.note_port(1000 + p, f.at(u64::from(p)));
        }
        let ports = f.pool.ports_to_cover(&[80], f.at(30));
        assert_eq!(ports.len(), 1 + MAX_RECENT_PORTS);
        assert!(!ports.contains(&1000), "the oldest went first");
        assert!(ports.contains(&(1000 + MAX_RECENT_PORTS as u16 + 3)));
        let later = f.t0 + RECENT_PORT_TTL + Duration::from_secs(100);
        assert_eq!(f.pool.ports_to_cover(&[80], later), vec![80]);
    }

    #[test]
    fn the_build_timeout_is_learned_from_builds() {
        let mut f = Fixture::new(64);
        assert_eq!(f.pool.build_timeout(), Duration::from_secs(60));
        for i in 0..crate::timeout::MIN_SAMPLES {
            let g = iso(&i.to_string());
            f.build(&req(&g, Some(80)), "accept 1-65535", f.at(0));
        }
        assert_eq!(
            f.pool.build_timeout(),
            Duration::from_secs(5),
            "clamped to the minimum"
        );
    }

    #[test]
    fn status_lists_circuits_whose_path_is_known_with_their_streams() {
        let mut f = Fixture::new(32);
        let a = iso("a");
        let (id, path) = f.build(&req(&a, Some(80)), "accept 1-65535", f.at(0));
        f.choose(&req(&a, Some(80)), f.at(1));
        f.choose(&req(&iso("b"), Some(80)), f.at(1));
        let s = f.pool.summaries(f.at(2));
        assert_eq!(s.len(), 1, "the reserved one is not listed");
        assert_eq!(s[0].id, id);
        assert_eq!(s[0].path, path);
        assert!(s[0].built && s[0].claimed);
        assert_eq!(s[0].streams, 2);
        assert_eq!(s[0].age, Duration::from_secs(2));
    }
}
