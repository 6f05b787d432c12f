#![doc = include_str!("../README.md")]

mod err;
mod guard;
mod relays;
mod select;
mod state;
#[cfg(test)]
mod testutil;

pub use err::{PathError, Role};
pub use guard::{
    GUARD_EXPIRY_SECS, GUARD_FAILURE_PERIOD_SECS, GUARD_MAX_FAILURES, GUARD_MIN_AGE_SECS,
    GUARD_RETRY_DELAY_SECS, GUARD_STATE_FILE, Guard, GuardChanges, GuardSet, NUM_GUARDS,
    RemovalReason,
};
pub use relays::{PathSubnet, RelayIndex};
pub use select::{ExitTarget, Path, PathSelector};
pub use state::{GUARD_STATE_HEADER, MAX_GUARD_STATE_LEN};
