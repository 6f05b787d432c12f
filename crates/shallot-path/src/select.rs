//! Choosing a guard, a middle and an exit under the invariants of specs/05 §3.

use std::path::Path as FsPath;

use libp2p_identity::PeerId;
use rand::Rng;
use shallot_directory::ViewEntry;

use crate::bias::BiasState;
use crate::err::{PathError, Role};
use crate::guard::{GuardChanges, GuardSet};
use crate::relays::{RelayIndex, path_subnets};

/// What the exit of a path must allow (specs/05 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitTarget {
    /// The exit's policy summary must allow this TCP port.
    Port(u16),
    /// Any exit whose summary allows at least one port: for circuits built ahead of need when
    /// no port is known yet (specs/05 §9).
    Any,
}

impl ExitTarget {
    fn allows(self, summary: &shallot_exit_policy::PolicySummary) -> bool {
        match self {
            Self::Port(port) => summary.allows_port(port),
            Self::Any => !summary.accepts_nothing(),
        }
    }
}

/// A three-hop path that satisfies every rule of specs/05 §3. It borrows the view's entries,
/// which hold what the circuit builder needs (addresses, onion keys).
#[derive(Debug, Clone, Copy)]
pub struct Path<'v> {
    guard: &'v ViewEntry,
    middle: &'v ViewEntry,
    exit: &'v ViewEntry,
    provisional_guard: bool,
}

impl<'v> Path<'v> {
    /// Hop 0.
    pub fn guard(&self) -> &'v ViewEntry {
        self.guard
    }

    /// Hop 1.
    pub fn middle(&self) -> &'v ViewEntry {
        self.middle
    }

    /// Hop 2.
    pub fn exit(&self) -> &'v ViewEntry {
        self.exit
    }

    /// The hops in order: guard, middle, exit.
    pub fn hops(&self) -> [&'v ViewEntry; 3] {
        [self.guard, self.middle, self.exit]
    }

    /// The hops' PeerIds in order.
    pub fn peers(&self) -> [PeerId; 3] {
        self.hops().map(|hop| hop.descriptor.peer_id())
    }

    /// Whether the guard is provisional (chosen before it met the minimum age, specs/05 §5.2).
    pub fn provisional_guard(&self) -> bool {
        self.provisional_guard
    }
}

/// Chooses paths for one client: owns its pinned guards (specs/05 §4–§8).
///
/// Weighting is uniform among the relays eligible for a hop: nothing a relay says about its own
/// capacity is trusted (specs/05 §4.3).
#[derive(Debug, Clone, Default)]
pub struct PathSelector {
    guards: GuardSet,
}

impl PathSelector {
    /// A selector over the given guard set.
    pub fn new(guards: GuardSet) -> Self {
        Self { guards }
    }

    /// A selector whose guards are pinned in `data_dir/guards.state` (specs/05 §6).
    pub fn open(data_dir: &FsPath) -> Result<Self, PathError> {
        GuardSet::open(data_dir).map(Self::new)
    }

    /// A selector whose guards live only in memory.
    pub fn in_memory() -> Self {
        Self::new(GuardSet::in_memory())
    }

    /// The pinned guards.
    pub fn guards(&self) -> &GuardSet {
        &self.guards
    }

    /// Brings the guards up to date with the view (specs/05 §5.3). [`Self::select_path`] does
    /// it too; call this after a view refresh to learn and log what changed.
    pub fn update_guards<R: Rng + ?Sized>(
        &mut self,
        relays: &RelayIndex<'_>,
        now: u64,
        rng: &mut R,
    ) -> Result<GuardChanges, PathError> {
        self.guards.update(relays, now, rng)
    }

    /// Records that building through guard `peer` failed (specs/05 §5.3, §5.5).
    pub fn mark_guard_failed(&mut self, peer: &PeerId, now: u64) -> Result<bool, PathError> {
        self.guards.mark_failed(peer, now)
    }

    /// Records that building through guard `peer` succeeded.
    pub fn mark_guard_succeeded(&mut self, peer: &PeerId, now: u64) -> Result<bool, PathError> {
        self.guards.mark_succeeded(peer, now)
    }

    /// Records a circuit through guard `peer` that got past it, `built` or not (specs/05
    /// §5.6); returns the guard's new path-bias state if it changed.
    pub fn record_circuit(
        &mut self,
        peer: &PeerId,
        built: bool,
    ) -> Result<Option<BiasState>, PathError> {
        self.guards.record_circuit(peer, built)
    }

    /// See [`GuardSet::record_circuit_failed_adding`].
    pub fn record_circuit_failed_adding(
        &mut self,
        peer: &PeerId,
        adding: PeerId,
    ) -> Result<Option<(PeerId, BiasState)>, PathError> {
        self.guards.record_circuit_failed_adding(peer, adding)
    }

    /// See [`GuardSet::view_refreshed`].
    pub fn view_refreshed(
        &mut self,
        relays: &RelayIndex<'_>,
    ) -> Result<Vec<(PeerId, BiasState)>, PathError> {
        self.guards.view_refreshed(relays)
    }

    /// Records that a circuit through guard `peer` was given its first stream (§5.6).
    pub fn record_use_attempt(&mut self, peer: &PeerId) -> Result<Option<BiasState>, PathError> {
        self.guards.record_use_attempt(peer)
    }

    /// Records that the exit answered a stream on such a circuit (§5.6).
    pub fn record_use_success(&mut self, peer: &PeerId) -> Result<Option<BiasState>, PathError> {
        self.guards.record_use_success(peer)
    }

    /// See [`crate::GuardSet::record_use_unanswered`].
    pub fn record_use_unanswered(&mut self, peer: &PeerId) -> Result<Option<BiasState>, PathError> {
        self.guards.record_use_unanswered(peer)
    }

    /// Writes path-bias counts not yet in the state file (at shutdown).
    pub fn flush(&mut self) -> Result<(), PathError> {
        self.guards.flush()
    }

    /// Chooses a path for `target` at `now` (UNIX seconds), specs/05 §8: updates the guards,
    /// then, for the first usable guard for which one exists, an exit uniformly among the
    /// exits allowing the target that may share a path with it, then a middle uniformly among
    /// the relays that may share a path with both. Returns an error, never a weaker path, when
    /// the rules leave no candidate.
    pub fn select_path<'v, R: Rng + ?Sized>(
        &mut self,
        relays: &RelayIndex<'v>,
        target: ExitTarget,
        now: u64,
        rng: &mut R,
    ) -> Result<Path<'v>, PathError> {
        self.guards.update(relays, now, rng)?;
        let exits: Vec<usize> = relays
            .relays()
            .iter()
            .enumerate()
            .filter(|(_, r)| r.exit.as_ref().is_some_and(|s| target.allows(s)))
            .map(|(i, _)| i)
            .collect();
        if exits.is_empty() {
            return Err(match target {
                ExitTarget::Port(port) => PathError::NoExitForPort(port),
                ExitTarget::Any => PathError::NoExit,
            });
        }
        let guards = self.guards.usable(relays, now);
        if guards.is_empty() {
            return Err(PathError::NoUsableGuard);
        }
        let mut missing = Role::Exit;
        for (guard, provisional_guard) in guards {
            let mut candidates: Vec<usize> = exits
                .iter()
                .copied()
                .filter(|&e| relays.compatible(guard, e))
                .collect();
            // Uniform among exits for which a middle exists: draw uniformly, drop exits
            // without a middle and draw again from the rest (at most one pass per exit).
            while !candidates.is_empty() {
                let exit = candidates.swap_remove(rng.random_range(0..candidates.len()));
                let fits = |m: &usize| relays.compatible(*m, guard) && relays.compatible(*m, exit);
                let count = (0..relays.len()).filter(fits).count();
                if count == 0 {
                    missing = Role::Middle;
                    continue;
                }
                let nth = rng.random_range(0..count);
                let Some(middle) = (0..relays.len()).filter(fits).nth(nth) else {
                    return Err(PathError::InvariantViolated("middle count changed"));
                };
                let path = Path {
                    guard: relays.relay(guard).entry,
                    middle: relays.relay(middle).entry,
                    exit: relays.relay(exit).entry,
                    provisional_guard,
                };
                check_path(&path, &self.guards, target)?;
                return Ok(path);
            }
        }
        Err(PathError::NotEnoughRelays { role: missing })
    }
}

/// Checks a path against every rule of specs/05 §3 straight from the descriptors, without the
/// index the selector used. The selector runs it on every path before returning it.
pub(crate) fn check_path(
    path: &Path<'_>,
    guards: &GuardSet,
    target: ExitTarget,
) -> Result<(), PathError> {
    let hops = path.hops();
    let peers = path.peers();
    // Rule 1: distinct relays (so the exit is not the guard, the middle neither).
    if peers[0] == peers[1] || peers[0] == peers[2] || peers[1] == peers[2] {
        return Err(PathError::InvariantViolated("a relay appears twice"));
    }
    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
        // Rule 2: no two in one IPv4 /16 or IPv6 /32, counting every address.
        let (sa, sb) = (path_subnets(hops[a]), path_subnets(hops[b]));
        if sa.iter().any(|s| sb.contains(s)) {
            return Err(PathError::InvariantViolated(
                "two relays share a /16 or /32",
            ));
        }
        // Rule 3: no two of one family, declared by both.
        let (da, db) = (
            hops[a].descriptor.descriptor(),
            hops[b].descriptor.descriptor(),
        );
        if da.family.contains(&peers[b]) && db.family.contains(&peers[a]) {
            return Err(PathError::InvariantViolated("two relays of one family"));
        }
    }
    // Rule 4: the exit is an exit and its summary allows the target.
    let exit = hops[2].descriptor.descriptor();
    let allowed = exit.flags.is_exit()
        && exit
            .exit_policy_summary()
            .ok()
            .flatten()
            .is_some_and(|s| target.allows(&s));
    if !allowed {
        return Err(PathError::InvariantViolated(
            "exit does not allow the target",
        ));
    }
    // Rule 5: the guard is pinned.
    if !guards.contains(&peers[0]) {
        return Err(PathError::InvariantViolated("guard is not pinned"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
