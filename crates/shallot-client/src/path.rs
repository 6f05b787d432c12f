//! The boundary to path selection.
//!
//! `shallot-path` (guard/middle/exit selection with pinned guards) is being written alongside
//! this crate. Until it lands, [`InterimSelector`] keeps the rules that matter for correctness
//! and anonymity of a single circuit (three distinct relays, no two in one IPv4 /16 or IPv6
//! /32 or declared family, an exit whose policy summary allows the port) but does NOT pin
//! guards: every circuit draws a fresh first hop. Replace it by `shallot-path` behind the same
//! [`PathSelector`] trait.

use std::net::IpAddr;

use rand::seq::{IndexedRandom, SliceRandom};
use shallot_directory::{NetworkView, ViewEntry};
use shallot_p2p::PeerId;

/// Why no path could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PathError {
    /// No exit in the view allows the port (or every one is excluded).
    #[error("no exit allows the port")]
    NoExit,
    /// Exits exist but not enough other relays for a path that keeps the rules.
    #[error("not enough relays")]
    TooFewRelays,
}

/// Chooses guard, middle, exit from the view for a target port (`None`: any exit, e.g. for
/// RESOLVE), never using an exit in `avoid_exits`.
pub(crate) trait PathSelector: Send + Sync + 'static {
    /// The path, first hop first.
    fn select(
        &self,
        view: &NetworkView,
        port: Option<u16>,
        avoid_exits: &[PeerId],
    ) -> Result<Vec<ViewEntry>, PathError>;
}

/// Whether `entry` is an exit whose summary allows `port` (any port when `None`).
pub(crate) fn exit_allows(entry: &ViewEntry, port: Option<u16>) -> bool {
    let d = entry.descriptor.descriptor();
    if !d.flags.is_exit() {
        return false;
    }
    match d.exit_policy_summary() {
        Ok(Some(summary)) => match port {
            Some(p) => summary.allows_port(p),
            None => !summary.accepts_nothing(),
        },
        _ => false,
    }
}

/// The stand-in selector; see the module docs.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct InterimSelector;

/// The /16 (IPv4) or /32 (IPv6) prefixes of a relay's addresses.
fn wide_subnets(entry: &ViewEntry) -> Vec<(u8, u32)> {
    entry
        .descriptor
        .descriptor()
        .ip_addrs()
        .map(|ip| match ip {
            IpAddr::V4(v4) => (4, u32::from(v4) >> 16),
            IpAddr::V6(v6) => (6, (u128::from(v6) >> 96) as u32),
        })
        .collect()
}

/// Whether two relays may not share a circuit: same relay, same wide subnet, same family.
fn related(a: &ViewEntry, b: &ViewEntry) -> bool {
    let (pa, pb) = (a.descriptor.peer_id(), b.descriptor.peer_id());
    if pa == pb {
        return true;
    }
    let sa = wide_subnets(a);
    if wide_subnets(b).iter().any(|s| sa.contains(s)) {
        return true;
    }
    a.descriptor.descriptor().family.contains(&pb) || b.descriptor.descriptor().family.contains(&pa)
}

impl PathSelector for InterimSelector {
    fn select(
        &self,
        view: &NetworkView,
        port: Option<u16>,
        avoid_exits: &[PeerId],
    ) -> Result<Vec<ViewEntry>, PathError> {
        let all: Vec<&ViewEntry> = view.entries().collect();
        let mut exits: Vec<&ViewEntry> = all
            .iter()
            .copied()
            .filter(|e| exit_allows(e, port) && !avoid_exits.contains(&e.descriptor.peer_id()))
            .collect();
        if exits.is_empty() {
            return Err(PathError::NoExit);
        }
        let mut rng = rand::rng();
        exits.shuffle(&mut rng);
        for exit in exits {
            let middles: Vec<&ViewEntry> =
                all.iter().copied().filter(|m| !related(m, exit)).collect();
            let Some(middle) = middles.choose(&mut rng) else {
                continue;
            };
            let guards: Vec<&ViewEntry> = all
                .iter()
                .copied()
                .filter(|g| !related(g, exit) && !related(g, middle))
                .collect();
            if let Some(guard) = guards.choose(&mut rng) {
                return Ok(vec![(*guard).clone(), (*middle).clone(), exit.clone()]);
            }
        }
        Err(PathError::TooFewRelays)
    }
}
