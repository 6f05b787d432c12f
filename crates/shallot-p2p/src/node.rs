//! A running libp2p node: the swarm in its own task, driven through a bounded command queue.
//!
//! The directory (specs/04 §6–§7) runs here too. A relay keeps a store of every verified
//! descriptor it learned ([`DirStore`]), probes the addresses they sign, answers listings, takes
//! other relays' announcements of their own descriptors, announces its own to every relay it
//! meets, and synchronises its store with a few other relays on a jittered schedule. Any node
//! refreshes in bulk from several sources: relays found by Kademlia walks to random keys (never
//! a well-known key), at most one per /16 (IPv6 /32) of the address actually connected to, with
//! the sources of the last refresh asked only for what changed since.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::kad::{self, QueryId, QueryResult, Quorum, Record, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify};
use shallot_directory::{
    AnnounceStatus, Block, DirRequest, DirResponse, DirStore, ENTRY_OVERHEAD, Gathered,
    LISTING_HEADER_LEN, Listing, ListingEntry, MAX_DOWN_CHECKS, NetworkView, Offered, Probe,
    RecordRefusal, SignedDescriptor, SourceListing, Standing, StoreConfig, StoreEntry, Verdicts,
    WallClock, canonical_ip, descriptor_key, ip_of, is_newer, peer_of_descriptor_key, socket_of,
    validate_record,
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, trace, warn};

use crate::address_limits::PeerAddresses;
use crate::behaviour::{Behaviour, BehaviourEvent, KAD_PROTOCOL, Shared, build_swarm};
use crate::bootstrap::{BootstrapDial, BootstrapPeerStatus, BootstrapTable, classify};
use crate::config::{DirConfig, NodeConfig, Role};
use crate::err::P2pError;
use crate::reachability::{AUTONAT_DIAL_REQUEST_PROTOCOL, Reachability, ReachabilityTracker};

/// Capacity of the command queue into the swarm task.
pub const COMMAND_QUEUE: usize = 64;
/// Callers that may wait on one refresh at once.
pub const MAX_REFRESH_WAITERS: usize = 16;
/// Publications that may be in flight at once.
pub const MAX_PENDING_PUBLISHES: usize = 16;
/// A relay's probes running at once.
pub const MAX_PROBES_IN_FLIGHT: usize = 8;
/// Most addresses one [`Node::verify`] call dials.
pub const MAX_VERIFY_TARGETS: usize = 256;
/// A relay's synchronisation considers this many times `sources_per_refresh` relays from its
/// own store as sources before it walks the DHT for more.
const STORE_SOURCES_FACTOR: usize = 3;
/// Relays of one source's listing taken as further source candidates.
const LISTED_CANDIDATES_PER_SOURCE: usize = 16;
/// Rounds of verification in one [`Node::verify_contests`].
pub const MAX_CONTEST_ROUNDS: usize = 4;
/// Longest one refresh may take: past it, it ends with the listings it has (specs/04 §6.1).
pub const MAX_REFRESH_TIME: Duration = Duration::from_secs(20);
/// Longest one [`Node::verify_contests`] may take: past it, the relays not yet dialed stay out
/// of the view until a later refresh (a flood of made-up relays at addresses that never
/// answer costs a refresh this much, not a dial timeout each).
pub const MAX_VERIFY_TIME: Duration = Duration::from_secs(20);
/// Verification dials in flight at once.
pub const MAX_VERIFY_DIALS_IN_FLIGHT: usize = 32;
/// Most [`Node::verify`] calls waiting or running at once.
pub const MAX_VERIFICATIONS: usize = 4;
/// Listing requests of one refresh in flight at once.
pub const MAX_LISTINGS_IN_FLIGHT: usize = 8;
/// Pages one source may send in one refresh (each at most `MAX_LISTING_ENTRIES` entries).
pub const MAX_PAGES_PER_SOURCE: usize = 4;
/// Candidate sources one refresh keeps at most.
pub const MAX_CANDIDATES_PER_REFRESH: usize = 256;
/// Relays a relay tells about its new descriptor at once (the others learn it when they meet
/// it, or from the relays that did).
pub const MAX_ANNOUNCE_PEERS: usize = 32;
/// How long [`Node::start`] waits for its listeners to come up.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a relay drops expired descriptors from its store.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// How often a relay testing its reachability looks at the time bounds of the test.
const REACHABILITY_TICK: Duration = Duration::from_secs(1);

/// Counters of what the node refused, stored and served, for metrics.
#[derive(Debug, Default)]
pub struct NodeStats {
    refused: [AtomicU64; 6],
    records_stored: AtomicU64,
    /// Valid inbound records refused because the directory store would not hold the relay.
    pub records_not_in_store: AtomicU64,
    /// Listing requests this relay answered.
    pub listings_served: AtomicU64,
    /// Bytes of the listings this relay answered.
    pub listing_bytes_served: AtomicU64,
    /// Listings this relay answered in full (a new reader, or one of another epoch).
    pub full_listings_served: AtomicU64,
    /// Listing pages this node's refreshes and synchronisations read.
    pub listings_read: AtomicU64,
    /// Bytes of those pages.
    pub listing_bytes_read: AtomicU64,
    /// Sources this node's refreshes and synchronisations read in full (first pages).
    pub full_listings_read: AtomicU64,
    /// Announcements this relay took.
    pub announces_accepted: AtomicU64,
    /// Probes that reached the relay at the address (and authenticated it).
    pub probes_reached: AtomicU64,
    /// Probes that did not.
    pub probes_failed: AtomicU64,
    /// Liveness checks of listed relays that reached them.
    pub checks_reached: AtomicU64,
    /// Liveness checks that did not.
    pub checks_failed: AtomicU64,
    /// Inbound connections denied by a per-address limit (address_limits.rs).
    pub connections_refused_by_address: AtomicU64,
}

impl NodeStats {
    fn refusal_index(refusal: RecordRefusal) -> usize {
        match refusal {
            RecordRefusal::Oversized => 0,
            RecordRefusal::Malformed => 1,
            RecordRefusal::BadSignature => 2,
            RecordRefusal::PeerMismatch => 3,
            RecordRefusal::Expired => 4,
            RecordRefusal::Stale => 5,
        }
    }

    fn count_refusal(&self, refusal: RecordRefusal) {
        self.refused[Self::refusal_index(refusal)].fetch_add(1, Ordering::Relaxed);
    }

    /// Inbound records this node refused to store, or fetched records it refused to believe.
    pub fn records_refused(&self, refusal: RecordRefusal) -> u64 {
        self.refused[Self::refusal_index(refusal)].load(Ordering::Relaxed)
    }

    /// Inbound records validated and stored.
    pub fn records_stored(&self) -> u64 {
        self.records_stored.load(Ordering::Relaxed)
    }
}

/// The result of a bulk refresh (specs/04 §6.1).
#[derive(Debug, Default)]
pub struct FetchOutcome {
    /// What each source listed (verify and assemble them with `shallot_directory::assemble`).
    pub listings: Vec<SourceListing>,
    /// Every verified descriptor listed, the newest per relay (a convenience for callers that
    /// only need the descriptors).
    pub descriptors: Vec<SignedDescriptor>,
    /// Bytes of listings received.
    pub bytes: u64,
    /// Sources that answered with a full listing (the others sent changes only).
    pub full_listings: usize,
    /// Kademlia walks made to find sources.
    pub walks: usize,
    /// Sources left out because one in the same /16 (/32) answered first.
    pub same_block: usize,
    /// Sources that did not answer.
    pub failed: usize,
}

/// A relay's directory store, readable from outside the swarm task.
#[derive(Debug, Clone)]
pub struct Directory(Arc<RwLock<DirStore>>);

/// Directories are equal when they are the same store.
impl PartialEq for Directory {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Directory {}

impl Directory {
    /// A new, empty store (for [`NodeConfig::shared_directory`]).
    pub fn new(config: StoreConfig, epoch: u64) -> Self {
        Self(Arc::new(RwLock::new(DirStore::new(config, epoch))))
    }

    /// Runs `change` on the store: a simulation fills a shared store this way.
    pub fn update<R>(&self, change: impl FnOnce(&mut DirStore) -> R) -> R {
        change(&mut self.0.write().unwrap_or_else(PoisonError::into_inner))
    }

    /// Runs `look` on the store without changing it (a measurement reads a relay's store this
    /// way; the relay goes on serving while it runs).
    pub fn inspect<R>(&self, look: impl FnOnce(&DirStore) -> R) -> R {
        look(&self.read())
    }

    fn read(&self) -> RwLockReadGuard<'_, DirStore> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The store's entry of `peer`: its descriptor and the addresses this relay proved.
    pub fn get(&self, peer: &PeerId) -> Option<StoreEntry> {
        self.read().get(peer).cloned()
    }

    /// Whether `peer` is a listed relay: in the store with at least one address this relay
    /// proved.
    pub fn lists(&self, peer: &PeerId) -> bool {
        self.read().get(peer).is_some_and(|e| !e.proven.is_empty())
    }

    /// Descriptors held.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Every entry (a copy), listed and pending.
    pub fn entries(&self) -> Vec<StoreEntry> {
        self.read().entries().cloned().collect()
    }

    /// Descriptors listed (proven by this relay).
    pub fn listed_len(&self) -> usize {
        self.read().listed_len()
    }

    /// Whether a relay in the store listens at `addr`: the IP address and port (TCP or UDP) of
    /// a descriptor address this relay proved, its own included. An exit refuses streams there
    /// (specs/06 §6.1). Unproven addresses do not count: anyone can sign any address, and an
    /// exit must not let a descriptor decide which of others' servers it refuses.
    pub fn lists_listen_address(&self, addr: SocketAddr) -> bool {
        self.read().entries().any(|e| {
            e.descriptor
                .descriptor()
                .addrs
                .iter()
                .enumerate()
                .any(|(i, a)| e.proven.contains(i) && socket_of(a) == Some(addr))
        })
    }

    /// Offers `signed` (verified already) as heard, and answers whether the store then holds
    /// that relay, listed or pending.
    fn holds_after_offer(&self, signed: &SignedDescriptor, now: u64) -> bool {
        let mut store = self.0.write().unwrap_or_else(PoisonError::into_inner);
        store.offer_verified(signed.clone(), now);
        store.get(&signed.peer_id()).is_some()
    }

    /// Offers descriptor bytes as if heard from another relay: pending until this relay's
    /// probe proves them (specs/04 §7.4).
    pub fn offer(&self, bytes: &[u8], now: u64) -> Offered {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .offer(bytes, now)
    }
}

enum Command {
    Verify {
        targets: Vec<(PeerId, Multiaddr)>,
        reply: oneshot::Sender<Result<Vec<bool>, P2pError>>,
    },
    Publish {
        descriptor: Box<SignedDescriptor>,
        reply: oneshot::Sender<Result<(), P2pError>>,
    },
    Fetch {
        reply: oneshot::Sender<Result<FetchOutcome, P2pError>>,
    },
    AddAddress {
        peer: PeerId,
        addr: Multiaddr,
        done: oneshot::Sender<()>,
    },
    StoredRecord {
        key: Vec<u8>,
        reply: oneshot::Sender<Option<Vec<u8>>>,
    },
    ConnectedPeers {
        reply: oneshot::Sender<usize>,
    },
    TestReachability {
        candidates: Vec<Multiaddr>,
    },
}

/// A libp2p node (client or relay) with its swarm task.
pub struct Node {
    peer_id: PeerId,
    listen_addrs: Vec<Multiaddr>,
    commands: mpsc::Sender<Command>,
    control: libp2p_stream::Control,
    stats: Arc<NodeStats>,
    clock: WallClock,
    dir_config: DirConfig,
    directory: Option<Directory>,
    bootstrap: BootstrapTable,
    peer_addresses: PeerAddresses,
    reachability: watch::Receiver<Reachability>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("peer_id", &self.peer_id)
            .field("listen_addrs", &self.listen_addrs)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Builds the swarm, binds every listen address, dials the bootstrap peers and starts the
    /// swarm task. Must be called inside a tokio runtime.
    pub async fn start(
        keypair: libp2p::identity::Keypair,
        config: NodeConfig,
    ) -> Result<Self, P2pError> {
        let peer_id = keypair.public().to_peer_id();
        let stats = Arc::new(NodeStats::default());
        let directory = (config.role == Role::Relay).then(|| {
            config
                .shared_directory
                .clone()
                .unwrap_or_else(|| Directory::new(StoreConfig::default(), rand_u64()))
        });
        let peer_addresses = PeerAddresses::default();
        let mut swarm = build_swarm(
            keypair,
            &config,
            &Shared {
                directory: directory.clone(),
                stats: Arc::clone(&stats),
                peers: peer_addresses.clone(),
            },
        )?;
        let mut listeners = Vec::new();
        for addr in &config.listen_addrs {
            let id = swarm
                .listen_on(addr.clone())
                .map_err(|e| P2pError::Listen {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
            listeners.push((id, addr.clone()));
        }
        let listen_addrs = wait_for_listeners(&mut swarm, listeners).await?;
        let bootstrap = config
            .bootstrap
            .iter()
            .map(|addr| {
                peer_of(addr)
                    .map(|peer| (addr.clone(), peer))
                    .ok_or_else(|| P2pError::BootstrapWithoutPeerId(addr.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bootstrap_peers: Vec<PeerId> = bootstrap.iter().map(|(_, peer)| *peer).collect();
        let bootstrap_table = BootstrapTable::new(bootstrap.clone());
        for (addr, peer) in &bootstrap {
            let mut dial_addr = addr.clone();
            dial_addr.pop();
            swarm.behaviour_mut().kad.add_address(peer, dial_addr);
            if let Err(err) = swarm.dial(addr.clone()) {
                warn!(%addr, %err, "cannot dial bootstrap peer");
                bootstrap_table.set(peer, BootstrapDial::Failed(classify(&err)));
            }
        }
        if !config.bootstrap.is_empty() {
            let _ = swarm.behaviour_mut().kad.bootstrap();
        }
        let control = swarm.behaviour().stream.new_control();
        let (commands, queue) = mpsc::channel(COMMAND_QUEUE);
        let (reachability_tx, reachability) = watch::channel(Reachability::Unknown);
        let task = tokio::spawn(
            SwarmTask {
                swarm,
                stats: Arc::clone(&stats),
                clock: config.clock.clone(),
                dir_config: config.directory.clone(),
                local: peer_id,
                bootstrap: bootstrap_peers,
                bootstrap_table: bootstrap_table.clone(),
                publishes: HashMap::new(),
                directory: directory.clone(),
                own: None,
                conns: HashMap::new(),
                relay_peers: HashSet::new(),
                probes: HashMap::new(),
                probe_ticks: 0,
                sources: Vec::new(),
                refresh: None,
                refreshes: 0,
                requests: HashMap::new(),
                verifications: VecDeque::new(),
                verify_dials: HashMap::new(),
                next_verification: 0,
                reachability: ReachabilityTracker::new(),
                reachability_tx,
            }
            .run(queue),
        );
        info!(%peer_id, addrs = ?listen_addrs, "libp2p node started");
        Ok(Self {
            peer_id,
            listen_addrs,
            commands,
            control,
            stats,
            clock: config.clock,
            dir_config: config.directory,
            directory,
            bootstrap: bootstrap_table,
            peer_addresses,
            reachability,
            task,
        })
    }

    /// This node's PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The addresses the node listens on, with ports resolved.
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    /// The first listen address with `/p2p/<PeerId>` appended: what others bootstrap from.
    pub fn bootstrap_addr(&self) -> Option<Multiaddr> {
        self.listen_addrs
            .first()
            .map(|a| a.clone().with(Protocol::P2p(self.peer_id)))
    }

    /// A handle for opening and accepting circuit streams (libp2p-stream). Clone one per task.
    pub fn stream_control(&self) -> libp2p_stream::Control {
        self.control.clone()
    }

    /// The address each connected peer is connected from.
    pub fn peer_addresses(&self) -> &PeerAddresses {
        &self.peer_addresses
    }

    /// Counters of refused and stored records.
    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    /// The wall clock the node validates descriptors against (its configuration's).
    pub fn clock(&self) -> &WallClock {
        &self.clock
    }

    /// Whether this node dials `addr` at all: private, loopback and link-local addresses only
    /// when configured for a test network (`DirConfig::allow_private_addrs`).
    pub fn may_dial(&self, addr: &Multiaddr) -> bool {
        dialable(addr, &self.dir_config)
    }

    /// A relay's directory store (`None` for a client).
    pub fn directory(&self) -> Option<&Directory> {
        self.directory.as_ref()
    }

    /// The configured bootstrap peers and how their latest dials went.
    pub fn bootstrap_status(&self) -> Vec<BootstrapPeerStatus> {
        self.bootstrap.snapshot()
    }

    async fn send(&self, command: Command) -> Result<(), P2pError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| P2pError::Stopped)
    }

    /// A relay publishes `descriptor`: into its own store (its addresses are its own, so
    /// proven), to the relays it is connected to (an announcement, specs/04 §7.2), and as a
    /// Kademlia record under its PeerId's key (specs/04 §5.2), stored in the background.
    /// Resolves once the store holds it and the announcements are sent.
    pub async fn publish(&self, descriptor: SignedDescriptor) -> Result<(), P2pError> {
        if descriptor.peer_id() != self.peer_id {
            return Err(P2pError::Publish(
                "descriptor is for another peer".to_owned(),
            ));
        }
        let (reply, answer) = oneshot::channel();
        self.send(Command::Publish {
            descriptor: Box::new(descriptor),
            reply,
        })
        .await?;
        answer.await.map_err(|_| P2pError::Stopped)?
    }

    /// Refreshes in bulk from several sources (specs/04 §6.1) and returns what they listed.
    pub async fn fetch_descriptors(&self) -> Result<FetchOutcome, P2pError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Fetch { reply }).await?;
        answer.await.map_err(|_| P2pError::Stopped)?
    }

    /// Dials each `(peer, addr)` at exactly that address and answers, in order, whether the
    /// Noise handshake authenticated `peer` there (a client verifying contested relays,
    /// specs/04 §6.3). At most [`MAX_VERIFY_TARGETS`] per call and [`MAX_VERIFY_DIALS_IN_FLIGHT`]
    /// dials at once, each bounded by [`crate::CONNECT_TIMEOUT`]; an address this node does
    /// not dial counts as not reached.
    pub async fn verify(&self, targets: Vec<(PeerId, Multiaddr)>) -> Result<Vec<bool>, P2pError> {
        if targets.len() > MAX_VERIFY_TARGETS {
            return Err(P2pError::Busy);
        }
        let (reply, answer) = oneshot::channel();
        self.send(Command::Verify { targets, reply }).await?;
        answer.await.map_err(|_| P2pError::Stopped)?
    }

    /// Verifies the contested relays of `gathered` against `view` (specs/04 §6.3): up to
    /// [`MAX_CONTEST_ROUNDS`] rounds of [`Gathered::contests`] dialed with [`Node::verify`],
    /// each outcome recorded in `verdicts`. Returns the number of dials.
    pub async fn verify_contests(
        &self,
        gathered: &Gathered,
        view: &NetworkView,
        verdicts: &mut Verdicts,
    ) -> usize {
        let mut dials = 0;
        let deadline = tokio::time::Instant::now() + MAX_VERIFY_TIME;
        for _ in 0..MAX_CONTEST_ROUNDS {
            let todo = gathered.contests(view, verdicts, MAX_VERIFY_TARGETS);
            if todo.is_empty() {
                break;
            }
            let asked = todo.len();
            let Some(unreached) = self.verify_into(todo, deadline, verdicts).await else {
                debug!(
                    left = asked,
                    "verification ran out of time; the rest waits for the next refresh"
                );
                break;
            };
            dials += asked;
            for (peer, addr) in unreached {
                debug!(%peer, %addr, "a contested relay is not at the address it claims");
            }
        }
        dials
    }

    /// Dials `targets` by `deadline` ([`Node::verify`]), records each outcome in `verdicts`,
    /// and returns the targets not reached; `None` when the dials did not end in time.
    async fn verify_into(
        &self,
        targets: Vec<(PeerId, Multiaddr)>,
        deadline: tokio::time::Instant,
        verdicts: &mut Verdicts,
    ) -> Option<Vec<(PeerId, Multiaddr)>> {
        let Ok(Ok(results)) = tokio::time::timeout_at(deadline, self.verify(targets.clone())).await
        else {
            return None;
        };
        let now = self.clock.now();
        let mut unreached = Vec::new();
        for ((peer, addr), reached) in targets.into_iter().zip(results) {
            verdicts.record(peer, addr.clone(), reached, now);
            if !reached {
                unreached.push((peer, addr));
            }
        }
        Some(unreached)
    }

    /// Dials the relays of `view` that a source of `gathered` reported down (specs/04 §6.1,
    /// at most [`MAX_DOWN_CHECKS`], within [`MAX_VERIFY_TIME`]) and returns those it did not
    /// reach, for the caller to remove; every outcome goes into `verdicts`. One source's word
    /// removes no relay that answers.
    pub async fn check_down_reports(
        &self,
        gathered: &Gathered,
        view: &NetworkView,
        verdicts: &mut Verdicts,
    ) -> Vec<PeerId> {
        let targets = gathered.down_checks(view, MAX_DOWN_CHECKS.min(MAX_VERIFY_TARGETS));
        if targets.is_empty() {
            return Vec::new();
        }
        let deadline = tokio::time::Instant::now() + MAX_VERIFY_TIME;
        self.verify_into(targets, deadline, verdicts)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|(peer, _)| peer)
            .collect()
    }

    /// Tells the swarm an address of `peer` (so a stream to it can be opened).
    pub async fn add_address(&self, peer: PeerId, addr: Multiaddr) -> Result<(), P2pError> {
        let (done, added) = oneshot::channel();
        self.send(Command::AddAddress { peer, addr, done }).await?;
        // Wait until the swarm task has it: a stream opened right after must find the address
        // (the stream control's requests travel on another channel and could overtake it).
        added.await.map_err(|_| P2pError::Stopped)
    }

    /// The value this node's DHT store holds under `key`, if any (for tests and diagnostics).
    pub async fn stored_record(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>, P2pError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::StoredRecord { key, reply }).await?;
        answer.await.map_err(|_| P2pError::Stopped)
    }

    /// A relay starts testing whether other nodes reach it at `candidates`, the addresses its
    /// descriptor would sign (specs/04 §4.1), with AutoNAT v2. Follow the outcome with
    /// [`Node::reachability`] or [`Node::watch_reachability`]. A client's node has no AutoNAT
    /// client and stays [`Reachability::Unknown`].
    pub async fn test_reachability(&self, candidates: Vec<Multiaddr>) -> Result<(), P2pError> {
        self.send(Command::TestReachability { candidates }).await
    }

    /// What the node knows of its reachability now.
    pub fn reachability(&self) -> Reachability {
        self.reachability.borrow().clone()
    }

    /// The node's reachability, changing as tests answer.
    pub fn watch_reachability(&self) -> watch::Receiver<Reachability> {
        self.reachability.clone()
    }

    /// How many peers the node is connected to.
    pub async fn connected_peers(&self) -> Result<usize, P2pError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::ConnectedPeers { reply }).await?;
        answer.await.map_err(|_| P2pError::Stopped)
    }
}

/// The PeerId of a `/p2p/<PeerId>`-terminated address.
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}

fn rand_u64() -> u64 {
    rand::random()
}

/// `addr` without a trailing `/p2p/<PeerId>`.
fn without_peer(addr: &Multiaddr) -> Multiaddr {
    let mut a = addr.clone();
    if matches!(a.iter().last(), Some(Protocol::P2p(_))) {
        a.pop();
    }
    a
}

/// Whether a test network's private, loopback or link-local addresses are needed to dial
/// `addr`: public addresses are always allowed; others only with `allow_private_addrs`.
pub(crate) fn dialable(addr: &Multiaddr, config: &DirConfig) -> bool {
    if config.allow_private_addrs {
        return true;
    }
    match ip_of(addr).map(canonical_ip) {
        Some(std::net::IpAddr::V4(v4)) => {
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        Some(std::net::IpAddr::V6(v6)) => {
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80)
        }
        None => false,
    }
}

async fn wait_for_listeners(
    swarm: &mut Swarm<Behaviour>,
    mut pending: Vec<(libp2p::core::transport::ListenerId, Multiaddr)>,
) -> Result<Vec<Multiaddr>, P2pError> {
    let mut bound = Vec::new();
    let deadline = tokio::time::Instant::now() + LISTEN_TIMEOUT;
    while !pending.is_empty() {
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .map_err(|_| P2pError::Listen {
                addr: pending[0].1.clone(),
                reason: "timed out waiting for the listener".to_owned(),
            })?;
        match event {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                if let Some(pos) = pending.iter().position(|(id, _)| *id == listener_id) {
                    pending.swap_remove(pos);
                }
                bound.push(address);
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason: Err(err),
                ..
            }
            | SwarmEvent::ListenerError {
                listener_id,
                error: err,
                ..
            } => {
                let addr = pending
                    .iter()
                    .find(|(id, _)| *id == listener_id)
                    .map(|(_, a)| a.clone())
                    .unwrap_or_else(Multiaddr::empty);
                return Err(P2pError::Listen {
                    addr,
                    reason: err.to_string(),
                });
            }
            _ => {}
        }
    }
    Ok(bound)
}

/// A source kept from one refresh to the next, asked only for what changed.
#[derive(Debug, Clone)]
struct SourceState {
    peer: PeerId,
    epoch: u64,
    seq: u64,
    /// Whether it failed to answer the last refresh (it is kept for one more).
    missed: bool,
}

/// One bulk refresh in progress.
#[derive(Default)]
struct Refresh {
    /// Which refresh this is: a late answer to an earlier one is not this one's.
    id: u64,
    /// When it ends with what it has (a slow source cannot hold it longer).
    deadline: Option<tokio::time::Instant>,
    waiters: Vec<oneshot::Sender<Result<FetchOutcome, P2pError>>>,
    /// Whether the result goes into this relay's store (a synchronisation) and nowhere else.
    sync_only: bool,
    walks_left: usize,
    walks: HashSet<QueryId>,
    /// Peers to ask, with the state of an earlier listing from them (sticky sources).
    candidates: VecDeque<(PeerId, Option<SourceState>)>,
    /// The sticky sources asked, by peer, until their first page arrives: what is left in it
    /// has not answered.
    sticky: HashMap<PeerId, SourceState>,
    /// Sticky sources that failed to answer for the first time: kept for the next refresh,
    /// and in a synchronisation not replaced by another source.
    excused: Vec<SourceState>,
    tried: HashSet<PeerId>,
    blocks: HashSet<Block>,
    /// Blocks of the candidates asked (where the connection was known when asking).
    asked_blocks: HashSet<Block>,
    asked: usize,
    /// Listings being gathered, by source.
    listings: HashMap<PeerId, (SourceListing, SourceState, usize)>,
    done: Vec<(SourceListing, SourceState)>,
    outcome: FetchOutcome,
}

impl Refresh {
    /// Asks `peer` for its listing since `epoch` and `since`, as one of this refresh's requests.
    fn ask(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        requests: &mut HashMap<OutboundRequestId, Pending>,
        peer: PeerId,
        epoch: u64,
        since: u64,
    ) {
        let id = swarm
            .behaviour_mut()
            .dir
            .send_request(&peer, DirRequest::Listing { epoch, since });
        requests.insert(
            id,
            Pending::Listing {
                peer,
                refresh: self.id,
            },
        );
        self.asked += 1;
    }
}

/// What an outbound directory request was for.
enum Pending {
    Listing { peer: PeerId, refresh: u64 },
    Announce,
}

/// A Kademlia record of our descriptor being stored.
struct PendingPublish;

struct SwarmTask {
    swarm: Swarm<Behaviour>,
    stats: Arc<NodeStats>,
    clock: WallClock,
    dir_config: DirConfig,
    local: PeerId,
    bootstrap: Vec<PeerId>,
    bootstrap_table: BootstrapTable,
    publishes: HashMap<QueryId, PendingPublish>,
    /// A relay's store.
    directory: Option<Directory>,
    /// A relay's own newest descriptor, announced to the relays it meets.
    own: Option<SignedDescriptor>,
    /// Open connections and how they were made (bounded by the swarm's connection limits).
    conns: HashMap<ConnectionId, (PeerId, ConnectedPoint)>,
    /// Connected peers that are relays (they speak the DHT as servers).
    relay_peers: HashSet<PeerId>,
    /// Probes and liveness checks in flight, by the connection dialed for them.
    probes: HashMap<ConnectionId, (Probe, ProbeKind)>,
    /// Probe ticks so far: every other one offers its turn to a liveness check first.
    probe_ticks: u64,
    /// The sources of the last refresh.
    sources: Vec<SourceState>,
    refresh: Option<Refresh>,
    refreshes: u64,
    requests: HashMap<OutboundRequestId, Pending>,
    /// Verifications asked for by the client, oldest first (at most [`MAX_VERIFICATIONS`]).
    verifications: VecDeque<Verification>,
    /// Verification dials in flight: the verification's number and the target's index.
    verify_dials: HashMap<ConnectionId, (u64, usize)>,
    next_verification: u64,
    /// A relay's own reachability (specs/04 §4.1).
    reachability: ReachabilityTracker,
    reachability_tx: watch::Sender<Reachability>,
}

/// Why a relay dials an address it holds in its store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeKind {
    /// To prove an address of a descriptor before listing it.
    Proof,
    /// To check that a listed (or down) relay still answers there.
    Liveness,
}

/// One [`Node::verify`] call.
struct Verification {
    id: u64,
    targets: Vec<(PeerId, Multiaddr)>,
    results: Vec<Option<bool>>,
    next: usize,
    reply: Option<oneshot::Sender<Result<Vec<bool>, P2pError>>>,
}

impl SwarmTask {
    async fn run(mut self, mut queue: mpsc::Receiver<Command>) {
        let relay = self.directory.is_some();
        let mut probe_tick = tokio::time::interval(self.dir_config.probe_interval);
        probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prune_tick = tokio::time::interval(PRUNE_INTERVAL);
        prune_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let sync = tokio::time::sleep(self.next_sync_delay());
        tokio::pin!(sync);
        let mut reachability_tick = tokio::time::interval(REACHABILITY_TICK);
        reachability_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = queue.recv() => match command {
                    Some(command) => self.handle_command(command),
                    // Every handle is gone: stop.
                    None => break,
                },
                event = self.swarm.select_next_some() => self.handle_event(event),
                _ = probe_tick.tick(), if relay => self.probe_next(),
                () = refresh_deadline(self.refresh.as_ref()) => self.refresh_overdue(),
                _ = prune_tick.tick(), if relay => self.prune(),
                _ = reachability_tick.tick(), if self.reachability.is_testing() => {
                    self.update_reachability();
                }
                () = &mut sync, if relay => {
                    self.start_refresh(None);
                    sync.as_mut().reset(tokio::time::Instant::now() + self.next_sync_delay());
                }
            }
        }
        debug!("swarm task stopped");
    }

    /// The sync interval, jittered by up to ±25 % so relays do not synchronise in step.
    fn next_sync_delay(&self) -> Duration {
        let base = self.dir_config.sync_interval;
        let quarter = base / 4;
        let jitter = quarter.mul_f64((rand_u64() % 1000) as f64 / 500.0);
        base - quarter + jitter
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Verify { targets, reply } => {
                self.drop_abandoned_verifications();
                if self.verifications.len() >= MAX_VERIFICATIONS {
                    let _ = reply.send(Err(P2pError::Busy));
                    return;
                }
                self.next_verification += 1;
                let n = targets.len();
                self.verifications.push_back(Verification {
                    id: self.next_verification,
                    targets,
                    results: vec![None; n],
                    next: 0,
                    reply: Some(reply),
                });
                self.pump_verifications();
            }
            Command::Publish { descriptor, reply } => self.publish(*descriptor, reply),
            Command::Fetch { reply } => self.start_refresh(Some(reply)),
            Command::AddAddress { peer, addr, done } => {
                // No behaviour here keeps `add_peer_address`'s addresses for dialing (there is
                // no peer store); Kademlia's routing table is what a dial by PeerId asks.
                self.swarm
                    .behaviour_mut()
                    .kad
                    .add_address(&peer, addr.clone());
                self.swarm.add_peer_address(peer, addr);
                let _ = done.send(());
            }
            Command::StoredRecord { key, reply } => {
                use libp2p::kad::store::RecordStore;
                let value = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .store_mut()
                    .get(&RecordKey::new(&key))
                    .map(|r| r.value.clone());
                let _ = reply.send(value);
            }
            Command::ConnectedPeers { reply } => {
                let _ = reply.send(self.swarm.connected_peers().count());
            }
            Command::TestReachability { candidates } => self.test_reachability(candidates),
        }
    }

    // ---- reachability (relays) ------------------------------------------------------------

    fn test_reachability(&mut self, candidates: Vec<Multiaddr>) {
        let Some(client) = self.swarm.behaviour_mut().autonat_client.as_mut() else {
            return;
        };
        let now = tokio::time::Instant::now();
        self.reachability.start(candidates, now);
        for addr in self.reachability.candidates() {
            client.test(addr);
        }
        self.update_reachability();
    }

    /// Applies the tracker's time bounds and publishes a change of state. An unreachable
    /// relay stops being a Kademlia server: the peers that would add it to their routing
    /// tables could not dial it, and it still asks the DHT as a client does.
    fn update_reachability(&mut self) {
        let Some(state) = self.reachability.update(tokio::time::Instant::now()) else {
            return;
        };
        debug!(?state, "reachability changed");
        let mode = match state {
            Reachability::Unreachable(_) => kad::Mode::Client,
            _ => kad::Mode::Server,
        };
        self.swarm.behaviour_mut().kad.set_mode(Some(mode));
        self.reachability_tx.send_replace(state);
    }

    /// The AutoNAT client asks only over connections it dialed: a peer that serves AutoNAT on
    /// one of those can test us.
    fn note_autonat_server(&mut self, connection: ConnectionId, info: &identify::Info) {
        let dialed = self
            .conns
            .get(&connection)
            .is_some_and(|(_, endpoint)| endpoint.is_dialer());
        if dialed && info.protocols.contains(&AUTONAT_DIAL_REQUEST_PROTOCOL) {
            self.reachability
                .server_connected(tokio::time::Instant::now());
        }
    }

    fn on_autonat_test(&mut self, event: libp2p::autonat::v2::client::Event) {
        let reached = event.result.is_ok();
        let candidate = self.reachability.answered(&event.tested_addr, reached);
        debug!(
            addr = %event.tested_addr,
            server = %event.server,
            reached,
            candidate,
            error = ?event.result.err(),
            "AutoNAT test answered"
        );
        self.update_reachability();
    }

    fn publish(
        &mut self,
        descriptor: SignedDescriptor,
        reply: oneshot::Sender<Result<(), P2pError>>,
    ) {
        if self.publishes.len() >= MAX_PENDING_PUBLISHES {
            let _ = reply.send(Err(P2pError::Busy));
            return;
        }
        let now = self.clock.now();
        let peer = descriptor.peer_id();
        if let Some(dir) = &self.directory {
            let mut store = dir.0.write().unwrap_or_else(PoisonError::into_inner);
            // A relay's own addresses are its own: listed, proven.
            store.insert_own(descriptor.clone(), now);
        }
        self.own = Some(descriptor.clone());
        let relays: Vec<PeerId> = self.relay_peers.iter().copied().collect();
        for relay in relays.into_iter().take(MAX_ANNOUNCE_PEERS) {
            self.announce_to(relay);
        }
        let remaining = descriptor.descriptor().expires_at.saturating_sub(now);
        let record = Record {
            key: RecordKey::new(&descriptor_key(&peer)),
            value: descriptor.as_bytes().to_vec(),
            publisher: Some(peer),
            expires: Some(std::time::Instant::now() + Duration::from_secs(remaining)),
        };
        // The directory (store and announcements) is what lists relays; the Kademlia record
        // is stored on the side and its outcome only logged.
        match self
            .swarm
            .behaviour_mut()
            .kad
            .put_record(record, Quorum::One)
        {
            Ok(query) => {
                self.publishes.insert(query, PendingPublish);
            }
            Err(err) => debug!(%err, "cannot store the descriptor record in the DHT"),
        }
        let _ = reply.send(Ok(()));
    }

    fn announce_to(&mut self, peer: PeerId) {
        let Some(own) = &self.own else {
            return;
        };
        let request = DirRequest::Announce(own.as_bytes().to_vec());
        let id = self.swarm.behaviour_mut().dir.send_request(&peer, request);
        self.requests.insert(id, Pending::Announce);
    }

    fn handle_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.handle_kad(event),
            SwarmEvent::Behaviour(BehaviourEvent::Dir(event)) => self.handle_dir(event),
            SwarmEvent::Behaviour(BehaviourEvent::AutonatClient(event)) => {
                self.on_autonat_test(event);
            }
            SwarmEvent::Behaviour(BehaviourEvent::AutonatServer(event)) => {
                debug!(
                    client = %event.client,
                    addr = %event.tested_addr,
                    result = ?event.result,
                    "dialed an AutoNAT client back"
                );
            }
            // Identify does not feed Kademlia (docs/dependencies.md §3); only DHT servers go in.
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                connection_id,
                info,
            })) => {
                self.note_autonat_server(connection_id, &info);
                if !info.protocols.contains(&KAD_PROTOCOL) {
                    return;
                }
                // Self-declared: routing only (a dial there authenticates the PeerId), and
                // never an address this node would not dial.
                for addr in info.listen_addrs {
                    if dialable(&addr, &self.dir_config) {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                    }
                }
                // A relay met for the first time hears of our descriptor.
                if self.relay_peers.insert(peer_id) {
                    self.announce_to(peer_id);
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                // A probe's or a verification's connection has done its job once the
                // handshake authenticated the peer: it is closed at once, so that proving
                // thousands of relays does not hold thousands of connections open.
                let mut dial_only = false;
                if let Some((probe, kind)) = self.probes.remove(&connection_id) {
                    let reached = peer_id == probe.peer
                        && matches!(&endpoint, ConnectedPoint::Dialer { address, .. }
                            if without_peer(address) == probe.addr);
                    self.probe_done(&probe, kind, reached);
                    dial_only = true;
                }
                if let Some(target) = self.verify_dials.remove(&connection_id) {
                    let reached = matches!(&endpoint, ConnectedPoint::Dialer { address, .. }
                    if self.verify_target(target).is_some_and(|(peer, addr)| {
                        *peer == peer_id && without_peer(address) == *addr
                    }));
                    self.verified(target, reached);
                    dial_only = true;
                }
                if self.bootstrap.contains(&peer_id) {
                    self.bootstrap_table.set(&peer_id, BootstrapDial::Connected);
                }
                if dial_only && self.swarm.close_connection(connection_id) {
                    return;
                }
                self.conns.insert(connection_id, (peer_id, endpoint));
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                // A probe's own connection (never in `conns`) says nothing when it closes.
                let ours = self.conns.remove(&connection_id).is_some();
                if num_established == 0 {
                    self.relay_peers.remove(&peer_id);
                    if ours && let Some(dir) = &self.directory {
                        let now = self.clock.now();
                        dir.0
                            .write()
                            .unwrap_or_else(PoisonError::into_inner)
                            .connection_lost(&peer_id, now);
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                if let Some((probe, kind)) = self.probes.remove(&connection_id) {
                    let local = matches!(error, DialError::Denied { .. } | DialError::Aborted);
                    if local && kind == ProbeKind::Proof {
                        // Refused here (a connection limit), not by the address: try again.
                        if let Some(dir) = &self.directory {
                            dir.0
                                .write()
                                .unwrap_or_else(PoisonError::into_inner)
                                .retry_later(probe);
                        }
                    } else if local {
                        // Nothing learnt about the relay: its schedule holds.
                        let now = self.clock.now();
                        if let Some(dir) = &self.directory {
                            dir.0
                                .write()
                                .unwrap_or_else(PoisonError::into_inner)
                                .check_not_tried(&probe, now);
                        }
                    } else {
                        self.probe_done(&probe, kind, false);
                    }
                }
                if let Some(target) = self.verify_dials.remove(&connection_id) {
                    self.verified(target, false);
                }
                if let Some(peer) = peer_id
                    && self.bootstrap.contains(&peer)
                {
                    debug!(%peer, %error, "dial to a bootstrap peer failed");
                    self.bootstrap_table
                        .set(&peer, BootstrapDial::Failed(classify(&error)));
                }
                debug!(?peer_id, %error, "outgoing connection failed");
            }
            _ => {}
        }
    }

    // ---- verifications (clients) ---------------------------------------------------------

    fn verify_target(&self, (id, index): (u64, usize)) -> Option<&(PeerId, Multiaddr)> {
        self.verifications
            .iter()
            .find(|v| v.id == id)
            .and_then(|v| v.targets.get(index))
    }

    fn verified(&mut self, (id, index): (u64, usize), reached: bool) {
        if let Some(v) = self.verifications.iter_mut().find(|v| v.id == id)
            && let Some(slot) = v.results.get_mut(index)
        {
            *slot = Some(reached);
        }
        self.pump_verifications();
    }

    /// Forgets the verifications whose caller stopped waiting (its deadline passed): they get
    /// no more dials and take no room.
    fn drop_abandoned_verifications(&mut self) {
        self.verifications
            .retain(|v| v.reply.as_ref().is_some_and(|r| !r.is_closed()));
    }

    /// Starts verification dials while there is room, and answers finished verifications.
    fn pump_verifications(&mut self) {
        self.drop_abandoned_verifications();
        while self.verify_dials.len() < MAX_VERIFY_DIALS_IN_FLIGHT {
            let Some(v) = self
                .verifications
                .iter_mut()
                .find(|v| v.next < v.targets.len())
            else {
                break;
            };
            let index = v.next;
            v.next += 1;
            let id = v.id;
            let (peer, addr) = v.targets[index].clone();
            let already = self.conns.values().any(|(p, endpoint)| {
                *p == peer
                    && matches!(endpoint, ConnectedPoint::Dialer { address, .. }
                        if without_peer(address) == addr)
            });
            let outcome = if already {
                Some(true)
            } else if !dialable(&addr, &self.dir_config) {
                Some(false)
            } else {
                let opts = DialOpts::peer_id(peer)
                    .addresses(vec![addr])
                    .condition(PeerCondition::Always)
                    .build();
                let connection = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.verify_dials.insert(connection, (id, index));
                        None
                    }
                    Err(_) => Some(false),
                }
            };
            if let Some(reached) = outcome
                && let Some(v) = self.verifications.iter_mut().find(|v| v.id == id)
            {
                v.results[index] = Some(reached);
            }
        }
        while let Some(v) = self.verifications.front_mut() {
            if v.results.iter().any(Option::is_none) {
                break;
            }
            if let Some(reply) = v.reply.take() {
                let results = v.results.iter().map(|r| r.unwrap_or(false)).collect();
                let _ = reply.send(Ok(results));
            }
            self.verifications.pop_front();
        }
    }

    // ---- probes (relays) ----------------------------------------------------------------

    /// Starts the next probe or liveness check, if there is room: dials the address and lets
    /// the handshake authenticate the relay there. A connection we dialed to that address
    /// and still hold answers either at once: a relay that crashed closed it (and its closing
    /// asked for the check). Checks and proofs take turns first, so that neither a flood of
    /// heard descriptors nor a large store starves the other.
    fn probe_next(&mut self) {
        if self.probes.len() >= MAX_PROBES_IN_FLIGHT {
            return;
        }
        let Some(dir) = self.directory.clone() else {
            return;
        };
        self.probe_ticks += 1;
        let now = self.clock.now();
        let checks_first = self.probe_ticks.is_multiple_of(2);
        let next = {
            let mut store = dir.0.write().unwrap_or_else(PoisonError::into_inner);
            let proof = |store: &mut DirStore| store.next_probe().map(|p| (p, ProbeKind::Proof));
            let check =
                |store: &mut DirStore| store.next_check(now).map(|p| (p, ProbeKind::Liveness));
            if checks_first {
                check(&mut store).or_else(|| proof(&mut store))
            } else {
                proof(&mut store).or_else(|| check(&mut store))
            }
        };
        let Some((probe, kind)) = next else {
            return;
        };
        if !dialable(&probe.addr, &self.dir_config) {
            self.probe_done(&probe, kind, false);
            return;
        }
        let already = self.conns.values().any(|(peer, endpoint)| {
            *peer == probe.peer
                && matches!(endpoint, ConnectedPoint::Dialer { address, .. }
                    if without_peer(address) == probe.addr)
        });
        if already {
            self.probe_done(&probe, kind, true);
            return;
        }
        let opts = DialOpts::peer_id(probe.peer)
            .addresses(vec![probe.addr.clone()])
            .condition(PeerCondition::Always)
            .build();
        let connection = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.probes.insert(connection, (probe, kind));
            }
            Err(err) => {
                debug!(%err, "probe dial refused");
                self.probe_done(&probe, kind, false);
            }
        }
    }

    fn probe_done(&mut self, probe: &Probe, kind: ProbeKind, reached: bool) {
        let counter = match (kind, reached) {
            (ProbeKind::Proof, true) => &self.stats.probes_reached,
            (ProbeKind::Proof, false) => &self.stats.probes_failed,
            (ProbeKind::Liveness, true) => &self.stats.checks_reached,
            (ProbeKind::Liveness, false) => &self.stats.checks_failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if !reached {
            debug!(peer = %probe.peer, addr = %probe.addr, ?kind, "a signed address did not answer as its relay");
        }
        let now = self.clock.now();
        if let Some(dir) = &self.directory {
            let mut store = dir.0.write().unwrap_or_else(PoisonError::into_inner);
            match kind {
                ProbeKind::Proof => store.probed(probe, reached),
                ProbeKind::Liveness => store.checked(probe, reached, now),
            }
        }
    }

    fn prune(&mut self) {
        if let Some(dir) = &self.directory {
            let now = self.clock.now();
            dir.0
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .prune_expired(now);
        }
    }

    // ---- the directory protocol ---------------------------------------------------------

    fn handle_dir(&mut self, event: request_response::Event<DirRequest, DirResponse>) {
        match event {
            request_response::Event::Message {
                peer,
                connection_id,
                message,
            } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let from = self
                        .conns
                        .get(&connection_id)
                        .and_then(|(_, endpoint)| ip_of(endpoint.get_remote_address()));
                    self.answer(peer, from, request, channel)
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => self.on_response(request_id, Some(response)),
            },
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                debug!(%error, "directory request failed");
                self.on_response(request_id, None);
            }
            request_response::Event::InboundFailure { error, .. } => {
                debug!(%error, "directory request from a peer failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// Answers a directory request from `peer`, over a connection from IP address `from`.
    fn answer(
        &mut self,
        peer: PeerId,
        from: Option<std::net::IpAddr>,
        request: DirRequest,
        channel: ResponseChannel<DirResponse>,
    ) {
        let Some(dir) = self.directory.clone() else {
            return;
        };
        let response = match request {
            DirRequest::Listing { epoch, since } => {
                let now = self.clock.now();
                let listing = dir
                    .0
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .listing(epoch, since, now);
                self.stats.listings_served.fetch_add(1, Ordering::Relaxed);
                if listing.full {
                    self.stats
                        .full_listings_served
                        .fetch_add(1, Ordering::Relaxed);
                }
                self.stats
                    .listing_bytes_served
                    .fetch_add(listing_len(&listing) as u64, Ordering::Relaxed);
                DirResponse::Listing(listing)
            }
            DirRequest::Announce(bytes) => {
                let now = self.clock.now();
                let status = match SignedDescriptor::verify(&bytes, now) {
                    Err(_) => AnnounceStatus::Invalid,
                    // specs/04 §7.2: a relay announces only its own descriptor.
                    Ok(d) if d.peer_id() != peer => AnnounceStatus::NotOwn,
                    Ok(d) => {
                        let mut store = dir.0.write().unwrap_or_else(PoisonError::into_inner);
                        match store.offer_announced(d, from, now) {
                            Offered::Added | Offered::Updated => {
                                self.stats
                                    .announces_accepted
                                    .fetch_add(1, Ordering::Relaxed);
                                AnnounceStatus::Accepted
                            }
                            Offered::Unchanged => AnnounceStatus::Unchanged,
                            Offered::Full => AnnounceStatus::Busy,
                            Offered::Refuted | Offered::Invalid(_) => AnnounceStatus::Invalid,
                        }
                    }
                };
                DirResponse::Announce(status)
            }
        };
        let _ = self
            .swarm
            .behaviour_mut()
            .dir
            .send_response(channel, response);
    }

    // ---- refreshes ------------------------------------------------------------------------

    /// Starts a refresh (or joins the one running). `reply` is `None` for a relay's own
    /// synchronisation, whose listings go into its store only.
    fn start_refresh(&mut self, reply: Option<oneshot::Sender<Result<FetchOutcome, P2pError>>>) {
        if let Some(refresh) = &mut self.refresh {
            if let Some(reply) = reply {
                if refresh.waiters.len() >= MAX_REFRESH_WAITERS {
                    let _ = reply.send(Err(P2pError::Busy));
                } else {
                    refresh.waiters.push(reply);
                    refresh.sync_only = false;
                }
            }
            return;
        }
        self.refreshes += 1;
        let mut refresh = Refresh {
            id: self.refreshes,
            deadline: Some(tokio::time::Instant::now() + MAX_REFRESH_TIME),
            sync_only: reply.is_none(),
            walks_left: self.dir_config.max_walks,
            ..Refresh::default()
        };
        refresh.waiters.extend(reply);
        // Sticky sources first (only changes); a relay then asks relays it proved itself,
        // chosen at random from its store; then the bootstrap peers and the relays we are
        // connected to; Kademlia walks to random keys find more.
        for s in &self.sources {
            refresh.candidates.push_back((s.peer, Some(s.clone())));
        }
        if let Some(dir) = &self.directory {
            // Drawn before their addresses are copied: a store of ten thousand costs a
            // shuffle of references per synchronisation, not ten thousand address lists.
            let store = dir.read();
            let mut listed: Vec<&StoreEntry> = store
                .entries()
                .filter(|e| e.standing == Standing::Listed && e.descriptor.peer_id() != self.local)
                .collect();
            shuffle(&mut listed);
            listed.truncate(STORE_SOURCES_FACTOR * self.dir_config.sources_per_refresh);
            let known: Vec<(PeerId, Vec<Multiaddr>)> = listed
                .into_iter()
                .map(|e| {
                    let addrs = e
                        .descriptor
                        .descriptor()
                        .addrs
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| e.proven.contains(*i))
                        .map(|(_, a)| a.clone())
                        .collect();
                    (e.descriptor.peer_id(), addrs)
                })
                .collect();
            drop(store);
            for (peer, addrs) in known {
                for addr in addrs {
                    self.swarm.add_peer_address(peer, addr);
                }
                refresh.candidates.push_back((peer, None));
            }
        }
        let mut others: Vec<PeerId> = self
            .bootstrap
            .iter()
            .chain(self.relay_peers.iter())
            .copied()
            .collect();
        others.sort_unstable();
        others.dedup();
        shuffle(&mut others);
        for peer in others {
            refresh.candidates.push_back((peer, None));
        }
        self.refresh = Some(refresh);
        self.pump_refresh();
    }

    fn pump_refresh(&mut self) {
        let want = self.dir_config.sources_per_refresh;
        let local = self.local;
        let Some(refresh) = &mut self.refresh else {
            return;
        };
        // A synchronisation counts a sticky source that missed it once as gathered: asking
        // another in its place would cost that one's whole store, and on a busy network
        // every missed answer would turn into a full listing.
        let gathered = |r: &Refresh| {
            r.done.len() + r.listings.len() + if r.sync_only { r.excused.len() } else { 0 }
        };
        while refresh.asked < MAX_LISTINGS_IN_FLIGHT && gathered(refresh) + refresh.asked < want {
            let Some((peer, state)) = refresh.candidates.pop_front() else {
                break;
            };
            if peer == local || !refresh.tried.insert(peer) {
                continue;
            }
            // One source per block: a candidate we are connected to in a block already
            // asked is not asked (an adversary's thousands of PeerIds share a few blocks).
            if let Some(block) = block_of(&self.conns, &peer)
                && !refresh.asked_blocks.insert(block)
            {
                refresh.outcome.same_block += 1;
                continue;
            }
            let (epoch, since) = state.as_ref().map_or((0, 0), |s| (s.epoch, s.seq));
            if let Some(state) = state {
                refresh.sticky.insert(peer, state);
            }
            refresh.ask(&mut self.swarm, &mut self.requests, peer, epoch, since);
        }
        let short = gathered(refresh) + refresh.asked < want;
        if short
            && refresh.candidates.is_empty()
            && refresh.walks.is_empty()
            && refresh.walks_left > 0
        {
            refresh.walks_left -= 1;
            refresh.outcome.walks += 1;
            let query = self
                .swarm
                .behaviour_mut()
                .kad
                .get_closest_peers(PeerId::random());
            refresh.walks.insert(query);
        }
        // Enough sources: done, whatever walks still run (their answers are then ignored).
        let finished = refresh.asked == 0
            && (gathered(refresh) >= want
                || (refresh.walks.is_empty() && refresh.candidates.is_empty()));
        if finished {
            self.finish_refresh();
        }
    }

    fn on_walk(
        &mut self,
        id: QueryId,
        result: Result<kad::GetClosestPeersOk, kad::GetClosestPeersError>,
        last: bool,
    ) {
        let Some(refresh) = &mut self.refresh else {
            return;
        };
        if !refresh.walks.contains(&id) {
            return;
        }
        let peers = match result {
            Ok(ok) => ok.peers,
            Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
        };
        let mut found: Vec<PeerId> = peers.into_iter().map(|p| p.peer_id).collect();
        shuffle(&mut found);
        for peer in found {
            if refresh.candidates.len() >= MAX_CANDIDATES_PER_REFRESH {
                break;
            }
            if !refresh.tried.contains(&peer) {
                refresh.candidates.push_back((peer, None));
            }
        }
        if last {
            refresh.walks.remove(&id);
        }
        self.pump_refresh();
    }

    fn on_response(&mut self, id: OutboundRequestId, response: Option<DirResponse>) {
        let Some(pending) = self.requests.remove(&id) else {
            return;
        };
        let Pending::Listing { peer, refresh: id } = pending else {
            return;
        };
        let block = block_of(&self.conns, &peer);
        let Some(refresh) = &mut self.refresh else {
            return;
        };
        if refresh.id != id {
            return;
        }
        if !refresh.sync_only {
            trace!(
                %peer,
                answered = response.is_some(),
                asked = refresh.asked,
                since = ?refresh.deadline.map(|d| MAX_REFRESH_TIME.saturating_sub(d - tokio::time::Instant::now())),
                "a source answered the refresh"
            );
        }
        refresh.asked = refresh.asked.saturating_sub(1);
        let listing = match response {
            Some(DirResponse::Listing(l)) => Some(l),
            _ => None,
        };
        let (Some(listing), Some(block)) = (listing, block) else {
            // Another source in that block may answer instead.
            if let Some(block) = block
                && !refresh.blocks.contains(&block)
            {
                refresh.asked_blocks.remove(&block);
            }
            refresh.outcome.failed += 1;
            refresh.listings.remove(&peer);
            if let Some(state) = refresh.sticky.remove(&peer)
                && !state.missed
            {
                refresh.excused.push(SourceState {
                    missed: true,
                    ..state
                });
            }
            self.pump_refresh();
            return;
        };
        let len = listing_len(&listing) as u64;
        refresh.outcome.bytes += len;
        self.stats.listings_read.fetch_add(1, Ordering::Relaxed);
        self.stats
            .listing_bytes_read
            .fetch_add(len, Ordering::Relaxed);
        let more = listing.more;
        refresh.sticky.remove(&peer);
        let next = SourceState {
            peer,
            epoch: listing.epoch,
            seq: listing.seq,
            missed: false,
        };
        match refresh.listings.remove(&peer) {
            // A further page of a source already taken.
            Some((mut gathered, _, pages)) => {
                gathered.entries.extend(listing.entries);
                self.continue_source(peer, gathered, next, pages + 1, more);
            }
            None => {
                if !refresh.blocks.insert(block) {
                    refresh.outcome.same_block += 1;
                } else {
                    if listing.full {
                        refresh.outcome.full_listings += 1;
                        self.stats
                            .full_listings_read
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    // The relays a source proved are candidates too, in random order: each is
                    // taken only in a block of its own, measured on the connection we make.
                    // Drawn before they are decoded: a listing of ten thousand entries costs
                    // a few decodes here, not ten thousand.
                    let mut order: Vec<&ListingEntry> = listing
                        .entries
                        .iter()
                        .filter(|e| !e.proven.is_empty())
                        .collect();
                    shuffle(&mut order);
                    let listed: Vec<(PeerId, Vec<Multiaddr>)> = order
                        .into_iter()
                        .filter_map(|e| {
                            let claim = SignedDescriptor::unverified_claim(&e.descriptor)?;
                            let addrs = claim
                                .addrs
                                .iter()
                                .enumerate()
                                .filter(|(i, _)| e.proven.contains(*i))
                                .map(|(_, a)| a.clone())
                                .collect::<Vec<_>>();
                            (!addrs.is_empty()).then(|| (claim.peer_id(), addrs))
                        })
                        .take(LISTED_CANDIDATES_PER_SOURCE)
                        .collect();
                    for (candidate, addrs) in listed {
                        if refresh.candidates.len() >= MAX_CANDIDATES_PER_REFRESH
                            || refresh.tried.contains(&candidate)
                        {
                            continue;
                        }
                        for addr in addrs {
                            self.swarm.add_peer_address(candidate, addr);
                        }
                        refresh.candidates.push_back((candidate, None));
                    }
                    let gathered = SourceListing {
                        source: peer,
                        block,
                        entries: listing.entries,
                    };
                    self.continue_source(peer, gathered, next, 1, more);
                }
            }
        }
        self.pump_refresh();
    }

    /// Asks a source for its next page, or files what it listed.
    fn continue_source(
        &mut self,
        peer: PeerId,
        gathered: SourceListing,
        state: SourceState,
        pages: usize,
        more: bool,
    ) {
        let Some(refresh) = &mut self.refresh else {
            return;
        };
        if more && pages < MAX_PAGES_PER_SOURCE {
            refresh.ask(
                &mut self.swarm,
                &mut self.requests,
                peer,
                state.epoch,
                state.seq,
            );
            refresh.listings.insert(peer, (gathered, state, pages));
        } else {
            refresh.done.push((gathered, state));
        }
    }

    /// The refresh ran out of time: the sources still answering are dropped, pages already
    /// received kept.
    fn refresh_overdue(&mut self) {
        let Some(refresh) = &mut self.refresh else {
            return;
        };
        debug!(
            asked = refresh.asked,
            "refresh overdue: ending with what it has"
        );
        refresh.outcome.failed += refresh.asked;
        refresh.asked = 0;
        refresh.walks.clear();
        refresh.candidates.clear();
        // Sticky sources whose first page is still on its way missed this one.
        let late: Vec<SourceState> = refresh
            .sticky
            .drain()
            .filter(|(_, state)| !state.missed)
            .map(|(_, state)| SourceState {
                missed: true,
                ..state
            })
            .collect();
        refresh.excused.extend(late);
        for (_, (listing, state, _)) in refresh.listings.drain() {
            refresh.done.push((listing, state));
        }
        self.finish_refresh();
    }

    fn finish_refresh(&mut self) {
        let Some(mut refresh) = self.refresh.take() else {
            return;
        };
        let now = self.clock.now();
        // A relay's store takes every valid entry it was listed; it proves them itself.
        if let Some(dir) = &self.directory {
            let mut store = dir.0.write().unwrap_or_else(PoisonError::into_inner);
            let mut reread = false;
            for (listing, state) in &mut refresh.done {
                let mut refused_for_room = false;
                for entry in &listing.entries {
                    refused_for_room |= store.offer(&entry.descriptor, now) == Offered::Full
                        && store.heard_lane_full();
                }
                // Entries refused while the heard lane was full would never be listed again
                // by a source asked only for changes: a relay joining a network larger than
                // its lane would stop at MAX_HEARD relays. One such source is asked for its
                // whole store again next time, until the relay has caught up. Refusals by a
                // subnet's or block's cap do not count: a re-read would not change them, and
                // an adversary filling one /24's pending slots would make every sync a full
                // one.
                if refused_for_room && !reread {
                    reread = true;
                    state.epoch = 0;
                    state.seq = 0;
                }
            }
        }
        self.sources = refresh
            .done
            .iter()
            .map(|(_, s)| s.clone())
            .chain(refresh.excused.drain(..))
            .collect();
        let listings: Vec<SourceListing> = refresh.done.into_iter().map(|(l, _)| l).collect();
        if refresh.sync_only {
            debug!(sources = listings.len(), "directory synchronised");
            return;
        }
        let mut newest: HashMap<PeerId, SignedDescriptor> = HashMap::new();
        for entry in listings.iter().flat_map(|l| l.entries.iter()) {
            match SignedDescriptor::verify(&entry.descriptor, now) {
                Ok(d) => {
                    let keep = newest
                        .get(&d.peer_id())
                        .is_none_or(|held| is_newer(&d, held));
                    if keep {
                        newest.insert(d.peer_id(), d);
                    }
                }
                Err(err) => self.stats.count_refusal(RecordRefusal::of(&err)),
            }
        }
        // Streams can be opened to listed relays at their signed addresses.
        for d in newest.values() {
            for addr in &d.descriptor().addrs {
                self.swarm.add_peer_address(d.peer_id(), addr.clone());
            }
        }
        refresh.outcome.descriptors = newest.into_values().collect();
        refresh.outcome.listings = listings;
        debug!(
            sources = refresh.outcome.listings.len(),
            relays = refresh.outcome.descriptors.len(),
            bytes = refresh.outcome.bytes,
            walks = refresh.outcome.walks,
            "view refresh finished"
        );
        let waiters = std::mem::take(&mut refresh.waiters);
        let mut outcome = Some(refresh.outcome);
        let n = waiters.len();
        for (i, waiter) in waiters.into_iter().enumerate() {
            let result = if i + 1 == n {
                outcome.take().unwrap_or_default()
            } else {
                outcome.as_ref().map(clone_outcome).unwrap_or_default()
            };
            let _ = waiter.send(Ok(result));
        }
    }

    // ---- Kademlia -------------------------------------------------------------------------

    fn handle_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::InboundRequest { request } => self.handle_inbound(request),
            kad::Event::OutboundQueryProgressed {
                id,
                result,
                step,
                stats,
            } => {
                if step.last {
                    debug!(
                        ?id,
                        took = ?stats.duration(),
                        requests = stats.num_requests(),
                        failures = stats.num_failures(),
                        "DHT query finished"
                    );
                }
                match result {
                    QueryResult::PutRecord(outcome) => {
                        if self.publishes.remove(&id).is_some()
                            && let Err(err) = outcome
                        {
                            debug!(%err, "the DHT did not store the descriptor record");
                        }
                    }
                    QueryResult::GetClosestPeers(outcome) => self.on_walk(id, outcome, step.last),
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// Whether this node is among the k closest it knows to `key` (specs/04 §5.4): a server
    /// stores a record only then, so records minted under keys far from it fill nothing here.
    fn among_closest(&mut self, key: &RecordKey) -> bool {
        let target = kad::KBucketKey::new(key.clone());
        let me = kad::KBucketKey::from(self.local).distance(&target);
        let closer = self
            .swarm
            .behaviour_mut()
            .kad
            .get_closest_local_peers(&target)
            .take(kad::K_VALUE.get())
            .filter(|p| p.distance(&target) < me)
            .count();
        closer < kad::K_VALUE.get()
    }

    /// specs/04 §5.4: validate before storing.
    fn handle_inbound(&mut self, request: kad::InboundRequest) {
        use libp2p::kad::store::RecordStore;
        let kad::InboundRequest::PutRecord {
            source,
            record: Some(mut record),
            ..
        } = request
        else {
            return;
        };
        let now = self.clock.now();
        let verdict = validate_record(
            record.key.as_ref(),
            &record.value,
            record.publisher.as_ref(),
            now,
        );
        if verdict.is_ok() && !self.among_closest(&record.key) {
            debug!(%source, "refused a record for a key this server is not close to");
            return;
        }
        // The records a relay keeps are those of the relays its directory store holds
        // (specs/04 §5.4): the store's lanes bound by subnet and block what one host can put
        // there, so minting keys cannot fill the record store (at most MAX_STORE_ENTRIES plus
        // the pending lanes, below MAX_STORED_RECORDS) and keep honest records out.
        if let (Ok(signed), Some(dir)) = (&verdict, &self.directory)
            && !dir.holds_after_offer(signed, now)
        {
            self.stats
                .records_not_in_store
                .fetch_add(1, Ordering::Relaxed);
            debug!(%source, "refused a record of a relay the directory store does not hold");
            return;
        }
        let directory = self.directory.clone();
        let store = self.swarm.behaviour_mut().kad.store_mut();
        let verdict = verdict.map(|signed| {
            let held = store
                .get(&record.key)
                .and_then(|held| SignedDescriptor::verify_ignoring_time(&held.value).ok());
            (signed, held)
        });
        match verdict {
            Ok((signed, Some(held))) if !is_newer(&signed, &held) && signed != held => {
                self.stats.count_refusal(RecordRefusal::Stale);
                debug!(%source, "refused a stale descriptor record");
            }
            Ok((signed, _)) => {
                // Never keep a record past the descriptor's own expiry.
                let remaining = signed.descriptor().expires_at.saturating_sub(now);
                let cap = std::time::Instant::now() + Duration::from_secs(remaining);
                record.expires = Some(record.expires.map_or(cap, |e| e.min(cap)));
                let mut stored = store.put(record.clone());
                if stored.is_err() {
                    // Full: expired records, and those of relays the directory store no
                    // longer holds, make room first.
                    let instant = std::time::Instant::now();
                    let expired: Vec<RecordKey> = store
                        .records()
                        .filter(|r| {
                            r.expires.is_some_and(|e| e <= instant)
                                || directory.as_ref().is_some_and(|dir| {
                                    peer_of_descriptor_key(r.key.as_ref())
                                        .map_or(true, |peer| dir.get(&peer).is_none())
                                })
                        })
                        .map(|r| r.key.clone())
                        .collect();
                    for key in expired {
                        store.remove(&key);
                    }
                    stored = store.put(record);
                }
                match stored {
                    Ok(()) => {
                        self.stats.records_stored.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(err) => debug!(%source, %err, "DHT store refused a record"),
                }
            }
            Err(err) => {
                let refusal = RecordRefusal::of(&err);
                self.stats.count_refusal(refusal);
                debug!(%source, %err, reason = refusal.as_str(), "refused an inbound DHT record");
            }
        }
    }
}

/// The /16 (/32) of the address of a connection to `peer`.
fn block_of(
    conns: &HashMap<ConnectionId, (PeerId, ConnectedPoint)>,
    peer: &PeerId,
) -> Option<Block> {
    conns.values().find_map(|(p, endpoint)| {
        if p != peer {
            return None;
        }
        ip_of(endpoint.get_remote_address()).map(Block::of)
    })
}

/// Resolves when the running refresh is overdue; never without one.
async fn refresh_deadline(refresh: Option<&Refresh>) {
    match refresh.and_then(|r| r.deadline) {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn clone_outcome(o: &FetchOutcome) -> FetchOutcome {
    FetchOutcome {
        listings: o.listings.clone(),
        descriptors: o.descriptors.clone(),
        bytes: o.bytes,
        full_listings: o.full_listings,
        walks: o.walks,
        same_block: o.same_block,
        failed: o.failed,
    }
}

/// The encoded length of a listing.
fn listing_len(l: &Listing) -> usize {
    LISTING_HEADER_LEN
        + l.entries
            .iter()
            .map(|e| ENTRY_OVERHEAD + e.descriptor.len())
            .sum::<usize>()
}

/// Shuffles `v` (Fisher–Yates with the OS's randomness): which candidates are asked first must
/// not be predictable.
fn shuffle<T>(v: &mut [T]) {
    for i in (1..v.len()).rev() {
        let j = (rand_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_dialed_only_when_allowed() {
        let strict = DirConfig::default();
        let test_net = DirConfig {
            allow_private_addrs: true,
            ..DirConfig::default()
        };
        for addr in [
            "/ip4/127.0.0.1/tcp/1",
            "/ip4/10.1.2.3/tcp/1",
            "/ip4/192.168.1.1/tcp/1",
            "/ip4/169.254.0.1/tcp/1",
            "/ip4/100.64.0.1/tcp/1",
            "/ip6/::1/tcp/1",
            "/ip6/fd00::1/tcp/1",
            "/ip6/fe80::1/tcp/1",
            "/ip6/::ffff:10.0.0.1/tcp/1",
        ] {
            let a: Multiaddr = addr.parse().expect("addr");
            assert!(!dialable(&a, &strict), "{addr}");
            assert!(dialable(&a, &test_net), "{addr}");
        }
        for addr in ["/ip4/93.184.216.34/tcp/1", "/ip6/2606:4700::1/tcp/1"] {
            let a: Multiaddr = addr.parse().expect("addr");
            assert!(dialable(&a, &strict), "{addr}");
        }
    }

    #[test]
    fn a_shuffle_keeps_every_element() {
        let mut v: Vec<u32> = (0..100).collect();
        shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<u32>>());
    }
}
