//! A relay's directory store (specs/04 §7.4): every verified descriptor it holds, which of their
//! addresses it proved, and the order in which it learned them, so that it can list them all or
//! only what changed. Plain state: the node feeds it descriptors and probe results and asks it
//! for listings and for the next address to probe.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use libp2p_identity::PeerId;
use multiaddr::Multiaddr;

use crate::descriptor::{SignedDescriptor, ip_of};
use crate::dirproto::{
    ENTRY_OVERHEAD, LISTING_HEADER_LEN, Listing, ListingEntry, MAX_LISTING_ENTRIES,
    MAX_RESPONSE_LEN,
};
use crate::records::{RecordRefusal, is_newer};
use crate::subnet::{Block, Subnet};
use crate::view::{AddrSet, MAX_VIEW_RELAYS};

/// Most descriptors a store holds.
pub const MAX_STORE_ENTRIES: usize = MAX_VIEW_RELAYS;
/// Most descriptors a store holds per IPv4 /24 or IPv6 /48 of their signed addresses (proven or
/// not): minting keys on a few addresses cannot fill the store (specs/04 §7.4).
pub const MAX_STORE_PER_SUBNET: usize = 4;
/// Most descriptors a store holds per IPv4 /16 or IPv6 /32 of their signed addresses.
pub const MAX_STORE_PER_BLOCK: usize = 32;
/// Most addresses waiting to be probed.
pub const MAX_PENDING_PROBES: usize = 1024;

/// Settings of a [`DirStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Most descriptors held.
    pub max_entries: usize,
    /// Most descriptors per /24 (/48).
    pub max_per_subnet: usize,
    /// Most descriptors per /16 (/32).
    pub max_per_block: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_entries: MAX_STORE_ENTRIES,
            max_per_subnet: MAX_STORE_PER_SUBNET,
            max_per_block: MAX_STORE_PER_BLOCK,
        }
    }
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
    /// When the entry last changed, in the store's sequence.
    seq: u64,
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
    /// A relay new to the store.
    Added,
    /// A newer descriptor for a relay the store held.
    Updated,
    /// Not newer than what the store holds.
    Unchanged,
    /// Refused: the store, or a subnet of its addresses, is full.
    Full,
    /// Refused: not a valid descriptor now.
    Invalid(RecordRefusal),
}

/// The store. See the module documentation.
#[derive(Debug)]
pub struct DirStore {
    config: StoreConfig,
    epoch: u64,
    seq: u64,
    entries: BTreeMap<PeerId, StoreEntry>,
    by_seq: BTreeMap<u64, PeerId>,
    subnet_load: HashMap<Subnet, usize>,
    block_load: HashMap<Block, usize>,
    probes: VecDeque<Probe>,
    queued: HashSet<(PeerId, usize)>,
}

fn networks(d: &SignedDescriptor) -> (Vec<Subnet>, Vec<Block>) {
    let mut subnets: Vec<Subnet> = d.descriptor().ip_addrs().map(Subnet::of).collect();
    let mut blocks: Vec<Block> = d.descriptor().ip_addrs().map(Block::of).collect();
    subnets.sort_unstable();
    subnets.dedup();
    blocks.sort_unstable();
    blocks.dedup();
    (subnets, blocks)
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
            subnet_load: HashMap::new(),
            block_load: HashMap::new(),
            probes: VecDeque::new(),
            queued: HashSet::new(),
        }
    }

    /// Descriptors held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry of `peer`.
    pub fn get(&self, peer: &PeerId) -> Option<&StoreEntry> {
        self.entries.get(peer)
    }

    /// Every entry, in PeerId order.
    pub fn entries(&self) -> impl Iterator<Item = &StoreEntry> {
        self.entries.values()
    }

    /// The store's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Addresses waiting to be probed.
    pub fn pending_probes(&self) -> usize {
        self.probes.len()
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

    /// Offers descriptor bytes from a peer: verified at `now`, then as [`DirStore::offer_verified`].
    pub fn offer(&mut self, bytes: &[u8], now: u64) -> Offered {
        // The bytes the store holds already were verified when they came in: a sync that
        // lists them again costs a comparison, not a signature check.
        let held = SignedDescriptor::peer_of_bytes(bytes)
            .and_then(|peer| self.entries.get(&peer))
            .is_some_and(|e| e.descriptor.as_bytes() == bytes);
        if held {
            return Offered::Unchanged;
        }
        match SignedDescriptor::verify(bytes, now) {
            Ok(d) => self.offer_verified(d, now),
            Err(err) => Offered::Invalid(RecordRefusal::of(&err)),
        }
    }

    /// Offers a verified descriptor (valid at `now`). A newer one replaces the held one and
    /// keeps the proofs of the addresses it still lists; every unproven address is queued for
    /// a probe.
    pub fn offer_verified(&mut self, descriptor: SignedDescriptor, now: u64) -> Offered {
        if descriptor.descriptor().check_time(now).is_err() {
            return Offered::Invalid(RecordRefusal::Expired);
        }
        let peer = descriptor.peer_id();
        let (kept, first_seen, outcome) = match self.entries.get(&peer) {
            Some(old) if !is_newer(&descriptor, &old.descriptor) => return Offered::Unchanged,
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
                (kept, old.first_seen, Offered::Updated)
            }
            None => (AddrSet::NONE, now, Offered::Added),
        };
        let old = self.take(&peer);
        if !self.fits(&descriptor) {
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
                seq: 0,
            },
        );
        self.queue_probes(peer);
        outcome
    }

    fn fits(&self, d: &SignedDescriptor) -> bool {
        if self.entries.len() >= self.config.max_entries {
            return false;
        }
        let (subnets, blocks) = networks(d);
        !subnets.is_empty()
            && subnets
                .iter()
                .all(|s| self.subnet_load.get(s).copied().unwrap_or(0) < self.config.max_per_subnet)
            && blocks
                .iter()
                .all(|b| self.block_load.get(b).copied().unwrap_or(0) < self.config.max_per_block)
    }

    fn insert(&mut self, peer: PeerId, entry: StoreEntry) {
        let (subnets, blocks) = networks(&entry.descriptor);
        for s in subnets {
            *self.subnet_load.entry(s).or_default() += 1;
        }
        for b in blocks {
            *self.block_load.entry(b).or_default() += 1;
        }
        self.entries.insert(peer, entry);
        self.bump(peer);
    }

    fn take(&mut self, peer: &PeerId) -> Option<StoreEntry> {
        let entry = self.entries.remove(peer)?;
        self.by_seq.remove(&entry.seq);
        let (subnets, blocks) = networks(&entry.descriptor);
        for s in subnets {
            if let Some(n) = self.subnet_load.get_mut(&s) {
                *n -= 1;
                if *n == 0 {
                    self.subnet_load.remove(&s);
                }
            }
        }
        for b in blocks {
            if let Some(n) = self.block_load.get_mut(&b) {
                *n -= 1;
                if *n == 0 {
                    self.block_load.remove(&b);
                }
            }
        }
        Some(entry)
    }

    fn queue_probes(&mut self, peer: PeerId) {
        let Some(e) = self.entries.get(&peer) else {
            return;
        };
        let wanted: Vec<(usize, Multiaddr)> = e
            .descriptor
            .descriptor()
            .addrs
            .iter()
            .enumerate()
            .filter(|(i, a)| !e.proven.contains(*i) && ip_of(a).is_some())
            .map(|(i, a)| (i, a.clone()))
            .collect();
        for (index, addr) in wanted {
            if self.probes.len() >= MAX_PENDING_PROBES {
                return;
            }
            if self.queued.insert((peer, index)) {
                self.probes.push_back(Probe { peer, index, addr });
            }
        }
    }

    /// The next address to dial, oldest request first.
    pub fn next_probe(&mut self) -> Option<Probe> {
        loop {
            let probe = self.probes.pop_front()?;
            self.queued.remove(&(probe.peer, probe.index));
            // Still wanted: the entry holds this very address, unproven.
            let wanted = self.entries.get(&probe.peer).is_some_and(|e| {
                !e.proven.contains(probe.index)
                    && e.descriptor.descriptor().addrs.get(probe.index) == Some(&probe.addr)
            });
            if wanted {
                return Some(probe);
            }
        }
    }

    /// The outcome of a probe: `reached` when the dial to `probe.addr` succeeded and the
    /// handshake authenticated `probe.peer` there.
    pub fn probed(&mut self, probe: &Probe, reached: bool) {
        if !reached {
            return;
        }
        let Some(e) = self.entries.get_mut(&probe.peer) else {
            return;
        };
        if e.descriptor.descriptor().addrs.get(probe.index) != Some(&probe.addr)
            || e.proven.contains(probe.index)
        {
            return;
        }
        e.proven = e.proven.with(probe.index);
        self.bump(probe.peer);
    }

    /// Marks every address of `peer`'s descriptor proven (a relay's own entry: it listens at
    /// its own addresses).
    pub fn prove_all(&mut self, peer: &PeerId) {
        let Some(e) = self.entries.get_mut(peer) else {
            return;
        };
        if e.proven == AddrSet::ALL {
            return;
        }
        e.proven = AddrSet::ALL;
        self.bump(*peer);
    }

    /// Takes out every descriptor no longer valid at `now`; returns how many went.
    pub fn prune_expired(&mut self, now: u64) -> usize {
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

    /// A listing for a client that last saw `since` in epoch `epoch`: the entries that changed
    /// after it, or all of them when the epoch is not the store's (specs/04 §7.3), leaving out
    /// descriptors no longer valid at `now`. At most [`MAX_LISTING_ENTRIES`] entries and
    /// [`MAX_RESPONSE_LEN`] bytes; `more` says to ask again.
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
            if e.descriptor.descriptor().check_time(now).is_err() {
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

    #[test]
    fn a_new_descriptor_is_held_unproven_and_its_addresses_are_probed() {
        let mut s = store();
        let (_, d) = relay("/ip4/192.0.2.1/tcp/9");
        let peer = d.peer_id();
        assert_eq!(s.offer(d.as_bytes(), NOW), Offered::Added);
        assert_eq!(s.offer(d.as_bytes(), NOW), Offered::Unchanged);
        assert_eq!(s.get(&peer).expect("held").proven, AddrSet::NONE);
        let probe = s.next_probe().expect("a probe");
        assert_eq!(probe.peer, peer);
        assert_eq!(probe.addr.to_string(), "/ip4/192.0.2.1/tcp/9");
        assert!(s.next_probe().is_none());
        s.probed(&probe, true);
        assert!(s.get(&peer).expect("held").proven.contains(0));
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
        assert_eq!(e.first_seen, NOW);
        let p = s.next_probe().expect("the new address is probed");
        assert_eq!(p.addr.to_string(), "/ip4/203.0.113.1/tcp/9");
    }

    #[test]
    fn a_failed_or_outdated_probe_proves_nothing() {
        let mut s = store();
        let k = ed25519::Keypair::generate();
        s.offer_verified(signed(&k, &["/ip4/192.0.2.1/tcp/9"], NOW), NOW);
        let stale = s.next_probe().expect("probe");
        s.probed(&stale, false);
        assert_eq!(s.entries().next().expect("entry").proven, AddrSet::NONE);
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
            let addr = format!("/ip4/198.18.{}.{}/tcp/9", (i % 4), 1 + (i % 200));
            let (_, d) = relay(&addr);
            if s.offer_verified(d, NOW) == Offered::Full {
                refused += 1;
            }
            if i == 200 {
                // Beyond the caps nothing more of these /24s gets in.
                assert_eq!(s.len(), 4 * MAX_STORE_PER_SUBNET);
            }
        }
        assert_eq!(s.len(), 4 * MAX_STORE_PER_SUBNET);
        assert_eq!(refused, 20_000 - 4 * MAX_STORE_PER_SUBNET);
        // An honest relay elsewhere is stored.
        let (_, honest) = relay("/ip4/192.0.2.7/tcp/9");
        assert_eq!(s.offer_verified(honest, NOW), Offered::Added);
    }

    #[test]
    fn the_store_bounds_hold() {
        let mut s = DirStore::new(
            StoreConfig {
                max_entries: 3,
                ..StoreConfig::default()
            },
            1,
        );
        for i in 0..3 {
            let (_, d) = relay(&format!("/ip4/10.{i}.0.1/tcp/1"));
            assert_eq!(s.offer_verified(d, NOW), Offered::Added);
        }
        let (_, d) = relay("/ip4/10.9.0.1/tcp/1");
        assert_eq!(s.offer_verified(d, NOW), Offered::Full);
        // The probe queue is bounded too.
        let mut big = DirStore::new(StoreConfig::default(), 1);
        for i in 0..(MAX_PENDING_PROBES + 50) {
            let (_, d) = relay(&distinct(i));
            big.offer_verified(d, NOW);
        }
        assert_eq!(big.pending_probes(), MAX_PENDING_PROBES);
    }

    #[test]
    fn listings_give_everything_to_a_stranger_and_only_changes_since_to_a_follower() {
        let mut s = store();
        let mut peers = Vec::new();
        for i in 0..5 {
            let (_, d) = relay(&format!("/ip4/10.{i}.0.1/tcp/1"));
            peers.push(d.peer_id());
            s.offer_verified(d, NOW);
        }
        let first = s.listing(0, 0, NOW);
        assert!(first.full && !first.more);
        assert_eq!(first.entries.len(), 5);
        assert_eq!(first.epoch, 77);
        // Nothing changed: an empty change listing at the same position.
        let none = s.listing(first.epoch, first.seq, NOW);
        assert!(!none.full && none.entries.is_empty());
        assert_eq!(none.seq, first.seq);
        // One relay proven: only it comes in the next change listing.
        let p = s.next_probe().expect("probe");
        s.probed(&p, true);
        let changes = s.listing(first.epoch, first.seq, NOW);
        assert!(!changes.full);
        assert_eq!(changes.entries.len(), 1);
        assert!(changes.entries[0].proven.contains(0));
        // Another epoch (the server restarted): everything again.
        assert!(s.listing(12345, first.seq, NOW).full);
    }

    #[test]
    fn a_long_listing_is_paged() {
        let mut s = store();
        for i in 0..(MAX_LISTING_ENTRIES + 10) {
            let (_, d) = relay(&distinct(i));
            s.offer_verified(d, NOW);
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
        let (_, d) = relay("/ip4/10.0.0.1/tcp/1");
        s.offer_verified(d, NOW);
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
}
