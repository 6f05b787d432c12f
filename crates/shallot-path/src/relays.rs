//! The view prepared for selection: per relay, the facts the rules of specs/05 §3 look at.

use std::collections::HashMap;

use libp2p_identity::PeerId;
use shallot_directory::{Block, NetworkView, ViewEntry};
use shallot_exit_policy::PolicySummary;

/// The network the path rule counts (specs/05 §3.2): an IPv4 /16 or an IPv6 /32 of the
/// canonical address (an IPv6 form that embeds an IPv4 address counts as that address).
pub type PathSubnet = Block;

/// Every path subnet of a view entry, counting every signed address (proven or not: the rule
/// only forbids), sorted and without duplicates.
pub(crate) fn path_subnets(entry: &ViewEntry) -> Vec<PathSubnet> {
    let mut subnets: Vec<PathSubnet> = entry
        .descriptor
        .descriptor()
        .ip_addrs()
        .map(Block::of)
        .collect();
    subnets.sort_unstable();
    subnets.dedup();
    subnets
}

/// One relay of a [`RelayIndex`].
#[derive(Debug)]
pub(crate) struct RelayInfo<'v> {
    pub(crate) entry: &'v ViewEntry,
    pub(crate) peer: PeerId,
    /// Sorted, deduplicated.
    pub(crate) subnets: Vec<PathSubnet>,
    /// Indices of the relays this one declares as family and that are in the index; sorted.
    pub(crate) family: Vec<usize>,
    /// The decoded summary if the relay is an exit (EXIT flag and a summary that decodes).
    pub(crate) exit: Option<PolicySummary>,
}

/// A [`NetworkView`] prepared for path selection: subnets, families and exit summaries decoded
/// once per view refresh instead of once per path.
///
/// Build it again whenever the view changes; it borrows the view, so it cannot outlive it.
#[derive(Debug)]
pub struct RelayIndex<'v> {
    relays: Vec<RelayInfo<'v>>,
    by_peer: HashMap<PeerId, usize>,
}

impl<'v> RelayIndex<'v> {
    /// Indexes every relay of `view`. The view is bounded (`MAX_VIEW_RELAYS`), so is this.
    pub fn new(view: &'v NetworkView) -> Self {
        let mut relays: Vec<RelayInfo<'v>> = view
            .entries()
            .map(|entry| {
                let descriptor = entry.descriptor.descriptor();
                // An EXIT flag without a summary that decodes cannot pass descriptor
                // verification; should one appear anyway, the relay is not an exit.
                let exit = if descriptor.flags.is_exit() {
                    descriptor.exit_policy_summary().ok().flatten()
                } else {
                    None
                };
                RelayInfo {
                    entry,
                    peer: entry.descriptor.peer_id(),
                    subnets: path_subnets(entry),
                    family: Vec::new(),
                    exit,
                }
            })
            .collect();
        let by_peer: HashMap<PeerId, usize> = relays
            .iter()
            .enumerate()
            .map(|(i, relay)| (relay.peer, i))
            .collect();
        for (i, relay) in relays.iter_mut().enumerate() {
            let mut family: Vec<usize> = relay
                .entry
                .descriptor
                .descriptor()
                .family
                .iter()
                .filter_map(|member| by_peer.get(member).copied())
                .filter(|&j| j != i)
                .collect();
            family.sort_unstable();
            family.dedup();
            relay.family = family;
        }
        Self { relays, by_peer }
    }

    /// Number of relays.
    pub fn len(&self) -> usize {
        self.relays.len()
    }

    /// Whether the index holds no relay.
    pub fn is_empty(&self) -> bool {
        self.relays.is_empty()
    }

    /// Whether `peer` is in the view and is an exit whose summary allows `port`. The circuit
    /// manager uses it to reuse an open circuit for a new stream (specs/05 §9).
    pub fn exit_allows(&self, peer: &PeerId, port: u16) -> bool {
        self.position(peer)
            .and_then(|i| self.relays[i].exit.as_ref())
            .is_some_and(|summary| summary.allows_port(port))
    }

    pub(crate) fn position(&self, peer: &PeerId) -> Option<usize> {
        self.by_peer.get(peer).copied()
    }

    pub(crate) fn relay(&self, i: usize) -> &RelayInfo<'v> {
        &self.relays[i]
    }

    pub(crate) fn relays(&self) -> &[RelayInfo<'v>] {
        &self.relays
    }

    /// Whether `a` and `b` may sit in one path (specs/05 §3, rules 1–3): distinct, no shared
    /// /16 or /32, not one family by mutual declaration.
    pub(crate) fn compatible(&self, a: usize, b: usize) -> bool {
        if a == b {
            return false;
        }
        let (ra, rb) = (&self.relays[a], &self.relays[b]);
        if ra.peer == rb.peer {
            return false;
        }
        if ra
            .subnets
            .iter()
            .any(|s| rb.subnets.binary_search(s).is_ok())
        {
            return false;
        }
        !(ra.family.binary_search(&b).is_ok() && rb.family.binary_search(&a).is_ok())
    }
}
