//! An adversary's directory nodes for the attack tests: real libp2p peers on the memory
//! network, speaking Shallot's Kademlia and directory protocol, that answer every listing with
//! whatever bytes the test chose and every Kademlia lookup with each other only.
//!
//! Each hostile node is a swarm of its own (one PeerId each, as a real adversary's would be),
//! built from the same transport, Noise and Yamux as `Node`, but with none of its checks.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite, StreamExt};
use libp2p::core::{Transport as _, upgrade};
use libp2p::identity::{Keypair, ed25519};
use libp2p::kad::store::MemoryStore;
use libp2p::kad::{self, KBucketKey, RecordKey};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, identify, noise, request_response, yamux};
use shallot_directory::{
    AddrSet, AnnounceStatus, DirRequest, DirResponse, Listing, ListingEntry, MAX_REQUEST_LEN,
    MAX_RESPONSE_LEN, SignedDescriptor,
};
use shallot_p2p::{
    DIR_PROTOCOL, IDENTIFY_PROTOCOL, KAD_PROTOCOL, MemoryNet, MemoryTransport, read_dir_message,
    write_dir_message,
};
use tokio::task::JoinHandle;

/// The directory protocol's framing (specs/04 §7.1), with raw response bodies: a hostile node
/// sends whatever bytes it likes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawDirCodec;

impl request_response::Codec for RawDirCodec {
    type Protocol = StreamProtocol;
    type Request = DirRequest;
    type Response = Arc<Vec<u8>>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<DirRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_dir_message(io, MAX_REQUEST_LEN).await?;
        DirRequest::decode(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Arc<Vec<u8>>>
    where
        T: AsyncRead + Unpin + Send,
    {
        Ok(Arc::new(read_dir_message(io, MAX_RESPONSE_LEN).await?))
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: DirRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let bytes = request
            .encode()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        write_dir_message(io, &bytes).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Arc<Vec<u8>>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_dir_message(io, &response).await
    }
}

#[derive(NetworkBehaviour)]
struct HostileBehaviour {
    kad: kad::Behaviour<MemoryStore>,
    identify: identify::Behaviour,
    dir: request_response::Behaviour<RawDirCodec>,
}

/// What a hostile node does.
#[derive(Clone)]
pub struct Lie {
    /// The body of its answer to every first listing request (SINCE = 0).
    pub listing: Arc<Vec<u8>>,
    /// The body of its answer to a follower's request for changes; `None`: nothing new.
    pub changes: Option<Arc<Vec<u8>>>,
    /// Its own descriptor, announced to every peer it dials.
    pub own: Option<SignedDescriptor>,
}

/// A running hostile node; stops when dropped.
pub struct HostileNode {
    pub peer: PeerId,
    pub addr: Multiaddr,
    /// While set, it answers no listing request (it drops them unanswered).
    pub silent: Arc<AtomicBool>,
    /// The `since` of every listing request it was sent, in order, with the asker.
    pub asked: Arc<Mutex<Vec<(PeerId, u64)>>>,
    task: JoinHandle<()>,
}

impl Drop for HostileNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a hostile swarm is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A Kademlia server answering listings and lookups.
    Server,
    /// A client sending thousands of requests at once.
    Flooder,
}

/// A swarm with `keypair` on `net` at `ip`, speaking Shallot's protocols with none of its
/// checks; its routing table takes only the peers the caller adds.
fn hostile_swarm(
    net: &MemoryNet,
    ip: Ipv4Addr,
    keypair: Keypair,
    role: Role,
) -> libp2p::Swarm<HostileBehaviour> {
    let timeout = match role {
        Role::Server => Duration::from_secs(10),
        Role::Flooder => Duration::from_secs(60),
    };
    libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(|key| {
            let noise = noise::Config::new(key)
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })?;
            Ok(MemoryTransport::new(net.clone(), IpAddr::V4(ip))
                .upgrade(upgrade::Version::V1)
                .authenticate(noise)
                .multiplex(yamux::Config::default()))
        })
        .unwrap()
        .with_behaviour(|key| {
            let local = key.public().to_peer_id();
            let mut config = kad::Config::new(KAD_PROTOCOL);
            config
                .set_kbucket_inserts(kad::BucketInserts::Manual)
                .set_periodic_bootstrap_interval(None)
                .set_record_filtering(kad::StoreInserts::FilterBoth)
                .set_query_timeout(timeout);
            let mut kad = kad::Behaviour::with_config(local, MemoryStore::new(local), config);
            kad.set_mode(Some(match role {
                Role::Server => kad::Mode::Server,
                Role::Flooder => kad::Mode::Client,
            }));
            let mut dir_config = request_response::Config::default().with_request_timeout(timeout);
            if role == Role::Flooder {
                dir_config = dir_config.with_max_concurrent_streams(1024);
            }
            HostileBehaviour {
                kad,
                identify: identify::Behaviour::new(identify::Config::new(
                    IDENTIFY_PROTOCOL.to_owned(),
                    key.public(),
                )),
                dir: request_response::Behaviour::with_codec(
                    RawDirCodec,
                    [(DIR_PROTOCOL, request_response::ProtocolSupport::Full)],
                    dir_config,
                ),
            }
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build()
}

/// Starts a hostile node with `key` listening at `ip`:`port` on `net`. Its Kademlia routing
/// table holds `allies` only (it never adds an honest peer, so every lookup it answers names
/// adversary nodes); it dials `contacts` so that they add it to theirs.
pub async fn start_hostile(
    net: &MemoryNet,
    ip: Ipv4Addr,
    port: u16,
    key: ed25519::Keypair,
    lie: Lie,
    allies: &[(PeerId, Multiaddr)],
    contacts: Vec<Multiaddr>,
) -> HostileNode {
    let keypair = Keypair::from(key);
    let peer = keypair.public().to_peer_id();
    let mut swarm = hostile_swarm(net, ip, keypair, Role::Server);
    let addr: Multiaddr = format!("/ip4/{ip}/tcp/{port}").parse().unwrap();
    swarm.listen_on(addr.clone()).unwrap();
    // A sample of its allies is enough to answer any lookup with adversary nodes only.
    for (ally, at) in allies.iter().step_by(allies.len().div_ceil(400).max(1)) {
        if *ally != peer {
            swarm.behaviour_mut().kad.add_address(ally, at.clone());
        }
    }
    for contact in contacts {
        let _ = swarm.dial(contact);
    }
    let accepted = Arc::new(
        DirResponse::Announce(AnnounceStatus::Accepted)
            .encode()
            .unwrap(),
    );
    let nothing_new = Arc::new(
        DirResponse::Listing(Listing {
            epoch: 1,
            seq: u64::MAX / 2,
            ..Listing::default()
        })
        .encode()
        .unwrap(),
    );
    let silent = Arc::new(AtomicBool::new(false));
    let asked = Arc::new(Mutex::new(Vec::new()));
    let (silent_in_task, asked_in_task) = (Arc::clone(&silent), Arc::clone(&asked));
    let task = tokio::spawn(async move {
        let mut announced: HashSet<PeerId> = HashSet::new();
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::Behaviour(HostileBehaviourEvent::Dir(
                    request_response::Event::Message {
                        peer,
                        message:
                            request_response::Message::Request {
                                request, channel, ..
                            },
                        ..
                    },
                )) => {
                    if let DirRequest::Listing { since, .. } = request {
                        asked_in_task.lock().unwrap().push((peer, since));
                        if silent_in_task.load(Ordering::Relaxed) {
                            continue;
                        }
                    }
                    let body = match request {
                        // Its lie to every newcomer; to a follower, "nothing new" (an
                        // adversary shaping views, not burning CPU: what a listing can cost
                        // is bounded on its own, specs/04 §6.1).
                        DirRequest::Listing { since: 0, .. } => Arc::clone(&lie.listing),
                        DirRequest::Listing { .. } => {
                            Arc::clone(lie.changes.as_ref().unwrap_or(&nothing_new))
                        }
                        DirRequest::Announce(_) => Arc::clone(&accepted),
                    };
                    let _ = swarm.behaviour_mut().dir.send_response(channel, body);
                }
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    if let Some(own) = &lie.own
                        && announced.insert(peer_id)
                    {
                        let request = DirRequest::Announce(own.as_bytes().to_vec());
                        swarm.behaviour_mut().dir.send_request(&peer_id, request);
                    }
                }
                _ => {}
            }
        }
    });
    HostileNode {
        peer,
        addr,
        silent,
        asked,
        task,
    }
}

/// A key whose PeerId shares at least `bits` leading bits with `target` in Kademlia's metric:
/// what an adversary grinds to sit among the nodes closest to a key.
pub fn grind_near(target: &KBucketKey<RecordKey>, bits: u32) -> ed25519::Keypair {
    loop {
        let key = ed25519::Keypair::generate();
        let peer = Keypair::from(key.clone()).public().to_peer_id();
        let distance = KBucketKey::from(peer).distance(target);
        // ilog2 of the XOR distance: 255 minus the bits shared.
        let shared = distance.ilog2().map_or(256, |l| 255 - l);
        if shared >= bits {
            return key;
        }
    }
}

/// A listing body with `entries`, each claimed proven at every address and first seen at the
/// dawn of time: an adversary's ideal answer.
pub fn listing_body(entries: &[SignedDescriptor]) -> Arc<Vec<u8>> {
    let bytes: Vec<Vec<u8>> = entries.iter().map(|d| d.as_bytes().to_vec()).collect();
    listing_body_of_bytes(&bytes)
}

/// As [`listing_body`], with descriptors given as bytes (forged ones, that no longer verify).
pub fn listing_body_of_bytes(entries: &[Vec<u8>]) -> Arc<Vec<u8>> {
    listing_body_proven(entries, AddrSet::ALL, true)
}

/// A listing of changes with `entries`, each with no address proven: what a store lists to
/// its followers for a relay that stopped answering its checks (specs/04 §7.4).
pub fn down_changes_body(entries: &[SignedDescriptor]) -> Arc<Vec<u8>> {
    let bytes: Vec<Vec<u8>> = entries.iter().map(|d| d.as_bytes().to_vec()).collect();
    listing_body_proven(&bytes, AddrSet::NONE, false)
}

fn listing_body_proven(entries: &[Vec<u8>], proven: AddrSet, full: bool) -> Arc<Vec<u8>> {
    let listing = Listing {
        epoch: 1,
        seq: u64::MAX / 2,
        full,
        more: false,
        entries: entries
            .iter()
            .map(|d| ListingEntry {
                first_seen: 1,
                proven,
                descriptor: d.clone(),
            })
            .collect(),
    };
    Arc::new(DirResponse::Listing(listing).encode().unwrap())
}

/// A listing body that claims `n` entries of junk, past every bound of the protocol.
pub fn junk_listing_body(n: u32) -> Arc<Vec<u8>> {
    let mut body = vec![2u8, 1];
    body.extend_from_slice(&1u64.to_be_bytes());
    body.extend_from_slice(&1u64.to_be_bytes());
    body.push(0);
    body.extend_from_slice(&n.to_be_bytes());
    for i in 0..n {
        body.extend_from_slice(&0u64.to_be_bytes());
        body.push(0xff);
        body.extend_from_slice(&4u16.to_be_bytes());
        body.extend_from_slice(&i.to_be_bytes());
        if body.len() + 20 > MAX_RESPONSE_LEN {
            break;
        }
    }
    Arc::new(body)
}

/// What [`flood_stores`] got through.
#[derive(Debug, Default)]
pub struct Flooded {
    /// Kademlia PUT_VALUE requests answered.
    pub puts_answered: usize,
    /// Announcements the targets answered `Accepted`.
    pub announces_accepted: usize,
    /// Announcements answered otherwise, or not answered.
    pub announces_refused: usize,
}

/// An adversary's single host at `ip` that sends every descriptor of `records` to every peer
/// of `targets`, as a Kademlia record and as an announcement, and returns once each was
/// answered or failed.
pub async fn flood_stores(
    net: &MemoryNet,
    ip: Ipv4Addr,
    records: &[SignedDescriptor],
    targets: &[(PeerId, Multiaddr)],
) -> Flooded {
    let keypair = Keypair::generate_ed25519();
    let mut swarm = hostile_swarm(net, ip, keypair, Role::Flooder);
    for (peer, addr) in targets {
        swarm.behaviour_mut().kad.add_address(peer, addr.clone());
        let _ = swarm.dial(addr.clone());
    }
    let peers: Vec<PeerId> = targets.iter().map(|(p, _)| *p).collect();
    // Sent in batches, so that no queue in between is the bound that saves the targets.
    const BATCH: usize = 1024;
    let mut flooded = Flooded::default();
    let accepted = DirResponse::Announce(AnnounceStatus::Accepted)
        .encode()
        .unwrap();
    for batch in records.chunks(BATCH) {
        let mut puts = 0usize;
        let mut announces = 0usize;
        for d in batch {
            let record = kad::Record::new(
                RecordKey::new(&shallot_directory::descriptor_key(&d.peer_id())),
                d.as_bytes().to_vec(),
            );
            swarm.behaviour_mut().kad.put_record_to(
                record,
                peers.iter().copied(),
                kad::Quorum::All,
            );
            puts += 1;
            for peer in &peers {
                let request = DirRequest::Announce(d.as_bytes().to_vec());
                swarm.behaviour_mut().dir.send_request(peer, request);
                announces += 1;
            }
        }
        while puts > 0 || announces > 0 {
            match tokio::time::timeout(Duration::from_secs(90), swarm.select_next_some()).await {
                Err(_) => panic!("the flood stalled: {puts} puts and {announces} announces left"),
                Ok(SwarmEvent::Behaviour(HostileBehaviourEvent::Kad(
                    kad::Event::OutboundQueryProgressed {
                        result: kad::QueryResult::PutRecord(result),
                        step,
                        ..
                    },
                ))) => {
                    if step.last {
                        puts -= 1;
                        if result.is_ok() {
                            flooded.puts_answered += peers.len();
                        }
                    }
                }
                Ok(SwarmEvent::Behaviour(HostileBehaviourEvent::Dir(
                    request_response::Event::Message {
                        message: request_response::Message::Response { response, .. },
                        ..
                    },
                ))) => {
                    announces -= 1;
                    if *response == accepted {
                        flooded.announces_accepted += 1;
                    } else {
                        flooded.announces_refused += 1;
                    }
                }
                Ok(SwarmEvent::Behaviour(HostileBehaviourEvent::Dir(
                    request_response::Event::OutboundFailure { .. },
                ))) => {
                    announces -= 1;
                    flooded.announces_refused += 1;
                }
                Ok(_) => {}
            }
        }
    }
    flooded
}
