//! One memory budget for the bytes a relay's circuits hold on behalf of their peers
//! (specs/00 §4.5; Tor's `MaxMemInQueues` and its out-of-memory handler).
//!
//! Every circuit task keeps a [`CircuitAccount`]: after each wake-up it sets how many bytes it
//! holds (cells queued either way, runs of cells read but not yet handled, batches with its
//! link writers, spare buffers, bytes read from destinations and not yet sent, bytes for
//! destinations not yet written) and since when the oldest of them has waited. When the sum
//! over all circuits passes the budget, the circuits whose data has waited longest are
//! destroyed until the sum is at most [`RECLAIM_TARGET_PERCENT`] of the budget: a circuit
//! whose data moves keeps young data, one that a peer stalls to pin memory grows old, so the
//! stalled ones go first, whoever sent them.
//!
//! A destroyed circuit's bytes leave the sum at once (its task frees them as it ends, within
//! a pass of its loop), so one reclaim is enough however many circuits update meanwhile.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tokio::sync::Notify;
use tracing::warn;

/// What a reclaim brings the queued bytes down to, in percent of the budget (Tor's OOM
/// handler frees down to 90 %), so that a relay at its budget does not destroy one circuit
/// per cell.
pub const RECLAIM_TARGET_PERCENT: usize = 90;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The relay's budget for queued bytes, shared by every circuit.
#[derive(Clone)]
pub(crate) struct MemoryBudget(Arc<Budget>);

struct Budget {
    limit: usize,
    used: AtomicUsize,
    /// Every open circuit's account, to pick victims from. One entry per circuit, so bounded by
    /// `max_circuits` (an account is made only for an accepted circuit).
    accounts: Mutex<Accounts>,
}

#[derive(Default)]
struct Accounts {
    next_id: u64,
    open: HashMap<u64, Arc<Shared>>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    destroyed: Notify,
}

#[derive(Default)]
struct State {
    bytes: usize,
    oldest: Option<Instant>,
    /// Chosen by a reclaim: its bytes no longer count, and it counts nothing more.
    destroyed: bool,
}

/// What one reclaim did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Reclaimed {
    pub(crate) circuits: usize,
    pub(crate) bytes: usize,
}

impl MemoryBudget {
    pub(crate) fn new(limit: usize) -> Self {
        Self(Arc::new(Budget {
            limit,
            used: AtomicUsize::new(0),
            accounts: Mutex::new(Accounts::default()),
        }))
    }

    /// An account for a new circuit, holding nothing yet.
    pub(crate) fn open(&self) -> CircuitAccount {
        let shared = Arc::new(Shared::default());
        let mut accounts = lock(&self.0.accounts);
        let id = accounts.next_id;
        accounts.next_id += 1;
        accounts.open.insert(id, Arc::clone(&shared));
        CircuitAccount {
            id,
            shared,
            budget: self.clone(),
        }
    }

    /// Bytes the circuits hold now, as their accounts last said.
    pub(crate) fn used(&self) -> usize {
        self.0.used.load(Ordering::Relaxed)
    }

    pub(crate) fn limit(&self) -> usize {
        self.0.limit
    }

    /// Destroys the circuits whose data waited longest until the queued bytes are at most
    /// [`RECLAIM_TARGET_PERCENT`] of the budget. Nothing if they are within the budget (another
    /// circuit's reclaim came first).
    fn reclaim(&self, now: Instant) -> Reclaimed {
        let budget = &self.0;
        let accounts = lock(&budget.accounts);
        let mut done = Reclaimed::default();
        if budget.used.load(Ordering::Relaxed) <= budget.limit {
            return done;
        }
        let mut holding: Vec<(Instant, &Arc<Shared>)> = accounts
            .open
            .values()
            .filter_map(|shared| {
                let state = lock(&shared.state);
                (!state.destroyed && state.bytes > 0).then(|| (state.oldest.unwrap_or(now), shared))
            })
            .collect();
        holding.sort_unstable_by_key(|(since, _)| *since);
        let target = budget.limit / 100 * RECLAIM_TARGET_PERCENT;
        let mut oldest = None;
        for (since, shared) in holding {
            if budget.used.load(Ordering::Relaxed) <= target {
                break;
            }
            let mut state = lock(&shared.state);
            if state.destroyed {
                continue;
            }
            state.destroyed = true;
            budget.used.fetch_sub(state.bytes, Ordering::Relaxed);
            done.circuits += 1;
            done.bytes += state.bytes;
            state.bytes = 0;
            oldest.get_or_insert(since);
            shared.destroyed.notify_one();
        }
        let remaining = budget.used.load(Ordering::Relaxed);
        warn!(
            destroyed = done.circuits,
            freed_bytes = done.bytes,
            oldest_waited_ms = oldest.map_or(0, |t| now.saturating_duration_since(t).as_millis()),
            queued_bytes = remaining,
            budget_bytes = budget.limit,
            circuits_left = accounts.open.len() - done.circuits,
            "queued bytes over `max_queued_bytes`: destroyed the circuits whose data waited longest"
        );
        done
    }
}

/// One circuit's share of the budget. Dropping it gives the bytes back.
pub(crate) struct CircuitAccount {
    id: u64,
    shared: Arc<Shared>,
    budget: MemoryBudget,
}

impl CircuitAccount {
    /// The circuit holds `bytes` now; the oldest of them has waited since `oldest` (`None`:
    /// since now). Past the budget this runs a reclaim (which may choose this circuit) and
    /// says what it did.
    pub(crate) fn set(&self, bytes: usize, oldest: Option<Instant>, now: Instant) -> Reclaimed {
        let grew = {
            let mut state = lock(&self.shared.state);
            if state.destroyed {
                return Reclaimed::default();
            }
            state.oldest = if bytes > 0 {
                oldest.or(Some(now))
            } else {
                None
            };
            let before = std::mem::replace(&mut state.bytes, bytes);
            let used = &self.budget.0.used;
            if bytes >= before {
                used.fetch_add(bytes - before, Ordering::Relaxed);
            } else {
                used.fetch_sub(before - bytes, Ordering::Relaxed);
            }
            bytes > before
        };
        if grew && self.budget.used() > self.budget.limit() {
            return self.budget.reclaim(now);
        }
        Reclaimed::default()
    }

    /// Resolves once a reclaim chose this circuit (at once if it already did).
    pub(crate) async fn destroyed(&self) {
        loop {
            let notified = self.shared.destroyed.notified();
            if self.is_destroyed() {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn is_destroyed(&self) -> bool {
        lock(&self.shared.state).destroyed
    }
}

impl Drop for CircuitAccount {
    fn drop(&mut self) {
        lock(&self.budget.0.accounts).open.remove(&self.id);
        let state = lock(&self.shared.state);
        if !state.destroyed {
            self.budget.0.used.fetch_sub(state.bytes, Ordering::Relaxed);
        }
    }
}

/// Since when a queue's oldest byte has waited, as far as the circuit task can tell: from
/// the moment it stopped being empty, moved up each time bytes leave it.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Waiting(Option<Instant>);

impl Waiting {
    /// The queue holds something (`true`) or nothing now.
    pub(crate) fn note(&mut self, holding: bool, now: Instant) {
        if !holding {
            self.0 = None;
        } else if self.0.is_none() {
            self.0 = Some(now);
        }
    }

    /// Bytes left the queue: what is left waited no longer than since now.
    pub(crate) fn progressed(&mut self, now: Instant) {
        if self.0.is_some() {
            self.0 = Some(now);
        }
    }

    pub(crate) fn since(self) -> Option<Instant> {
        self.0
    }
}

/// The earlier of two times, either of which may be absent (waits, deadlines).
pub(crate) fn earliest<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    a.into_iter().chain(b).min()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    const KIB: usize = 1024;

    #[test]
    fn accounts_add_up_and_give_back_on_drop() {
        let budget = MemoryBudget::new(1024 * KIB);
        let now = Instant::now();
        let a = budget.open();
        let b = budget.open();
        a.set(100 * KIB, None, now);
        b.set(50 * KIB, None, now);
        assert_eq!(budget.used(), 150 * KIB);
        a.set(10 * KIB, None, now);
        assert_eq!(budget.used(), 60 * KIB);
        drop(b);
        assert_eq!(budget.used(), 10 * KIB);
        drop(a);
        assert_eq!(budget.used(), 0);
        assert!(lock(&budget.0.accounts).open.is_empty());
    }

    #[test]
    fn over_the_budget_the_circuits_whose_data_waited_longest_go_first() {
        let budget = MemoryBudget::new(1000 * KIB);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Ten circuits of 90 KiB each, whose data started waiting at seconds 0..10 (given in
        // a shuffled order): 900 KiB, within the budget.
        let order = [3u64, 7, 0, 9, 1, 5, 8, 2, 6, 4];
        let accounts: Vec<(u64, CircuitAccount)> =
            order.iter().map(|&s| (s, budget.open())).collect();
        for (s, acc) in &accounts {
            let done = acc.set(90 * KIB, Some(at(*s)), at(20));
            assert_eq!(done.circuits, 0);
        }
        // An eleventh circuit whose data is fresh brings 200 KiB: 1,100 KiB, over the budget.
        // Down to 900 KiB at most needs 200 KiB freed: the three oldest go (0, 1, 2).
        let fresh = budget.open();
        let done = fresh.set(200 * KIB, Some(at(20)), at(20));
        assert_eq!(
            done,
            Reclaimed {
                circuits: 3,
                bytes: 270 * KIB
            }
        );
        let destroyed: Vec<u64> = accounts
            .iter()
            .filter(|(_, acc)| acc.is_destroyed())
            .map(|(s, _)| *s)
            .collect();
        let mut destroyed = destroyed;
        destroyed.sort_unstable();
        assert_eq!(destroyed, vec![0, 1, 2]);
        assert!(!fresh.is_destroyed());
        assert_eq!(budget.used(), 830 * KIB);
        // A destroyed circuit's later updates count nothing, and its drop gives nothing back
        // twice.
        let (_, first_destroyed) = accounts.iter().find(|(s, _)| *s == 0).unwrap();
        first_destroyed.set(500 * KIB, None, at(21));
        assert_eq!(budget.used(), 830 * KIB);
        drop(accounts);
        assert_eq!(budget.used(), 200 * KIB);
    }

    #[test]
    fn circuits_holding_nothing_are_never_chosen() {
        let budget = MemoryBudget::new(100 * KIB);
        let now = Instant::now();
        let idle = budget.open();
        idle.set(0, None, now);
        let hog = budget.open();
        let done = hog.set(200 * KIB, Some(now), now);
        assert_eq!(done.circuits, 1);
        assert!(hog.is_destroyed());
        assert!(!idle.is_destroyed());
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_destroyed_circuit_learns_it_even_if_it_was_not_waiting() {
        let budget = MemoryBudget::new(10 * KIB);
        let hog = budget.open();
        hog.set(20 * KIB, None, Instant::now());
        tokio::time::timeout(Duration::from_secs(5), hog.destroyed())
            .await
            .unwrap();
    }

    #[test]
    fn waiting_starts_when_bytes_arrive_and_moves_when_they_leave() {
        let t0 = Instant::now();
        let mut w = Waiting::default();
        w.note(false, t0);
        assert_eq!(w.since(), None);
        w.note(true, t0);
        w.note(true, t0 + Duration::from_secs(5));
        assert_eq!(w.since(), Some(t0));
        w.progressed(t0 + Duration::from_secs(6));
        assert_eq!(w.since(), Some(t0 + Duration::from_secs(6)));
        w.note(false, t0 + Duration::from_secs(7));
        w.progressed(t0 + Duration::from_secs(8));
        assert_eq!(w.since(), None);
        assert_eq!(earliest(Some(t0), None), Some(t0));
    }
}
