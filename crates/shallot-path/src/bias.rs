//! Path bias (specs/05 §5.6, after Tor's path-spec §7): per guard, how many circuits through
//! it were attempted, built and used successfully, and the state those rates put it in.
//!
//! A guard that fails or refuses circuits selectively (every EXTEND but the ones to relays it
//! likes: Borisov et al.'s selective denial of service) shows it in these rates, whatever
//! reason it gives for each failure. The counts are the client's own observations; nothing a
//! relay says enters them except by failing or not.

/// Circuits a guard must have been attempted on before its build rate is judged. Tor's
/// `pb_mincircs` is 150; Shallot judges sooner because its networks are small and its
/// thresholds are the same: an honest guard whose circuits succeed 9 times in 10 falls under
/// [`PATH_BIAS_DISABLE_PCT`] in 20 attempts with probability below 10⁻⁷.
pub const PATH_BIAS_MIN_CIRCS: u32 = 20;
/// Under this build success rate (percent) the client logs a notice (Tor's `pb_noticepct`).
pub const PATH_BIAS_NOTICE_PCT: u32 = 70;
/// Under this build success rate it logs a warning (Tor's `pb_warnpct`).
pub const PATH_BIAS_WARN_PCT: u32 = 50;
/// Under this build success rate it stops using the guard (Tor's `pb_extremepct`; Tor drops
/// the guard only with `pb_dropguards` set, Shallot always does).
pub const PATH_BIAS_DISABLE_PCT: u32 = 30;
/// Once this many attempts are counted, both build counts are halved so old history fades
/// (Tor's `pb_scalecircs` with `pb_multfactor`/`pb_scalefactor` = 1/2).
pub const PATH_BIAS_SCALE_CIRCS: u32 = 300;
/// Circuits a guard must have carried streams on before its use rate is judged (Tor's
/// `pb_minuse`).
pub const PATH_BIAS_MIN_USE: u32 = 20;
/// Under this use success rate the client logs a notice (Tor's `pb_noticeusepct`).
pub const PATH_BIAS_NOTICE_USE_PCT: u32 = 80;
/// Under this use success rate it stops using the guard (Tor's `pb_extremeusepct`).
pub const PATH_BIAS_DISABLE_USE_PCT: u32 = 60;
/// Once this many used circuits are counted, both use counts are halved (Tor's
/// `pb_scaleuse`).
pub const PATH_BIAS_SCALE_USE: u32 = 100;

/// How a guard's rates look (specs/05 §5.6), worst last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum BiasState {
    /// Nothing to report (or too few circuits to judge).
    #[default]
    Ok,
    /// A rate is under its notice threshold.
    Notice,
    /// The build rate is under [`PATH_BIAS_WARN_PCT`].
    Warn,
    /// A rate fell under its disable threshold: the guard is not used again. Sticky.
    Disabled,
}

impl BiasState {
    /// The state's name in the state file and the status view.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Notice => "notice",
            Self::Warn => "warn",
            Self::Disabled => "disabled",
        }
    }

    /// The state named `s` (the inverse of [`Self::as_str`]).
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Ok, Self::Notice, Self::Warn, Self::Disabled]
            .into_iter()
            .find(|state| state.as_str() == s)
    }
}

/// A guard's path-bias counts and state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathBias {
    pub(crate) circ_attempts: u32,
    pub(crate) circ_built: u32,
    pub(crate) use_attempts: u32,
    pub(crate) use_succeeded: u32,
    /// Use attempts whose circuit is still open and has no answer yet. Judged as successes
    /// until they settle (Tor counts open circuits the same way): a burst of new circuits must
    /// not look like a guard that kills streams while their first answers are on the way.
    /// Not kept in the state file: a restart settles nothing.
    pub(crate) use_pending: u32,
    pub(crate) state: BiasState,
}

impl PathBias {
    /// Circuits attempted through the guard (it answered CREATE), scaled.
    pub fn circ_attempts(&self) -> u32 {
        self.circ_attempts
    }

    /// Of those, circuits that got every hop.
    pub fn circ_built(&self) -> u32 {
        self.circ_built
    }

    /// Built circuits through the guard that were given a stream, scaled.
    pub fn use_attempts(&self) -> u32 {
        self.use_attempts
    }

    /// Of those, circuits on which the exit answered a stream.
    pub fn use_succeeded(&self) -> u32 {
        self.use_succeeded
    }

    /// The state the rates put the guard in.
    pub fn state(&self) -> BiasState {
        self.state
    }

    /// The build success rate, once there is an attempt.
    pub fn build_rate(&self) -> Option<f64> {
        rate(self.circ_built, self.circ_attempts)
    }

    /// The use success rate, once there is a use.
    pub fn use_rate(&self) -> Option<f64> {
        rate(self.use_succeeded, self.use_attempts)
    }

    /// A circuit through the guard got past it (CREATED) and then was `built` or not.
    pub(crate) fn record_circuit(&mut self, built: bool) -> Option<BiasState> {
        self.circ_attempts = self.circ_attempts.saturating_add(1);
        self.circ_built = self.circ_built.saturating_add(u32::from(built));
        let change = self.judge();
        if self.circ_attempts >= PATH_BIAS_SCALE_CIRCS {
            self.circ_attempts /= 2;
            self.circ_built /= 2;
        }
        change
    }

    /// A built circuit through the guard was given its first stream; it is pending until
    /// [`Self::record_use_success`] or [`Self::record_use_unanswered`] settles it.
    pub(crate) fn record_use_attempt(&mut self) -> Option<BiasState> {
        self.use_attempts = self.use_attempts.saturating_add(1);
        self.use_pending = self.use_pending.saturating_add(1).min(self.use_attempts);
        let change = self.judge();
        if self.use_attempts >= PATH_BIAS_SCALE_USE {
            self.use_attempts /= 2;
            self.use_succeeded /= 2;
            self.use_pending = self.use_pending.min(self.use_attempts - self.use_succeeded);
        }
        change
    }

    /// The exit answered a stream on a circuit counted by [`Self::record_use_attempt`].
    pub(crate) fn record_use_success(&mut self) -> Option<BiasState> {
        self.use_pending = self.use_pending.saturating_sub(1);
        // Bounded by the attempts: a success whose attempt was halved away stays uncounted.
        self.use_succeeded = (self.use_succeeded + 1).min(self.use_attempts);
        self.judge()
    }

    /// A circuit counted by [`Self::record_use_attempt`] closed with no answer from the exit:
    /// the use failed.
    pub(crate) fn record_use_unanswered(&mut self) -> Option<BiasState> {
        self.use_pending = self.use_pending.saturating_sub(1);
        self.judge()
    }

    /// Sets the state the counts call for; returns it if it changed. Disabled stays.
    fn judge(&mut self) -> Option<BiasState> {
        if self.state == BiasState::Disabled {
            return None;
        }
        let under = |num: u32, den: u32, min: u32, pct: u32| {
            den >= min && u64::from(num) * 100 < u64::from(den) * u64::from(pct)
        };
        let (built, tried) = (self.circ_built, self.circ_attempts);
        let used = self
            .use_succeeded
            .saturating_add(self.use_pending)
            .min(self.use_attempts);
        let uses = self.use_attempts;
        let state = if under(built, tried, PATH_BIAS_MIN_CIRCS, PATH_BIAS_DISABLE_PCT)
            || under(used, uses, PATH_BIAS_MIN_USE, PATH_BIAS_DISABLE_USE_PCT)
        {
            BiasState::Disabled
        } else if under(built, tried, PATH_BIAS_MIN_CIRCS, PATH_BIAS_WARN_PCT) {
            BiasState::Warn
        } else if under(built, tried, PATH_BIAS_MIN_CIRCS, PATH_BIAS_NOTICE_PCT)
            || under(used, uses, PATH_BIAS_MIN_USE, PATH_BIAS_NOTICE_USE_PCT)
        {
            BiasState::Notice
        } else {
            BiasState::Ok
        };
        (state != self.state).then(|| {
            self.state = state;
            state
        })
    }
}

fn rate(num: u32, den: u32) -> Option<f64> {
    (den > 0).then(|| f64::from(num) / f64::from(den))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records `attempts` circuits of which the first `built` were built; returns every state
    /// change in order.
    fn circuits(bias: &mut PathBias, attempts: u32, built: u32) -> Vec<BiasState> {
        (0..attempts)
            .filter_map(|i| bias.record_circuit(i < built))
            .collect()
    }

    #[test]
    fn nothing_is_judged_before_the_minimum() {
        let mut bias = PathBias::default();
        assert_eq!(circuits(&mut bias, PATH_BIAS_MIN_CIRCS - 1, 0), vec![]);
        assert_eq!(bias.state(), BiasState::Ok);
        assert_eq!(bias.build_rate(), Some(0.0));
        assert_eq!(bias.record_circuit(false), Some(BiasState::Disabled));
    }

    #[test]
    fn each_threshold_gives_its_state_at_the_minimum() {
        // 20 attempts: 14 built is 70 % (ok), 13 is 65 % (notice), 9 is 45 % (warn), 5 is
        // 25 % (disabled). Failures come last, so the state is reached at the 20th attempt.
        for (built, state) in [
            (14, BiasState::Ok),
            (13, BiasState::Notice),
            (10, BiasState::Notice),
            (9, BiasState::Warn),
            (6, BiasState::Warn),
            (5, BiasState::Disabled),
        ] {
            let mut bias = PathBias::default();
            circuits(&mut bias, PATH_BIAS_MIN_CIRCS, built);
            assert_eq!(
                bias.state(),
                state,
                "{built} of {PATH_BIAS_MIN_CIRCS} built"
            );
        }
    }

    #[test]
    fn a_disabled_guard_stays_disabled_and_a_recovered_one_returns_to_ok() {
        let mut bias = PathBias::default();
        circuits(&mut bias, PATH_BIAS_MIN_CIRCS, 0);
        assert_eq!(bias.state(), BiasState::Disabled);
        assert_eq!(circuits(&mut bias, 200, 200), vec![]);
        assert_eq!(bias.state(), BiasState::Disabled);

        let mut bias = PathBias::default();
        circuits(&mut bias, PATH_BIAS_MIN_CIRCS, 12);
        assert_eq!(bias.state(), BiasState::Notice);
        assert_eq!(circuits(&mut bias, 20, 20), vec![BiasState::Ok]);
    }

    #[test]
    fn counts_are_halved_at_the_scale_so_old_history_fades() {
        let mut bias = PathBias::default();
        circuits(
            &mut bias,
            PATH_BIAS_SCALE_CIRCS - 1,
            PATH_BIAS_SCALE_CIRCS - 1,
        );
        assert_eq!(bias.circ_attempts(), PATH_BIAS_SCALE_CIRCS - 1);
        bias.record_circuit(false);
        assert_eq!(bias.circ_attempts(), PATH_BIAS_SCALE_CIRCS / 2);
        assert_eq!(bias.circ_built(), (PATH_BIAS_SCALE_CIRCS - 1) / 2);
        // Never more than the scale, however long it runs.
        circuits(
            &mut bias,
            10 * PATH_BIAS_SCALE_CIRCS,
            10 * PATH_BIAS_SCALE_CIRCS,
        );
        assert!(bias.circ_attempts() < PATH_BIAS_SCALE_CIRCS);
        assert!(bias.circ_built() <= bias.circ_attempts());

        let mut bias = PathBias::default();
        for _ in 0..PATH_BIAS_SCALE_USE {
            bias.record_use_attempt();
            bias.record_use_success();
        }
        assert_eq!(bias.use_attempts(), PATH_BIAS_SCALE_USE / 2);
        assert!(bias.use_succeeded() <= bias.use_attempts());
        assert_eq!(bias.state(), BiasState::Ok);
    }

    #[test]
    fn circuits_that_build_but_carry_nothing_disable_the_guard_too() {
        let mut bias = PathBias::default();
        circuits(&mut bias, 40, 40);
        let mut changes = Vec::new();
        for i in 0..PATH_BIAS_MIN_USE {
            changes.extend(bias.record_use_attempt());
            if i < 11 {
                changes.extend(bias.record_use_success());
            } else {
                changes.extend(bias.record_use_unanswered());
            }
        }
        // At the 20th attempt, pending, 12 of 20 count as answered (60 %: a notice); once it
        // settles unanswered, 11 of 20: 55 %, under the use disable threshold of 60 %.
        assert_eq!(changes, vec![BiasState::Notice, BiasState::Disabled]);
        assert_eq!(bias.use_rate(), Some(0.55));
    }

    #[test]
    fn a_burst_of_circuits_awaiting_their_first_answer_is_not_a_failing_guard() {
        // Seen on the simulated internet (40 ms between hosts): 24 isolated fetches at once
        // gave 20 use attempts before 12 answers came back, and the guard was disabled for
        // answers that were merely on their way. Pending uses count as answered until settled.
        let mut bias = PathBias::default();
        circuits(&mut bias, 40, 40);
        let mut changes = Vec::new();
        for _ in 0..3 * PATH_BIAS_MIN_USE {
            changes.extend(bias.record_use_attempt());
        }
        for _ in 0..3 * PATH_BIAS_MIN_USE {
            changes.extend(bias.record_use_success());
        }
        assert_eq!(changes, vec![]);
        assert_eq!(bias.state(), BiasState::Ok);
        // Once they settle as unanswered, they count.
        let mut bias = PathBias::default();
        for _ in 0..PATH_BIAS_MIN_USE {
            bias.record_use_attempt();
        }
        assert_eq!(bias.state(), BiasState::Ok);
        let settled: Vec<BiasState> = (0..PATH_BIAS_MIN_USE)
            .filter_map(|_| bias.record_use_unanswered())
            .collect();
        assert_eq!(settled, vec![BiasState::Notice, BiasState::Disabled]);
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for state in [
            BiasState::Ok,
            BiasState::Notice,
            BiasState::Warn,
            BiasState::Disabled,
        ] {
            assert_eq!(BiasState::parse(state.as_str()), Some(state));
        }
        assert_eq!(BiasState::parse("fine"), None);
    }
}
