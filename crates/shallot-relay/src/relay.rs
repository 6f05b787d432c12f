//! The running relay: the libp2p node, the accept loop (limits, then `RelayCircuit::accept`),
//! one task per circuit, and descriptor publication with onion-key rotation.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use futures::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use libp2p::identity::ed25519;
use shallot_cell::{DestroyReason, LINK_CELL_LEN, LinkCell, Preamble};
use shallot_crypto::{OnionKeyRing, OnionPublicKey};
use shallot_directory::{
    Descriptor, HostKey, MAX_ADDRS, PROTOCOL_CIRCUIT_V1, REPUBLISH_INTERVAL_SECS, RelayFlags,
    SignedDescriptor, ip_of, socket_of,
};
use shallot_exit_policy::AddressFamily;
use shallot_p2p::{
    CIRCUIT_PROTOCOL, IncomingStreams, Multiaddr, Node, NodeConfig, PeerId, Reachability, Role,
};
use shallot_proto::{RelayCircuit, RelayConfig as CircuitConfig};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::circuit::{CLOSE_GRACE, CircuitTask};
use crate::config::RelayConfig;
use crate::create_queue::CreateQueue;
use crate::err::RelayError;
use crate::exit::Exit;
use crate::keys;
use crate::limits::{HandshakeSlot, Limiter, Refusal, Source};
use crate::link::{self, Link, LinkReader, Stream};
use crate::memory::MemoryBudget;
use crate::safelog::Sensitive;
use crate::traffic::{self, Accounting, Hibernation, Traffic};

/// Republication delays after the first successful publications. Kademlia stores a record at
/// the k closest nodes *as the publisher sees them*; a new relay's routing table is still
/// filling in its first minutes, so it publishes again as it fills, which puts the record and
/// the shard announcement where lookups go (specs/04 §4). On loopback one publication is
/// enough (the 94 of 100 once measured came from announcements without addresses, specs/04
/// §5.3); these stay as cheap insurance for networks where tables fill more slowly.
pub const EARLY_REPUBLISH: [Duration; 3] = [
    Duration::from_secs(15),
    Duration::from_secs(60),
    Duration::from_secs(300),
];
/// First wait before retrying a failed publication (doubles up to [`PUBLISH_RETRY_MAX`]).
pub const PUBLISH_RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest wait between publication retries (while the relay has no DHT peers, say).
pub const PUBLISH_RETRY_MAX: Duration = Duration::from_secs(16);
/// Wait before retrying a failed onion-key rotation (a disk error).
const ROTATION_RETRY: Duration = Duration::from_secs(3600);

/// A monotonic counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the relay did and refused, for metrics and tests.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct RelayStats {
    /// Circuits accepted (CREATE answered with CREATED).
    pub circuits_accepted: Counter,
    /// Circuits that ended.
    pub circuits_closed: Counter,
    /// Circuits destroyed for carrying nothing for `idle_circuit_timeout_secs`.
    pub circuits_closed_idle: Counter,
    /// Circuits destroyed because the relay's queued bytes passed `max_queued_bytes` and their
    /// data had waited longest (specs/00 §4.5).
    pub circuits_destroyed_memory: Counter,
    /// Circuit streams refused for a bad preamble, a bad or unexpected first cell, a failed
    /// handshake, or a stream that ended before its first cell.
    pub refused_malformed: Counter,
    /// Circuit streams that sent no preamble and first cell in time.
    pub refused_timeout: Counter,
    /// Circuit streams whose connection had closed before the relay took them (nothing was
    /// wrong with them; nothing could be answered).
    pub refused_connection_gone: Counter,
    /// Circuits refused with DESTROY(HIBERNATING): the accounting allowance is nearly spent.
    pub refused_hibernating: Counter,
    /// Circuits destroyed with DESTROY(HIBERNATING) once the allowance was spent.
    pub circuits_destroyed_hibernating: Counter,
    /// Circuits refused because the relay holds `max_circuits`.
    pub refused_total_limit: Counter,
    /// Circuits refused because the previous-hop relay holds `max_circuits_per_peer`.
    pub refused_peer_limit: Counter,
    /// Circuits refused because the peers of one address hold `max_circuits_per_address`.
    pub refused_address_limit: Counter,
    /// Circuits refused by the source's CREATE rate.
    pub refused_rate_limit: Counter,
    /// Circuit streams closed unread because too many handshakes were in progress.
    pub refused_handshakes: Counter,
    /// CREATEs whose turn in the handshake queue did not come within the handshake timeout, or
    /// that lost their place in the full queue to a source with fewer waiting.
    pub refused_create_queue: Counter,
    /// EXTENDs this relay tried.
    pub extends: Counter,
    /// EXTENDs that could not reach the next hop.
    pub extends_failed: Counter,
    /// EXTENDs refused before any dial: to a PeerId not in this relay's directory (a client,
    /// or no relay at all), or with no address its descriptor signs (specs/03 §4.6).
    pub extends_refused: Counter,
    /// Exit connections opened.
    pub exit_connects: Counter,
    /// Exit connections refused or failed (policy, DNS, connect).
    pub exit_connect_failures: Counter,
    /// Descriptors published.
    pub descriptors_published: Counter,
    /// Publications that failed (and were retried).
    pub publish_failures: Counter,
    /// Times the relay found itself not reachable at any announced address and withheld its
    /// descriptor (specs/04 §4.1).
    pub found_unreachable: Counter,
    /// Onion-key rotations.
    pub onion_key_rotations: Counter,
}

/// What every task of the relay shares.
pub(crate) struct Context {
    pub(crate) node: Node,
    pub(crate) local_peer_bytes: Vec<u8>,
    pub(crate) keys: RwLock<OnionKeyRing>,
    pub(crate) exit: Option<Arc<Exit>>,
    pub(crate) limiter: Limiter,
    pub(crate) create_queue: CreateQueue,
    pub(crate) memory: MemoryBudget,
    /// The bandwidth limits and the accounting period (crate::traffic).
    pub(crate) traffic: Arc<Traffic>,
    pub(crate) stats: RelayStats,
    pub(crate) handshake_timeout: Duration,
    pub(crate) extend_timeout: Duration,
    pub(crate) idle_circuit_timeout: Duration,
    pub(crate) safe_logging: bool,
    /// The addresses to publish whatever reachability says (`RelayConfig::publish_untested`,
    /// tests only).
    pub(crate) publish_untested: Option<Vec<Multiaddr>>,
    /// Where this relay listens and what it announces, as IP and port (TCP or UDP).
    pub(crate) own_sockets: Vec<SocketAddr>,
    /// This relay's own IP addresses (announced and listened on, unspecified left out).
    pub(crate) own_ips: Vec<IpAddr>,
}

impl Context {
    /// Where a circuit from `peer` comes from, as the limits count it: a listed relay by its
    /// PeerId, any other peer by the address it is connected from. `None` once the peer has
    /// no connection (its stream is dead too).
    pub(crate) fn source_of(&self, peer: &PeerId) -> Option<Source> {
        if self.node.directory().is_some_and(|d| d.lists(peer)) {
            return Some(Source::Relay(*peer));
        }
        let ip = self.node.peer_addresses().ip_of(peer)?;
        Some(Source::Host(HostKey::of(ip)))
    }

    /// Whether a relay listens at `addr`: this relay (at a listen or announced address; one
    /// listening on an unspecified address at that port on loopback or any of its own
    /// addresses) or a relay in its directory store. specs/06 §6.1.
    pub(crate) fn is_relay_address(&self, addr: SocketAddr) -> bool {
        let local = addr.ip().is_loopback() || self.own_ips.contains(&addr.ip());
        let own = self.own_sockets.iter().any(|s| {
            s.port() == addr.port() && (s.ip() == addr.ip() || (s.ip().is_unspecified() && local))
        });
        own || self
            .node
            .directory()
            .is_some_and(|d| d.lists_listen_address(addr))
    }
}

/// The relay. See [`Relay::start`].
#[derive(Debug)]
pub struct Relay;

impl Relay {
    /// Starts a relay (an exit if `config.exit_policy_file` is set): loads or creates its keys
    /// in `data_dir`, starts the libp2p node (Kademlia server mode), accepts circuit streams,
    /// and publishes its descriptor now, every hour and after each onion-key rotation. Must be
    /// called inside a tokio runtime; the relay runs until the handle is shut down or dropped.
    pub async fn start(config: RelayConfig) -> Result<RelayHandle, RelayError> {
        config.validate()?;
        if config.announce.is_empty()
            && let Some(a) = config.listen.iter().find(|a| is_unspecified(a))
        {
            return Err(RelayError::Config(format!(
                "the relay listens on {a}, an unspecified address that clients cannot dial; \
                 set `announce` to the addresses to publish in the descriptor"
            )));
        }
        let lifetime = Duration::from_secs(config.descriptor_lifetime_secs);
        let keys = keys::load_or_create(&config.data_dir, lifetime)?;
        let ed = keys
            .identity
            .clone()
            .try_into_ed25519()
            .map_err(|_| RelayError::KeyFormat {
                path: config.data_dir.join(keys::IDENTITY_KEY_FILE),
                what: "not an Ed25519 keypair".into(),
            })?;
        let own_ips: Vec<IpAddr> = config
            .announce
            .iter()
            .chain(&config.listen)
            .filter_map(ip_of)
            .filter(|ip| !ip.is_unspecified())
            .collect();
        let exit = match &config.exit_policy_file {
            Some(path) => Some(Arc::new(Exit::new(&config, path, &own_ips)?)),
            None => None,
        };
        let policy_summary = exit.as_ref().map_or_else(Vec::new, |e| {
            e.policy()
                .summary(AddressFamily::Ipv4)
                .encode()
                .into_bytes()
        });
        let node = Node::start(keys.identity.clone(), {
            let mut node =
                NodeConfig::new(Role::Relay, config.listen.clone(), config.bootstrap.clone());
            node.directory.allow_private_addrs = config.allow_private_addresses;
            node.transport = config.transport.clone();
            node
        })
        .await?;
        let announce: Vec<Multiaddr> = if config.announce.is_empty() {
            node.listen_addrs()
                .iter()
                .take(MAX_ADDRS)
                .cloned()
                .collect()
        } else {
            config.announce.clone()
        };
        // Publication waits for the outcome (specs/04 §4.1).
        node.test_reachability(announce.clone()).await?;
        let incoming = node
            .stream_control()
            .accept(CIRCUIT_PROTOCOL)
            .map_err(|_| RelayError::AlreadyAccepting)?;
        let peer_id = node.peer_id();
        let own_sockets = node
            .listen_addrs()
            .iter()
            .chain(&announce)
            .filter_map(socket_of)
            .collect();
        let accounting = config.accounting_max.map(|max| {
            let mut accounting = Accounting::new(
                max.bytes(),
                config.accounting_period,
                config.accounting_rule,
                node.clock().now(),
            );
            traffic::restore_accounting(&config.data_dir, &mut accounting);
            accounting
        });
        let traffic = Arc::new(Traffic::new(config.rate_and_burst(), accounting));
        let accounting = tokio::spawn(traffic::accounting_loop(
            Arc::clone(&traffic),
            node.clock().clone(),
            config.data_dir.clone(),
        ));
        let ctx = Arc::new(Context {
            local_peer_bytes: peer_id.to_bytes(),
            node,
            keys: RwLock::new(keys.onion),
            exit,
            limiter: Limiter::new(&config),
            create_queue: CreateQueue::new(
                config.create_rate_total,
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            ),
            // `validate` checked that it fits.
            memory: MemoryBudget::new(
                usize::try_from(config.max_queued_bytes).unwrap_or(usize::MAX),
            ),
            traffic,
            stats: RelayStats::default(),
            handshake_timeout: Duration::from_secs(config.handshake_timeout_secs),
            extend_timeout: Duration::from_secs(config.extend_timeout_secs),
            idle_circuit_timeout: Duration::from_secs(config.idle_circuit_timeout_secs),
            safe_logging: config.safe_logging,
            publish_untested: config.publish_untested.then(|| announce.clone()),
            own_sockets,
            own_ips,
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(Arc::clone(&ctx), incoming, shutdown_rx));
        let (kick, kick_rx) = mpsc::channel(1);
        let rotation = Duration::from_secs(config.onion_key_rotation_secs);
        let publisher = Publisher {
            ed,
            family: config.family.clone(),
            lifetime: config.descriptor_lifetime_secs,
            rotation,
            data_dir: config.data_dir.clone(),
            next_rotation: keys.onion_created + rotation,
            previous_until: keys.previous_until,
            policy_summary,
            // A restored accounting state may start the relay hibernating.
            hibernating: ctx.traffic.hibernation() != Hibernation::Awake,
        };
        let publisher = tokio::spawn(publish_loop(Arc::clone(&ctx), publisher, kick_rx));
        info!(
            %peer_id,
            exit = ctx.exit.is_some(),
            addrs = ?announce,
            "relay started"
        );
        Ok(RelayHandle {
            ctx,
            announce,
            shutdown,
            accept: Some(accept),
            publisher,
            accounting,
            kick,
        })
    }
}

/// A running relay. Dropping it stops the relay at once; [`RelayHandle::shutdown`] first
/// destroys every circuit cleanly.
pub struct RelayHandle {
    ctx: Arc<Context>,
    announce: Vec<Multiaddr>,
    shutdown: watch::Sender<bool>,
    accept: Option<JoinHandle<()>>,
    publisher: JoinHandle<()>,
    accounting: JoinHandle<()>,
    kick: mpsc::Sender<()>,
}

impl RelayHandle {
    /// The relay's PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.ctx.node.peer_id()
    }

    /// The addresses the node listens on, with ports resolved.
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        self.ctx.node.listen_addrs()
    }

    /// The addresses in the relay's descriptor.
    pub fn announced_addrs(&self) -> &[Multiaddr] {
        &self.announce
    }

    /// The first listen address with `/p2p/<PeerId>`: what other nodes bootstrap from.
    pub fn bootstrap_addr(&self) -> Option<Multiaddr> {
        self.ctx.node.bootstrap_addr()
    }

    /// Whether the relay is an exit.
    pub fn is_exit(&self) -> bool {
        self.ctx.exit.is_some()
    }

    /// The current onion key's public half.
    pub fn onion_key(&self) -> OnionPublicKey {
        self.ctx
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .current_public()
    }

    /// Circuits open now.
    pub fn open_circuits(&self) -> usize {
        self.ctx.limiter.circuits()
    }

    /// Bytes the circuits hold for their peers now, as counted against `max_queued_bytes`.
    pub fn queued_bytes(&self) -> usize {
        self.ctx.memory.used()
    }

    /// Counters of what the relay did and refused.
    pub fn stats(&self) -> &RelayStats {
        &self.ctx.stats
    }

    /// The libp2p node's counters (DHT records stored and refused).
    pub fn node_stats(&self) -> &shallot_p2p::NodeStats {
        self.ctx.node.stats()
    }

    /// The relay's directory store: the relays it knows and may extend to (specs/04 §7.4).
    pub fn directory(&self) -> &shallot_p2p::Directory {
        self.ctx
            .node
            .directory()
            .expect("a relay's node always has a directory")
    }

    /// What the relay knows of its reachability at its announced addresses (specs/04 §4.1):
    /// it publishes only while this is `Reachable` (the confirmed addresses) or `Untested`.
    pub fn reachability(&self) -> Reachability {
        self.ctx.node.reachability()
    }

    /// Publishes the descriptor again now (e.g. after the operator changed something).
    pub fn republish(&self) {
        let _ = self.kick.try_send(());
    }

    /// Whether the relay hibernates (its accounting allowance is nearly or wholly spent): it
    /// refuses new circuits and its descriptor says so.
    pub fn is_hibernating(&self) -> bool {
        self.ctx.traffic.hibernation() != Hibernation::Awake
    }

    /// Bytes of circuit traffic (links and exit connections) received and sent since start.
    pub fn traffic_totals(&self) -> (u64, u64) {
        self.ctx.traffic.totals()
    }

    /// Destroys every circuit (DESTROY both ways, within [`CLOSE_GRACE`]) and stops the
    /// relay.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        self.publisher.abort();
        self.accounting.abort();
        if let Some(accept) = self.accept.take() {
            let abort = accept.abort_handle();
            if tokio::time::timeout(CLOSE_GRACE + Duration::from_secs(1), accept)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.publisher.abort();
        self.accounting.abort();
        if let Some(accept) = &self.accept {
            accept.abort();
        }
    }
}

impl std::fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayHandle")
            .field("peer_id", &self.peer_id())
            .field("exit", &self.is_exit())
            .finish_non_exhaustive()
    }
}

fn is_unspecified(addr: &Multiaddr) -> bool {
    ip_of(addr).is_some_and(|ip| ip.is_unspecified())
}

async fn accept_loop(
    ctx: Arc<Context>,
    mut incoming: IncomingStreams,
    mut shutdown: watch::Receiver<bool>,
) {
    // Bounded by the limiter: handshakes in progress plus admitted circuits.
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            next = incoming.next() => {
                let Some((peer, stream)) = next else { break };
                let admitted = ctx.source_of(&peer).map(|source| {
                    ctx.limiter.begin_handshake(source, std::time::Instant::now())
                });
                match admitted {
                    Some(Ok(slot)) => {
                        tasks.spawn(serve(Arc::clone(&ctx), peer, stream, slot, shutdown.clone()));
                    }
                    None => {
                        // The peer's connection is gone: so is the stream.
                        ctx.stats.refused_connection_gone.inc();
                    }
                    Some(Err(_)) => {
                        // Dropping the stream closes it, unread.
                        ctx.stats.refused_handshakes.inc();
                    }
                }
            }
            Some(_) = tasks.join_next() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(incoming);
    // The circuits saw the shutdown too: let them write their DESTROYs.
    let drain = async { while tasks.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(CLOSE_GRACE, drain).await;
}

/// Why the first bytes of a circuit stream were refused.
enum FirstError {
    /// The preamble is invalid: close without writing (specs/01 §4.2).
    Preamble,
    /// The stream ended or failed before a whole first cell.
    Io,
}

async fn read_first(r: &mut LinkReader) -> Result<([u8; Preamble::LEN], Vec<u8>), FirstError> {
    let mut preamble = [0u8; Preamble::LEN];
    r.read_exact(&mut preamble)
        .await
        .map_err(|_| FirstError::Io)?;
    let p = Preamble::decode(&preamble).map_err(|_| FirstError::Preamble)?;
    let mut cell = vec![0u8; usize::from(p.cell_len)];
    r.read_exact(&mut cell).await.map_err(|_| FirstError::Io)?;
    Ok((preamble, cell))
}

/// Writes one refusal cell (if any) and closes the stream, within the handshake timeout.
async fn refuse(ctx: &Context, mut w: WriteHalf<Stream>, cell: Option<Vec<u8>>) {
    let _ = tokio::time::timeout(ctx.handshake_timeout, async {
        if let Some(cell) = cell {
            let _ = w.write_all(&cell).await;
        }
        let _ = w.close().await;
    })
    .await;
}

/// One inbound circuit stream: the first cell within the handshake timeout, the limits, the
/// handshake, then the circuit's task.
async fn serve(
    ctx: Arc<Context>,
    peer: PeerId,
    stream: Stream,
    handshake: HandshakeSlot,
    shutdown: watch::Receiver<bool>,
) {
    let deadline = tokio::time::Instant::now() + ctx.handshake_timeout;
    let (mut r, w) = link::split(stream, LINK_CELL_LEN);
    let first = tokio::time::timeout_at(deadline, read_first(&mut r)).await;
    let (preamble, cell) = match first {
        Ok(Ok(first)) => first,
        Ok(Err(FirstError::Preamble)) => {
            ctx.stats.refused_malformed.inc();
            return refuse(&ctx, w, None).await;
        }
        Ok(Err(FirstError::Io)) => {
            ctx.stats.refused_malformed.inc();
            return;
        }
        Err(_) => {
            ctx.stats.refused_timeout.inc();
            return;
        }
    };
    // Tor's soft hibernation: circuits already built go on, new ones are refused.
    if ctx.traffic.hibernation() != Hibernation::Awake {
        ctx.stats.refused_hibernating.inc();
        let destroy = LinkCell::Destroy(DestroyReason::Hibernating)
            .encode(cell.len())
            .ok();
        return refuse(&ctx, w, destroy).await;
    }
    let slot = match ctx
        .limiter
        .admit(handshake.source(), std::time::Instant::now())
    {
        Ok(slot) => slot,
        Err(refusal) => {
            let counter = match refusal {
                Refusal::Total => &ctx.stats.refused_total_limit,
                Refusal::PerSource => match handshake.source() {
                    Source::Relay(_) => &ctx.stats.refused_peer_limit,
                    Source::Host(_) => &ctx.stats.refused_address_limit,
                },
                Refusal::Rate => &ctx.stats.refused_rate_limit,
                Refusal::Handshakes => &ctx.stats.refused_handshakes,
            };
            counter.inc();
            debug!(
                peer = %Sensitive::new(peer, ctx.safe_logging),
                ?refusal,
                "circuit refused by a limit"
            );
            let destroy = LinkCell::Destroy(DestroyReason::ResourceLimit)
                .encode(cell.len())
                .ok();
            return refuse(&ctx, w, destroy).await;
        }
    };
    let turn =
        match tokio::time::timeout_at(deadline, ctx.create_queue.turn(handshake.source())).await {
            Ok(Ok(turn)) => turn,
            Ok(Err(_)) | Err(_) => {
                ctx.stats.refused_create_queue.inc();
                let destroy = LinkCell::Destroy(DestroyReason::ResourceLimit)
                    .encode(cell.len())
                    .ok();
                return refuse(&ctx, w, destroy).await;
            }
        };
    drop(handshake);
    let accepted = {
        let keys = ctx.keys.read().unwrap_or_else(PoisonError::into_inner);
        RelayCircuit::accept(
            &preamble,
            &cell,
            &ctx.local_peer_bytes,
            &keys,
            CircuitConfig {
                exit: ctx.exit.is_some(),
                extend_timeout: ctx.extend_timeout,
                idle_timeout: Some(ctx.idle_circuit_timeout),
            },
            std::time::Instant::now(),
        )
    };
    drop(turn);
    match accepted {
        Ok(circ) => {
            ctx.stats.circuits_accepted.inc();
            let link = Link::spawn(r, w, circ.cell_len(), Arc::clone(&ctx.traffic));
            CircuitTask::new(Arc::clone(&ctx), circ, peer, link, slot)
                .run(shutdown)
                .await;
        }
        Err(e) => {
            ctx.stats.refused_malformed.inc();
            debug!(error = %e, "circuit refused");
            refuse(&ctx, w, RelayCircuit::refusal(&preamble)).await;
        }
    }
}

/// What the publisher needs to build descriptors.
struct Publisher {
    ed: ed25519::Keypair,
    family: Vec<PeerId>,
    lifetime: u64,
    rotation: Duration,
    data_dir: PathBuf,
    next_rotation: SystemTime,
    /// When the previous onion key goes (specs/02 §2.2), while there is one.
    previous_until: Option<SystemTime>,
    policy_summary: Vec<u8>,
    /// Whether the last descriptor built was marked HIBERNATING.
    hibernating: bool,
}

impl Publisher {
    /// A descriptor signing `addrs`.
    fn descriptor(
        &self,
        ctx: &Context,
        addrs: &[Multiaddr],
    ) -> Result<SignedDescriptor, RelayError> {
        let now = ctx.node.clock().now();
        let (onion_key, previous_onion_key) = {
            let keys = ctx.keys.read().unwrap_or_else(PoisonError::into_inner);
            (keys.current_public(), keys.previous_public())
        };
        let mut flags = RelayFlags::default();
        if !self.policy_summary.is_empty() {
            flags.0 |= RelayFlags::EXIT;
        }
        if ctx.traffic.hibernation() != Hibernation::Awake {
            flags.0 |= RelayFlags::HIBERNATING;
        }
        Ok(Descriptor {
            identity: self.ed.public(),
            published_at: now,
            expires_at: now + self.lifetime,
            protocols: PROTOCOL_CIRCUIT_V1,
            flags,
            addrs: addrs.to_vec(),
            onion_key,
            previous_onion_key,
            family: self.family.clone(),
            policy_summary: self.policy_summary.clone(),
        }
        .sign(&self.ed)?)
    }

    fn rotate(&mut self, ctx: &Context) {
        let mut keys = ctx.keys.write().unwrap_or_else(PoisonError::into_inner);
        match keys::rotate_onion(&self.data_dir, &mut keys) {
            Ok(created) => {
                self.next_rotation = created + self.rotation;
                self.previous_until = Some(keys::previous_key_expiry(
                    created,
                    Duration::from_secs(self.lifetime),
                ));
                ctx.stats.onion_key_rotations.inc();
                info!("rotated the onion key");
            }
            Err(e) => {
                self.next_rotation = SystemTime::now() + ROTATION_RETRY;
                warn!(error = %e, "cannot rotate the onion key; keeping the current one");
            }
        }
    }

    /// Drops the previous onion key once every descriptor naming it has expired.
    fn drop_previous(&mut self, ctx: &Context) {
        self.previous_until = None;
        let mut keys = ctx.keys.write().unwrap_or_else(PoisonError::into_inner);
        match keys::drop_previous_onion(&self.data_dir, &mut keys) {
            Ok(()) => info!("dropped the previous onion key"),
            Err(e) => {
                warn!(error = %e, "dropped the previous onion key but cannot delete its file")
            }
        }
    }
}

/// Sleeps for `d`, or forever without one.
async fn sleep_or_never(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Logs a change of the relay's reachability, the addresses only when safe logging is off.
fn log_reachability(ctx: &Context, state: &Reachability) {
    let safe = ctx.safe_logging;
    match state {
        Reachability::Unknown => {}
        Reachability::Reachable(addrs) => info!(
            addrs = %Sensitive::new(addrs, safe),
            "reachable: an AutoNAT server dialed back; publishing the descriptor with the confirmed addresses"
        ),
        Reachability::Untested(addrs) => info!(
            addrs = %Sensitive::new(addrs, safe),
            "no AutoNAT server to test the announced addresses: publishing them untested"
        ),
        Reachability::Unreachable(addrs) => warn!(
            tested = %Sensitive::new(addrs, safe),
            "not reachable at any announced address: publishing no descriptor (behind NAT or a firewall?)"
        ),
    }
}

/// Publishes once the relay is reachable (specs/04 §4.1), again after each of
/// [`EARLY_REPUBLISH`] while the routing table fills, then every [`REPUBLISH_INTERVAL_SECS`]
/// (or half the lifetime if shorter), on request, after each rotation, once the previous onion
/// key is dropped, and whenever the confirmed addresses change; retries failures with a
/// growing delay (specs/04 §4). While the relay is unreachable or not yet tested it publishes
/// nothing (what it published before stays in other relays' stores until it expires).
async fn publish_loop(ctx: Arc<Context>, mut p: Publisher, mut kick: mpsc::Receiver<()>) {
    let steady = Duration::from_secs(REPUBLISH_INTERVAL_SECS.min(p.lifetime / 2));
    let mut early = EARLY_REPUBLISH.iter();
    let mut backoff = PUBLISH_RETRY_MIN;
    let mut reachability = ctx.node.watch_reachability();
    let mut hibernation = ctx.traffic.watch_hibernation();
    let mut logged = Reachability::Unknown;
    // The addresses of the last successful publication while the relay stays publishable.
    let mut published: Option<Vec<Multiaddr>> = None;
    let mut next_publication = tokio::time::Instant::now();
    loop {
        let state = reachability.borrow_and_update().clone();
        if state != logged {
            log_reachability(&ctx, &state);
            if matches!(state, Reachability::Unreachable(_)) {
                ctx.stats.found_unreachable.inc();
            }
            logged = state.clone();
        }
        let now = tokio::time::Instant::now();
        let addrs = if let Some(announce) = &ctx.publish_untested {
            Some(announce.clone())
        } else {
            state.publishable().map(<[Multiaddr]>::to_vec)
        };
        if addrs.is_none() {
            published = None;
        } else if addrs != published {
            next_publication = now;
        }
        if let Some(addrs) = &addrs
            && next_publication <= now
        {
            let result = match p.descriptor(&ctx, addrs) {
                Ok(d) => ctx.node.publish(d).await.map_err(RelayError::from),
                Err(e) => Err(e),
            };
            let wait = match result {
                Ok(()) => {
                    ctx.stats.descriptors_published.inc();
                    debug!("descriptor published");
                    published = Some(addrs.clone());
                    backoff = PUBLISH_RETRY_MIN;
                    early.next().map_or(steady, |d| (*d).min(steady))
                }
                Err(e) => {
                    ctx.stats.publish_failures.inc();
                    debug!(error = %e, retry_in = ?backoff, "publishing the descriptor failed");
                    let wait = backoff;
                    backoff = (backoff * 2).min(PUBLISH_RETRY_MAX);
                    wait
                }
            };
            next_publication = tokio::time::Instant::now() + wait;
        }
        let until = |t: SystemTime| {
            t.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        };
        let until_rotation = until(p.next_rotation);
        let until_previous_goes = p.previous_until.map(until);
        let until_publication = addrs
            .is_some()
            .then(|| next_publication.saturating_duration_since(tokio::time::Instant::now()));
        tokio::select! {
            () = sleep_or_never(until_publication) => {}
            Ok(()) = reachability.changed() => {}
            Some(()) = kick.recv() => next_publication = tokio::time::Instant::now(),
            // The descriptor says whether the relay hibernates: publish the change at once.
            Ok(()) = hibernation.changed() => {
                let asleep = *hibernation.borrow_and_update() != Hibernation::Awake;
                if asleep != p.hibernating {
                    p.hibernating = asleep;
                    next_publication = tokio::time::Instant::now();
                }
            }
            () = tokio::time::sleep(until_rotation) => {
                p.rotate(&ctx);
                next_publication = tokio::time::Instant::now();
            }
            () = sleep_or_never(until_previous_goes) => {
                p.drop_previous(&ctx);
                next_publication = tokio::time::Instant::now();
            }
        }
    }
}
