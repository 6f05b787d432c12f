//! A running libp2p node: the swarm in its own task, driven through a bounded command queue.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use libp2p::kad::{self, QueryId, QueryResult, Quorum, Record, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, identify};
use shallot_directory::{
    MAX_VIEW_RELAYS, RecordRefusal, SignedDescriptor, WallClock, descriptor_key, is_newer,
    is_shard_key, shard_key, validate_record,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::behaviour::{Behaviour, BehaviourEvent, KAD_PROTOCOL, build_swarm};
use crate::config::NodeConfig;
use crate::err::P2pError;

/// Capacity of the command queue into the swarm task.
pub const COMMAND_QUEUE: usize = 64;
/// Descriptor fetches in flight during one refresh (specs/04 §6.1).
pub const MAX_FETCHES_IN_FLIGHT: usize = 32;
/// Callers that may wait on one refresh at once.
pub const MAX_REFRESH_WAITERS: usize = 16;
/// Publications that may be in flight at once.
pub const MAX_PENDING_PUBLISHES: usize = 16;
/// How long [`Node::start`] waits for its listeners to come up.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Counters of what the node refused and stored, for metrics.
#[derive(Debug, Default)]
pub struct NodeStats {
    refused: [AtomicU64; 6],
    records_stored: AtomicU64,
    providers_refused: AtomicU64,
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

    /// Provider announcements refused (not for a shard key).
    pub fn providers_refused(&self) -> u64 {
        self.providers_refused.load(Ordering::Relaxed)
    }
}

/// The result of a bulk descriptor fetch (specs/04 §6.1).
#[derive(Debug, Default)]
pub struct FetchOutcome {
    /// Every verified descriptor found, the newest per relay.
    pub descriptors: Vec<SignedDescriptor>,
    /// Relays listed by the shard providers.
    pub providers_listed: usize,
    /// Records refused, by reason.
    pub refused: HashMap<RecordRefusal, u64>,
}

/// A provider announcement held in a DHT server's store (see [`Node::stored_providers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredProvider {
    /// The relay that announced itself.
    pub provider: PeerId,
    /// The addresses the announcement carried. A server leaves a provider without addresses
    /// out of its replies unless it knows them from its routing table (specs/04 §5.3).
    pub addrs: Vec<Multiaddr>,
}

enum Command {
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
    StoredProviders {
        key: Vec<u8>,
        reply: oneshot::Sender<Vec<StoredProvider>>,
    },
}

/// A running libp2p node. Dropping it stops the swarm task.
pub struct Node {
    peer_id: PeerId,
    listen_addrs: Vec<Multiaddr>,
    commands: mpsc::Sender<Command>,
    control: libp2p_stream::Control,
    stats: Arc<NodeStats>,
    clock: WallClock,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.task.abort();
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
        let mut swarm = build_swarm(keypair, &config)?;
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
        for addr in &config.bootstrap {
            let peer =
                peer_of(addr).ok_or_else(|| P2pError::BootstrapWithoutPeerId(addr.clone()))?;
            let mut dial_addr = addr.clone();
            dial_addr.pop();
            swarm.behaviour_mut().kad.add_address(&peer, dial_addr);
            if let Err(err) = swarm.dial(addr.clone()) {
                warn!(%addr, %err, "cannot dial bootstrap peer");
            }
        }
        if !config.bootstrap.is_empty() {
            let _ = swarm.behaviour_mut().kad.bootstrap();
        }
        let control = swarm.behaviour().stream.new_control();
        let stats = Arc::new(NodeStats::default());
        let (commands, queue) = mpsc::channel(COMMAND_QUEUE);
        let task = tokio::spawn(
            SwarmTask {
                swarm,
                stats: Arc::clone(&stats),
                publishes: HashMap::new(),
                refresh: None,
                clock: config.clock.clone(),
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

    /// Counters of refused and stored records.
    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    /// The wall clock the node validates descriptors against (its configuration's).
    pub fn clock(&self) -> &WallClock {
        &self.clock
    }

    async fn send(&self, command: Command) -> Result<(), P2pError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| P2pError::Stopped)
    }

    /// Stores `descriptor` in the DHT and announces this relay under its shard
    /// (specs/04 §5.2–§5.3). Resolves when at least one other DHT server stored the record.
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

    /// Fetches every relay's descriptor in bulk: the providers of all shards, then each
    /// listed relay's record, each verified (specs/04 §6.1). Learns every verified relay's
    /// addresses so circuit streams can be opened to them.
    pub async fn fetch_descriptors(&self) -> Result<FetchOutcome, P2pError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Fetch { reply }).await?;
        answer.await.map_err(|_| P2pError::Stopped)?
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

    /// The provider announcements this node's DHT store holds under `key` (at most
    /// [`crate::MAX_PROVIDERS_PER_SHARD`]), for tests and diagnostics.
    pub async fn stored_providers(&self, key: Vec<u8>) -> Result<Vec<StoredProvider>, P2pError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::StoredProviders { key, reply }).await?;
        answer.await.map_err(|_| P2pError::Stopped)
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

/// One bulk refresh in progress (specs/04 §6.1).
#[derive(Default)]
struct Refresh {
    waiters: Vec<oneshot::Sender<Result<FetchOutcome, P2pError>>>,
    provider_queries: HashSet<QueryId>,
    listed: HashSet<PeerId>,
    to_fetch: VecDeque<PeerId>,
    record_queries: HashMap<QueryId, PeerId>,
    found: HashMap<PeerId, SignedDescriptor>,
    refused: HashMap<RecordRefusal, u64>,
}

impl Refresh {
    fn is_done(&self) -> bool {
        self.provider_queries.is_empty()
            && self.record_queries.is_empty()
            && self.to_fetch.is_empty()
    }
}

/// A publication in progress: the shard announcement first, then (`record` still `Some`) the
/// descriptor record, so that `Node::publish` reports a failed announcement too, not only a
/// failed record.
struct PendingPublish {
    reply: oneshot::Sender<Result<(), P2pError>>,
    record: Option<Record>,
}

struct SwarmTask {
    swarm: Swarm<Behaviour>,
    stats: Arc<NodeStats>,
    publishes: HashMap<QueryId, PendingPublish>,
    refresh: Option<Refresh>,
    clock: WallClock,
}

impl SwarmTask {
    async fn run(mut self, mut queue: mpsc::Receiver<Command>) {
        loop {
            tokio::select! {
                command = queue.recv() => match command {
                    Some(command) => self.handle_command(command),
                    // Every handle is gone: stop.
                    None => break,
                },
                event = self.swarm.select_next_some() => self.handle_event(event),
            }
        }
        debug!("swarm task stopped");
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Publish { descriptor, reply } => self.publish(*descriptor, reply),
            Command::Fetch { reply } => self.start_refresh(reply),
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
            Command::StoredProviders { key, reply } => {
                use libp2p::kad::store::RecordStore;
                let providers = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .store_mut()
                    .providers(&RecordKey::new(&key))
                    .into_iter()
                    .map(|p| StoredProvider {
                        provider: p.provider,
                        addrs: p.addresses,
                    })
                    .collect();
                let _ = reply.send(providers);
            }
            Command::ConnectedPeers { reply } => {
                let _ = reply.send(self.swarm.connected_peers().count());
            }
        }
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
        let peer = descriptor.peer_id();
        let remaining = descriptor
            .descriptor()
            .expires_at
            .saturating_sub(self.clock.now());
        let record = Record {
            key: RecordKey::new(&descriptor_key(&peer)),
            value: descriptor.as_bytes().to_vec(),
            publisher: Some(peer),
            expires: Some(std::time::Instant::now() + Duration::from_secs(remaining)),
        };
        self.declare_external_addrs(&descriptor.descriptor().addrs);
        let kad = &mut self.swarm.behaviour_mut().kad;
        match kad.start_providing(RecordKey::new(&shard_key(shallot_directory::shard_of(
            &peer,
        )))) {
            Ok(query) => {
                self.publishes.insert(
                    query,
                    PendingPublish {
                        reply,
                        record: Some(record),
                    },
                );
            }
            Err(err) => {
                let _ = reply.send(Err(P2pError::Publish(err.to_string())));
            }
        }
    }

    /// Makes the swarm's confirmed external addresses exactly the descriptor's `addrs`.
    ///
    /// Why: a provider announcement carries the announcer's external addresses, and a DHT
    /// server leaves a provider whose record has no addresses out of its GET_PROVIDERS replies
    /// unless the provider happens to sit in the server's routing table (libp2p-kad 0.49,
    /// `Behaviour::provider_peers`). Nothing else confirms an external address here (no
    /// AutoNAT), so without this every announcement went out empty, and a relay absent from
    /// the full k-buckets of the servers holding its announcement was never listed
    /// (specs/04 §5.3). The descriptor's addresses are the ones the relay signs and publishes
    /// anyway, so declaring them reveals nothing new.
    fn declare_external_addrs(&mut self, addrs: &[Multiaddr]) {
        let stale: Vec<Multiaddr> = self
            .swarm
            .external_addresses()
            .filter(|a| !addrs.contains(a))
            .cloned()
            .collect();
        for addr in &stale {
            self.swarm.remove_external_address(addr);
        }
        for addr in addrs {
            if !self.swarm.external_addresses().any(|a| a == addr) {
                self.swarm.add_external_address(addr.clone());
            }
        }
    }

    /// The shard announcement of a publication finished: store the record next.
    fn on_announced(&mut self, id: QueryId, outcome: kad::AddProviderResult) {
        let Some(PendingPublish {
            reply,
            record: Some(record),
        }) = self.publishes.remove(&id)
        else {
            return;
        };
        if let Err(err) = outcome {
            let _ = reply.send(Err(P2pError::Publish(err.to_string())));
            return;
        }
        match self
            .swarm
            .behaviour_mut()
            .kad
            .put_record(record, Quorum::One)
        {
            Ok(query) => {
                self.publishes.insert(
                    query,
                    PendingPublish {
                        reply,
                        record: None,
                    },
                );
            }
            Err(err) => {
                let _ = reply.send(Err(P2pError::Publish(err.to_string())));
            }
        }
    }

    fn start_refresh(&mut self, reply: oneshot::Sender<Result<FetchOutcome, P2pError>>) {
        if let Some(refresh) = &mut self.refresh {
            if refresh.waiters.len() >= MAX_REFRESH_WAITERS {
                let _ = reply.send(Err(P2pError::Busy));
            } else {
                refresh.waiters.push(reply);
            }
            return;
        }
        let mut refresh = Refresh {
            waiters: vec![reply],
            ..Refresh::default()
        };
        for key in shallot_directory::all_shard_keys() {
            let query = self
                .swarm
                .behaviour_mut()
                .kad
                .get_providers(RecordKey::new(&key));
            refresh.provider_queries.insert(query);
        }
        self.refresh = Some(refresh);
    }

    fn pump_refresh(&mut self) {
        let Some(refresh) = &mut self.refresh else {
            return;
        };
        while refresh.record_queries.len() < MAX_FETCHES_IN_FLIGHT {
            let Some(peer) = refresh.to_fetch.pop_front() else {
                break;
            };
            let query = self
                .swarm
                .behaviour_mut()
                .kad
                .get_record(RecordKey::new(&descriptor_key(&peer)));
            refresh.record_queries.insert(query, peer);
        }
        if refresh.is_done() {
            let Some(refresh) = self.refresh.take() else {
                return;
            };
            for descriptor in refresh.found.values() {
                for addr in &descriptor.descriptor().addrs {
                    self.swarm
                        .add_peer_address(descriptor.peer_id(), addr.clone());
                }
            }
            let descriptors: Vec<SignedDescriptor> = refresh.found.into_values().collect();
            debug!(
                relays = descriptors.len(),
                listed = refresh.listed.len(),
                "view refresh finished"
            );
            for waiter in refresh.waiters {
                let _ = waiter.send(Ok(FetchOutcome {
                    descriptors: descriptors.clone(),
                    providers_listed: refresh.listed.len(),
                    refused: refresh.refused.clone(),
                }));
            }
        }
    }

    fn handle_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.handle_kad(event),
            // Identify does not feed Kademlia (docs/dependencies.md §3); only DHT servers go in.
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) if info.protocols.contains(&KAD_PROTOCOL) => {
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                debug!(?peer_id, %error, "outgoing connection failed");
            }
            _ => {}
        }
    }

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
                    QueryResult::StartProviding(outcome) => self.on_announced(id, outcome),
                    QueryResult::PutRecord(outcome) => {
                        if let Some(PendingPublish { reply, .. }) = self.publishes.remove(&id) {
                            let _ = reply.send(
                                outcome
                                    .map(|_| ())
                                    .map_err(|e| P2pError::Publish(e.to_string())),
                            );
                        }
                    }
                    QueryResult::GetProviders(outcome) => {
                        self.on_providers(id, outcome, step.last);
                    }
                    QueryResult::GetRecord(outcome) => self.on_record(id, outcome, step.last),
                    _ => {}
                }
                self.pump_refresh();
            }
            _ => {}
        }
    }

    fn on_providers(&mut self, id: QueryId, outcome: kad::GetProvidersResult, last: bool) {
        let Some(refresh) = &mut self.refresh else {
            return;
        };
        if !refresh.provider_queries.contains(&id) {
            return;
        }
        if let Err(err) = &outcome {
            debug!(%err, "a shard's provider query failed");
        }
        if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = outcome {
            for peer in providers {
                if refresh.listed.len() >= MAX_VIEW_RELAYS {
                    break;
                }
                if refresh.listed.insert(peer) {
                    refresh.to_fetch.push_back(peer);
                }
            }
        }
        if last {
            refresh.provider_queries.remove(&id);
        }
    }

    fn on_record(&mut self, id: QueryId, outcome: kad::GetRecordResult, last: bool) {
        let Some(refresh) = &mut self.refresh else {
            return;
        };
        let Some(peer) = refresh.record_queries.get(&id).copied() else {
            return;
        };
        if let Ok(kad::GetRecordOk::FoundRecord(found)) = outcome {
            let record = found.record;
            match validate_record(
                record.key.as_ref(),
                &record.value,
                record.publisher.as_ref(),
                self.clock.now(),
            ) {
                Ok(signed) if signed.peer_id() == peer => {
                    let newer = refresh
                        .found
                        .get(&peer)
                        .is_none_or(|current| is_newer(&signed, current));
                    if newer {
                        refresh.found.insert(peer, signed);
                    }
                }
                Ok(_) => {
                    *refresh
                        .refused
                        .entry(RecordRefusal::PeerMismatch)
                        .or_default() += 1;
                    self.stats.count_refusal(RecordRefusal::PeerMismatch);
                }
                Err(err) => {
                    let refusal = RecordRefusal::of(&err);
                    debug!(%peer, %err, "fetched descriptor refused");
                    *refresh.refused.entry(refusal).or_default() += 1;
                    self.stats.count_refusal(refusal);
                }
            }
        }
        if last {
            refresh.record_queries.remove(&id);
        }
    }

    /// specs/04 §5.4: validate before storing.
    fn handle_inbound(&mut self, request: kad::InboundRequest) {
        use libp2p::kad::store::RecordStore;
        match request {
            kad::InboundRequest::PutRecord {
                source,
                record: Some(mut record),
                ..
            } => {
                let verdict = validate_record(
                    record.key.as_ref(),
                    &record.value,
                    record.publisher.as_ref(),
                    self.clock.now(),
                );
                let store = self.swarm.behaviour_mut().kad.store_mut();
                let verdict = verdict.map(|signed| {
                    let stale = store
                        .get(&record.key)
                        .and_then(|held| SignedDescriptor::verify_ignoring_time(&held.value).ok());
                    (signed, stale)
                });
                match verdict {
                    Ok((signed, Some(held))) if !is_newer(&signed, &held) && signed != held => {
                        self.stats.count_refusal(RecordRefusal::Stale);
                        debug!(%source, "refused a stale descriptor record");
                    }
                    Ok((signed, _)) => {
                        // Never keep a record past the descriptor's own expiry.
                        let remaining = signed
                            .descriptor()
                            .expires_at
                            .saturating_sub(self.clock.now());
                        let cap = std::time::Instant::now() + Duration::from_secs(remaining);
                        record.expires = Some(record.expires.map_or(cap, |e| e.min(cap)));
                        match store.put(record) {
                            Ok(()) => {
                                self.stats.records_stored.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(err) => warn!(%source, %err, "DHT store refused a record"),
                        }
                    }
                    Err(err) => {
                        let refusal = RecordRefusal::of(&err);
                        self.stats.count_refusal(refusal);
                        debug!(%source, %err, reason = refusal.as_str(), "refused an inbound DHT record");
                    }
                }
            }
            kad::InboundRequest::AddProvider {
                record: Some(provider),
            } => {
                if is_shard_key(provider.key.as_ref()) {
                    let store = self.swarm.behaviour_mut().kad.store_mut();
                    if let Err(err) = store.add_provider(provider) {
                        debug!(%err, "provider store full");
                    }
                } else {
                    self.stats.providers_refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {}
        }
    }
}
