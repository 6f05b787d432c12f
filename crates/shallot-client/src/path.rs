//! The boundary to path selection (`shallot-path`, specs/05): the client's pinned guards and
//! the paths chosen from the view. The guards live in `guards.state` in the data directory
//! when there is one, in memory otherwise.

use std::path::Path as FsPath;
use std::sync::{Mutex, MutexGuard};

use rand::Rng;
use shallot_directory::{NetworkView, ViewEntry, WallClock};
use shallot_p2p::PeerId;
use shallot_path::{BiasState, ExitTarget, PathBias, PathError, PathSelector, RelayIndex};
use tracing::{info, warn};

/// Draws on the full view before a retry that must avoid some exits falls back to a view
/// without them (which may hide a pinned guard that is also a refused exit).
const AVOID_DRAWS: usize = 8;

/// The client's path selector and pinned guards, shared by the manager's tasks.
pub(crate) struct Paths {
    selector: Mutex<PathSelector>,
    clock: WallClock,
}

impl Paths {
    /// Guards pinned in `data_dir/guards.state` (specs/05 §6), or in memory only without a
    /// data directory. A state file that cannot be read is an error, never replaced by fresh
    /// guards (specs/05 §6.3).
    pub(crate) fn open(data_dir: Option<&FsPath>, clock: WallClock) -> Result<Self, PathError> {
        let selector = match data_dir {
            Some(dir) => {
                let selector = PathSelector::open(dir)?;
                info!(
                    guards = selector.guards().guards().len(),
                    state = ?selector.guards().state_path(),
                    "guards pinned in the data directory"
                );
                selector
            }
            None => {
                info!("no data directory: guards live in memory only and change on restart");
                PathSelector::in_memory()
            }
        };
        Ok(Self {
            selector: Mutex::new(selector),
            clock,
        })
    }

    fn lock(&self) -> MutexGuard<'_, PathSelector> {
        match self.selector.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// A path (guard, middle, exit) from `view` whose exit allows `port` (`None`: any exit,
    /// e.g. for RESOLVE), never using an exit in `avoid_exits`.
    pub(crate) fn select(
        &self,
        view: &NetworkView,
        port: Option<u16>,
        avoid_exits: &[PeerId],
    ) -> Result<Vec<ViewEntry>, PathError> {
        self.select_with(view, port, avoid_exits, &mut rand::rng())
    }

    /// [`Self::select`] drawing from `rng` (seeded in tests).
    pub(crate) fn select_with<R: Rng + ?Sized>(
        &self,
        view: &NetworkView,
        port: Option<u16>,
        avoid_exits: &[PeerId],
        rng: &mut R,
    ) -> Result<Vec<ViewEntry>, PathError> {
        let target = port.map_or(ExitTarget::Any, ExitTarget::Port);
        let now = self.clock.now();
        let mut selector = self.lock();
        let relays = RelayIndex::new(view);
        // The exit is uniform among those that fit the first usable guard: redrawing keeps
        // that guard (specs/05 §5.5) when another exit fits it.
        for _ in 0..AVOID_DRAWS {
            let path = selector.select_path(&relays, target, now, rng)?;
            if !avoid_exits.contains(&path.exit().descriptor.peer_id()) {
                return Ok(Vec::from(path.hops().map(ViewEntry::clone)));
            }
        }
        let pruned = view.without(avoid_exits);
        let relays = RelayIndex::new(&pruned);
        let path = selector.select_path(&relays, target, now, rng)?;
        Ok(Vec::from(path.hops().map(ViewEntry::clone)))
    }

    /// The pinned guards and their path-bias records, first preferred.
    pub(crate) fn guard_bias(&self) -> Vec<(PeerId, PathBias)> {
        let selector = self.lock();
        selector
            .guards()
            .guards()
            .iter()
            .map(|g| (*g.peer(), *g.path_bias()))
            .collect()
    }

    /// Records a circuit through `guard` that got past it and then was `built` or not
    /// (specs/05 §5.6), and logs a change of the guard's path-bias state. A failure while the
    /// circuit was `adding` a known relay waits for later view refreshes to be judged.
    pub(crate) fn circuit_outcome(&self, guard: &PeerId, built: bool, adding: Option<PeerId>) {
        let Some(adding) = adding.filter(|_| !built) else {
            let result = self.lock().record_circuit(guard, built);
            self.report_bias(guard, result);
            return;
        };
        let result = self.lock().record_circuit_failed_adding(guard, adding);
        match result {
            Ok(Some((judged, state))) => self.report_bias(&judged, Ok(Some(state))),
            Ok(None) => {}
            Err(err) => self.report_bias(guard, Err(err)),
        }
    }

    /// The view was refreshed: judges the circuit failures that waited for it (specs/05 §5.6).
    /// Returns whether a guard's path-bias state changed.
    pub(crate) fn view_refreshed(&self, view: &NetworkView) -> bool {
        let relays = RelayIndex::new(view);
        let result = self.lock().view_refreshed(&relays);
        match result {
            Ok(changes) => {
                for (guard, state) in &changes {
                    self.report_bias(guard, Ok(Some(*state)));
                }
                !changes.is_empty()
            }
            Err(err) => {
                warn!(%err, "cannot record the guards' path-bias counts");
                false
            }
        }
    }

    /// Records the first stream sent on a circuit through `guard` (§5.6).
    pub(crate) fn use_attempted(&self, guard: &PeerId) {
        let result = self.lock().record_use_attempt(guard);
        self.report_bias(guard, result);
    }

    /// Records the exit's first answer on such a circuit (§5.6).
    pub(crate) fn use_succeeded(&self, guard: &PeerId) {
        let result = self.lock().record_use_success(guard);
        self.report_bias(guard, result);
    }

    /// Records that a circuit through `guard` went with a stream sent and none answered
    /// (§5.6).
    pub(crate) fn use_unanswered(&self, guard: &PeerId) {
        let result = self.lock().record_use_unanswered(guard);
        self.report_bias(guard, result);
    }

    /// Writes path-bias counts not yet in the state file (at shutdown).
    pub(crate) fn flush(&self) {
        if let Err(err) = self.lock().flush() {
            warn!(%err, "cannot record the guards' path-bias counts");
        }
    }

    fn report_bias(&self, guard: &PeerId, result: Result<Option<BiasState>, PathError>) {
        let state = match result {
            Ok(Some(state)) => state,
            Ok(None) => return,
            Err(err) => {
                warn!(%err, "cannot record the guard's path-bias counts");
                return;
            }
        };
        let bias = self
            .guard_bias()
            .into_iter()
            .find(|(p, _)| p == guard)
            .map(|(_, b)| b)
            .unwrap_or_default();
        let (attempts, built) = (bias.circ_attempts(), bias.circ_built());
        let (uses, answered) = (bias.use_attempts(), bias.use_succeeded());
        match state {
            BiasState::Disabled => warn!(
                %guard, attempts, built, uses, answered,
                "path bias: too few circuits through this guard work; it is not used again \
                 (specs/05 §5.6)"
            ),
            BiasState::Warn => warn!(
                %guard, attempts, built, uses, answered,
                "path bias: fewer than half the circuits through this guard get built"
            ),
            BiasState::Notice => info!(
                %guard, attempts, built, uses, answered,
                "path bias: many circuits through this guard fail"
            ),
            BiasState::Ok => info!(
                %guard, attempts, built, uses, answered,
                "path bias: circuits through this guard work again"
            ),
        }
    }

    /// Records the outcome of a circuit build through `guard` (specs/05 §5.4): `false` when
    /// the build failed at the guard itself.
    pub(crate) fn guard_outcome(&self, guard: &PeerId, ok: bool) {
        let now = self.clock.now();
        let mut selector = self.lock();
        let result = if ok {
            selector.mark_guard_succeeded(guard, now)
        } else {
            selector.mark_guard_failed(guard, now)
        };
        if let Err(err) = result {
            warn!(%err, "cannot record the guard's state");
        }
    }
}
