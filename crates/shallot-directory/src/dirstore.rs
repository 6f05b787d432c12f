//! A relay's directory store (specs/04 §7.4): every verified descriptor it holds, which of their
//! addresses it proved, and the order in which it learned them, so that it can list them all or
//! only what changed. Plain state: the node feeds it descriptors and probe results and asks it
//! for listings and for the next address to probe.
//!
//! A descriptor is **listed** (served to clients and other relays) only once this relay proved
//! one of its addresses: it dialed it and the Noise handshake authenticated the descriptor's
//! PeerId there. Until then it is **pending**, in one of two bounded lanes:
//!
//! - *vouched*: announced by the relay itself over a connection from one of the IP addresses
//!   it signs. Only an adversary's own few addresses can be vouched for, so the lane stays
//!   free for honest relays however many keys an adversary mints; its probes go first.
//! - *heard*: from another relay's listing, a Kademlia record, or an announcement from
//!   elsewhere. Anyone can fill it with descriptors whose addresses lead nowhere; it is bounded,
//!   its probes drain it, and a descriptor whose probes all failed is not taken again.
//!
//! The caps of listed entries count only proven addresses, so descriptors that sign addresses
//! in an honest relay's /24 where nothing of theirs listens take no listed slot there.
//!
//! A listed relay is **checked** again while it is listed: every [`LIVENESS_RECHECK_SECS`], and
//! at once when this relay's last connection to it closes. After [`LIVENESS_FAILURES_TO_DOWN`]
//! failed checks in a row it is **down**: it keeps its descriptor, holds no cap slot, and is
//! listed with no address proven, under a new sequence number, so that a listing of changes
//! carries the news to everyone who has it (specs/04 §7.4). A down relay that answers a later
//! check, or announces itself again, is listed again.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::IpAddr;

use libp2p_identity::PeerId;
use multiaddr::Multiaddr;

use crate::descriptor::{Descriptor, SignedDescriptor, ip_of};
use crate::dirproto::{
    ENTRY_OVERHEAD, LISTING_HEADER_LEN, Listing, ListingEntry, MAX_LISTING_ENTRIES,
    MAX_RESPONSE_LEN,
};
use crate::records::{RecordRefusal, is_newer};
use crate::subnet::{Block, Subnet, canonical_ip};
use crate::view::{AddrSet, MAX_VIEW_RELAYS};

/// Most listed descriptors a store holds.
pub const MAX_STORE_ENTRIES: usize = MAX_VIEW_RELAYS;
/// Most listed descriptors per IPv4 /24 or IPv6 /48 of their proven addresses.
pub const MAX_STORE_PER_SUBNET: usize = 4;
/// Most listed descriptors per IPv4 /16 or IPv6 /32 of their proven addresses.
pub const MAX_STORE_PER_BLOCK: usize = 32;
/// Most pending descriptors in the heard lane.
pub const MAX_HEARD: usize = 1024;
/// Most pending descriptors in the vouched lane.
pub const MAX_VOUCHED: usize = 256;
/// Most pending descriptors per lane and per /24 (/48) of their signed addresses.
pub const MAX_PENDING_PER_SUBNET: usize = 4;
/// Most pending descriptors per lane and per /16 (/32) of their signed addresses.
pub const MAX_PENDING_PER_BLOCK: usize = 16;
/// Most addresses waiting to be probed.
pub const MAX_PENDING_PROBES: usize = 4096;
/// Most descriptors remembered as refuted (every probe failed), oldest forgotten first.
pub const MAX_REFUTED: usize = 4096;
/// How long a listed relay's last proof holds before the store checks it again.
pub const LIVENESS_RECHECK_SECS: u64 = 60;
/// How soon a relay whose check failed is checked again.
pub const LIVENESS_RETRY_SECS: u64 = 5;
/// Failed checks in a row after which a listed relay is down.
pub const LIVENESS_FAILURES_TO_DOWN: u8 = 2;
/// How often a down relay is checked for its return.
pub const DOWN_RECHECK_SECS: u64 = 600;
/// Most down relays a store keeps (the one down longest goes first).
pub const MAX_DOWN: usize = 1024;

/// Settings of a [`DirStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Most listed descriptors.
    pub max_entries: usize,
    /// Most listed descriptors per /24 (/48) of proven addresses.
    pub max_per_subnet: usize,
    /// Most listed descriptors per /16 (/32) of proven addresses.
    pub max_per_block: usize,
    /// Most pending descriptors in the heard lane.
    pub max_heard: usize,
    /// Most pending descriptors in the vouched lane.
    pub max_vouched: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_entries: MAX_STORE_ENTRIES,
            max_per_subnet: MAX_STORE_PER_SUBNET,
            max_per_block: MAX_STORE_PER_BLOCK,
            max_heard: MAX_HEARD,
            max_vouched: MAX_VOUCHED,
        }
    }
}

/// Where an entry stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Standing {
    /// At least one address proven: listed.
    Listed,
    /// Unproven, announced by the relay from one of its signed IP addresses.
    Vouched,
    /// Unproven, heard of from elsewhere.
    Heard,
    /// Was listed; failed its last checks. Listed with no address proven.
    Down,
}

/// When a listed or down entry is checked next, and how its checks went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Liveness {
    /// When the next check is due (store time); 0 for entries that are not checked.
    due: u64,
    /// Checks failed in a row.
    failures: u8,
    /// The store's relay's own entry: never checked.
    own: bool,
}

/// A descriptor in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreEntry {
    /// The newest verified descriptor.
    pub descriptor: SignedDescriptor,
    /// When the store first held the relay (Unix seconds).
    pub first_seen: u64,
    /// The addresses this relay proved (dialed, and authenticated the PeerId there).
    pub proven: AddrSet,
    /// Listed or pending, and in which lane.
    pub standing: Standing,
    /// When the entry last changed, in the store's sequence.
    seq: u64,
    liveness: Liveness,
}

/// An address to dial to prove that a relay is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The relay.
    pub peer: PeerId,
    /// The address's index in its descriptor.
    pub index: usize,
    /// The address.
    pub addr: Multiaddr,
}

/// What [`DirStore::offer`] did with a descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offered {
    /// A relay new to the store (pending until a probe proves it).
    Added,
    /// A newer descriptor for a relay the store held.
    Updated,
    /// Not newer than what the store holds.
    Unchanged,
    /// Refused: the store, a lane, or a subnet of its addresses is full.
    Full,
    /// Refused: this very descriptor was probed at every address and never answered.
    Refuted,
    /// Refused: not a valid descriptor now.
    Invalid(RecordRefusal),
}

/// Per-network counts of one class of entries.
#[derive(Debug, Default)]
struct Load {
    entries: usize,
    subnets: HashMap<Subnet, usize>,
    blocks: HashMap<Block, usize>,
}

impl Load {
    fn fits(
        &self,
        nets: &Networks,
        max_entries: usize,
        per_subnet: usize,
        per_block: usize,
    ) -> bool {
        self.entries < max_entries
            && !nets.subnets.is_empty()
            && nets
                .subnets
                .iter()
                .all(|s| self.subnets.get(s).copied().unwrap_or(0) < per_subnet)
            && nets
                .blocks
                .iter()
                .all(|b| self.blocks.get(b).copied().unwrap_or(0) < per_block)
    }

    fn add(&mut self, nets: &Networks) {
        self.entries += 1;
        for s in &nets.subnets {
            *self.subnets.entry(*s).or_default() += 1;
        }
        for b in &nets.blocks {
            *self.blocks.entry(*b).or_default() += 1;
        }
    }

    fn remove(&mut self, nets: &Networks) {
        self.entries = self.entries.saturating_sub(1);
        for s in &nets.subnets {
            if let Some(n) = self.subnets.get_mut(s) {
                *n -= 1;
                if *n == 0 {
                    self.subnets.remove(s);
                }
            }
        }
        for b in &nets.blocks {
            if let Some(n) = self.blocks.get_mut(b) {
                *n -= 1;
                if *n == 0 {
                    self.blocks.remove(b);
                }
            }
        }
    }
}

/// The networks an entry counts against: its proven addresses' when listed, all its signed
/// addresses' when pending (and, for a client's assembly, a candidate's claimed addresses').
pub(crate) struct Networks {
    pub(crate) subnets: Vec<Subnet>,
    pub(crate) blocks: Vec<Block>,
}

impl Networks {
    fn of(d: &SignedDescriptor, only: Option<AddrSet>) -> Self {
        Self::of_claim(d.descriptor(), only)
    }

    /// The distinct subnets and blocks of `d`'s IP addresses, of those in `only` if given.
    pub(crate) fn of_claim(d: &Descriptor, only: Option<AddrSet>) -> Self {
        let ips: Vec<IpAddr> = d
            .addrs
            .iter()
            .enumerate()
            .filter(|(i, _)| only.is_none_or(|set| set.contains(*i)))
            .filter_map(|(_, a)| ip_of(a))
            .collect();
        let mut subnets: Vec<Subnet> = ips.iter().copied().map(Subnet::of).collect();
        let mut blocks: Vec<Block> = ips.iter().copied().map(Block::of).collect();
        subnets.sort_unstable();
        subnets.dedup();
        blocks.sort_unstable();
        blocks.dedup();
        Self { subnets, blocks }
    }

    fn of_entry(e: &StoreEntry) -> Self {
        match e.standing {
            Standing::Listed => Self::of(&e.descriptor, Some(e.proven)),
            Standing::Down => Self::of(&e.descriptor, Some(AddrSet::NONE)),
            Standing::Vouched | Standing::Heard => Self::of(&e.descriptor, None),
        }
    }
}

/// The store. See the module documentation.
#[derive(Debug)]
pub struct DirStore {
    config: StoreConfig,
    epoch: u64,
    seq: u64,
    entries: BTreeMap<PeerId, StoreEntry>,
    by_seq: BTreeMap<u64, PeerId>,
    listed: Load,
    vouched: Load,
    heard: Load,
    down: Load,
    /// Listed and down entries by when their next check is due.
    checks: BTreeSet<(u64, PeerId)>,
    /// Checks handed out and not yet answered.
    checks_in_flight: HashSet<PeerId>,
    /// The latest time the store was told (every call that takes `now` moves it).
    now: u64,
    /// Probes of vouched entries, which go first.
    urgent_probes: VecDeque<Probe>,
    probes: VecDeque<Probe>,
    queued: HashSet<(PeerId, usize)>,
    /// Probes handed out and not yet answered.
    in_flight: HashSet<(PeerId, usize)>,
    /// Descriptors (PeerId, publication time) whose every address failed its probe.
    refuted: HashSet<(PeerId, u64)>,
    refuted_order: VecDeque<(PeerId, u64)>,
}

impl DirStore {
    /// An empty store; `epoch` is a random number the node picks at start (a listing's
    /// sequence numbers mean something only within one epoch).
    pub fn new(config: StoreConfig, epoch: u64) -> Self {
        Self {
            config,
            epoch: epoch.max(1),
            seq: 0,
            entries: BTreeMap::new(),
            by_seq: BTreeMap::new(),
            listed: Load::default(),
            vouched: Load::default(),
            heard: Load::default(),
            down: Load::default(),
            checks: BTreeSet::new(),
            checks_in_flight: HashSet::new(),
            now: 0,
            urgent_probes: VecDeque::new(),
            probes: VecDeque::new(),
            queued: HashSet::new(),
            in_flight: HashSet::new(),
            refuted: HashSet::new(),
            refuted_order: VecDeque::new(),
        }
    }

    /// Descriptors held, listed and pending.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Listed descriptors (at least one address proven).
    pub fn listed_len(&self) -> usize {
        self.listed.entries
    }

    /// Pending descriptors in the vouched and the heard lane.
    pub fn pending_len(&self) -> (usize, usize) {
        (self.vouched.entries, self.heard.entries)
    }

    /// Relays that failed their checks and are listed as down.
    pub fn down_len(&self) -> usize {
        self.down.entries
    }

    /// Whether the heard lane holds as many pending descriptors as it may: a descriptor heard
    /// of now is refused for want of room, whatever its subnets.
    pub fn heard_lane_full(&self) -> bool {
        self.heard.entries >= self.config.max_heard
    }

    /// Whether the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry of `peer`, listed or pending.
    pub fn get(&self, peer: &PeerId) -> Option<&StoreEntry> {
        self.entries.get(peer)
    }

    /// Every entry, listed and pending, in PeerId order.
    pub fn entries(&self) -> impl Iterator<Item = &StoreEntry> {
        self.entries.values()
    }

    /// The store's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Addresses waiting to be probed.
    pub fn pending_probes(&self) -> usize {
        self.probes.len() + self.urgent_probes.len()
    }

    /// Descriptors remembered as refuted.
    pub fn refuted_len(&self) -> usize {
        self.refuted.len()
    }

    fn load_mut(&mut self, standing: Standing) -> &mut Load {
        match standing {
            Standing::Listed => &mut self.listed,
            Standing::Vouched => &mut self.vouched,
            Standing::Heard => &mut self.heard,
            Standing::Down => &mut self.down,
        }
    }

    fn fits(&self, d: &SignedDescriptor, standing: Standing, proven: AddrSet) -> bool {
        let c = &self.config;
        match standing {
            Standing::Listed => self.listed.fits(
                &Networks::of(d, Some(proven)),
                c.max_entries,
                c.max_per_subnet,
                c.max_per_block,
            ),
            Standing::Vouched => self.vouched.fits(
                &Networks::of(d, None),
                c.max_vouched,
                MAX_PENDING_PER_SUBNET,
                MAX_PENDING_PER_BLOCK,
            ),
            Standing::Heard => self.heard.fits(
                &Networks::of(d, None),
                c.max_heard,
                MAX_PENDING_PER_SUBNET,
                MAX_PENDING_PER_BLOCK,
            ),
            // Takes no slot in any network; make_room_down keeps the count bounded.
            Standing::Down => self.down.entries < MAX_DOWN,
        }
    }

    fn bump(&mut self, peer: PeerId) {
        let Some(e) = self.entries.get_mut(&peer) else {
            return;
        };
        self.by_seq.remove(&e.seq);
        self.seq += 1;
        e.seq = self.seq;
        self.by_seq.insert(self.seq, peer);
    }

    fn insert(&mut self, peer: PeerId, mut entry: StoreEntry) {
        let nets = Networks::of_entry(&entry);
        self.load_mut(entry.standing).add(&nets);
        let checked = matches!(entry.standing, Standing::Listed | Standing::Down);
        if checked && !entry.liveness.own {
            if entry.liveness.due == 0 {
                entry.liveness.due = self.now + LIVENESS_RECHECK_SECS;
            }
            self.checks.insert((entry.liveness.due, peer));
        } else {
            entry.liveness = Liveness {
                own: entry.liveness.own,
                ..Liveness::default()
            };
        }
        self.entries.insert(peer, entry);
        self.bump(peer);
    }

    fn take(&mut self, peer: &PeerId) -> Option<StoreEntry> {
        let entry = self.entries.remove(peer)?;
        self.checks.remove(&(entry.liveness.due, *peer));
        self.by_seq.remove(&entry.seq);
        let nets = Networks::of_entry(&entry);
        self.load_mut(entry.standing).remove(&nets);
        Some(entry)
    }

    /// Offers descriptor bytes heard of from a peer (a listing, a record): verified at `now`,
    /// then as [`DirStore::offer_verified`].
    pub fn offer(&mut self, bytes: &[u8], now: u64) -> Offered {
        // The bytes the store holds already were verified when they came in: a sync that
        // lists them again costs a comparison, not a signature check.
        let held = SignedDescriptor::peer_of_bytes(bytes)
            .and_then(|peer| self.entries.get(&peer))
            .is_some_and(|e| e.descriptor.as_bytes() == bytes);
        if held {
            return Offered::Unchanged;
        }
        // What would be refused whatever the signature is refused before checking it: a
        // listing of thousands of descriptors in full subnets costs comparisons, not
        // signature checks.
        if let Some(claim) = SignedDescriptor::unverified_claim(bytes) {
            let peer = claim.peer_id();
            if self.refuted.contains(&(peer, claim.published_at)) {
                return Offered::Refuted;
            }
            match self.entries.get(&peer) {
                Some(old) if claim.published_at <= old.descriptor.descriptor().published_at => {
                    return Offered::Unchanged;
                }
                None if !self.heard.fits(
                    &Networks::of_claim(&claim, None),
                    self.config.max_heard,
                    MAX_PENDING_PER_SUBNET,
                    MAX_PENDING_PER_BLOCK,
                ) =>
                {
                    return Offered::Full;
                }
                _ => {}
            }
        }
        match SignedDescriptor::verify(bytes, now) {
            Ok(d) => self.offer_verified(d, now),
            Err(err) => Offered::Invalid(RecordRefusal::of(&err)),
        }
    }

    /// Offers a verified descriptor heard of from elsewhere (the heard lane if it is new).
    pub fn offer_verified(&mut self, descriptor: SignedDescriptor, now: u64) -> Offered {
        self.offer_in(descriptor, now, Standing::Heard)
    }

    /// Offers a descriptor its relay announced itself over a connection from `from`: the
    /// vouched lane when `from` is one of the IP addresses it signs, the heard lane otherwise.
    pub fn offer_announced(
        &mut self,
        descriptor: SignedDescriptor,
        from: Option<IpAddr>,
        now: u64,
    ) -> Offered {
        let vouched = from.map(canonical_ip).is_some_and(|from| {
            descriptor
                .descriptor()
                .ip_addrs()
                .any(|ip| canonical_ip(ip) == from)
        });
        let lane = if vouched {
            Standing::Vouched
        } else {
            Standing::Heard
        };
        self.offer_in(descriptor, now, lane)
    }

    /// A newer descriptor replaces the held one and keeps the proofs of the addresses it
    /// still lists (it stays listed if any is left); every unproven address is queued for a
    /// probe.
    fn offer_in(&mut self, descriptor: SignedDescriptor, now: u64, lane: Standing) -> Offered {
        self.now = self.now.max(now);
        if descriptor.descriptor().check_time(now).is_err() {
            return Offered::Invalid(RecordRefusal::Expired);
        }
        let peer = descriptor.peer_id();
        let key = (peer, descriptor.descriptor().published_at);
        if self.refuted.contains(&key) {
            // The relay itself, announcing from an address it signs, gets another probe: it
            // may have been down, or unreachable for a moment, when the last one failed.
            if lane != Standing::Vouched {
                return Offered::Refuted;
            }
            self.refuted.remove(&key);
            self.refuted_order.retain(|k| *k != key);
        }
        let (kept, first_seen, outcome, was) = match self.entries.get(&peer) {
            Some(old) if !is_newer(&descriptor, &old.descriptor) => {
                // A down relay announcing itself again is checked at once.
                if old.standing == Standing::Down && lane == Standing::Vouched {
                    self.reschedule(peer, now);
                    return Offered::Unchanged;
                }
                // The same descriptor announced by its relay from its own address moves up.
                if old.standing == Standing::Heard
                    && lane == Standing::Vouched
                    && old.descriptor == descriptor
                {
                    let old = self.take(&peer).expect("held");
                    if self.fits(&old.descriptor, Standing::Vouched, AddrSet::NONE) {
                        self.insert(
                            peer,
                            StoreEntry {
                                standing: Standing::Vouched,
                                ..old
                            },
                        );
                        self.requeue_urgent(peer);
                    } else {
                        self.insert(peer, old);
                    }
                }
                return Offered::Unchanged;
            }
            Some(old) => {
                let old_addrs = &old.descriptor.descriptor().addrs;
                let mut kept = AddrSet::NONE;
                for (i, a) in descriptor.descriptor().addrs.iter().enumerate() {
                    if let Some(j) = old_addrs.iter().position(|o| o == a)
                        && old.proven.contains(j)
                    {
                        kept = kept.with(i);
                    }
                }
                (kept, old.first_seen, Offered::Updated, Some(old.standing))
            }
            None => (AddrSet::NONE, now, Offered::Added, None),
        };
        let standing = if !kept.is_empty() {
            Standing::Listed
        } else if was == Some(Standing::Vouched) {
            Standing::Vouched
        } else {
            lane
        };
        let old = self.take(&peer);
        if !self.fits(&descriptor, standing, kept) {
            // Put back what was there, if anything.
            if let Some(old) = old {
                self.insert(peer, old);
            }
            return Offered::Full;
        }
        self.insert(
            peer,
            StoreEntry {
                descriptor,
                first_seen,
                proven: kept,
                standing,
                seq: 0,
                liveness: Liveness::default(),
            },
        );
        self.queue_probes(peer);
        outcome
    }

    fn unproven(&self, peer: PeerId) -> Vec<Probe> {
        let Some(e) = self.entries.get(&peer) else {
            return Vec::new();
        };
        e.descriptor
            .descriptor()
            .addrs
            .iter()
            .enumerate()
            .filter(|(i, a)| !e.proven.contains(*i) && ip_of(a).is_some())
            .map(|(index, addr)| Probe {
                peer,
                index,
                addr: addr.clone(),
            })
            .collect()
    }

    fn queue_probes(&mut self, peer: PeerId) {
        let urgent = self
            .entries
            .get(&peer)
            .is_some_and(|e| e.standing == Standing::Vouched);
        for probe in self.unproven(peer) {
            if self.pending_probes() >= MAX_PENDING_PROBES {
                return;
            }
            if self.queued.insert((peer, probe.index)) {
                if urgent {
                    self.urgent_probes.push_back(probe);
                } else {
                    self.probes.push_back(probe);
                }
            }
        }
    }

    /// Moves the queued probes of a newly vouched entry to the front lane.
    fn requeue_urgent(&mut self, peer: PeerId) {
        let (mine, rest): (Vec<Probe>, Vec<Probe>) =
            self.probes.drain(..).partition(|p| p.peer == peer);
        self.probes = rest.into();
        for p in mine {
            self.queued.remove(&(p.peer, p.index));
        }
        self.queue_probes(peer);
    }

    /// The next address to dial: vouched entries first, then oldest request first.
    pub fn next_probe(&mut self) -> Option<Probe> {
        loop {
            let probe = self
                .urgent_probes
                .pop_front()
                .or_else(|| self.probes.pop_front())?;
            self.queued.remove(&(probe.peer, probe.index));
            // Still wanted: the entry holds this very address, unproven.
            let wanted = self.entries.get(&probe.peer).is_some_and(|e| {
                !e.proven.contains(probe.index)
                    && e.descriptor.descriptor().addrs.get(probe.index) == Some(&probe.addr)
            });
            if wanted {
                self.in_flight.insert((probe.peer, probe.index));
                return Some(probe);
            }
        }
    }

    /// The outcome of a probe: `reached` when the dial to `probe.addr` succeeded and the
    /// handshake authenticated `probe.peer` there. A pending entry whose last address failed
    /// leaves the store and is remembered as refuted; one that is proven is listed, if the
    /// caps of its proven addresses leave room.
    pub fn probed(&mut self, probe: &Probe, reached: bool) {
        self.in_flight.remove(&(probe.peer, probe.index));
        let Some(e) = self.entries.get(&probe.peer) else {
            return;
        };
        if e.descriptor.descriptor().addrs.get(probe.index) != Some(&probe.addr)
            || e.proven.contains(probe.index)
        {
            return;
        }
        let peer = probe.peer;
        if !reached {
            let waiting = self
                .queued
                .iter()
                .chain(self.in_flight.iter())
                .any(|(p, _)| *p == peer);
            if e.standing != Standing::Listed && !waiting {
                let published = e.descriptor.descriptor().published_at;
                self.take(&peer);
                self.refute(peer, published);
            }
            return;
        }
        let Some(old) = self.take(&peer) else {
            return;
        };
        let proven = old.proven.with(probe.index);
        let liveness = if old.standing == Standing::Listed {
            old.liveness
        } else {
            Liveness::default()
        };
        if let Some(old) = self.list_if_room(peer, old, proven, liveness)
            && old.standing == Standing::Listed
        {
            // Listed through another address; this one's network is full: stays unproven.
            self.insert(peer, old);
        }
        // A pending entry proven in a full network is dropped: it could not be listed.
    }

    /// Lists `old` (taken out of the store) with `proven` and `liveness` if the caps leave
    /// room; gives it back unchanged otherwise.
    fn list_if_room(
        &mut self,
        peer: PeerId,
        old: StoreEntry,
        proven: AddrSet,
        liveness: Liveness,
    ) -> Option<StoreEntry> {
        if !self.fits(&old.descriptor, Standing::Listed, proven) {
            return Some(old);
        }
        self.insert(
            peer,
            StoreEntry {
                proven,
                standing: Standing::Listed,
                liveness,
                ..old
            },
        );
        None
    }

    /// A probe that could not be tried (the dial was refused locally, e.g. by a connection
    /// limit): it goes back to the end of its queue, and proves or refutes nothing.
    pub fn retry_later(&mut self, probe: Probe) {
        self.in_flight.remove(&(probe.peer, probe.index));
        let urgent = self
            .entries
            .get(&probe.peer)
            .is_some_and(|e| e.standing == Standing::Vouched);
        if self.pending_probes() < MAX_PENDING_PROBES
            && self.queued.insert((probe.peer, probe.index))
        {
            if urgent {
                self.urgent_probes.push_back(probe);
            } else {
                self.probes.push_back(probe);
            }
        }
    }

    fn refute(&mut self, peer: PeerId, published_at: u64) {
        if self.refuted.insert((peer, published_at)) {
            self.refuted_order.push_back((peer, published_at));
        }
        while self.refuted_order.len() > MAX_REFUTED {
            if let Some(old) = self.refuted_order.pop_front() {
                self.refuted.remove(&old);
            }
        }
    }

    /// Lists `peer`'s own descriptor with every address proven (a relay's own entry: it
    /// listens at its own addresses).
    pub fn insert_own(&mut self, descriptor: SignedDescriptor, now: u64) -> Offered {
        self.now = self.now.max(now);
        if descriptor.descriptor().check_time(now).is_err() {
            return Offered::Invalid(RecordRefusal::Expired);
        }
        let peer = descriptor.peer_id();
        let first_seen = self.entries.get(&peer).map_or(now, |e| e.first_seen);
        let old = self.take(&peer);
        let outcome = if old.is_some() {
            Offered::Updated
        } else {
            Offered::Added
        };
        // The caps bind others, not the relay itself: its own entry always fits.
        self.insert(
            peer,
            StoreEntry {
                descriptor,
                first_seen,
                proven: AddrSet::ALL,
                standing: Standing::Listed,
                seq: 0,
                liveness: Liveness {
                    own: true,
                    ..Liveness::default()
                },
            },
        );
        outcome
    }

    /// Takes out every descriptor no longer valid at `now`; returns how many went.
    pub fn prune_expired(&mut self, now: u64) -> usize {
        self.now = self.now.max(now);
        let expired: Vec<PeerId> = self
            .entries
            .iter()
            .filter(|(_, e)| e.descriptor.descriptor().check_time(now).is_err())
            .map(|(p, _)| *p)
            .collect();
        for peer in &expired {
            self.take(peer);
        }
        expired.len()
    }

    /// The next liveness check due at `now`, if any: a listed relay's first proven address, a
    /// down relay's first IP address. Answer it with [`DirStore::checked`].
    pub fn next_check(&mut self, now: u64) -> Option<Probe> {
        self.now = self.now.max(now);
        while let Some(&(due, peer)) = self.checks.first() {
            if due > now {
                return None;
            }
            self.checks.remove(&(due, peer));
            if self.checks_in_flight.contains(&peer) {
                continue;
            }
            let Some(e) = self.entries.get(&peer) else {
                continue;
            };
            let down = e.standing == Standing::Down;
            let target = e
                .descriptor
                .descriptor()
                .addrs
                .iter()
                .enumerate()
                .find(|(i, a)| (down || e.proven.contains(*i)) && ip_of(a).is_some());
            if let Some((index, addr)) = target {
                let probe = Probe {
                    peer,
                    index,
                    addr: addr.clone(),
                };
                self.checks_in_flight.insert(peer);
                return Some(probe);
            }
        }
        None
    }

    /// Checks handed out by [`DirStore::next_check`] and not answered yet.
    pub fn checks_in_flight(&self) -> usize {
        self.checks_in_flight.len()
    }

    /// The outcome of a liveness check: `reached` when the dial to `probe.addr` authenticated
    /// `probe.peer` there. A listed relay that failed [`LIVENESS_FAILURES_TO_DOWN`] in a row
    /// is down; a down relay that answers is listed again if the caps leave room (and leaves
    /// the store otherwise).
    pub fn checked(&mut self, probe: &Probe, reached: bool, now: u64) {
        self.now = self.now.max(now);
        self.checks_in_flight.remove(&probe.peer);
        let peer = probe.peer;
        let Some(e) = self.entries.get_mut(&peer) else {
            return;
        };
        if !matches!(e.standing, Standing::Listed | Standing::Down) || e.liveness.own {
            return;
        }
        if e.descriptor.descriptor().addrs.get(probe.index) != Some(&probe.addr) {
            // A newer descriptor came meanwhile; its own schedule holds.
            self.reschedule(peer, now + LIVENESS_RECHECK_SECS);
            return;
        }
        let down = e.standing == Standing::Down;
        if reached {
            e.liveness.failures = 0;
            if !down {
                self.reschedule(peer, now + LIVENESS_RECHECK_SECS);
                return;
            }
            let Some(old) = self.take(&peer) else {
                return;
            };
            // No room left for it: it leaves the store.
            let proven = AddrSet::NONE.with(probe.index);
            let _ = self.list_if_room(peer, old, proven, Liveness::default());
            return;
        }
        let failures = e.liveness.failures.saturating_add(1);
        e.liveness.failures = failures;
        if down {
            self.reschedule(peer, now + DOWN_RECHECK_SECS);
            return;
        }
        if failures < LIVENESS_FAILURES_TO_DOWN {
            self.reschedule(peer, now + LIVENESS_RETRY_SECS);
            return;
        }
        let Some(old) = self.take(&peer) else {
            return;
        };
        self.make_room_down();
        self.insert(
            peer,
            StoreEntry {
                proven: AddrSet::NONE,
                standing: Standing::Down,
                liveness: Liveness {
                    due: now + DOWN_RECHECK_SECS,
                    failures,
                    own: false,
                },
                ..old
            },
        );
    }

    /// A check that could not be tried (the dial was refused locally): it proves and
    /// refutes nothing, and is tried again after [`LIVENESS_RETRY_SECS`].
    pub fn check_not_tried(&mut self, probe: &Probe, now: u64) {
        self.now = self.now.max(now);
        if self.checks_in_flight.remove(&probe.peer) {
            self.reschedule(probe.peer, now + LIVENESS_RETRY_SECS);
        }
    }

    /// This relay's last connection to `peer` closed: a listed relay is checked at once (a
    /// relay that crashed closes every connection it had).
    pub fn connection_lost(&mut self, peer: &PeerId, now: u64) {
        self.now = self.now.max(now);
        let Some(e) = self.entries.get(peer) else {
            return;
        };
        if e.standing == Standing::Listed
            && !e.liveness.own
            && e.liveness.due > now
            && !self.checks_in_flight.contains(peer)
        {
            self.reschedule(*peer, now);
        }
    }

    fn reschedule(&mut self, peer: PeerId, due: u64) {
        let Some(e) = self.entries.get_mut(&peer) else {
            return;
        };
        self.checks.remove(&(e.liveness.due, peer));
        e.liveness.due = due;
        self.checks.insert((due, peer));
    }

    /// Makes room for one more down relay: the one down longest goes.
    fn make_room_down(&mut self) {
        while self.down.entries >= MAX_DOWN {
            let oldest = self
                .by_seq
                .values()
                .find(|p| {
                    self.entries
                        .get(p)
                        .is_some_and(|e| e.standing == Standing::Down)
                })
                .copied();
            match oldest {
                Some(peer) => {
                    self.take(&peer);
                }
                None => return,
            }
        }
    }

    /// A listing for a client that last saw `since` in epoch `epoch`: the listed entries that
    /// changed after it, or all of them when the epoch is not the store's (specs/04 §7.3),
    /// leaving out descriptors no longer valid at `now` and pending ones. At most
    /// [`MAX_LISTING_ENTRIES`] entries and [`MAX_RESPONSE_LEN`] bytes; `more` says to ask again.
    pub fn listing(&self, epoch: u64, since: u64, now: u64) -> Listing {
        let full = epoch != self.epoch;
        let from = if full { 0 } else { since };
        let mut listing = Listing {
            epoch: self.epoch,
            seq: from,
            full,
            more: false,
            entries: Vec::new(),
        };
        let mut bytes = LISTING_HEADER_LEN;
        for (seq, peer) in self.by_seq.range(from.saturating_add(1)..) {
            let Some(e) = self.entries.get(peer) else {
                continue;
            };
            // A down relay is news only to whoever listed it before: a whole store leaves it
            // out.
            let listable = match e.standing {
                Standing::Listed => true,
                Standing::Down => !full,
                Standing::Vouched | Standing::Heard => false,
            };
            if !listable || e.descriptor.descriptor().check_time(now).is_err() {
                continue;
            }
            let len = ENTRY_OVERHEAD + e.descriptor.as_bytes().len();
            if listing.entries.len() >= MAX_LISTING_ENTRIES || bytes + len > MAX_RESPONSE_LEN {
                listing.more = true;
                return listing;
            }
            bytes += len;
            listing.entries.push(ListingEntry {
                first_seen: e.first_seen,
                proven: e.proven,
                descriptor: e.descriptor.as_bytes().to_vec(),
            });
            listing.seq = *seq;
        }
        // Everything after `from` was listed: the receiver is up to date.
        listing.seq = self.seq;
        listing
    }
}

#[cfg(test)]
mod tests {
    use libp2p_identity::ed25519;

    use super::*;
    use crate::descriptor::Descriptor;
    use crate::descriptor::tests::{NOW, sample};

    fn signed(keypair: &ed25519::Keypair, addrs: &[&str], published: u64) -> SignedDescriptor {
        let mut d: Descriptor = sample(keypair, addrs[0]);
        d.addrs = addrs.iter().map(|a| a.parse().expect("addr")).collect();
        d.published_at = published;
        d.expires_at = published + 3600;
        d.sign(keypair).expect("sign")
    }

    fn relay(addr: &str) -> (ed25519::Keypair, SignedDescriptor) {
        let k = ed25519::Keypair::generate();
        let d = signed(&k, &[addr], NOW);
        (k, d)
    }

    /// Address number `i`, each in its own /16.
    fn distinct(i: usize) -> String {
        format!("/ip4/{}.{}.0.1/tcp/1", 1 + i / 250, i % 250)
    }

    fn store() -> DirStore {
        DirStore::new(StoreConfig::default(), 77)
    }

    /// Proves every queued probe of `peer`'s entry (or, with `reached` false, fails them).
    fn probe_all(s: &mut DirStore, reached: impl Fn(&Probe) -> bool) -> usize {
        let mut n = 0;
        while let Some(p) = s.next_probe() {
            s.probed(&p, reached(&p));
            n += 1;
        }
        n
    }

    #[test]
    fn a_new_descriptor_is_pending_until_a_probe_proves_it() {
        let mut s = store();
        let (_, d) = relay("/ip4/192.0.2.1/tcp/9");
        let peer = d.peer_id();
        assert_eq!(s.offer(d.as_bytes(), NOW), Offered::Added);
        assert_eq!(s.offer(d.as_bytes(), NOW), Offered::Unchanged);
        let e = s.get(&peer).expect("held");
        assert_eq!((e.proven, e.standing), (AddrSet::NONE, Standing::Heard));
        assert!(
            s.listing(0, 0, NOW).entries.is_empty(),
            "a pending entry is not listed"
        );
        let probe = s.next_probe().expect("a probe");
        assert_eq!(probe.peer, peer);
        assert_eq!(probe.addr.to_string(), "/ip4/192.0.2.1/tcp/9");
        assert!(s.next_probe().is_none());
        s.probed(&probe, true);
        let e = s.get(&peer).expect("held");
        assert!(e.proven.contains(0));
        assert_eq!(e.standing, Standing::Listed);
        assert_eq!(s.listing(0, 0, NOW).entries.len(), 1);
    }

    #[test]
    fn a_descriptor_whose_every_probe_fails_leaves_and_is_not_taken_again() {
        let mut s = store();
        let (_, d) = relay("/ip4/192.0.2.1/tcp/9");
        s.offer_verified(d.clone(), NOW);
        assert_eq!(probe_all(&mut s, |_| false), 1);
        assert!(s.is_empty());
        assert_eq!(s.refuted_len(), 1);
        assert_eq!(s.offer_verified(d, NOW), Offered::Refuted);
        assert_eq!(s.pending_probes(), 0);
    }

    #[test]
    fn a_republished_descriptor_keeps_the_proofs_of_unchanged_addresses() {
        let mut s = store();
        let k = ed25519::Keypair::generate();
        let d1 = signed(
            &k,
            &["/ip4/192.0.2.1/tcp/9", "/ip4/198.51.100.1/tcp/9"],
            NOW,
        );
        s.offer_verified(d1, NOW);
        let p = s.next_probe().expect("probe");
        s.probed(&p, true);
        let _ = s.next_probe();
        let d2 = signed(
            &k,
            &["/ip4/203.0.113.1/tcp/9", "/ip4/192.0.2.1/tcp/9"],
            NOW + 60,
        );
        assert_eq!(s.offer_verified(d2.clone(), NOW + 60), Offered::Updated);
        let e = s.get(&d2.peer_id()).expect("held");
        assert_eq!(
            e.proven,
            AddrSet::NONE.with(1),
            "the proven address moved to index 1"
        );
        assert_eq!(e.standing, Standing::Listed);
        assert_eq!(e.first_seen, NOW);
        let p = s.next_probe().expect("the new address is probed");
        assert_eq!(p.addr.to_string(), "/ip4/203.0.113.1/tcp/9");
        // A listed relay whose second address fails stays listed.
        s.probed(&p, false);
        assert_eq!(
            s.get(&d2.peer_id()).expect("held").standing,
            Standing::Listed
        );
    }

    #[test]
    fn an_outdated_probe_proves_nothing() {
        let mut s = store();
        let k = ed25519::Keypair::generate();
        s.offer_verified(
            signed(&k, &["/ip4/192.0.2.1/tcp/9", "/ip4/192.0.2.9/tcp/9"], NOW),
            NOW,
        );
        let stale = s.next_probe().expect("probe");
        // The relay moved: the old probe's result says nothing about the new address.
        s.offer_verified(signed(&k, &["/ip4/192.0.2.2/tcp/9"], NOW + 1), NOW + 1);
        s.probed(&stale, true);
        assert_eq!(s.entries().next().expect("entry").proven, AddrSet::NONE);
    }

    #[test]
    fn minting_keys_on_a_few_addresses_cannot_fill_the_store() {
        let mut s = store();
        let mut refused = 0;
        for i in 0..20_000u32 {
            let addr = format!(
                "/ip4/198.18.{}.{}/tcp/{}",
                (i % 4),
                1 + (i % 200),
                i % 60_000
            );
            let (_, d) = relay(&addr);
            if s.offer_verified(d, NOW) == Offered::Full {
                refused += 1;
            }
        }
        // Four /24s in one /16: the heard lane's /24 caps bind.
        assert_eq!(s.pending_len(), (0, 4 * MAX_PENDING_PER_SUBNET));
        assert_eq!(refused, 20_000 - 4 * MAX_PENDING_PER_SUBNET);
        // Every one of them answers its probe (the adversary listens there): the listed caps.
        probe_all(&mut s, |_| true);
        assert_eq!(s.listed_len(), 4 * MAX_STORE_PER_SUBNET);
        // An honest relay elsewhere is stored.
        let (_, honest) = relay("/ip4/192.0.2.7/tcp/9");
        assert_eq!(s.offer_verified(honest, NOW), Offered::Added);
    }

    #[test]
    fn squatters_in_an_honest_relays_subnet_take_no_listed_slot() {
        let mut s = store();
        // Twenty descriptors sign addresses in 192.0.2.0/24, where nothing of theirs listens.
        for i in 0..20 {
            let (_, d) = relay(&format!("/ip4/192.0.2.{}/tcp/9", 100 + i));
            s.offer_verified(d, NOW);
        }
        let (_, honest) = relay("/ip4/192.0.2.7/tcp/9");
        let honest_peer = honest.peer_id();
        // The heard lane's /24 is full of squatters: the honest relay announces itself from
        // its address and takes the vouched lane.
        assert_eq!(s.offer_verified(honest.clone(), NOW), Offered::Full);
        let from: IpAddr = "192.0.2.7".parse().expect("ip");
        assert_eq!(s.offer_announced(honest, Some(from), NOW), Offered::Added);
        assert_eq!(
            s.get(&honest_peer).expect("held").standing,
            Standing::Vouched
        );
        // Its probe goes first; only it answers.
        let first = s.next_probe().expect("probe");
        assert_eq!(first.peer, honest_peer);
        s.probed(&first, true);
        probe_all(&mut s, |_| false);
        let listing = s.listing(0, 0, NOW);
        assert_eq!(listing.entries.len(), 1);
        assert_eq!(
            SignedDescriptor::peer_of_bytes(&listing.entries[0].descriptor),
            Some(honest_peer)
        );
        assert_eq!(s.len(), 1, "the squatters were refuted");
    }

    #[test]
    fn twenty_thousand_fresh_descriptors_leave_the_vouched_lane_to_the_relays_themselves() {
        let mut s = store();
        // Addresses all over the address space, one /16 each: past the heard lane's per-network
        // caps, only its size bounds them.
        for i in 0..20_000usize {
            let (_, d) = relay(&format!(
                "/ip4/{}.{}.{}.1/tcp/9",
                11 + i % 200,
                (i / 200) % 250,
                i % 7
            ));
            let _ = s.offer_verified(d, NOW);
        }
        assert_eq!(s.pending_len(), (0, MAX_HEARD));
        let (_, honest) = relay("/ip4/192.0.2.7/tcp/9");
        let peer = honest.peer_id();
        assert_eq!(s.offer_verified(honest.clone(), NOW), Offered::Full);
        // Announced from elsewhere: still only the heard lane, still full.
        let elsewhere: IpAddr = "198.51.100.1".parse().expect("ip");
        assert_eq!(
            s.offer_announced(honest.clone(), Some(elsewhere), NOW),
            Offered::Full
        );
        let own: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(
            s.offer_announced(honest, Some(own), NOW),
            Offered::Added,
            "an IPv4-mapped source is its IPv4 address"
        );
        let p = s.next_probe().expect("probe");
        assert_eq!(p.peer, peer, "the vouched probe comes first");
        s.probed(&p, true);
        assert_eq!(s.get(&peer).expect("held").standing, Standing::Listed);
    }

    #[test]
    fn the_store_bounds_hold() {
        let mut s = DirStore::new(
            StoreConfig {
                max_entries: 3,
                max_vouched: 2,
                max_heard: 5,
                ..StoreConfig::default()
            },
            1,
        );
        for i in 0..3 {
            let (_, d) = relay(&format!("/ip4/10.{i}.0.1/tcp/1"));
            assert_eq!(s.offer_verified(d, NOW), Offered::Added);
        }
        probe_all(&mut s, |_| true);
        assert_eq!(s.listed_len(), 3);
        // Listed is full: a proven fourth is dropped; the heard lane holds five.
        for i in 10..20 {
            let (_, d) = relay(&format!("/ip4/10.{i}.0.1/tcp/1"));
            let _ = s.offer_verified(d, NOW);
        }
        assert_eq!(s.pending_len(), (0, 5));
        probe_all(&mut s, |_| true);
        assert_eq!((s.listed_len(), s.pending_len()), (3, (0, 0)));
        for i in 30..35 {
            let (_, d) = relay(&format!("/ip4/10.{i}.0.1/tcp/1"));
            let ip: IpAddr = format!("10.{i}.0.1").parse().expect("ip");
            let _ = s.offer_announced(d, Some(ip), NOW);
        }
        assert_eq!(s.pending_len(), (2, 0));
        // The probe queue is bounded too.
        let mut big = DirStore::new(
            StoreConfig {
                max_heard: 2 * MAX_PENDING_PROBES,
                ..StoreConfig::default()
            },
            1,
        );
        for i in 0..(MAX_PENDING_PROBES + 50) {
            let (_, d) = relay(&distinct(i));
            big.offer_verified(d, NOW);
        }
        assert_eq!(big.pending_probes(), MAX_PENDING_PROBES);
        // And the memory of refuted descriptors.
        let mut r = store();
        for i in 0..(MAX_REFUTED + 10) {
            let (_, d) = relay(&distinct(i % 60_000));
            r.offer_verified(d, NOW);
            probe_all(&mut r, |_| false);
        }
        assert_eq!(r.refuted_len(), MAX_REFUTED);
    }

    #[test]
    fn a_relays_own_entry_is_listed_whatever_the_caps() {
        let mut s = DirStore::new(
            StoreConfig {
                max_per_subnet: 1,
                ..StoreConfig::default()
            },
            1,
        );
        let (_, other) = relay("/ip4/192.0.2.1/tcp/9");
        s.offer_verified(other, NOW);
        probe_all(&mut s, |_| true);
        let (_, own) = relay("/ip4/192.0.2.2/tcp/9");
        assert_eq!(s.insert_own(own.clone(), NOW), Offered::Added);
        assert_eq!(
            s.get(&own.peer_id()).expect("held").standing,
            Standing::Listed
        );
        assert_eq!(s.listing(0, 0, NOW).entries.len(), 2);
    }

    fn listed_relay(s: &mut DirStore, addr: &str) -> PeerId {
        let (_, d) = relay(addr);
        let peer = d.peer_id();
        s.offer_verified(d, NOW);
        probe_all(s, |p| p.peer == peer);
        peer
    }

    #[test]
    fn listings_give_everything_to_a_stranger_and_only_changes_since_to_a_follower() {
        let mut s = store();
        let mut peers = Vec::new();
        for i in 0..5 {
            peers.push(listed_relay(&mut s, &format!("/ip4/10.{i}.0.1/tcp/1")));
        }
        let first = s.listing(0, 0, NOW);
        assert!(first.full && !first.more);
        assert_eq!(first.entries.len(), 5);
        assert_eq!(first.epoch, 77);
        // Nothing changed: an empty change listing at the same position.
        let none = s.listing(first.epoch, first.seq, NOW);
        assert!(!none.full && none.entries.is_empty());
        assert_eq!(none.seq, first.seq);
        // A pending relay changes nothing listed; once proven it comes in the next change
        // listing, alone.
        let (_, d) = relay("/ip4/10.9.0.1/tcp/1");
        s.offer_verified(d, NOW);
        assert!(s.listing(first.epoch, first.seq, NOW).entries.is_empty());
        probe_all(&mut s, |_| true);
        let changes = s.listing(first.epoch, first.seq, NOW);
        assert!(!changes.full);
        assert_eq!(changes.entries.len(), 1);
        assert!(changes.entries[0].proven.contains(0));
        // Another epoch (the server restarted): everything again.
        assert!(s.listing(12345, first.seq, NOW).full);
    }

    #[test]
    fn a_long_listing_is_paged() {
        let mut s = DirStore::new(
            StoreConfig {
                max_heard: 2 * MAX_LISTING_ENTRIES,
                ..StoreConfig::default()
            },
            1,
        );
        for i in 0..(MAX_LISTING_ENTRIES + 10) {
            let (_, d) = relay(&distinct(i));
            s.offer_verified(d, NOW);
            probe_all(&mut s, |_| true);
        }
        let page1 = s.listing(0, 0, NOW);
        assert!(page1.more);
        assert_eq!(page1.entries.len(), MAX_LISTING_ENTRIES);
        let page2 = s.listing(page1.epoch, page1.seq, NOW);
        assert!(!page2.more);
        assert_eq!(page2.entries.len(), 10);
    }

    #[test]
    fn expired_descriptors_leave() {
        let mut s = store();
        listed_relay(&mut s, "/ip4/10.0.0.1/tcp/1");
        assert!(
            s.listing(0, 0, NOW + 3600).entries.is_empty(),
            "not listed once expired, even before the next prune"
        );
        assert_eq!(s.prune_expired(NOW + 3600), 1);
        assert!(s.is_empty());
        let (_, late) = relay("/ip4/10.0.0.2/tcp/1");
        assert_eq!(
            s.offer_verified(late, NOW + 7200),
            Offered::Invalid(RecordRefusal::Expired)
        );
    }

    /// Runs every check due at `now`, answering each with `reached`; returns how many ran.
    fn check_all(s: &mut DirStore, now: u64, reached: bool) -> usize {
        let mut n = 0;
        while let Some(p) = s.next_check(now) {
            s.checked(&p, reached, now);
            n += 1;
        }
        n
    }

    #[test]
    fn a_listed_relay_that_fails_its_checks_is_listed_down_to_followers_only() {
        let mut s = store();
        let peer = listed_relay(&mut s, "/ip4/10.0.0.1/tcp/1");
        let before = s.listing(0, 0, NOW);
        assert_eq!(check_all(&mut s, NOW + 1, false), 0, "its proof is fresh");
        let due = NOW + LIVENESS_RECHECK_SECS;
        assert_eq!(check_all(&mut s, due, false), 1);
        assert_eq!(s.get(&peer).map(|e| e.standing), Some(Standing::Listed));
        assert_eq!(check_all(&mut s, due + 1, false), 0);
        assert_eq!(check_all(&mut s, due + LIVENESS_RETRY_SECS, false), 1);
        let e = s.get(&peer).expect("kept");
        assert_eq!((e.standing, e.proven), (Standing::Down, AddrSet::NONE));
        assert_eq!((s.listed_len(), s.down_len()), (0, 1));
        let news = s.listing(before.epoch, before.seq, NOW + 100);
        assert_eq!(news.entries.len(), 1, "a follower hears that it is down");
        assert_eq!(news.entries[0].proven, AddrSet::NONE);
        assert!(
            s.listing(0, 0, NOW + 100).entries.is_empty(),
            "a stranger's whole store leaves it out"
        );
    }

    #[test]
    fn a_check_that_answers_keeps_the_relay_listed_and_unchanged() {
        let mut s = store();
        let peer = listed_relay(&mut s, "/ip4/10.0.0.1/tcp/1");
        let before = s.listing(0, 0, NOW);
        let mut at = NOW;
        for _ in 0..5 {
            at += LIVENESS_RECHECK_SECS;
            assert_eq!(check_all(&mut s, at, true), 1);
        }
        // One failure, then an answer: the count starts again.
        at += LIVENESS_RECHECK_SECS;
        assert_eq!(check_all(&mut s, at, false), 1);
        at += LIVENESS_RETRY_SECS;
        assert_eq!(check_all(&mut s, at, true), 1);
        at += LIVENESS_RECHECK_SECS;
        assert_eq!(check_all(&mut s, at, false), 1);
        assert_eq!(s.get(&peer).map(|e| e.standing), Some(Standing::Listed));
        assert!(
            s.listing(before.epoch, before.seq, at).entries.is_empty(),
            "nothing changed for a follower"
        );
    }

    #[test]
    fn a_lost_connection_checks_at_once_and_a_relay_back_is_listed_again() {
        let mut s = store();
        let peer = listed_relay(&mut s, "/ip4/10.0.0.1/tcp/1");
        s.connection_lost(&peer, NOW + 1);
        assert_eq!(check_all(&mut s, NOW + 1, false), 1);
        assert_eq!(check_all(&mut s, NOW + 1 + LIVENESS_RETRY_SECS, false), 1);
        assert_eq!(s.get(&peer).map(|e| e.standing), Some(Standing::Down));
        let before = s.listing(0, 0, NOW + 10);
        let back = NOW + 1 + LIVENESS_RETRY_SECS + DOWN_RECHECK_SECS;
        assert_eq!(check_all(&mut s, back - 1, true), 0);
        assert_eq!(check_all(&mut s, back, true), 1);
        let e = s.get(&peer).expect("kept");
        assert_eq!(
            (e.standing, e.proven),
            (Standing::Listed, AddrSet::NONE.with(0))
        );
        let news = s.listing(before.epoch, before.seq, back);
        assert_eq!(news.entries.len(), 1);
        assert_eq!(news.entries[0].proven, AddrSet::NONE.with(0));
    }

    #[test]
    fn a_down_relay_announcing_itself_is_checked_at_once() {
        let mut s = store();
        let (_, d) = relay("/ip4/10.0.0.1/tcp/1");
        let peer = d.peer_id();
        s.offer_verified(d.clone(), NOW);
        probe_all(&mut s, |_| true);
        s.connection_lost(&peer, NOW);
        check_all(&mut s, NOW, false);
        check_all(&mut s, NOW + LIVENESS_RETRY_SECS, false);
        assert_eq!(s.get(&peer).map(|e| e.standing), Some(Standing::Down));
        let from = "10.0.0.1".parse().ok();
        assert_eq!(s.offer_announced(d, from, NOW + 20), Offered::Unchanged);
        assert_eq!(check_all(&mut s, NOW + 20, true), 1);
        assert_eq!(s.get(&peer).map(|e| e.standing), Some(Standing::Listed));
    }

    #[test]
    fn the_own_entry_is_never_checked() {
        let mut s = store();
        let (_, d) = relay("/ip4/10.0.0.1/tcp/1");
        s.insert_own(d.clone(), NOW);
        s.connection_lost(&d.peer_id(), NOW);
        assert_eq!(
            check_all(&mut s, NOW + 10 * LIVENESS_RECHECK_SECS, false),
            0
        );
        assert_eq!(s.listed_len(), 1);
    }

    #[test]
    fn down_relays_hold_no_cap_slot_and_are_bounded() {
        let mut s = store();
        let first: Vec<PeerId> = (0..MAX_STORE_PER_SUBNET)
            .map(|i| listed_relay(&mut s, &format!("/ip4/10.0.0.{}/tcp/1", i + 1)))
            .collect();
        let (_, late) = relay("/ip4/10.0.0.99/tcp/1");
        let late_peer = late.peer_id();
        s.offer_verified(late.clone(), NOW);
        probe_all(&mut s, |_| true);
        assert!(
            !s.get(&late_peer)
                .is_some_and(|e| e.standing == Standing::Listed),
            "the /24 is full"
        );
        s.connection_lost(&first[0], NOW);
        check_all(&mut s, NOW, false);
        check_all(&mut s, NOW + LIVENESS_RETRY_SECS, false);
        assert_eq!(s.down_len(), 1);
        s.offer_verified(late, NOW + 10);
        probe_all(&mut s, |_| true);
        assert_eq!(
            s.get(&late_peer).map(|e| e.standing),
            Some(Standing::Listed),
            "the down relay's slot is free"
        );
        // The bound: one more down relay than MAX_DOWN, and the one down longest is gone.
        let mut s = DirStore::new(
            StoreConfig {
                max_heard: 2 * MAX_DOWN,
                ..StoreConfig::default()
            },
            1,
        );
        let peers: Vec<PeerId> = (0..=MAX_DOWN)
            .map(|i| {
                let (_, d) = relay(&distinct(i));
                let peer = d.peer_id();
                s.offer_verified(d, NOW);
                peer
            })
            .collect();
        probe_all(&mut s, |_| true);
        for peer in &peers {
            s.connection_lost(peer, NOW);
            check_all(&mut s, NOW, false);
        }
        check_all(&mut s, NOW + LIVENESS_RETRY_SECS, false);
        assert_eq!(s.down_len(), MAX_DOWN);
        assert_eq!(s.len(), MAX_DOWN);
        // Checks run in PeerId order, so the smallest went down first.
        let first_down = peers.iter().min().expect("peers");
        assert!(s.get(first_down).is_none(), "the first one down went first");
    }
}
