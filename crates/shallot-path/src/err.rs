//! Errors of the path-selection crate.

use shallot_error::{ErrorKind, HasKind};
use std::fmt;
use std::path::PathBuf;

/// A position in a three-hop path (specs/05 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Hop 0: one of the client's pinned guards.
    Guard,
    /// Hop 1.
    Middle,
    /// Hop 2: a relay whose policy summary allows the target.
    Exit,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Guard => "guard",
            Role::Middle => "middle",
            Role::Exit => "exit",
        })
    }
}

/// Why no path was returned, or why the guard state could not be kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// No exit in the view has a policy summary allowing this port (specs/05 §7).
    #[error("no exit in the view allows port {0}")]
    NoExitForPort(u16),
    /// The view holds no exit at all (for [`crate::ExitTarget::Any`]).
    #[error("the view holds no exit")]
    NoExit,
    /// No pinned guard is in the view, and none can be chosen (specs/05 §5).
    #[error("no pinned guard is in the view")]
    NoUsableGuard,
    /// Exits exist, but for no usable guard does a relay satisfy every rule for this hop
    /// (specs/05 §3, §8); a weaker path is never built instead.
    #[error("not enough relays: no {role} satisfies the path rules")]
    NotEnoughRelays {
        /// The hop that could not be filled.
        role: Role,
    },
    /// The guard state file could not be read or written.
    #[error("guard state {path}: {source}")]
    GuardState {
        /// The state file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The guard state file is not in the format of specs/05 §6.
    #[error("guard state {path} is corrupt at line {line}: {reason}")]
    CorruptGuardState {
        /// The state file.
        path: PathBuf,
        /// Line number, from 1 (0: the file as a whole).
        line: usize,
        /// What was wrong.
        reason: &'static str,
    },
    /// A chosen path broke an invariant of specs/05 §3 and was discarded. This is a bug in
    /// this crate; the path is never returned.
    #[error("internal error: chosen path breaks invariant: {0}")]
    InvariantViolated(&'static str),
}

impl HasKind for PathError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::NoExitForPort(_) => ErrorKind::PolicyRefusal,
            Self::NoExit | Self::NoUsableGuard | Self::NotEnoughRelays { .. } => {
                ErrorKind::Transient
            }
            Self::GuardState { .. } | Self::CorruptGuardState { .. } => ErrorKind::Storage,
            Self::InvariantViolated(_) => ErrorKind::Internal,
        }
    }
}
