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
//! Disagreements (a relay some sources list and others do not) are counted, not resolved by
//! vote.

use std::collections::{BTreeMap, HashMap, HashSet};

use libp2p_identity::PeerId;
use multiaddr::Multiaddr;

use crate::descriptor::SignedDescriptor;
use crate::dirproto::ListingEntry;
use crate::err::DirectoryError;
use crate::records::is_newer;
use crate::subnet::Block;
use crate::view::{AddrSet, Admission, MAX_VIEW_RELAYS, NetworkView};

/// Invalid entries after which a source is dropped and nothing it listed is used.
pub const MAX_SOURCE_INVALID: usize = 16;
/// Entries past their lifetime after which a source is dropped: an honest source lists only
/// valid ones (a few may expire while its listing travels, or by clock skew).
pub const MAX_SOURCE_STALE: usize = 64;
/// Most distinct relays considered in one assembly, over all sources.
pub const MAX_CANDIDATES: usize = 2 * MAX_VIEW_RELAYS;

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

/// Offers the union of `listings` to `view` (see the module documentation) at time `now`.
pub fn assemble(view: &mut NetworkView, listings: Vec<SourceListing>, now: u64) -> AssemblyReport {
    let mut report = AssemblyReport::default();
    let mut blocks = HashSet::new();
    let mut candidates: BTreeMap<PeerId, Candidate> = BTreeMap::new();
    let mut used = 0usize;
    for listing in listings {
        if !blocks.insert(listing.block) {
            report.sources_dropped.push(listing.source);
            continue;
        }
        let mut verified: Vec<(SignedDescriptor, &ListingEntry)> = Vec::new();
        let mut invalid = 0;
        let mut stale = 0;
        for entry in listing.entries.iter().take(MAX_VIEW_RELAYS) {
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
            for (i, addr) in d.descriptor().addrs.iter().enumerate() {
                if entry.proven.contains(i) {
                    c.proofs.entry(addr.clone()).or_default().insert(index);
                }
            }
        }
    }
    report.sources_used = used;
    report.candidates = candidates.len();
    let mut ordered: Vec<(PeerId, Candidate, AddrSet, u64)> = candidates
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
            let median = c
                .first_seen
                .get(c.first_seen.len() / 2)
                .copied()
                .unwrap_or(now);
            (peer, c, proven, median)
        })
        .collect();
    ordered.sort_by(|a, b| {
        let (sa, sb) = (a.1.supporters.len(), b.1.supporters.len());
        sb.cmp(&sa)
            .then_with(|| (b.2.0.count_ones()).cmp(&a.2.0.count_ones()))
            .then_with(|| a.3.cmp(&b.3))
            .then_with(|| a.0.cmp(&b.0))
    });
    for (_, c, proven, _) in ordered {
        if c.supporters.len() < used {
            report.disagreements += 1;
        }
        // An unproven address still counts for the caps (the view does not know better), but
        // a relay with proofs claims only those.
        let claimed = if proven.is_empty() {
            AddrSet::ALL
        } else {
            proven
        };
        match view.offer_proven(c.best, now, claimed) {
            Admission::Added => report.added += 1,
            Admission::Updated => report.updated += 1,
            Admission::Unchanged => {}
            Admission::SubnetFull | Admission::NoIpAddress | Admission::ViewFull => {
                report.refused += 1
            }
        }
    }
    report
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
        relays
            .iter()
            .map(|d| entry(d, AddrSet::ALL, NOW - 86_400))
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
}
