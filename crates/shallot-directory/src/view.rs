//! The client's view of the network: verified descriptors under Sybil caps (specs/04 §6).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use libp2p_identity::PeerId;
use multiaddr::Multiaddr;

use crate::descriptor::SignedDescriptor;
use crate::err::DirectoryError;
use crate::subnet::{Block, Subnet};

/// Default most relays per IPv4 /24 or IPv6 /48 in a view (specs/04 §6.3).
pub const DEFAULT_MAX_RELAYS_PER_SUBNET: usize = 2;
/// Default most relays per IPv4 /16 or IPv6 /32 in a view (specs/04 §6.3): one /32 (or a few
/// /24s of one provider) cannot fill the view.
pub const DEFAULT_MAX_RELAYS_PER_BLOCK: usize = 8;
/// Hard bound on the relays one view holds, whatever the DHT serves.
pub const MAX_VIEW_RELAYS: usize = 10_000;
/// How long a view remembers when it first saw a relay after the relay's last descriptor
/// expired (specs/04 §6.5): long enough that a client which is off for days, or a relay which
/// is down for days, does not start its guard age (specs/05 §5.2) again from zero.
pub const SIGHTING_RETENTION_SECS: u64 = 30 * 24 * 3600;

/// Settings of a [`NetworkView`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewConfig {
    /// Most relays per IPv4 /24 or IPv6 /48.
    pub max_relays_per_subnet: usize,
    /// Most relays per IPv4 /16 or IPv6 /32.
    pub max_relays_per_block: usize,
    /// Admit relays that list no IP address (only for in-memory test networks).
    pub allow_non_ip_relays: bool,
    /// Most relays in the view.
    pub max_relays: usize,
}

impl Default for ViewConfig {
    fn default() -> Self {
        Self {
            max_relays_per_subnet: DEFAULT_MAX_RELAYS_PER_SUBNET,
            max_relays_per_block: DEFAULT_MAX_RELAYS_PER_BLOCK,
            allow_non_ip_relays: false,
            max_relays: MAX_VIEW_RELAYS,
        }
    }
}

/// A set of a descriptor's addresses, by index (a descriptor lists at most 8, specs/04 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AddrSet(pub u8);

impl AddrSet {
    /// Every address.
    pub const ALL: Self = Self(u8::MAX);
    /// No address.
    pub const NONE: Self = Self(0);

    /// Whether address `i` is in the set.
    pub fn contains(self, i: usize) -> bool {
        i < 8 && self.0 & (1 << i) != 0
    }

    /// The set with address `i` added.
    pub fn with(self, i: usize) -> Self {
        if i < 8 { Self(self.0 | (1 << i)) } else { self }
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// A relay in the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewEntry {
    /// The newest verified descriptor.
    pub descriptor: SignedDescriptor,
    /// When this client first saw the relay (UNIX seconds); guards are chosen among old ones.
    pub first_seen: u64,
    /// The descriptor's addresses that were proven: a node dialed them and the Noise
    /// handshake authenticated the relay's PeerId there (specs/04 §6.3). Only these count for
    /// the caps, and only these are dialed.
    pub proven: AddrSet,
}

impl ViewEntry {
    /// The descriptor's proven addresses, the only ones a circuit may reach the relay at.
    pub fn proven_addrs(&self) -> impl Iterator<Item = &Multiaddr> + '_ {
        self.descriptor
            .descriptor()
            .addrs
            .iter()
            .enumerate()
            .filter(|(i, _)| self.proven.contains(*i))
            .map(|(_, a)| a)
    }

    /// The IP addresses of the proven addresses.
    pub fn proven_ips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.proven_addrs().filter_map(crate::descriptor::ip_of)
    }
}

/// A relay the view knew and no longer holds: when it was first seen, and until when its last
/// descriptor was valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sighting {
    /// When this client first saw the relay (UNIX seconds).
    pub first_seen: u64,
    /// When the last descriptor the view held for it expired (UNIX seconds).
    pub last_valid: u64,
}

impl Sighting {
    /// Whether a view still keeps this sighting at `now` ([`SIGHTING_RETENTION_SECS`]).
    pub fn kept_at(&self, now: u64) -> bool {
        self.last_valid.saturating_add(SIGHTING_RETENTION_SECS) > now
    }
}

impl ViewEntry {
    /// What the view remembers of this relay once it leaves.
    fn sighting(&self) -> Sighting {
        Sighting {
            first_seen: self.first_seen,
            last_valid: self.descriptor.descriptor().expires_at,
        }
    }
}

/// What [`NetworkView::offer`] did with a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A relay new to the view.
    Added,
    /// A newer descriptor for a relay already in the view.
    Updated,
    /// Not newer than what the view holds.
    Unchanged,
    /// Refused: a subnet of the relay is full (specs/04 §6.3).
    SubnetFull,
    /// Refused: the relay lists no IP address.
    NoIpAddress,
    /// Refused: the view is full.
    ViewFull,
    /// Left out: the descriptor says the relay hibernates (specs/04 §3.2); an older
    /// descriptor of it left the view.
    Hibernating,
}

/// The verified relays a client knows, with Sybil caps, ready for path selection.
#[derive(Debug, Clone, Default)]
pub struct NetworkView {
    config: ViewConfig,
    relays: BTreeMap<PeerId, ViewEntry>,
    subnet_load: HashMap<Subnet, usize>,
    block_load: HashMap<Block, usize>,
    /// Relays that left the view, so that their first-seen time survives their absence;
    /// at most [`MAX_VIEW_RELAYS`].
    departed: HashMap<PeerId, Sighting>,
}

impl NetworkView {
    /// An empty view.
    pub fn new(config: ViewConfig) -> Self {
        Self {
            config,
            relays: BTreeMap::new(),
            subnet_load: HashMap::new(),
            block_load: HashMap::new(),
            departed: HashMap::new(),
        }
    }

    /// The view's settings.
    pub fn config(&self) -> &ViewConfig {
        &self.config
    }

    /// Number of relays in the view.
    pub fn len(&self) -> usize {
        self.relays.len()
    }

    /// Whether the view holds no relay.
    pub fn is_empty(&self) -> bool {
        self.relays.is_empty()
    }

    /// The entry of `peer`, if the view holds it.
    pub fn get(&self, peer: &PeerId) -> Option<&ViewEntry> {
        self.relays.get(peer)
    }

    /// All entries, in PeerId order.
    pub fn entries(&self) -> impl Iterator<Item = &ViewEntry> {
        self.relays.values()
    }

    /// Relays that left the view and are still remembered, with their sightings.
    pub fn departed(&self) -> impl Iterator<Item = (&PeerId, &Sighting)> {
        self.departed.iter()
    }

    /// Offers a descriptor whose every address is proven (see [`NetworkView::offer_proven`]).
    pub fn offer(&mut self, descriptor: SignedDescriptor, first_seen: u64) -> Admission {
        self.offer_proven(descriptor, first_seen, AddrSet::ALL)
    }

    /// Offers a descriptor that the caller has already verified (any [`SignedDescriptor`] is),
    /// with the set of its addresses that were proven; only those count for the caps.
    /// `first_seen` is used only if the relay is new to the view, and then only if the view
    /// does not remember seeing it earlier.
    pub fn offer_proven(
        &mut self,
        descriptor: SignedDescriptor,
        first_seen: u64,
        proven: AddrSet,
    ) -> Admission {
        let peer = descriptor.peer_id();
        if let Some(entry) = self.relays.get(&peer) {
            if !crate::records::is_newer(&descriptor, &entry.descriptor) {
                return Admission::Unchanged;
            }
            if descriptor.descriptor().flags.is_hibernating() {
                self.remove(&peer);
                return Admission::Hibernating;
            }
            let first_seen = entry.first_seen;
            // A new descriptor may list other addresses: re-admit it under the caps.
            let old = self.take(&peer);
            return match self.admit(peer, descriptor, first_seen, proven) {
                Admission::Added => Admission::Updated,
                refused => {
                    if let Some(old) = old {
                        self.remember(peer, old.sighting());
                    }
                    refused
                }
            };
        }
        if descriptor.descriptor().flags.is_hibernating() {
            return Admission::Hibernating;
        }
        self.admit(peer, descriptor, first_seen, proven)
    }

    /// The /24s (/48s) and /16s (/32s) an entry's proven addresses take a cap slot in.
    fn networks(entry: &ViewEntry) -> (Vec<Subnet>, Vec<Block>) {
        let mut subnets: Vec<Subnet> = entry.proven_ips().map(Subnet::of).collect();
        let mut blocks: Vec<Block> = entry.proven_ips().map(Block::of).collect();
        subnets.sort_unstable();
        subnets.dedup();
        blocks.sort_unstable();
        blocks.dedup();
        (subnets, blocks)
    }

    fn admit(
        &mut self,
        peer: PeerId,
        descriptor: SignedDescriptor,
        first_seen: u64,
        proven: AddrSet,
    ) -> Admission {
        if self.relays.len() >= self.config.max_relays {
            return Admission::ViewFull;
        }
        let entry = ViewEntry {
            descriptor,
            first_seen,
            proven,
        };
        let (subnets, blocks) = Self::networks(&entry);
        if subnets.is_empty() && !self.config.allow_non_ip_relays {
            return Admission::NoIpAddress;
        }
        let subnet_full = subnets.iter().any(|subnet| {
            self.subnet_load.get(subnet).copied().unwrap_or(0) >= self.config.max_relays_per_subnet
        });
        let block_full = blocks.iter().any(|block| {
            self.block_load.get(block).copied().unwrap_or(0) >= self.config.max_relays_per_block
        });
        if subnet_full || block_full {
            return Admission::SubnetFull;
        }
        for subnet in subnets {
            *self.subnet_load.entry(subnet).or_default() += 1;
        }
        for block in blocks {
            *self.block_load.entry(block).or_default() += 1;
        }
        let first_seen = match self.departed.remove(&peer) {
            Some(earlier) => earlier.first_seen.min(first_seen),
            None => first_seen,
        };
        self.relays.insert(
            peer,
            ViewEntry {
                first_seen,
                ..entry
            },
        );
        Admission::Added
    }

    /// Removes `peer` from the view and remembers when it first saw it.
    pub fn remove(&mut self, peer: &PeerId) -> Option<ViewEntry> {
        let entry = self.take(peer)?;
        self.remember(*peer, entry.sighting());
        Some(entry)
    }

    /// A copy of the view's relays without `left_out`, for one decision such as a path that
    /// must avoid some relays; it carries no sightings (nothing is remembered from it).
    pub fn without(&self, left_out: &[PeerId]) -> NetworkView {
        let mut copy = NetworkView {
            config: self.config.clone(),
            relays: self.relays.clone(),
            subnet_load: self.subnet_load.clone(),
            block_load: self.block_load.clone(),
            departed: HashMap::new(),
        };
        for peer in left_out {
            copy.take(peer);
        }
        copy
    }

    /// Remembers that `peer` was seen, keeping the earliest first sighting. When the table is
    /// full the sighting that ended longest ago makes room.
    pub fn remember(&mut self, peer: PeerId, sighting: Sighting) {
        if let Some(entry) = self.relays.get_mut(&peer) {
            entry.first_seen = entry.first_seen.min(sighting.first_seen);
            return;
        }
        if let Some(known) = self.departed.get_mut(&peer) {
            known.first_seen = known.first_seen.min(sighting.first_seen);
            known.last_valid = known.last_valid.max(sighting.last_valid);
            return;
        }
        if self.departed.len() >= MAX_VIEW_RELAYS {
            let oldest = self
                .departed
                .iter()
                .min_by_key(|(peer, s)| (s.last_valid, **peer))
                .map(|(peer, s)| (*peer, s.last_valid));
            match oldest {
                Some((_, last_valid)) if last_valid >= sighting.last_valid => return,
                Some((oldest, _)) => {
                    self.departed.remove(&oldest);
                }
                None => return,
            }
        }
        self.departed.insert(peer, sighting);
    }

    /// Removes `peer` without remembering it (a newer descriptor is about to replace it).
    fn take(&mut self, peer: &PeerId) -> Option<ViewEntry> {
        let entry = self.relays.remove(peer)?;
        let (subnets, blocks) = Self::networks(&entry);
        release(&mut self.subnet_load, subnets);
        release(&mut self.block_load, blocks);
        Some(entry)
    }

    /// Drops every relay whose descriptor is no longer valid at `now` (specs/04 §6.2), keeping
    /// its sighting, and forgets sightings older than [`SIGHTING_RETENTION_SECS`]; returns how
    /// many relays left.
    pub fn prune_expired(&mut self, now: u64) -> usize {
        self.departed.retain(|_, s| s.kept_at(now));
        let expired: Vec<PeerId> = self
            .relays
            .iter()
            .filter(|(_, entry)| entry.descriptor.descriptor().check_time(now).is_err())
            .map(|(peer, _)| *peer)
            .collect();
        for peer in &expired {
            self.remove(peer);
        }
        expired.len()
    }

    /// Offers many entries at once, oldest first (by first-seen, then PeerId), so a burst of new
    /// relays in a subnet cannot push out the ones already known there (specs/04 §6.3). Entries
    /// are verified again at `now`; those that fail are returned with their error.
    pub fn offer_all(
        &mut self,
        entries: Vec<(Vec<u8>, u64)>,
        now: u64,
    ) -> Vec<(Admission, Option<DirectoryError>)> {
        let mut verified = Vec::with_capacity(entries.len());
        let mut outcomes = Vec::new();
        for (bytes, first_seen) in entries {
            let signed = match SignedDescriptor::verify_ignoring_time(&bytes) {
                Ok(signed) => signed,
                Err(err) => {
                    outcomes.push((Admission::Unchanged, Some(err)));
                    continue;
                }
            };
            if let Err(err) = signed.descriptor().check_time(now) {
                // An expired descriptor still proves, by its signature, that this client saw the
                // relay then: keep the sighting, not the relay.
                let sighting = Sighting {
                    first_seen,
                    last_valid: signed.descriptor().expires_at,
                };
                if sighting.kept_at(now) {
                    self.remember(signed.peer_id(), sighting);
                }
                outcomes.push((Admission::Unchanged, Some(err)));
                continue;
            }
            verified.push((signed, first_seen));
        }
        verified.sort_by_key(|(signed, first_seen)| (*first_seen, signed.peer_id()));
        for (signed, first_seen) in verified {
            outcomes.push((self.offer(signed, first_seen), None));
        }
        outcomes
    }
}

/// Gives back one cap slot in each of `keys`.
fn release<K: std::hash::Hash + Eq>(load: &mut HashMap<K, usize>, keys: Vec<K>) {
    for key in keys {
        if let Some(n) = load.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                load.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use libp2p_identity::ed25519;

    use super::*;
    use crate::descriptor::RelayFlags;
    use crate::descriptor::tests::{NOW, sample};

    fn relay_at(addr: &str) -> SignedDescriptor {
        let keypair = ed25519::Keypair::generate();
        sample(&keypair, addr).sign(&keypair).expect("sign")
    }

    #[test]
    fn subnet_cap_per_ipv4_slash24() {
        let mut view = NetworkView::new(ViewConfig::default());
        assert_eq!(
            view.offer(relay_at("/ip4/192.0.2.1/tcp/1"), 1),
            Admission::Added
        );
        assert_eq!(
            view.offer(relay_at("/ip4/192.0.2.2/tcp/1"), 1),
            Admission::Added
        );
        assert_eq!(
            view.offer(relay_at("/ip4/192.0.2.3/tcp/1"), 1),
            Admission::SubnetFull
        );
        assert_eq!(
            view.offer(relay_at("/ip4/192.0.3.1/tcp/1"), 1),
            Admission::Added
        );
        assert_eq!(view.len(), 3);
    }

    #[test]
    fn subnet_cap_per_ipv6_slash48_and_mapped_v4() {
        let mut view = NetworkView::new(ViewConfig {
            max_relays_per_subnet: 1,
            ..ViewConfig::default()
        });
        assert_eq!(
            view.offer(relay_at("/ip6/2001:db8:1:1::1/tcp/1"), 1),
            Admission::Added
        );
        assert_eq!(
            view.offer(relay_at("/ip6/2001:db8:1:2::1/tcp/1"), 1),
            Admission::SubnetFull
        );
        assert_eq!(
            view.offer(relay_at("/ip6/2001:db8:2::1/tcp/1"), 1),
            Admission::Added
        );
        assert_eq!(
            view.offer(relay_at("/ip4/198.51.100.7/tcp/1"), 1),
            Admission::Added
        );
        assert_eq!(
            view.offer(relay_at("/ip6/::ffff:198.51.100.9/tcp/1"), 1),
            Admission::SubnetFull
        );
    }

    #[test]
    fn block_cap_per_ipv4_slash16_and_ipv6_slash32() {
        let mut view = NetworkView::new(ViewConfig {
            max_relays_per_block: 3,
            ..ViewConfig::default()
        });
        for third in 0..3 {
            let addr = format!("/ip4/203.0.{third}.1/tcp/1");
            assert_eq!(view.offer(relay_at(&addr), 1), Admission::Added, "{addr}");
        }
        assert_eq!(
            view.offer(relay_at("/ip4/203.0.9.1/tcp/1"), 1),
            Admission::SubnetFull,
            "a fourth /24 of the same /16"
        );
        for i in 0..3 {
            let addr = format!("/ip6/2001:db8:{i}::1/tcp/1");
            assert_eq!(view.offer(relay_at(&addr), 1), Admission::Added, "{addr}");
        }
        assert_eq!(
            view.offer(relay_at("/ip6/2001:db8:77::1/tcp/1"), 1),
            Admission::SubnetFull,
            "a fourth /48 of the same /32"
        );
    }

    #[test]
    fn ipv6_forms_of_one_ipv4_host_share_its_cap() {
        let mut view = NetworkView::new(ViewConfig {
            max_relays_per_subnet: 1,
            ..ViewConfig::default()
        });
        assert_eq!(
            view.offer(relay_at("/ip4/198.51.100.7/tcp/1"), 1),
            Admission::Added
        );
        for form in [
            "2002:c633:6407::1",
            "64:ff9b::c633:6407",
            "2001:0:4136:e378:8000:63bf:39cc:9bf8",
        ] {
            let addr = format!("/ip6/{form}/tcp/1");
            assert_eq!(
                view.offer(relay_at(&addr), 1),
                Admission::SubnetFull,
                "{form}"
            );
        }
    }

    #[test]
    fn only_proven_addresses_take_cap_slots_and_are_dialed() {
        let mut view = NetworkView::new(ViewConfig {
            max_relays_per_subnet: 1,
            ..ViewConfig::default()
        });
        // A squatter signs an address inside an honest relay's /24 where it does not listen
        // (unproven), and one where it does (proven).
        let keypair = ed25519::Keypair::generate();
        let mut d = sample(&keypair, "/ip4/192.0.2.50/tcp/1");
        d.addrs
            .push("/ip4/203.0.113.9/tcp/1".parse().expect("addr"));
        let squatter = d.sign(&keypair).expect("sign");
        assert_eq!(
            view.offer_proven(squatter, 1, AddrSet::NONE.with(1)),
            Admission::Added
        );
        let entry = view.entries().next().expect("entry");
        let dialed: Vec<String> = entry.proven_addrs().map(ToString::to_string).collect();
        assert_eq!(dialed, vec!["/ip4/203.0.113.9/tcp/1".to_owned()]);
        // The honest relay of 192.0.2.0/24 still gets its slot.
        assert_eq!(
            view.offer(relay_at("/ip4/192.0.2.1/tcp/1"), 1),
            Admission::Added
        );
        // A descriptor none of whose addresses is proven is not admitted.
        assert_eq!(
            view.offer_proven(relay_at("/ip4/198.18.0.1/tcp/1"), 1, AddrSet::NONE),
            Admission::NoIpAddress
        );
    }

    #[test]
    fn relays_without_ip_need_the_test_setting() {
        let mut view = NetworkView::new(ViewConfig::default());
        assert_eq!(view.offer(relay_at("/memory/7"), 1), Admission::NoIpAddress);
        let mut test_view = NetworkView::new(ViewConfig {
            allow_non_ip_relays: true,
            ..ViewConfig::default()
        });
        assert_eq!(test_view.offer(relay_at("/memory/7"), 1), Admission::Added);
    }

    #[test]
    fn a_hibernating_relay_leaves_the_view_and_its_slot_until_it_wakes() {
        let keypair = ed25519::Keypair::generate();
        let awake = sample(&keypair, "/ip4/192.0.2.1/tcp/1");
        let mut asleep = awake.clone();
        asleep.published_at += 60;
        asleep.flags = RelayFlags(RelayFlags::HIBERNATING);
        let mut woken = asleep.clone();
        woken.published_at += 60;
        woken.flags = RelayFlags::default();
        let sign = |d: &crate::descriptor::Descriptor| d.sign(&keypair).expect("sign");
        let peer = sign(&awake).peer_id();
        let mut view = NetworkView::new(ViewConfig {
            max_relays_per_subnet: 1,
            ..ViewConfig::default()
        });
        assert_eq!(view.offer(sign(&awake), 5), Admission::Added);
        assert_eq!(view.offer(sign(&asleep), 6), Admission::Hibernating);
        assert!(view.get(&peer).is_none());
        // Its /24 slot is free while it sleeps, a hibernating descriptor is never admitted, and
        // its first sighting is remembered for when it wakes.
        let other = relay_at("/ip4/192.0.2.2/tcp/1");
        assert_eq!(view.offer(other.clone(), 7), Admission::Added);
        view.remove(&other.peer_id());
        assert_eq!(view.offer(sign(&asleep), 8), Admission::Hibernating);
        assert!(view.get(&peer).is_none());
        assert_eq!(view.offer(sign(&woken), 9), Admission::Added);
        assert_eq!(view.get(&peer).expect("back").first_seen, 5);
    }

    #[test]
    fn newer_descriptor_replaces_older_and_keeps_first_seen() {
        let keypair = ed25519::Keypair::generate();
        let old = sample(&keypair, "/ip4/192.0.2.1/tcp/1");
        let mut new = old.clone();
        new.published_at += 60;
        new.addrs = vec!["/ip4/203.0.113.1/tcp/1".parse().expect("addr")];
        let mut view = NetworkView::new(ViewConfig::default());
        assert_eq!(
            view.offer(old.sign(&keypair).expect("sign"), 5),
            Admission::Added
        );
        assert_eq!(
            view.offer(old.sign(&keypair).expect("sign"), 6),
            Admission::Unchanged
        );
        let new = new.sign(&keypair).expect("sign");
        let peer = new.peer_id();
        assert_eq!(view.offer(new, 9), Admission::Updated);
        let entry = view.get(&peer).expect("entry");
        assert_eq!(entry.first_seen, 5);
        // The old /24 is free again.
        assert_eq!(
            view.offer(relay_at("/ip4/192.0.2.2/tcp/1"), 1),
            Admission::Added
        );
        assert_eq!(
            view.offer(relay_at("/ip4/192.0.2.3/tcp/1"), 1),
            Admission::Added
        );
    }

    /// A relay that is gone for a while (its descriptor expired, or the client was off) keeps
    /// the age its guard eligibility counts from (specs/04 §6.5).
    #[test]
    fn a_relay_that_comes_back_keeps_its_first_seen() {
        let keypair = ed25519::Keypair::generate();
        let old = sample(&keypair, "/ip4/192.0.2.1/tcp/1");
        let peer = old.peer_id();
        let mut view = NetworkView::new(ViewConfig::default());
        view.offer(old.sign(&keypair).expect("sign"), NOW - 10 * 86_400);
        let later = NOW + 2 * 86_400;
        assert_eq!(view.prune_expired(later), 1);
        assert!(view.get(&peer).is_none());
        let mut back = old.clone();
        back.published_at = later;
        back.expires_at = later + 3600;
        assert_eq!(
            view.offer(back.sign(&keypair).expect("sign"), later),
            Admission::Added
        );
        assert_eq!(view.get(&peer).expect("back").first_seen, NOW - 10 * 86_400);
        assert_eq!(view.departed().count(), 0);
    }

    #[test]
    fn a_relay_refused_on_update_is_remembered() {
        let keypair = ed25519::Keypair::generate();
        let old = sample(&keypair, "/ip4/192.0.2.1/tcp/1");
        let peer = old.peer_id();
        let mut view = NetworkView::new(ViewConfig::default());
        view.offer(relay_at("/ip4/198.51.100.1/tcp/1"), NOW);
        view.offer(relay_at("/ip4/198.51.100.2/tcp/1"), NOW);
        view.offer(old.sign(&keypair).expect("sign"), NOW - 86_400);
        // It moves into a full /24: out of the view, but not forgotten.
        let mut moved = old.clone();
        moved.published_at += 60;
        moved.addrs = vec!["/ip4/198.51.100.3/tcp/1".parse().expect("addr")];
        assert_eq!(
            view.offer(moved.sign(&keypair).expect("sign"), NOW),
            Admission::SubnetFull
        );
        assert!(view.get(&peer).is_none());
        let remembered: Vec<_> = view.departed().filter(|(p, _)| **p == peer).collect();
        assert_eq!(remembered.len(), 1);
        assert_eq!(remembered[0].1.first_seen, NOW - 86_400);
    }

    #[test]
    fn a_view_without_some_relays_remembers_nothing() {
        let mut view = NetworkView::new(ViewConfig::default());
        let a = relay_at("/ip4/192.0.2.1/tcp/1");
        let b = relay_at("/ip4/192.0.2.2/tcp/1");
        let (peer_a, peer_b) = (a.peer_id(), b.peer_id());
        view.offer(a, NOW);
        view.offer(b, NOW);
        view.remember(
            PeerId::random(),
            Sighting {
                first_seen: 1,
                last_valid: NOW,
            },
        );
        let mut copy = view.without(&[peer_a]);
        assert!(copy.get(&peer_a).is_none());
        assert!(copy.get(&peer_b).is_some());
        assert_eq!(copy.departed().count(), 0);
        // The /24 slot peer_a held is free in the copy.
        assert_eq!(
            copy.offer(relay_at("/ip4/192.0.2.3/tcp/1"), NOW),
            Admission::Added
        );
        assert_eq!(view.len(), 2);
        assert_eq!(view.departed().count(), 1);
    }

    #[test]
    fn sightings_are_forgotten_after_the_retention() {
        let mut view = NetworkView::new(ViewConfig::default());
        view.offer(relay_at("/ip4/192.0.2.1/tcp/1"), NOW);
        let expired_at = NOW + crate::descriptor::DESCRIPTOR_LIFETIME_SECS;
        view.prune_expired(expired_at);
        assert_eq!(view.departed().count(), 1);
        view.prune_expired(expired_at + SIGHTING_RETENTION_SECS - 1);
        assert_eq!(view.departed().count(), 1);
        view.prune_expired(expired_at + SIGHTING_RETENTION_SECS);
        assert_eq!(view.departed().count(), 0);
    }

    #[test]
    fn the_sighting_table_is_bounded_and_keeps_the_most_recent() {
        let mut view = NetworkView::new(ViewConfig::default());
        let peers: Vec<PeerId> = (0..=MAX_VIEW_RELAYS).map(|_| PeerId::random()).collect();
        for (i, peer) in peers.iter().enumerate() {
            let sighting = Sighting {
                first_seen: 1,
                last_valid: 1_000 + i as u64,
            };
            view.remember(*peer, sighting);
        }
        assert_eq!(view.departed().count(), MAX_VIEW_RELAYS);
        assert!(view.departed().all(|(peer, _)| *peer != peers[0]));
        // An older sighting than all it holds does not push a newer one out.
        view.remember(
            PeerId::random(),
            Sighting {
                first_seen: 1,
                last_valid: 5,
            },
        );
        assert!(view.departed().all(|(_, s)| s.last_valid >= 1_001));
    }

    #[test]
    fn prune_drops_expired_relays() {
        let mut view = NetworkView::new(ViewConfig::default());
        view.offer(relay_at("/ip4/192.0.2.1/tcp/1"), 1);
        assert_eq!(view.prune_expired(NOW + 1), 0);
        assert_eq!(view.prune_expired(NOW + 3 * 3600), 1);
        assert!(view.is_empty());
        // Its subnet slot is released.
        view.offer(relay_at("/ip4/192.0.2.2/tcp/1"), 1);
        view.offer(relay_at("/ip4/192.0.2.3/tcp/1"), 1);
        assert_eq!(view.len(), 2);
    }

    #[test]
    fn offer_all_prefers_long_known_relays_in_a_full_subnet() {
        let veteran = relay_at("/ip4/192.0.2.1/tcp/1");
        let veteran_peer = veteran.peer_id();
        let newcomers: Vec<(Vec<u8>, u64)> = (2..10)
            .map(|i| {
                (
                    relay_at(&format!("/ip4/192.0.2.{i}/tcp/1"))
                        .as_bytes()
                        .to_vec(),
                    100,
                )
            })
            .collect();
        let mut entries = newcomers;
        entries.push((veteran.as_bytes().to_vec(), 1));
        entries.push((b"forged".to_vec(), 0));
        let mut view = NetworkView::new(ViewConfig::default());
        let outcomes = view.offer_all(entries, NOW);
        assert_eq!(view.len(), 2);
        assert!(view.get(&veteran_peer).is_some());
        assert_eq!(outcomes.iter().filter(|(_, e)| e.is_some()).count(), 1);
    }

    #[test]
    fn view_size_is_bounded() {
        let mut view = NetworkView::new(ViewConfig {
            max_relays: 3,
            ..ViewConfig::default()
        });
        for i in 0..3 {
            assert_eq!(
                view.offer(relay_at(&format!("/ip4/10.{i}.0.1/tcp/1")), 1),
                Admission::Added
            );
        }
        assert_eq!(
            view.offer(relay_at("/ip4/10.9.0.1/tcp/1"), 1),
            Admission::ViewFull
        );
    }
}
