//! How a client builds its view from the listings of several directory sources (specs/04
//! §6.1). No single source decides what the client knows:
//!
//! - the sources are reached in distinct /16s (IPv6 /32s) of the address actually connected to,
//!   at most one per block: an adversary with thousands of PeerIds owns most of the key space
//!   but few blocks;
//! - the view takes the **union** of what they list, so a source that leaves relays out hides
//!   nothing another source lists;
//! - every descriptor is verified; a source that lists more than [`MAX_SOURCE_INVALID`] invalid
//!   ones is dropped whole, and one source's contribution is bounded by the view's size, so a
//!   lying source costs at most one bounded listing to read and a bounded number of signature
//!   checks;
//! - where the caps leave room for fewer relays than are listed in a subnet, relays listed by
//!   more sources come first, then those whose addresses more of them proved, then those the
//!   sources have held longest: descriptors only an adversary's sources list (squatting an honest
//!   relay's /24 with addresses where nothing listens) lose to the honest relay every honest
//!   source lists.
//!
//! - a relay that no more than half of the sources list, or that no source but itself claims
//!   to have proved, is admitted only once the client has reached it at its address: a lying
//!   source can list thousands of made-up relays, validly signed, each in a subnet of its own;
//!
//! - where that still leaves more relays claiming a subnet than its cap (the adversary's sources
//!   may be as many as the honest ones, and lie about first-seen times), the client **verifies**
//!   the contenders itself, in that order, dialing the address each claims
//!   ([`Gathered::contests`]); in a contested subnet only relays the client reached are
//!   admitted, and one it could not reach is not admitted anywhere.
//!
//! Disagreements (a relay some sources list and others do not) are counted, not resolved by
//! vote.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use libp2p_identity::PeerId;
use multiaddr::Multiaddr;

use crate::descriptor::{SignedDescriptor, ip_of};
use crate::dirproto::ListingEntry;
use crate::dirstore::Networks;
use crate::err::DirectoryError;
use crate::records::is_newer;
use crate::subnet::{Block, Subnet};
use crate::view::{AddrSet, Admission, MAX_VIEW_RELAYS, NetworkView};

/// Invalid entries after which a source is dropped and nothing it listed is used.
pub const MAX_SOURCE_INVALID: usize = 16;
/// Entries past their lifetime after which a source is dropped: an honest source lists only
/// valid ones (a few may expire while its listing travels, or by clock skew).
pub const MAX_SOURCE_STALE: usize = 64;
/// Most distinct relays considered in one assembly, over all sources.
pub const MAX_CANDIDATES: usize = 2 * MAX_VIEW_RELAYS;
/// Most verdicts a client remembers (oldest forgotten first).
pub const MAX_VERDICTS: usize = 4096;
/// How long a verdict holds: a relay that was unreachable may come back.
pub const VERDICT_LIFETIME_SECS: u64 = 3600;
/// Most relays reported down that one assembly remembers.
pub const MAX_DOWN_REPORTS: usize = 1024;
/// Most relays reported down that the client dials after one refresh.
pub const MAX_DOWN_CHECKS: usize = 64;

/// What one source listed.
#[derive(Debug, Clone)]
pub struct SourceListing {
    /// The source.
    pub source: PeerId,
    /// The /16 (/32) of the address the client reached it at.
    pub block: Block,
    /// Its entries.
    pub entries: Vec<ListingEntry>,
}

/// What an assembly did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssemblyReport {
    /// Sources whose listings were used.
    pub sources_used: usize,
    /// Sources left out: a second one in a block, or one that listed too many invalid entries.
    pub sources_dropped: Vec<PeerId>,
    /// Distinct relays listed (by the sources used).
    pub candidates: usize,
    /// Relays new to the view.
    pub added: usize,
    /// Relays whose descriptor was replaced by a newer one.
    pub updated: usize,
    /// Relays the view's caps or its size refused.
    pub refused: usize,
    /// Entries that did not verify.
    pub invalid: usize,
    /// Correctly signed entries past their lifetime.
    pub stale: usize,
    /// Relays listed by some of the sources used but not by all.
    pub disagreements: usize,
    /// Entries left out because [`MAX_CANDIDATES`] or a source's bound was reached.
    pub over_bounds: usize,
    /// Relays in a contested subnet the client has not verified yet (not admitted this time).
    pub unverified: usize,
    /// Relays the client dialed at the address they claim and did not reach there.
    pub unreachable: usize,
    /// Relays no source but themselves proved an address of, not yet verified by the client.
    pub unproven: usize,
    /// Relays listed by no more than half of the sources used, not yet verified by the client.
    pub minority: usize,
    /// Relays some source listed as down (no address proven).
    pub reported_down: usize,
    /// Relays whose newest descriptor says they hibernate: left out (specs/04 §6.2).
    pub hibernating: usize,
}

/// What the client found when it dialed relays at the addresses they claim, keyed by PeerId
/// and address, each valid for [`VERDICT_LIFETIME_SECS`]; at most [`MAX_VERDICTS`].
#[derive(Debug, Clone, Default)]
pub struct Verdicts {
    found: HashMap<(PeerId, Multiaddr), (bool, u64)>,
    order: VecDeque<(PeerId, Multiaddr)>,
}

impl Verdicts {
    /// No verdict.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `peer` was (`reached`) or was not found at `addr` at time `now`.
    pub fn record(&mut self, peer: PeerId, addr: Multiaddr, reached: bool, now: u64) {
        let key = (peer, addr);
        if self.found.insert(key.clone(), (reached, now)).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > MAX_VERDICTS {
            if let Some(old) = self.order.pop_front() {
                self.found.remove(&old);
            }
        }
    }

    /// The verdict on `peer` at `addr`, if one holds at `now`.
    pub fn get(&self, peer: &PeerId, addr: &Multiaddr, now: u64) -> Option<bool> {
        self.found
            .get(&(*peer, addr.clone()))
            .filter(|(_, at)| now.saturating_sub(*at) < VERDICT_LIFETIME_SECS)
            .map(|(reached, _)| *reached)
    }

    /// Verdicts held.
    pub fn len(&self) -> usize {
        self.found.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }
}

struct Candidate {
    best: SignedDescriptor,
    /// Sources (indices) that listed the relay.
    supporters: HashSet<usize>,
    /// Per address, the sources that claim to have proved it.
    proofs: HashMap<Multiaddr, HashSet<usize>>,
    /// The sources' first-seen times.
    first_seen: Vec<u64>,
}

/// A relay as the sources describe it, ready to be offered.
struct Ranked {
    peer: PeerId,
    best: SignedDescriptor,
    support: usize,
    /// The addresses it takes cap slots with: those the sources proved, or all if none.
    claimed: AddrSet,
    /// How many of them the sources proved.
    proofs: u32,
    /// The sources' median first-seen time.
    first_seen: u64,
    subnets: Vec<Subnet>,
    blocks: Vec<Block>,
}

impl Ranked {
    /// Whether the client must dial it before admitting it: no other source proved an
    /// address of it, no more than half of the `sources` used list it (one lying source, or
    /// several in as many blocks, could list any number of made-up relays), or it contends
    /// for a full subnet or block.
    fn needs_verdict(
        &self,
        subnets: &HashSet<Subnet>,
        blocks: &HashSet<Block>,
        sources: usize,
    ) -> bool {
        self.proofs == 0
            || !self.has_majority(sources)
            || self.subnets.iter().any(|s| subnets.contains(s))
            || self.blocks.iter().any(|b| blocks.contains(b))
    }

    /// Whether more than half of the `sources` used list it.
    fn has_majority(&self, sources: usize) -> bool {
        2 * self.support > sources
    }

    /// The address the client dials to verify it: its first claimed one.
    fn verify_addr(&self) -> Option<&Multiaddr> {
        self.best
            .descriptor()
            .addrs
            .iter()
            .enumerate()
            .find(|(i, a)| self.claimed.contains(*i) && ip_of(a).is_some())
            .map(|(_, a)| a)
    }
}

/// The union of several sources' listings, verified and ranked, before it is offered to a view
/// (see the module documentation).
pub struct Gathered {
    ranked: Vec<Ranked>,
    /// Relays a source listed as down: the client checks those in its view itself.
    reported_down: BTreeSet<PeerId>,
    report: AssemblyReport,
    sources_used: usize,
    now: u64,
}

/// Verifies and ranks `listings` at time `now`.
pub fn gather(listings: Vec<SourceListing>, now: u64) -> Gathered {
    let mut report = AssemblyReport::default();
    let mut blocks = HashSet::new();
    let mut candidates: BTreeMap<PeerId, Candidate> = BTreeMap::new();
    let mut reported_down = BTreeSet::new();
    let mut used = 0usize;
    for listing in listings {
        if !blocks.insert(listing.block) {
            report.sources_dropped.push(listing.source);
            continue;
        }
        let mut verified: Vec<(SignedDescriptor, &ListingEntry)> = Vec::new();
        let mut down: Vec<PeerId> = Vec::new();
        let mut invalid = 0;
        let mut stale = 0;
        for entry in listing.entries.iter().take(MAX_VIEW_RELAYS) {
            // A relay listed with no address proven is one the source found down (specs/04
            // §7.4): not a candidate, and not believed either; the client dials it itself if
            // it is in the view (Gathered::down_checks), so a source that calls everyone down
            // costs bounded dials and removes no one who answers.
            if entry.proven.is_empty() {
                down.extend(
                    SignedDescriptor::peer_of_bytes(&entry.descriptor)
                        .filter(|peer| *peer != listing.source),
                );
                continue;
            }
            // Bytes another source listed already are not checked twice.
            let known = SignedDescriptor::peer_of_bytes(&entry.descriptor)
                .and_then(|p| candidates.get(&p))
                .filter(|c| c.best.as_bytes() == entry.descriptor.as_slice())
                .map(|c| c.best.clone());
            let checked = match known {
                Some(d) => Ok(d),
                None => SignedDescriptor::verify(&entry.descriptor, now),
            };
            match checked {
                Ok(d) => verified.push((d, entry)),
                // Correctly signed but past its lifetime: stale, not a lie (a source prunes
                // on its own schedule).
                Err(DirectoryError::Expired(_)) => {
                    stale += 1;
                    if stale > MAX_SOURCE_STALE {
                        break;
                    }
                }
                Err(_) => {
                    invalid += 1;
                    if invalid > MAX_SOURCE_INVALID {
                        break;
                    }
                }
            }
        }
        report.stale += stale;
        report.over_bounds += listing.entries.len().saturating_sub(MAX_VIEW_RELAYS);
        report.invalid += invalid;
        if invalid > MAX_SOURCE_INVALID || stale > MAX_SOURCE_STALE {
            report.sources_dropped.push(listing.source);
            continue;
        }
        for peer in down {
            if reported_down.len() >= MAX_DOWN_REPORTS {
                break;
            }
            reported_down.insert(peer);
        }
        let index = used;
        used += 1;
        for (d, entry) in verified {
            let peer = d.peer_id();
            if !candidates.contains_key(&peer) && candidates.len() >= MAX_CANDIDATES {
                report.over_bounds += 1;
                continue;
            }
            let c = candidates.entry(peer).or_insert_with(|| Candidate {
                best: d.clone(),
                supporters: HashSet::new(),
                proofs: HashMap::new(),
                first_seen: Vec::new(),
            });
            if is_newer(&d, &c.best) {
                c.best = d.clone();
            }
            c.supporters.insert(index);
            c.first_seen.push(entry.first_seen);
            // A relay's word on its own addresses proves nothing.
            let own = listing.source == peer;
            for (i, addr) in d.descriptor().addrs.iter().enumerate() {
                if entry.proven.contains(i) && !own {
                    c.proofs.entry(addr.clone()).or_default().insert(index);
                }
            }
        }
    }
    report.sources_used = used;
    report.candidates = candidates.len();
    report.reported_down = reported_down.len();
    let mut ranked: Vec<Ranked> = candidates
        .into_iter()
        .map(|(peer, mut c)| {
            let support = c.supporters.len();
            // An address counts as proven when at least half the sources listing the relay
            // say they proved it.
            let mut proven = AddrSet::NONE;
            for (i, addr) in c.best.descriptor().addrs.iter().enumerate() {
                let votes = c.proofs.get(addr).map_or(0, HashSet::len);
                if votes > 0 && 2 * votes >= support {
                    proven = proven.with(i);
                }
            }
            c.first_seen.sort_unstable();
            let first_seen = c
                .first_seen
                .get(c.first_seen.len() / 2)
                .copied()
                .unwrap_or(now);
            // An unproven address still counts for the caps (the client does not know
            // better), but a relay with proofs claims only those.
            let claimed = if proven.is_empty() {
                AddrSet::ALL
            } else {
                proven
            };
            let Networks { subnets, blocks } =
                Networks::of_claim(c.best.descriptor(), Some(claimed));
            Ranked {
                peer,
                best: c.best,
                support,
                claimed,
                proofs: proven.0.count_ones(),
                first_seen,
                subnets,
                blocks,
            }
        })
        .collect();
    ranked.sort_by(|a, b| {
        b.support
            .cmp(&a.support)
            .then_with(|| b.proofs.cmp(&a.proofs))
            .then_with(|| a.first_seen.cmp(&b.first_seen))
            .then_with(|| a.peer.cmp(&b.peer))
    });
    Gathered {
        ranked,
        reported_down,
        report,
        sources_used: used,
        now,
    }
}

impl Gathered {
    /// The relays of `view` a source reported down, each with the first address the view
    /// holds proven, at most `max`: the client dials them and removes those it does not reach.
    pub fn down_checks(&self, view: &NetworkView, max: usize) -> Vec<(PeerId, Multiaddr)> {
        self.reported_down
            .iter()
            .filter_map(|peer| {
                let addr = view.get(peer)?.proven_addrs().next()?.clone();
                Some((*peer, addr))
            })
            .take(max)
            .collect()
    }

    /// The subnets and blocks where more relays claim a slot than `view`'s caps allow
    /// (counting the view's relays that are not candidates).
    fn contested(&self, view: &NetworkView) -> (HashSet<Subnet>, HashSet<Block>) {
        let mut subnet_claims: HashMap<Subnet, usize> = HashMap::new();
        let mut block_claims: HashMap<Block, usize> = HashMap::new();
        let candidates: HashSet<PeerId> = self.ranked.iter().map(|r| r.peer).collect();
        for r in &self.ranked {
            for s in &r.subnets {
                *subnet_claims.entry(*s).or_default() += 1;
            }
            for b in &r.blocks {
                *block_claims.entry(*b).or_default() += 1;
            }
        }
        for e in view.entries() {
            if candidates.contains(&e.descriptor.peer_id()) {
                continue;
            }
            for ip in e.proven_ips() {
                *subnet_claims.entry(Subnet::of(ip)).or_default() += 1;
                *block_claims.entry(Block::of(ip)).or_default() += 1;
            }
        }
        let config = view.config();
        (
            subnet_claims
                .into_iter()
                .filter(|(_, n)| *n > config.max_relays_per_subnet)
                .map(|(s, _)| s)
                .collect(),
            block_claims
                .into_iter()
                .filter(|(_, n)| *n > config.max_relays_per_block)
                .map(|(b, _)| b)
                .collect(),
        )
    }

    /// The relays to verify next, at most `budget`, in rank order: those no other source
    /// proved an address of, and in each contested subnet and block as many without a verdict
    /// as its cap still has room for after those already verified. Dial each at its address, record the outcomes in `verdicts`, and ask
    /// again until this is empty (or the client's rounds run out).
    pub fn contests(
        &self,
        view: &NetworkView,
        verdicts: &Verdicts,
        budget: usize,
    ) -> Vec<(PeerId, Multiaddr)> {
        let (subnets, blocks) = self.contested(view);
        let config = view.config();
        let mut taken_subnet: HashMap<Subnet, usize> = HashMap::new();
        let mut taken_block: HashMap<Block, usize> = HashMap::new();
        let mut out = Vec::new();
        for r in &self.ranked {
            let Some(addr) = r.verify_addr() else {
                continue;
            };
            if !r.needs_verdict(&subnets, &blocks, self.sources_used) || view.get(&r.peer).is_some()
            {
                continue;
            }
            let verdict = verdicts.get(&r.peer, addr, self.now);
            if verdict == Some(false) {
                continue;
            }
            let room =
                r.subnets.iter().all(|s| {
                    taken_subnet.get(s).copied().unwrap_or(0) < config.max_relays_per_subnet
                }) && r.blocks.iter().all(|b| {
                    taken_block.get(b).copied().unwrap_or(0) < config.max_relays_per_block
                });
            if !room {
                continue;
            }
            // Verified or about to be: it takes its slots in this plan.
            for s in &r.subnets {
                *taken_subnet.entry(*s).or_default() += 1;
            }
            for b in &r.blocks {
                *taken_block.entry(*b).or_default() += 1;
            }
            if verdict.is_none() {
                if out.len() >= budget {
                    break;
                }
                out.push((r.peer, addr.clone()));
            }
        }
        out
    }

    /// Offers the gathered relays to `view` in rank order. With `verified`, relays in a
    /// contested subnet or block are admitted only if `verdicts` says the client reached them;
    /// any relay the client could not reach is left out. Without (a plain [`assemble`]), the
    /// rank alone decides.
    pub fn offer_to(self, view: &mut NetworkView, verdicts: Option<&Verdicts>) -> AssemblyReport {
        let (subnets, blocks) = self.contested(view);
        let mut report = self.report;
        let now = self.now;
        for r in self.ranked {
            if r.support < self.sources_used {
                report.disagreements += 1;
            }
            if let Some(verdicts) = verdicts {
                let verdict = r
                    .verify_addr()
                    .and_then(|addr| verdicts.get(&r.peer, addr, now));
                if verdict == Some(false) {
                    report.unreachable += 1;
                    continue;
                }
                if r.needs_verdict(&subnets, &blocks, self.sources_used)
                    && verdict != Some(true)
                    && view.get(&r.peer).is_none()
                {
                    if r.proofs == 0 {
                        report.unproven += 1;
                    } else if !r.has_majority(self.sources_used) {
                        report.minority += 1;
                    } else {
                        report.unverified += 1;
                    }
                    continue;
                }
            }
            match view.offer_proven(r.best, r.first_seen, r.claimed) {
                Admission::Added => report.added += 1,
                Admission::Updated => report.updated += 1,
                Admission::Unchanged => {}
                Admission::Hibernating => report.hibernating += 1,
                Admission::SubnetFull | Admission::NoIpAddress | Admission::ViewFull => {
                    report.refused += 1
                }
            }
        }
        report
    }
}

/// Offers the union of `listings` to `view` at time `now`, the rank alone deciding contested
/// subnets (see [`Gathered`] for the client's verified assembly).
pub fn assemble(view: &mut NetworkView, listings: Vec<SourceListing>, now: u64) -> AssemblyReport {
    gather(listings, now).offer_to(view, None)
}

#[cfg(test)]
mod tests {
    use libp2p_identity::ed25519;

    use super::*;
    use crate::descriptor::tests::{NOW, sample};
    use crate::view::ViewConfig;

    fn relay(addr: &str) -> SignedDescriptor {
        let k = ed25519::Keypair::generate();
        sample(&k, addr).sign(&k).expect("sign")
    }

    fn entry(d: &SignedDescriptor, proven: AddrSet, first_seen: u64) -> ListingEntry {
        ListingEntry {
            first_seen,
            proven,
            descriptor: d.as_bytes().to_vec(),
        }
    }

    fn source(block: u8, entries: Vec<ListingEntry>) -> SourceListing {
        SourceListing {
            source: PeerId::random(),
            block: Block::V4([block, 0]),
            entries,
        }
    }

    fn honest(n: usize) -> Vec<SignedDescriptor> {
        (0..n)
            .map(|i| relay(&format!("/ip4/10.{i}.0.1/tcp/1")))
            .collect()
    }

    fn listing_of(relays: &[SignedDescriptor]) -> Vec<ListingEntry> {
        listing_proven(relays, AddrSet::ALL)
    }

    /// Every relay in `relays` with `proven`, first seen a day ago.
    fn listing_proven(relays: &[SignedDescriptor], proven: AddrSet) -> Vec<ListingEntry> {
        relays
            .iter()
            .map(|d| entry(d, proven, NOW - 86_400))
            .collect()
    }

    #[test]
    fn a_source_that_omits_relays_hides_nothing_the_others_list() {
        let relays = honest(20);
        let mut view = NetworkView::new(ViewConfig::default());
        let report = assemble(
            &mut view,
            vec![
                source(1, listing_of(&relays)),
                source(2, listing_of(&relays[..10])),
                source(3, Vec::new()),
            ],
            NOW,
        );
        assert_eq!(view.len(), 20);
        assert_eq!(report.added, 20);
        assert_eq!(
            report.disagreements, 20,
            "the empty source disagrees on all"
        );
    }

    #[test]
    fn a_source_that_lists_garbage_is_dropped_after_a_bounded_number_of_checks() {
        let relays = honest(5);
        let mut junk = listing_of(&relays);
        for i in 0..100_000u32 {
            junk.push(ListingEntry {
                first_seen: 0,
                proven: AddrSet::ALL,
                descriptor: i.to_be_bytes().to_vec(),
            });
        }
        let mut view = NetworkView::new(ViewConfig::default());
        let liar = source(9, junk);
        let liar_id = liar.source;
        let report = assemble(&mut view, vec![liar, source(1, listing_of(&relays))], NOW);
        assert_eq!(report.sources_dropped, vec![liar_id]);
        assert_eq!(
            report.invalid,
            MAX_SOURCE_INVALID + 1,
            "it stops at the bound"
        );
        assert_eq!(view.len(), 5, "the honest source's relays are all in");
        assert_eq!(report.sources_used, 1);
    }

    #[test]
    fn stale_and_forged_descriptors_lose_to_the_genuine_newest() {
        let k = ed25519::Keypair::generate();
        let old = sample(&k, "/ip4/10.0.0.1/tcp/1").sign(&k).expect("sign");
        let mut newer_d = sample(&k, "/ip4/10.0.0.1/tcp/1");
        newer_d.published_at += 60;
        newer_d.expires_at += 60;
        let newer = newer_d.sign(&k).expect("sign");
        let mut forged = newer.as_bytes().to_vec();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        let mut view = NetworkView::new(ViewConfig::default());
        let report = assemble(
            &mut view,
            vec![
                source(1, vec![entry(&old, AddrSet::ALL, NOW)]),
                source(
                    2,
                    vec![ListingEntry {
                        first_seen: NOW,
                        proven: AddrSet::ALL,
                        descriptor: forged,
                    }],
                ),
                source(3, vec![entry(&newer, AddrSet::ALL, NOW)]),
            ],
            NOW,
        );
        assert_eq!(report.invalid, 1);
        assert_eq!(view.len(), 1);
        let held = view.get(&newer.peer_id()).expect("held");
        assert_eq!(held.descriptor.as_bytes(), newer.as_bytes());
    }

    #[test]
    fn squatters_listed_only_by_the_adversarys_sources_take_no_honest_relays_slot() {
        // Each honest relay sits alone in its /24; the adversary signs two descriptors in every
        // one of those /24s (where nothing of it listens) and lists them, "proven", from its
        // own sources in two blocks. Every honest source lists only the honest relays.
        let relays = honest(10);
        let mut squatters = Vec::new();
        for i in 0..10 {
            for host in [50, 51] {
                squatters.push(relay(&format!("/ip4/10.{i}.0.{host}/tcp/1")));
            }
        }
        let mut adversary_listing = listing_of(&squatters);
        adversary_listing.extend(listing_of(&relays[..3]));
        let mut view = NetworkView::new(ViewConfig::default());
        assemble(
            &mut view,
            vec![
                source(200, adversary_listing.clone()),
                source(201, adversary_listing),
                source(1, listing_of(&relays)),
                source(2, listing_of(&relays)),
                source(3, listing_of(&relays)),
            ],
            NOW,
        );
        for d in &relays {
            assert!(
                view.get(&d.peer_id()).is_some(),
                "an honest relay lost its slot"
            );
        }
        // Each /24 holds at most its cap: the honest relay and one squatter.
        assert!(view.len() <= 20);
    }

    #[test]
    fn a_second_source_in_one_block_is_not_used() {
        let relays = honest(3);
        let mut view = NetworkView::new(ViewConfig::default());
        let a = source(7, listing_of(&relays));
        let mut b = source(7, listing_of(&relays));
        b.source = PeerId::random();
        let b_id = b.source;
        let report = assemble(&mut view, vec![a, b], NOW);
        assert_eq!(report.sources_used, 1);
        assert_eq!(report.sources_dropped, vec![b_id]);
    }

    #[test]
    fn an_address_counts_as_proven_when_half_the_sources_listing_it_proved_it() {
        let k = ed25519::Keypair::generate();
        let mut d = sample(&k, "/ip4/10.0.0.1/tcp/1");
        d.addrs.push("/ip4/10.9.0.1/tcp/1".parse().expect("addr"));
        let d = d.sign(&k).expect("sign");
        let mut view = NetworkView::new(ViewConfig::default());
        assemble(
            &mut view,
            vec![
                source(1, vec![entry(&d, AddrSet::NONE.with(0), NOW)]),
                source(2, vec![entry(&d, AddrSet::NONE.with(0).with(1), NOW)]),
                source(3, vec![entry(&d, AddrSet::NONE.with(0), NOW)]),
            ],
            NOW,
        );
        assert_eq!(
            view.get(&d.peer_id()).expect("held").proven,
            AddrSet::NONE.with(0)
        );
    }

    /// Squatters whose sources are as many as the honest ones, and who claim to be older.
    fn squatting_at_a_tie() -> (
        Vec<SignedDescriptor>,
        Vec<SignedDescriptor>,
        Vec<SourceListing>,
    ) {
        let relays = honest(10);
        let mut squatters = Vec::new();
        for i in 0..10 {
            for host in [50, 51] {
                squatters.push(relay(&format!("/ip4/10.{i}.0.{host}/tcp/1")));
            }
        }
        let ancient: Vec<ListingEntry> = squatters
            .iter()
            .map(|d| entry(d, AddrSet::ALL, 1))
            .collect();
        let listings = vec![
            source(200, ancient.clone()),
            source(201, ancient),
            source(1, listing_of(&relays)),
            source(2, listing_of(&relays)),
        ];
        (relays, squatters, listings)
    }

    #[test]
    fn at_a_tie_of_sources_the_rank_alone_lets_squatters_take_honest_slots() {
        // The attack, as a plain assembly sees it: this is why the client verifies contests.
        let (relays, _, listings) = squatting_at_a_tie();
        let mut view = NetworkView::new(ViewConfig::default());
        assemble(&mut view, listings, NOW);
        let kept = relays
            .iter()
            .filter(|d| view.get(&d.peer_id()).is_some())
            .count();
        assert_eq!(kept, 0, "the older-claiming squatters won every /24");
    }

    #[test]
    fn verified_contests_give_every_honest_relay_its_slot() {
        let (relays, squatters, listings) = squatting_at_a_tie();
        let gathered = gather(listings, NOW);
        let mut view = NetworkView::new(ViewConfig::default());
        let mut verdicts = Verdicts::new();
        let honest: HashSet<PeerId> = relays.iter().map(SignedDescriptor::peer_id).collect();
        let mut dials = 0;
        for _round in 0..4 {
            let todo = gathered.contests(&view, &verdicts, 1000);
            if todo.is_empty() {
                break;
            }
            for (peer, addr) in todo {
                dials += 1;
                // Only the honest relays listen where they claim.
                verdicts.record(peer, addr, honest.contains(&peer), NOW);
            }
        }
        // Round one dials the two top-ranked (the squatters) of each /24, round two the
        // honest relay.
        assert_eq!(dials, squatters.len() + relays.len());
        let report = gathered.offer_to(&mut view, Some(&verdicts));
        for d in &relays {
            assert!(
                view.get(&d.peer_id()).is_some(),
                "an honest relay lost its slot"
            );
        }
        for d in &squatters {
            assert!(
                view.get(&d.peer_id()).is_none(),
                "a squatter is in the view"
            );
        }
        assert_eq!(report.unreachable, squatters.len());
        assert_eq!(report.unverified, 0);
    }

    #[test]
    fn an_unverified_contender_waits_and_so_does_a_relay_one_source_lists() {
        let (relays, _, listings) = squatting_at_a_tie();
        let mut extra = listings;
        let loner = relay("/ip4/10.99.0.1/tcp/1");
        extra.push(source(3, listing_of(std::slice::from_ref(&loner))));
        let gathered = gather(extra, NOW);
        let view = NetworkView::new(ViewConfig::default());
        let todo = gathered.contests(&view, &Verdicts::new(), 1000);
        assert!(todo.iter().any(|(p, _)| *p == loner.peer_id()));
        assert_eq!(todo.len(), 20 + 1, "two per contested /24, and the loner");
        let mut view = NetworkView::new(ViewConfig::default());
        let report = gathered.offer_to(&mut view, Some(&Verdicts::new()));
        assert!(view.is_empty());
        // Each relay is listed by one of three sources: all wait for their dial.
        assert_eq!(report.unverified + report.minority, 30 + 1);
        let _ = relays;
    }

    #[test]
    fn relays_most_sources_list_need_no_dial_and_one_liars_inventions_wait() {
        let relays = honest(5);
        let made_up: Vec<SignedDescriptor> = (0..100)
            .map(|i| relay(&format!("/ip4/20.{i}.0.1/tcp/1")))
            .collect();
        let mut lie = listing_of(&made_up);
        lie.extend(listing_of(&relays[..2]));
        let listings = vec![
            source(1, listing_of(&relays)),
            source(2, listing_of(&relays)),
            source(3, lie),
        ];
        let gathered = gather(listings, NOW);
        let mut view = NetworkView::new(ViewConfig::default());
        let todo = gathered.contests(&view, &Verdicts::new(), 1000);
        let invented: HashSet<PeerId> = made_up.iter().map(SignedDescriptor::peer_id).collect();
        assert_eq!(todo.len(), made_up.len());
        assert!(todo.iter().all(|(p, _)| invented.contains(p)));
        let report = gathered.offer_to(&mut view, Some(&Verdicts::new()));
        assert_eq!(
            view.len(),
            relays.len(),
            "only the relays most sources list"
        );
        assert_eq!(report.minority, made_up.len());
    }

    #[test]
    fn the_verdicts_are_bounded_and_expire() {
        let mut v = Verdicts::new();
        let addr: Multiaddr = "/ip4/10.0.0.1/tcp/1".parse().expect("addr");
        let first = PeerId::random();
        v.record(first, addr.clone(), true, NOW);
        for _ in 0..MAX_VERDICTS {
            v.record(PeerId::random(), addr.clone(), false, NOW);
        }
        assert_eq!(v.len(), MAX_VERDICTS);
        assert_eq!(v.get(&first, &addr, NOW), None, "the oldest went first");
        let p = PeerId::random();
        v.record(p, addr.clone(), true, NOW);
        assert_eq!(
            v.get(&p, &addr, NOW + VERDICT_LIFETIME_SECS - 1),
            Some(true)
        );
        assert_eq!(v.get(&p, &addr, NOW + VERDICT_LIFETIME_SECS), None);
    }

    #[test]
    fn a_relay_only_it_lists_as_proven_is_admitted_once_the_client_reached_it() {
        let relays = honest(3);
        let loner = relay("/ip4/10.50.0.1/tcp/1");
        let mut own_listing = source(9, listing_of(std::slice::from_ref(&loner)));
        own_listing.source = loner.peer_id();
        let listings = vec![
            source(1, listing_of(&relays)),
            source(2, listing_of(&relays)),
            source(3, listing_of(&relays)),
            own_listing,
        ];
        let gathered = gather(listings.clone(), NOW);
        let mut view = NetworkView::new(ViewConfig::default());
        let todo = gathered.contests(&view, &Verdicts::new(), 10);
        assert_eq!(todo.len(), 1);
        assert_eq!(todo[0].0, loner.peer_id());
        let report = gathered.offer_to(&mut view, Some(&Verdicts::new()));
        assert_eq!(report.unproven, 1);
        assert!(view.get(&loner.peer_id()).is_none());
        let mut verdicts = Verdicts::new();
        verdicts.record(todo[0].0, todo[0].1.clone(), true, NOW);
        gather(listings, NOW).offer_to(&mut view, Some(&verdicts));
        assert!(view.get(&loner.peer_id()).is_some());
        assert_eq!(view.len(), 4);
    }

    fn down_listing_of(relays: &[SignedDescriptor]) -> Vec<ListingEntry> {
        listing_proven(relays, AddrSet::NONE)
    }

    #[test]
    fn a_source_that_calls_everyone_down_removes_no_one_and_admits_no_one() {
        let relays = honest(100);
        let mut view = NetworkView::new(ViewConfig::default());
        assemble(
            &mut view,
            vec![
                source(1, listing_of(&relays)),
                source(2, listing_of(&relays)),
            ],
            NOW,
        );
        assert_eq!(view.len(), 100);
        // The liar calls every relay down, and a few it made up too.
        let made_up = honest(5);
        let mut lies = down_listing_of(&relays);
        lies.extend(down_listing_of(&made_up));
        let gathered = gather(vec![source(3, lies)], NOW);
        let checks = gathered.down_checks(&view, MAX_DOWN_CHECKS);
        assert_eq!(
            checks.len(),
            MAX_DOWN_CHECKS,
            "bounded dials, only of the view's relays"
        );
        assert!(checks.iter().all(|(peer, _)| view.get(peer).is_some()));
        let report = gathered.offer_to(&mut view, None);
        assert_eq!(report.reported_down, 105);
        assert_eq!(report.added, 0, "a down report is no candidate");
        assert_eq!(view.len(), 100, "the word alone removes no one");
    }

    /// A source dropped for listing garbage is dropped with everything it listed (specs/04
    /// §6.1 item 4), its down reports too: otherwise a source could list junk and still
    /// make the client dial every relay of its view.
    #[test]
    fn a_dropped_source_reports_no_one_down() {
        let relays = honest(20);
        let mut view = NetworkView::new(ViewConfig::default());
        assemble(&mut view, vec![source(1, listing_of(&relays))], NOW);
        let mut lies = down_listing_of(&relays);
        lies.extend((0..=MAX_SOURCE_INVALID as u32).map(|i| ListingEntry {
            first_seen: 0,
            proven: AddrSet::ALL,
            descriptor: i.to_be_bytes().to_vec(),
        }));
        let liar = source(9, lies);
        let liar_id = liar.source;
        let gathered = gather(vec![liar], NOW);
        assert!(gathered.down_checks(&view, MAX_DOWN_CHECKS).is_empty());
        let report = gathered.offer_to(&mut view, None);
        assert_eq!(report.sources_dropped, vec![liar_id]);
        assert_eq!(report.reported_down, 0);
    }

    #[test]
    fn down_reports_are_bounded() {
        let relays: Vec<SignedDescriptor> = (0..MAX_DOWN_REPORTS + 10)
            .map(|i| relay(&format!("/ip4/{}.{}.0.1/tcp/1", 1 + i / 250, i % 250)))
            .collect();
        let gathered = gather(vec![source(3, down_listing_of(&relays))], NOW);
        let report = gathered.offer_to(&mut NetworkView::new(ViewConfig::default()), None);
        assert_eq!(report.reported_down, MAX_DOWN_REPORTS);
    }
}
