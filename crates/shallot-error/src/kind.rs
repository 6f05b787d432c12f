//! The kinds, and what to do about each.

/// What kind of thing went wrong, coarse enough that a caller can decide what to do without
/// knowing which crate the error came from. New kinds may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The configuration (a file, a flag, a setting) is wrong: fix it.
    BadConfig,
    /// A local resource (a port, a file, a directory) is missing or unusable: fix the
    /// environment.
    Environment,
    /// Stored state (a cache, the pinned guards) cannot be read or is corrupt: move it aside.
    Storage,
    /// A peer sent something malformed or against the protocol: drop it; do not retry with the
    /// same peer blindly.
    Protocol,
    /// A MAC, signature or handshake failed to verify (tampering, a wrong key, corruption):
    /// drop it; the object it arrived on is gone.
    Authentication,
    /// Data that was valid once no longer is (an expired descriptor): fetch it again.
    Stale,
    /// A bound was hit (a queue, a budget, a rate limit): back off and retry later.
    ResourceLimit,
    /// Something did not answer in time: retry, elsewhere if possible.
    Timeout,
    /// The network failed for now (a dial, a link, a query, too few relays known): retry later.
    Transient,
    /// A policy refuses the request (an exit policy, no exit for the port): retrying the same
    /// request will not help.
    PolicyRefusal,
    /// The circuit, stream or node is closed: nothing more can be done on it.
    Closed,
    /// Nothing can be done right now (no data, no credit, a full queue): wait for an event and
    /// try again. Never tears anything down.
    WouldBlock,
    /// A counter ran out (nonces, stream ids): start a new circuit or key.
    Exhausted,
    /// The program is shutting down.
    ShuttingDown,
    /// The caller used an API wrongly (an unknown stream, a wrong state): a bug in the caller.
    BadApiUsage,
    /// A bug in Shallot.
    Internal,
}

/// What a caller should do about an error of some kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Advice {
    /// Retry later or elsewhere: the cause may pass.
    Retry,
    /// Wait for an event, then try the same thing again.
    Wait,
    /// Give up on this request: retrying it will not help.
    GiveUp,
    /// A person must fix the configuration, the environment or stored state.
    FixLocally,
    /// Report a bug.
    Report,
}

impl ErrorKind {
    /// What a caller should do about an error of this kind.
    pub fn advice(self) -> Advice {
        match self {
            Self::Stale
            | Self::ResourceLimit
            | Self::Timeout
            | Self::Transient
            | Self::Exhausted
            | Self::Protocol
            | Self::Authentication => Advice::Retry,
            Self::WouldBlock => Advice::Wait,
            Self::PolicyRefusal | Self::Closed | Self::ShuttingDown => Advice::GiveUp,
            Self::BadConfig | Self::Environment | Self::Storage => Advice::FixLocally,
            Self::BadApiUsage | Self::Internal => Advice::Report,
        }
    }
}

/// An error that can say its [`ErrorKind`]. Every library error of Shallot implements it.
pub trait HasKind {
    /// The kind of this error.
    fn kind(&self) -> ErrorKind;
}

impl<T: HasKind + ?Sized> HasKind for &T {
    fn kind(&self) -> ErrorKind {
        (**self).kind()
    }
}

impl<T: HasKind + ?Sized> HasKind for Box<T> {
    fn kind(&self) -> ErrorKind {
        (**self).kind()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_advice_and_the_bugs_are_reported() {
        let all = [
            ErrorKind::BadConfig,
            ErrorKind::Environment,
            ErrorKind::Storage,
            ErrorKind::Protocol,
            ErrorKind::Authentication,
            ErrorKind::Stale,
            ErrorKind::ResourceLimit,
            ErrorKind::Timeout,
            ErrorKind::Transient,
            ErrorKind::PolicyRefusal,
            ErrorKind::Closed,
            ErrorKind::WouldBlock,
            ErrorKind::Exhausted,
            ErrorKind::ShuttingDown,
            ErrorKind::BadApiUsage,
            ErrorKind::Internal,
        ];
        let reported: Vec<ErrorKind> = all
            .iter()
            .copied()
            .filter(|k| k.advice() == Advice::Report)
            .collect();
        assert_eq!(reported, [ErrorKind::BadApiUsage, ErrorKind::Internal]);
        assert_eq!(ErrorKind::WouldBlock.advice(), Advice::Wait);
        assert_eq!(ErrorKind::PolicyRefusal.advice(), Advice::GiveUp);
    }

    #[test]
    fn references_and_boxes_have_the_kind_of_what_they_hold() {
        struct Busy;
        impl HasKind for Busy {
            fn kind(&self) -> ErrorKind {
                ErrorKind::ResourceLimit
            }
        }
        fn kind_of(e: impl HasKind) -> ErrorKind {
            e.kind()
        }
        let boxed: Box<dyn HasKind> = Box::new(Busy);
        assert_eq!(kind_of(&Busy), ErrorKind::ResourceLimit);
        assert_eq!(kind_of(boxed), ErrorKind::ResourceLimit);
    }
}
