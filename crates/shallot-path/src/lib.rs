#![doc = include_str!("../README.md")]

mod bias;
mod err;
mod guard;
mod relays;
mod select;
mod state;
#[cfg(test)]
mod testutil;

pub use bias::{
    BiasState, PATH_BIAS_DISABLE_PCT, PATH_BIAS_DISABLE_USE_PCT, PATH_BIAS_MIN_CIRCS,
    PATH_BIAS_MIN_USE, PATH_BIAS_NOTICE_PCT, PATH_BIAS_NOTICE_USE_PCT, PATH_BIAS_SCALE_CIRCS,
    PATH_BIAS_SCALE_USE, PATH_BIAS_WARN_PCT, PathBias,
};
pub use err::{PathError, Role};
pub use guard::{
    GUARD_EXPIRY_SECS, GUARD_FAILURE_PERIOD_SECS, GUARD_MAX_FAILURES, GUARD_MIN_AGE_SECS,
    GUARD_RETRY_DELAY_SECS, GUARD_STATE_FILE, Guard, GuardChanges, GuardSet, MAX_SAMPLED_GUARDS,
    MAX_UNSETTLED_FAILURES, NUM_GUARDS, PATH_BIAS_SETTLE_REFRESHES, PATH_BIAS_WRITE_EVERY,
    RemovalReason,
};
pub use relays::{PathSubnet, RelayIndex};
pub use select::{ExitTarget, Path, PathSelector};
pub use state::{GUARD_STATE_HEADER, MAX_GUARD_STATE_LEN};
