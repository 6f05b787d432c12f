//! The client's pinned guards: choice, replacement rules and failure counters (specs/05 §5–§6).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use libp2p_identity::PeerId;
use rand::Rng;

use crate::bias::{BiasState, PathBias};
use crate::err::PathError;
use crate::relays::RelayIndex;
use crate::state;

/// How many guards a client pins at first (specs/05 §4: Tor's primary guards).
pub const NUM_GUARDS: usize = 3;
/// Most guards a client ever holds pinned: beyond [`NUM_GUARDS`] it pins another only when
/// every pinned guard is down (specs/05 §5.2; Tor's sample of about 20).
pub const MAX_SAMPLED_GUARDS: usize = 20;
/// How long a relay must have been in this client's view before it may become a guard.
pub const GUARD_MIN_AGE_SECS: u64 = 4 * 24 * 3600;
/// How long a pinned guard may be missing from the view before it is replaced.
pub const GUARD_EXPIRY_SECS: u64 = 3 * 24 * 3600;
/// Consecutive failures after which a guard may be replaced; its counter saturates here.
pub const GUARD_MAX_FAILURES: u8 = 8;
/// How long a failure streak must last before it can replace a guard.
pub const GUARD_FAILURE_PERIOD_SECS: u64 = 24 * 3600;
/// After a failure, a guard is tried again only after this delay while another guard is usable.
pub const GUARD_RETRY_DELAY_SECS: u64 = 600;
/// The state file's name in the client's data directory.
pub const GUARD_STATE_FILE: &str = "guards.state";
/// Circuit failures past the guard that wait to be judged (specs/05 §5.6); when more come, the
/// oldest is counted against its guard at once.
pub const MAX_UNSETTLED_FAILURES: usize = 256;
/// View refreshes a failure waits before it is judged: the first refresh after it may have
/// begun before the directory noticed that the relay it was adding had died, the second
/// began at least one refresh interval later.
pub const PATH_BIAS_SETTLE_REFRESHES: u64 = 2;

/// A success is written to the state file at most this often (a reset failure streak always is).
const SUCCESS_WRITE_INTERVAL_SECS: u64 = 3600;
/// Path-bias counts are written to the state file after this many changes at most (a change
/// of state always is): a crash loses at most this many observations, and a build does not
/// cost a write.
pub const PATH_BIAS_WRITE_EVERY: u32 = 16;

/// One pinned guard and what this client knows about it. Nothing here comes from the guard's
/// own descriptor except its identity (specs/05 §5.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    pub(crate) peer: PeerId,
    pub(crate) added_at: u64,
    pub(crate) provisional: bool,
    pub(crate) unlisted_since: Option<u64>,
    pub(crate) failures: u8,
    pub(crate) failing_since: Option<u64>,
    pub(crate) last_failure: Option<u64>,
    pub(crate) last_success: Option<u64>,
    pub(crate) bias: PathBias,
}

impl Guard {
    pub(crate) fn new(peer: PeerId, added_at: u64, provisional: bool) -> Self {
        Self {
            peer,
            added_at,
            provisional,
            unlisted_since: None,
            failures: 0,
            failing_since: None,
            last_failure: None,
            last_success: None,
            bias: PathBias::default(),
        }
    }

    /// The guard's PeerId.
    pub fn peer(&self) -> &PeerId {
        &self.peer
    }

    /// When it was pinned (UNIX seconds).
    pub fn added_at(&self) -> u64 {
        self.added_at
    }

    /// Whether it was chosen before it met [`GUARD_MIN_AGE_SECS`] (specs/05 §5.2); cleared once
    /// its age in the view reaches it.
    pub fn is_provisional(&self) -> bool {
        self.provisional
    }

    /// Since when it has been missing from the view, if it is.
    pub fn unlisted_since(&self) -> Option<u64> {
        self.unlisted_since
    }

    /// Consecutive failures, at most [`GUARD_MAX_FAILURES`].
    pub fn failures(&self) -> u8 {
        self.failures
    }

    /// Its path-bias counts and state (specs/05 §5.6).
    pub fn path_bias(&self) -> &PathBias {
        &self.bias
    }

    /// Whether the last attempt failed less than [`GUARD_RETRY_DELAY_SECS`] ago.
    fn backing_off(&self, now: u64) -> bool {
        self.failures > 0
            && self
                .last_failure
                .is_some_and(|t| now.saturating_sub(t) < GUARD_RETRY_DELAY_SECS)
    }
}

/// Why a guard left the set (specs/05 §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovalReason {
    /// Missing from the view for longer than [`GUARD_EXPIRY_SECS`].
    Expired,
    /// [`GUARD_MAX_FAILURES`] consecutive failures over at least [`GUARD_FAILURE_PERIOD_SECS`]
    /// while another guard succeeded.
    Unreachable,
}

/// What [`GuardSet::update`] changed, for logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuardChanges {
    /// Guards pinned in this update, with whether each is provisional.
    pub added: Vec<(PeerId, bool)>,
    /// Guards that left, and why.
    pub removed: Vec<(PeerId, RemovalReason)>,
}

/// A circuit that failed after its guard answered, waiting for the view to say whether the
/// relay it was adding is still there (specs/05 §5.6).
#[derive(Debug, Clone, PartialEq, Eq)]
struct UnsettledFailure {
    guard: PeerId,
    adding: PeerId,
    refresh: u64,
}

/// The client's pinned guards, in order of preference, optionally backed by a state file.
#[derive(Debug, Clone, Default)]
pub struct GuardSet {
    guards: Vec<Guard>,
    state_path: Option<PathBuf>,
    /// Path-bias changes since the state file was last written.
    unsaved_bias: u32,
    /// At most [`MAX_UNSETTLED_FAILURES`], oldest first. Not kept in the state file: a
    /// restart forgets them, as it forgets pending uses.
    unsettled: VecDeque<UnsettledFailure>,
    /// View refreshes seen ([`Self::view_refreshed`]).
    refreshes: u64,
}

impl GuardSet {
    /// A guard set that is never written to disk (tests, throwaway clients).
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// Loads `data_dir/guards.state` (specs/05 §6), or starts empty if the file does not exist.
    /// Every later change is written back to it atomically.
    pub fn open(data_dir: &Path) -> Result<Self, PathError> {
        let path = data_dir.join(GUARD_STATE_FILE);
        let guards = state::load(&path)?;
        Ok(Self {
            guards,
            state_path: Some(path),
            ..Self::default()
        })
    }

    /// The pinned guards, first preferred.
    pub fn guards(&self) -> &[Guard] {
        &self.guards
    }

    /// Whether `peer` is a pinned guard.
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.guards.iter().any(|g| &g.peer == peer)
    }

    /// The state file, if the set has one.
    pub fn state_path(&self) -> Option<&Path> {
        self.state_path.as_deref()
    }

    /// Brings the set up to date with the view at `now` (specs/05 §5.2–§5.3): notes which
    /// guards are listed, replaces those the rules say must go, and pins new guards until there
    /// are [`NUM_GUARDS`], then one more whenever every pinned guard is down, up to
    /// [`MAX_SAMPLED_GUARDS`]. Writes the state file if anything changed.
    pub fn update<R: Rng + ?Sized>(
        &mut self,
        relays: &RelayIndex<'_>,
        now: u64,
        rng: &mut R,
    ) -> Result<GuardChanges, PathError> {
        let mut changed = false;
        for guard in &mut self.guards {
            match relays.position(&guard.peer) {
                Some(i) => {
                    changed |= guard.unlisted_since.take().is_some();
                    let age = now.saturating_sub(relays.relay(i).entry.first_seen);
                    if guard.provisional && age >= GUARD_MIN_AGE_SECS {
                        guard.provisional = false;
                        changed = true;
                    }
                }
                None => {
                    if guard.unlisted_since.is_none() {
                        guard.unlisted_since = Some(now);
                        changed = true;
                    }
                }
            }
        }

        let mut changes = GuardChanges::default();
        let reasons: Vec<Option<RemovalReason>> = self
            .guards
            .iter()
            .map(|guard| self.removal_reason(guard, now))
            .collect();
        let mut reasons = reasons.into_iter();
        self.guards.retain(|guard| match reasons.next().flatten() {
            Some(reason) => {
                changes.removed.push((guard.peer, reason));
                false
            }
            None => true,
        });

        while self.wants_another_guard(relays, now) {
            let just_removed: Vec<PeerId> = changes.removed.iter().map(|(p, _)| *p).collect();
            let Some((i, provisional)) = self.pick_new_guard(relays, &just_removed, now, rng)
            else {
                break;
            };
            let peer = relays.relay(i).peer;
            self.guards.push(Guard::new(peer, now, provisional));
            changes.added.push((peer, provisional));
        }

        if changed || changes != GuardChanges::default() {
            self.save()?;
        }
        Ok(changes)
    }

    /// specs/05 §5.2: fewer than [`NUM_GUARDS`] pinned, or every pinned guard down (missing
    /// from the view, or backing off after a failure) and the set not yet full. A guard
    /// disabled by path bias counts as up: failures that a middle or an exit can cause must
    /// never widen the set (§5.6). Nor does a set whose newest guard has never worked and is
    /// still listed: when even a fresh guard cannot be reached, the client's own network is the
    /// likelier fault, and pinning more would only show it to more relays once it is back.
    fn wants_another_guard(&self, relays: &RelayIndex<'_>, now: u64) -> bool {
        let pinned = self.guards.len();
        if pinned < NUM_GUARDS {
            return true;
        }
        if pinned >= MAX_SAMPLED_GUARDS {
            return false;
        }
        let listed = |g: &Guard| relays.position(&g.peer).is_some();
        if self.guards.iter().any(|g| listed(g) && !g.backing_off(now)) {
            return false;
        }
        let newest_never_worked = self
            .guards
            .last()
            .is_some_and(|g| g.last_success.is_none() && listed(g));
        !(pinned > NUM_GUARDS && newest_never_worked)
    }

    /// specs/05 §5.3: the only two reasons a guard leaves the set.
    fn removal_reason(&self, guard: &Guard, now: u64) -> Option<RemovalReason> {
        if guard
            .unlisted_since
            .is_some_and(|t| now.saturating_sub(t) > GUARD_EXPIRY_SECS)
        {
            return Some(RemovalReason::Expired);
        }
        let streak_start = guard.failing_since?;
        let long_streak = guard.failures >= GUARD_MAX_FAILURES
            && now.saturating_sub(streak_start) >= GUARD_FAILURE_PERIOD_SECS;
        // Only if the network demonstrably works: another guard succeeded during the streak.
        // Otherwise the client itself is probably offline, and every guard would be lost.
        let others_work = self.guards.iter().any(|other| {
            other.peer != guard.peer && other.last_success.is_some_and(|s| s > streak_start)
        });
        (long_streak && others_work).then_some(RemovalReason::Unreachable)
    }

    /// specs/05 §5.2: uniformly among relays old enough, preferring ones that share no /16 and
    /// no family with the guards already pinned; if none is old enough, among the oldest
    /// relays (provisional). A guard just removed is not chosen again in its place.
    fn pick_new_guard<R: Rng + ?Sized>(
        &self,
        relays: &RelayIndex<'_>,
        exclude: &[PeerId],
        now: u64,
        rng: &mut R,
    ) -> Option<(usize, bool)> {
        let pinned: Vec<usize> = self
            .guards
            .iter()
            .filter_map(|g| relays.position(&g.peer))
            .collect();
        let free: Vec<usize> = (0..relays.len())
            .filter(|i| {
                let peer = &relays.relay(*i).peer;
                !self.contains(peer) && !exclude.contains(peer)
            })
            .collect();
        if free.is_empty() {
            return None;
        }
        let apart: Vec<usize> = free
            .iter()
            .copied()
            .filter(|&i| pinned.iter().all(|&p| relays.compatible(i, p)))
            .collect();
        let pool = if apart.is_empty() { free } else { apart };
        let age = |i: usize| now.saturating_sub(relays.relay(i).entry.first_seen);
        let mature: Vec<usize> = pool
            .iter()
            .copied()
            .filter(|&i| age(i) >= GUARD_MIN_AGE_SECS)
            .collect();
        if !mature.is_empty() {
            return Some((mature[rng.random_range(0..mature.len())], false));
        }
        let oldest_seen = pool
            .iter()
            .map(|&i| relays.relay(i).entry.first_seen)
            .min()?;
        let oldest: Vec<usize> = pool
            .into_iter()
            .filter(|&i| relays.relay(i).entry.first_seen == oldest_seen)
            .collect();
        Some((oldest[rng.random_range(0..oldest.len())], true))
    }

    /// The pinned guards that are in the view and not disabled by path bias, as relay indices
    /// in the order a path tries them (specs/05 §5.5): set order, guards backing off after a
    /// failure last.
    pub(crate) fn usable(&self, relays: &RelayIndex<'_>, now: u64) -> Vec<(usize, bool)> {
        let listed = self
            .guards
            .iter()
            .filter(|g| g.bias.state != BiasState::Disabled)
            .filter_map(|g| relays.position(&g.peer).map(|i| (g, i)));
        let (ready, waiting): (Vec<_>, Vec<_>) = listed.partition(|(g, _)| !g.backing_off(now));
        ready
            .into_iter()
            .chain(waiting)
            .map(|(g, i)| (i, g.provisional))
            .collect()
    }

    /// Records a failed attempt to use `peer` as a guard (a link or circuit build through it
    /// failed). Returns whether `peer` is a pinned guard; writes the state file if it is.
    pub fn mark_failed(&mut self, peer: &PeerId, now: u64) -> Result<bool, PathError> {
        let Some(guard) = self.guards.iter_mut().find(|g| &g.peer == peer) else {
            return Ok(false);
        };
        guard.failures = guard.failures.saturating_add(1).min(GUARD_MAX_FAILURES);
        guard.failing_since.get_or_insert(now);
        guard.last_failure = Some(now);
        self.save()?;
        Ok(true)
    }

    /// Records a successful use of `peer` as a guard; ends its failure streak. Returns whether
    /// `peer` is a pinned guard.
    pub fn mark_succeeded(&mut self, peer: &PeerId, now: u64) -> Result<bool, PathError> {
        let Some(guard) = self.guards.iter_mut().find(|g| &g.peer == peer) else {
            return Ok(false);
        };
        let was_failing = guard.failures > 0;
        let write = was_failing
            || guard
                .last_success
                .is_none_or(|t| now.saturating_sub(t) >= SUCCESS_WRITE_INTERVAL_SECS);
        guard.failures = 0;
        guard.failing_since = None;
        guard.last_failure = None;
        guard.last_success = Some(now);
        if write {
            self.save()?;
        }
        Ok(true)
    }

    /// specs/05 §5.6: a circuit through guard `peer` got past it (its CREATED came back) and
    /// then was `built` or failed at a later hop, whatever the reason given. Returns the
    /// guard's new path-bias state if it changed (`None` also when `peer` is not pinned).
    pub fn record_circuit(
        &mut self,
        peer: &PeerId,
        built: bool,
    ) -> Result<Option<BiasState>, PathError> {
        self.record_bias(peer, |bias| bias.record_circuit(built))
    }

    /// specs/05 §5.6: a circuit through guard `peer` got past it and then failed while it was
    /// adding relay `adding`. The failure is judged [`PATH_BIAS_SETTLE_REFRESHES`] view
    /// refreshes later ([`Self::view_refreshed`]): against the guard if `adding` is still in
    /// the view then, not at all if it has left it (the client found it gone, specs/04 §6.3).
    /// Returns the state change of a guard whose oldest waiting failure had to be judged at
    /// once to make room.
    pub fn record_circuit_failed_adding(
        &mut self,
        peer: &PeerId,
        adding: PeerId,
    ) -> Result<Option<(PeerId, BiasState)>, PathError> {
        if !self.contains(peer) {
            return Ok(None);
        }
        self.unsettled.push_back(UnsettledFailure {
            guard: *peer,
            adding,
            refresh: self.refreshes,
        });
        if self.unsettled.len() <= MAX_UNSETTLED_FAILURES {
            return Ok(None);
        }
        let Some(oldest) = self.unsettled.pop_front() else {
            return Ok(None);
        };
        let change = self.record_circuit(&oldest.guard, false)?;
        Ok(change.map(|state| (oldest.guard, state)))
    }

    /// Failures waiting to be judged ([`Self::record_circuit_failed_adding`]).
    pub fn unsettled_failures(&self) -> usize {
        self.unsettled.len()
    }

    /// The view was refreshed: judges the failures that have waited
    /// [`PATH_BIAS_SETTLE_REFRESHES`] refreshes, each against its guard if the relay it was
    /// adding is in `relays`, and drops the others. Returns the guards whose state changed.
    pub fn view_refreshed(
        &mut self,
        relays: &RelayIndex<'_>,
    ) -> Result<Vec<(PeerId, BiasState)>, PathError> {
        self.refreshes += 1;
        let mut changes = Vec::new();
        while self
            .unsettled
            .front()
            .is_some_and(|f| f.refresh + PATH_BIAS_SETTLE_REFRESHES <= self.refreshes)
        {
            let Some(failure) = self.unsettled.pop_front() else {
                break;
            };
            if relays.position(&failure.adding).is_none() {
                continue;
            }
            if let Some(state) = self.record_circuit(&failure.guard, false)? {
                changes.push((failure.guard, state));
            }
        }
        Ok(changes)
    }

    /// specs/05 §5.6: a circuit through guard `peer` was given its first stream.
    pub fn record_use_attempt(&mut self, peer: &PeerId) -> Result<Option<BiasState>, PathError> {
        self.record_bias(peer, PathBias::record_use_attempt)
    }

    /// specs/05 §5.6: the exit answered a stream on a circuit through guard `peer` that
    /// [`Self::record_use_attempt`] counted.
    pub fn record_use_success(&mut self, peer: &PeerId) -> Result<Option<BiasState>, PathError> {
        self.record_bias(peer, PathBias::record_use_success)
    }

    /// A circuit through `peer` counted by [`Self::record_use_attempt`] closed with no answer
    /// from its exit (specs/05 §5.6).
    pub fn record_use_unanswered(&mut self, peer: &PeerId) -> Result<Option<BiasState>, PathError> {
        self.record_bias(peer, PathBias::record_use_unanswered)
    }

    fn record_bias(
        &mut self,
        peer: &PeerId,
        record: impl FnOnce(&mut PathBias) -> Option<BiasState>,
    ) -> Result<Option<BiasState>, PathError> {
        let Some(guard) = self.guards.iter_mut().find(|g| &g.peer == peer) else {
            return Ok(None);
        };
        let change = record(&mut guard.bias);
        self.unsaved_bias += 1;
        if change.is_some() || self.unsaved_bias >= PATH_BIAS_WRITE_EVERY {
            self.save()?;
        }
        Ok(change)
    }

    /// Writes the state file now if path-bias counts changed since it was last written (at
    /// shutdown).
    pub fn flush(&mut self) -> Result<(), PathError> {
        if self.unsaved_bias > 0 {
            self.save()?;
        }
        Ok(())
    }

    fn save(&mut self) -> Result<(), PathError> {
        self.unsaved_bias = 0;
        match &self.state_path {
            Some(path) => state::store(path, &self.guards),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{NOW, OLD, Spec, keys, peer_of, rng, view_of, view_with};
    use crate::{ExitTarget, PathSelector};

    fn ten_relays(first_seen: u64) -> Vec<Spec<'static>> {
        relays_apart(10, first_seen)
    }

    fn peers(set: &GuardSet) -> Vec<PeerId> {
        set.guards().iter().map(|g| *g.peer()).collect()
    }

    #[test]
    fn guard_set_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (view, _) = view_of(&ten_relays(OLD));
        let relays = RelayIndex::new(&view);
        let mut selector = PathSelector::open(dir.path()).expect("open");
        let path = selector
            .select_path(&relays, ExitTarget::Port(443), NOW, &mut rng(1))
            .expect("path");
        let pinned = peers(selector.guards());
        assert_eq!(pinned.len(), NUM_GUARDS);
        selector.mark_guard_failed(&pinned[1], NOW).expect("mark");
        drop(selector);

        let file = dir.path().join(GUARD_STATE_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file)
                .expect("state file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!dir.path().join("guards.state.tmp").exists());

        // A new selector, another RNG: the same guards in the same order, same counters.
        let mut restarted = PathSelector::open(dir.path()).expect("reopen");
        assert_eq!(peers(restarted.guards()), pinned);
        assert_eq!(restarted.guards().guards()[1].failures(), 1);
        let again = restarted
            .select_path(&relays, ExitTarget::Port(443), NOW + 60, &mut rng(99))
            .expect("path");
        assert_eq!(peers(restarted.guards()), pinned);
        assert_eq!(again.peers()[0], path.peers()[0]);
    }

    #[test]
    fn brand_new_network_gets_provisional_guards_that_mature() {
        let (view, _) = view_of(&ten_relays(NOW));
        let relays = RelayIndex::new(&view);
        let mut set = GuardSet::in_memory();
        let changes = set.update(&relays, NOW, &mut rng(2)).expect("update");
        assert_eq!(changes.added.len(), NUM_GUARDS);
        assert!(set.guards().iter().all(Guard::is_provisional));
        let before = peers(&set);
        set.update(&relays, NOW + GUARD_MIN_AGE_SECS - 1, &mut rng(3))
            .expect("update");
        assert!(set.guards().iter().all(Guard::is_provisional));
        set.update(&relays, NOW + GUARD_MIN_AGE_SECS, &mut rng(4))
            .expect("update");
        assert!(set.guards().iter().all(|g| !g.is_provisional()));
        assert_eq!(peers(&set), before, "maturing replaces nobody");
    }

    #[test]
    fn old_relays_are_preferred_and_fallback_takes_the_oldest() {
        // Three young relays, seven old ones: guards come from the old ones only.
        let mut specs = ten_relays(OLD);
        for spec in &mut specs[..3] {
            spec.first_seen = NOW - 60;
        }
        let keys = keys(specs.len());
        let view = view_with(&keys, &specs);
        let relays = RelayIndex::new(&view);
        let young: Vec<PeerId> = keys[..3].iter().map(peer_of).collect();
        for seed in 0..20 {
            let mut set = GuardSet::in_memory();
            set.update(&relays, NOW, &mut rng(seed)).expect("update");
            assert!(peers(&set).iter().all(|p| !young.contains(p)));
            assert!(set.guards().iter().all(|g| !g.is_provisional()));
        }
        // Nobody is old enough: the three oldest (seen an hour before the rest) are chosen.
        let mut specs = ten_relays(NOW - 60);
        for spec in &mut specs[4..7] {
            spec.first_seen = NOW - 3600;
        }
        let view = view_with(&keys, &specs);
        let relays = RelayIndex::new(&view);
        let oldest: Vec<PeerId> = keys[4..7].iter().map(peer_of).collect();
        let mut set = GuardSet::in_memory();
        set.update(&relays, NOW, &mut rng(5)).expect("update");
        let mut got = peers(&set);
        got.sort();
        let mut want = oldest;
        want.sort();
        assert_eq!(got, want);
        assert!(set.guards().iter().all(Guard::is_provisional));
    }

    #[test]
    fn unlisted_guard_is_replaced_only_after_expiry() {
        let (mut view, _) = view_of(&ten_relays(OLD));
        let mut set = GuardSet::in_memory();
        set.update(&RelayIndex::new(&view), NOW, &mut rng(6))
            .expect("update");
        let pinned = peers(&set);
        let gone = pinned[0];
        view.remove(&gone).expect("in view");
        let t0 = NOW + 100;
        let changes = set
            .update(&RelayIndex::new(&view), t0, &mut rng(7))
            .expect("update");
        assert_eq!(changes, GuardChanges::default());
        assert_eq!(set.guards()[0].unlisted_since(), Some(t0));
        for t in [t0 + 1, t0 + GUARD_EXPIRY_SECS] {
            let changes = set
                .update(&RelayIndex::new(&view), t, &mut rng(8))
                .expect("update");
            assert_eq!(changes, GuardChanges::default(), "at {t}");
            assert_eq!(peers(&set), pinned);
        }
        let changes = set
            .update(
                &RelayIndex::new(&view),
                t0 + GUARD_EXPIRY_SECS + 1,
                &mut rng(9),
            )
            .expect("update");
        assert_eq!(changes.removed, vec![(gone, RemovalReason::Expired)]);
        assert_eq!(changes.added.len(), 1);
        assert_eq!(&peers(&set)[..2], &pinned[1..]);
        assert!(!set.contains(&gone));
    }

    #[test]
    fn a_guard_that_comes_back_in_time_stays() {
        let keys = keys(10);
        let specs = ten_relays(OLD);
        let view = view_with(&keys, &specs);
        let mut set = GuardSet::in_memory();
        set.update(&RelayIndex::new(&view), NOW, &mut rng(10))
            .expect("update");
        let pinned = peers(&set);
        let mut without = view.clone();
        without.remove(&pinned[2]).expect("in view");
        set.update(&RelayIndex::new(&without), NOW + 1, &mut rng(11))
            .expect("update");
        // Back before expiry, with a new descriptor claiming another address and a family:
        // none of that matters (specs/05 §5.3).
        let i = keys
            .iter()
            .position(|k| peer_of(k) == pinned[2])
            .expect("key");
        let mut spec = Spec::exit(&["/ip4/10.200.0.1/tcp/1"], "reject 1-65535");
        spec.family = pinned.clone();
        without.offer(
            crate::testutil::sign(&keys[i], &spec),
            NOW + GUARD_EXPIRY_SECS,
        );
        set.update(
            &RelayIndex::new(&without),
            NOW + GUARD_EXPIRY_SECS,
            &mut rng(12),
        )
        .expect("update");
        assert_eq!(set.guards()[2].unlisted_since(), None);
        let changes = set
            .update(
                &RelayIndex::new(&without),
                NOW + 10 * GUARD_EXPIRY_SECS,
                &mut rng(13),
            )
            .expect("update");
        assert_eq!(changes, GuardChanges::default());
        assert_eq!(peers(&set), pinned);
    }

    #[test]
    fn failing_guard_is_replaced_only_under_the_rules() {
        let (view, _) = view_of(&ten_relays(OLD));
        let relays = RelayIndex::new(&view);
        let mut set = GuardSet::in_memory();
        set.update(&relays, NOW, &mut rng(14)).expect("update");
        let pinned = peers(&set);
        let bad = pinned[0];
        let t0 = NOW + 10;

        // Many failures in a short time: kept (period not over), even with another success.
        for k in 0..100 {
            set.mark_failed(&bad, t0 + k).expect("mark");
        }
        assert_eq!(set.guards()[0].failures(), GUARD_MAX_FAILURES, "saturates");
        set.mark_succeeded(&pinned[1], t0 + 200).expect("mark");
        set.update(&relays, t0 + GUARD_FAILURE_PERIOD_SECS - 1, &mut rng(15))
            .expect("update");
        assert!(set.contains(&bad));

        // A long streak while every other guard fails too (the client is offline): kept.
        let mut offline = set.clone();
        offline.guards[1].last_success = None;
        offline
            .update(&relays, t0 + 3 * GUARD_FAILURE_PERIOD_SECS, &mut rng(16))
            .expect("update");
        assert!(offline.contains(&bad));

        // A success ends the streak: kept.
        let mut recovered = set.clone();
        recovered.mark_succeeded(&bad, t0 + 300).expect("mark");
        assert_eq!(recovered.guards()[0].failures(), 0);
        recovered
            .update(&relays, t0 + 3 * GUARD_FAILURE_PERIOD_SECS, &mut rng(17))
            .expect("update");
        assert!(recovered.contains(&bad));

        // Fewer than GUARD_MAX_FAILURES over a long time: kept.
        let mut few = GuardSet::in_memory();
        few.update(&relays, NOW, &mut rng(14)).expect("update");
        for k in 0..u64::from(GUARD_MAX_FAILURES) - 1 {
            few.mark_failed(&bad, t0 + k * 3600).expect("mark");
        }
        few.mark_succeeded(&pinned[1], t0 + 3600).expect("mark");
        few.update(&relays, t0 + 3 * GUARD_FAILURE_PERIOD_SECS, &mut rng(18))
            .expect("update");
        assert!(few.contains(&bad));

        // All three conditions: replaced, appended after the others.
        let changes = set
            .update(&relays, t0 + GUARD_FAILURE_PERIOD_SECS, &mut rng(19))
            .expect("update");
        assert_eq!(changes.removed, vec![(bad, RemovalReason::Unreachable)]);
        assert_eq!(&peers(&set)[..2], &pinned[1..]);
        assert_eq!(set.guards().len(), NUM_GUARDS);
        assert!(!set.contains(&bad));
    }

    #[test]
    fn failed_guard_backs_off_then_is_used_again() {
        let (view, _) = view_of(&ten_relays(OLD));
        let relays = RelayIndex::new(&view);
        let mut selector = PathSelector::in_memory();
        let mut rng = rng(20);
        let first = selector
            .select_path(&relays, ExitTarget::Any, NOW, &mut rng)
            .expect("path")
            .peers()[0];
        assert_eq!(first, *selector.guards().guards()[0].peer());
        selector.mark_guard_failed(&first, NOW).expect("mark");
        let during = selector
            .select_path(&relays, ExitTarget::Any, NOW + 1, &mut rng)
            .expect("path")
            .peers()[0];
        assert_ne!(during, first);
        assert!(selector.guards().contains(&during));
        let after = selector
            .select_path(
                &relays,
                ExitTarget::Any,
                NOW + GUARD_RETRY_DELAY_SECS,
                &mut rng,
            )
            .expect("path")
            .peers()[0];
        assert_eq!(after, first);
        // Marking a relay that is not a guard changes nothing.
        let stranger = PeerId::random();
        assert!(!selector.mark_guard_failed(&stranger, NOW).expect("mark"));
        assert!(!selector.mark_guard_succeeded(&stranger, NOW).expect("mark"));
    }

    #[test]
    fn a_guard_disabled_by_path_bias_is_skipped_kept_pinned_and_remembered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (view, _) = view_of(&ten_relays(OLD));
        let relays = RelayIndex::new(&view);
        let mut selector = PathSelector::open(dir.path()).expect("open");
        let mut rng = rng(30);
        let first = selector
            .select_path(&relays, ExitTarget::Any, NOW, &mut rng)
            .expect("path")
            .peers()[0];
        let pinned = peers(selector.guards());
        let mut changes = Vec::new();
        for _ in 0..crate::PATH_BIAS_MIN_CIRCS {
            changes.extend(selector.record_circuit(&first, false).expect("record"));
        }
        assert_eq!(changes, vec![BiasState::Disabled]);
        let next = selector
            .select_path(&relays, ExitTarget::Any, NOW + 1, &mut rng)
            .expect("path")
            .peers()[0];
        assert_eq!(next, pinned[1], "the next pinned guard, not a new one");
        assert_eq!(peers(selector.guards()), pinned);
        // A relay that is not pinned has no record.
        assert_eq!(
            selector
                .record_circuit(&PeerId::random(), false)
                .expect("record"),
            None
        );
        drop(selector);
        let mut restarted = PathSelector::open(dir.path()).expect("reopen");
        let bias = *restarted.guards().guards()[0].path_bias();
        assert_eq!(bias.state(), BiasState::Disabled);
        assert_eq!(bias.circ_attempts(), crate::PATH_BIAS_MIN_CIRCS);
        let again = restarted
            .select_path(&relays, ExitTarget::Any, NOW + 2, &mut rng)
            .expect("path")
            .peers()[0];
        assert_eq!(again, pinned[1]);
        // Every pinned guard disabled: no path, and no new guard either.
        for guard in &pinned[1..] {
            for _ in 0..crate::PATH_BIAS_MIN_CIRCS {
                restarted.record_circuit(guard, false).expect("record");
            }
        }
        let err = restarted
            .select_path(&relays, ExitTarget::Any, NOW + 3, &mut rng)
            .expect_err("no usable guard");
        assert!(matches!(err, crate::PathError::NoUsableGuard), "{err}");
        assert_eq!(peers(restarted.guards()), pinned);
    }

    #[test]
    fn path_bias_counts_reach_the_file_in_batches_and_at_flush() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (view, _) = view_of(&ten_relays(OLD));
        let mut set = GuardSet::open(dir.path()).expect("open");
        set.update(&RelayIndex::new(&view), NOW, &mut rng(31))
            .expect("update");
        let guard = *set.guards()[0].peer();
        let on_disk = || {
            GuardSet::open(dir.path()).expect("reopen").guards()[0]
                .path_bias()
                .circ_attempts()
        };
        for _ in 0..PATH_BIAS_WRITE_EVERY - 1 {
            set.record_circuit(&guard, true).expect("record");
        }
        assert_eq!(on_disk(), 0, "not written yet");
        set.record_circuit(&guard, true).expect("record");
        assert_eq!(on_disk(), PATH_BIAS_WRITE_EVERY);
        set.record_circuit(&guard, true).expect("record");
        set.flush().expect("flush");
        assert_eq!(on_disk(), PATH_BIAS_WRITE_EVERY + 1);
    }

    /// `n` relays, relay `i` alone in `10.i.0.0/16`, every second one an exit.
    fn relays_apart(n: u8, first_seen: u64) -> Vec<Spec<'static>> {
        (1..=n)
            .map(|i| {
                let addr: &'static str =
                    Box::leak(format!("/ip4/10.{i}.0.1/tcp/1").into_boxed_str());
                let addrs: &'static [&'static str] = Box::leak(vec![addr].into_boxed_slice());
                let mut spec = if i % 2 == 0 {
                    Spec::exit(addrs, "accept 1-65535")
                } else {
                    Spec::relay(addrs)
                };
                spec.first_seen = first_seen;
                spec
            })
            .collect()
    }

    #[test]
    fn every_guard_gone_from_the_view_pins_one_more() {
        // The churn the simulated internet showed: the three guards died and left the view.
        // Before the sample, the client then had no path at all until GUARD_EXPIRY (3 days).
        let (view, _) = view_of(&ten_relays(OLD));
        let mut selector = PathSelector::in_memory();
        selector
            .update_guards(&RelayIndex::new(&view), NOW, &mut rng(21))
            .expect("update");
        let pinned = peers(selector.guards());
        let mut without = view.clone();
        for peer in &pinned {
            without.remove(peer);
        }
        let path = selector
            .select_path(
                &RelayIndex::new(&without),
                ExitTarget::Any,
                NOW + 1,
                &mut rng(22),
            )
            .expect("a fourth guard makes a path");
        let now_pinned = peers(selector.guards());
        assert_eq!(now_pinned.len(), NUM_GUARDS + 1, "exactly one more");
        assert_eq!(
            now_pinned[..NUM_GUARDS],
            pinned[..],
            "the first three stay pinned"
        );
        assert_eq!(path.peers()[0], now_pinned[NUM_GUARDS]);

        // The first guards come back: the first of them is used again, nothing more pinned.
        let back = selector
            .select_path(
                &RelayIndex::new(&view),
                ExitTarget::Any,
                NOW + 2,
                &mut rng(23),
            )
            .expect("path");
        assert_eq!(back.peers()[0], pinned[0]);
        assert_eq!(peers(selector.guards()).len(), NUM_GUARDS + 1);
    }

    #[test]
    fn guards_down_after_failures_pin_one_more_only_once_the_newest_has_worked() {
        let (view, _) = view_of(&ten_relays(OLD));
        let relays = RelayIndex::new(&view);
        let mut set = GuardSet::in_memory();
        set.update(&relays, NOW, &mut rng(24)).expect("update");
        for g in peers(&set) {
            set.mark_succeeded(&g, NOW).expect("mark");
            set.mark_failed(&g, NOW + 1).expect("mark");
        }
        let changes = set.update(&relays, NOW + 2, &mut rng(25)).expect("update");
        assert_eq!(changes.added.len(), 1, "every guard backing off: one more");
        let fourth = peers(&set)[NUM_GUARDS];
        assert_eq!(
            set.usable(&relays, NOW + 2)[0].0,
            relays.position(&fourth).expect("listed")
        );

        // The new guard fails before it ever worked: the client's own network is the likelier
        // fault, so nothing more is pinned (an offline client would otherwise pin 20).
        set.mark_failed(&fourth, NOW + 3).expect("mark");
        let changes = set.update(&relays, NOW + 4, &mut rng(26)).expect("update");
        assert_eq!(changes, GuardChanges::default());
        assert_eq!(set.guards().len(), NUM_GUARDS + 1);

        // Once it has worked and then failed too, one more.
        set.mark_succeeded(&fourth, NOW + 5).expect("mark");
        set.mark_failed(&fourth, NOW + 6).expect("mark");
        let changes = set.update(&relays, NOW + 7, &mut rng(27)).expect("update");
        assert_eq!(changes.added.len(), 1);

        // After the retry delay the first guard is up again as far as the set knows: the
        // growth stops and it is preferred again.
        let later = NOW + 1 + GUARD_RETRY_DELAY_SECS;
        let changes = set.update(&relays, later, &mut rng(28)).expect("update");
        assert_eq!(changes, GuardChanges::default());
        let first = relays.position(&peers(&set)[0]).expect("listed");
        assert_eq!(set.usable(&relays, later)[0].0, first);
    }

    #[test]
    fn the_sample_stops_at_its_bound() {
        let (view, _) = view_of(&relays_apart(MAX_SAMPLED_GUARDS as u8 + 6, OLD));
        let mut set = GuardSet::in_memory();
        let mut t = NOW;
        for round in 0..(MAX_SAMPLED_GUARDS as u64 + 10) {
            set.update(&RelayIndex::new(&view), t, &mut rng(30 + round))
                .expect("update");
            for g in peers(&set) {
                set.mark_succeeded(&g, t).expect("mark");
                set.mark_failed(&g, t).expect("mark");
            }
            t += 1;
        }
        assert_eq!(set.guards().len(), MAX_SAMPLED_GUARDS);
        let mut selector = PathSelector::new(set);
        let path = selector
            .select_path(&RelayIndex::new(&view), ExitTarget::Any, t, &mut rng(99))
            .expect("a backing-off guard is still tried");
        assert!(selector.guards().contains(&path.peers()[0]));
        assert_eq!(selector.guards().guards().len(), MAX_SAMPLED_GUARDS);
    }

    #[test]
    fn guards_disabled_by_path_bias_never_widen_the_set() {
        let (view, _) = view_of(&ten_relays(OLD));
        let relays = RelayIndex::new(&view);
        let mut selector = PathSelector::in_memory();
        selector
            .update_guards(&relays, NOW, &mut rng(40))
            .expect("update");
        let pinned = peers(selector.guards());
        for g in &pinned {
            for _ in 0..crate::PATH_BIAS_MIN_CIRCS {
                selector.record_circuit(g, false).expect("record");
            }
            assert_eq!(
                selector
                    .guards()
                    .guards()
                    .iter()
                    .find(|x| x.peer() == g)
                    .map(|x| x.path_bias().state()),
                Some(BiasState::Disabled)
            );
        }
        let err = selector
            .select_path(&relays, ExitTarget::Any, NOW + 1, &mut rng(41))
            .expect_err("no usable guard");
        assert!(matches!(err, crate::PathError::NoUsableGuard), "{err}");
        assert_eq!(peers(selector.guards()), pinned);
    }

    /// A guard set pinned from `view`, and the relays of `view` it did not pin.
    fn pinned_and_unpinned(
        view: &shallot_directory::NetworkView,
        seed: u64,
    ) -> (GuardSet, Vec<PeerId>) {
        let relays = RelayIndex::new(view);
        let mut set = GuardSet::in_memory();
        set.update(&relays, NOW, &mut rng(seed)).expect("update");
        let unpinned = (0..relays.len())
            .map(|i| relays.relay(i).peer)
            .filter(|p| !set.contains(p))
            .collect();
        (set, unpinned)
    }

    #[test]
    fn a_failure_adding_a_relay_that_then_left_the_view_is_not_held_against_the_guard() {
        let (view, _) = view_of(&ten_relays(OLD));
        let (mut set, others) = pinned_and_unpinned(&view, 50);
        let guard = peers(&set)[0];
        let (dead, alive) = (others[0], others[1]);
        set.record_circuit_failed_adding(&guard, dead)
            .expect("record");
        set.record_circuit_failed_adding(&guard, alive)
            .expect("record");
        assert_eq!(set.unsettled_failures(), 2);
        let mut gone = view.clone();
        gone.remove(&dead);
        // The first refresh may have started before the directory noticed: nothing judged.
        set.view_refreshed(&RelayIndex::new(&gone))
            .expect("refresh");
        assert_eq!(set.guards()[0].path_bias().circ_attempts(), 0);
        set.view_refreshed(&RelayIndex::new(&gone))
            .expect("refresh");
        assert_eq!(set.unsettled_failures(), 0);
        let bias = set.guards()[0].path_bias();
        assert_eq!(
            (bias.circ_attempts(), bias.circ_built()),
            (1, 0),
            "only the live relay's"
        );
    }

    #[test]
    fn unsettled_failures_are_bounded_and_the_oldest_counts_at_once() {
        let (view, _) = view_of(&ten_relays(OLD));
        let (mut set, others) = pinned_and_unpinned(&view, 51);
        let guard = peers(&set)[0];
        let other = others[0];
        for _ in 0..MAX_UNSETTLED_FAILURES + 3 {
            set.record_circuit_failed_adding(&guard, other)
                .expect("record");
        }
        assert_eq!(set.unsettled_failures(), MAX_UNSETTLED_FAILURES);
        assert_eq!(set.guards()[0].path_bias().circ_attempts(), 3);
        // A relay that is not pinned records nothing.
        set.record_circuit_failed_adding(&other, guard)
            .expect("record");
        assert_eq!(set.unsettled_failures(), MAX_UNSETTLED_FAILURES);
    }

    #[test]
    fn guards_prefer_distinct_subnets() {
        // Ten relays, five /16s with two relays each: the three guards are in three /16s.
        let specs: Vec<Spec<'static>> = (0..10u8)
            .map(|i| {
                let addr: &'static str =
                    Box::leak(format!("/ip4/10.{}.{}.1/tcp/1", i / 2, i % 2).into_boxed_str());
                Spec::relay(Box::leak(vec![addr].into_boxed_slice()))
            })
            .collect();
        let (view, _) = view_of(&specs);
        let relays = RelayIndex::new(&view);
        for seed in 0..20 {
            let mut set = GuardSet::in_memory();
            set.update(&relays, NOW, &mut rng(seed)).expect("update");
            let idx: Vec<usize> = set
                .guards()
                .iter()
                .filter_map(|g| relays.position(g.peer()))
                .collect();
            for (a, b) in [(0, 1), (0, 2), (1, 2)] {
                assert!(relays.compatible(idx[a], idx[b]));
            }
        }
    }
}
