//! Errors of the client: starting it, and why a stream could not be carried.

use shallot_error::{ErrorKind, HasKind};
use std::net::SocketAddr;
use std::path::PathBuf;

use shallot_cell::EndReason;

/// An error starting or running the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A bootstrap address does not parse or has no `/p2p/<PeerId>`.
    #[error("bad bootstrap address {addr:?}: {reason}")]
    BadBootstrap {
        /// The address as configured.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Nothing to start from: no bootstrap peer and no cached view to find relays in.
    #[error(
        "no bootstrap peer and no cached view of the network: set `bootstrap` in the client \
         config to one or more relays' addresses, each ending with /p2p/<PeerId> (the client \
         config `shallot testnet` writes into its data directory has them)"
    )]
    NoBootstrap,
    /// A setting is out of range.
    #[error("bad setting {field}: {reason}")]
    BadSetting {
        /// The config field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The data directory could not be created.
    #[error("cannot create data directory {path}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The pinned guards' state file (`guards.state`, specs/05 §6) cannot be read or is
    /// corrupt. It is never replaced silently: move it aside to start with fresh guards.
    #[error("pinned guards unusable")]
    GuardState(#[source] shallot_path::PathError),
    /// The libp2p node failed.
    #[error("libp2p node failed")]
    P2p(#[source] shallot_p2p::P2pError),
    /// The client stopped before the operation finished.
    #[error("client stopped")]
    Stopped,
}

impl HasKind for ClientError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::BadBootstrap { .. } | Self::BadSetting { .. } | Self::NoBootstrap => {
                ErrorKind::BadConfig
            }
            Self::Bind { .. } | Self::DataDir { .. } | Self::GuardState(_) => {
                ErrorKind::Environment
            }
            Self::P2p(_) => ErrorKind::Transient,
            Self::Stopped => ErrorKind::ShuttingDown,
        }
    }
}

/// Why a stream (CONNECT) or a lookup (RESOLVE) could not be carried. Each maps to one SOCKS5
/// reply code (specs/07 §5).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamFailure {
    /// The exit ended the stream before CONNECTED, with this reason.
    #[error("the exit refused the stream: {0:?}")]
    End(EndReason),
    /// No relay in the view is an exit whose policy allows the port.
    #[error("no exit allows this port")]
    NoExitForPort,
    /// The view has too few relays for a path.
    #[error("not enough relays for a path")]
    NoPath,
    /// No CONNECTED (or RESOLVED) in time, on every attempt.
    #[error("timed out")]
    Timeout,
    /// Every circuit tried failed (build failures, circuits destroyed).
    #[error("circuits failed")]
    CircuitFailed,
    /// Every circuit carried streams at the circuit limit for as long as the stream could
    /// wait (or too many streams were waiting already).
    #[error("no circuit had room in time")]
    TooManyCircuits,
    /// The exit answered a RESOLVE with an error.
    #[error("the exit could not resolve the name")]
    ResolveFailed,
    /// The client is stopping.
    #[error("client stopping")]
    ShuttingDown,
    /// A name under `.shallot` that is no onion service address (specs/09 §2): refused here,
    /// never sent to an exit.
    #[error("not an onion service address: {0}")]
    OnionAddressInvalid(shallot_onion::AddressError),
    /// An onion service address: this client cannot reach onion services yet (specs/09 is a
    /// draft), and never sends the name to an exit.
    #[error("onion services are not implemented in this client yet")]
    OnionServiceUnreachable,
    /// A name under Tor's `.onion` (RFC 7686): Shallot does not reach Tor's onion services,
    /// and never asks an exit to resolve one.
    #[error("a .onion name is one of Tor's onion services, which Shallot does not reach")]
    TorOnionName,
}

impl StreamFailure {
    /// The SOCKS5 reply code (RFC 1928 §6) for this failure. specs/07 §5.
    pub fn socks_reply(&self) -> u8 {
        match self {
            Self::End(reason) => end_reason_reply(*reason),
            Self::NoExitForPort => 0x02,
            Self::ResolveFailed => 0x04,
            Self::Timeout => 0x06,
            Self::NoPath | Self::CircuitFailed | Self::TooManyCircuits | Self::ShuttingDown => 0x01,
            // Tor's extended SOCKS5 errors (proposal 304): "onion service address invalid" and
            // "onion service descriptor can not be found".
            Self::OnionAddressInvalid(_) => 0xF6,
            Self::OnionServiceUnreachable => 0xF0,
            Self::TorOnionName => 0x04,
        }
    }

    /// The HTTP status for an HTTP CONNECT that failed this way. specs/07 §6.
    pub fn http_status(&self) -> (u16, &'static str) {
        match self.socks_reply() {
            0x02 => (403, "Forbidden"),
            0x06 => (504, "Gateway Timeout"),
            0x01 => (503, "Service Unavailable"),
            _ => (502, "Bad Gateway"),
        }
    }

    /// Whether another circuit (another path, another exit) may do better.
    pub(crate) fn retry_elsewhere(&self) -> bool {
        match self {
            Self::End(reason) => matches!(
                reason,
                EndReason::ExitPolicy
                    | EndReason::ResourceLimit
                    | EndReason::Hibernating
                    | EndReason::Misc
                    | EndReason::Internal
                    | EndReason::Destroy
                    | EndReason::TorProtocol
                    | EndReason::Other(_)
            ),
            Self::CircuitFailed | Self::Timeout => true,
            _ => false,
        }
    }
}

impl HasKind for StreamFailure {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::End(EndReason::ExitPolicy) | Self::NoExitForPort => ErrorKind::PolicyRefusal,
            Self::End(EndReason::Timeout) | Self::Timeout => ErrorKind::Timeout,
            Self::TooManyCircuits => ErrorKind::ResourceLimit,
            Self::ShuttingDown => ErrorKind::ShuttingDown,
            Self::OnionAddressInvalid(_) => ErrorKind::BadConfig,
            Self::OnionServiceUnreachable | Self::TorOnionName => ErrorKind::PolicyRefusal,
            _ => ErrorKind::Transient,
        }
    }
}

/// specs/07 §5: END reason → SOCKS5 reply.
pub(crate) fn end_reason_reply(reason: EndReason) -> u8 {
    match reason {
        EndReason::ExitPolicy => 0x02,
        EndReason::NoRoute => 0x03,
        EndReason::ResolveFailed => 0x04,
        EndReason::ConnectRefused => 0x05,
        EndReason::Timeout => 0x06,
        _ => 0x01,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_reasons_map_to_socks_replies() {
        let table = [
            (EndReason::ExitPolicy, 0x02),
            (EndReason::NoRoute, 0x03),
            (EndReason::ResolveFailed, 0x04),
            (EndReason::ConnectRefused, 0x05),
            (EndReason::Timeout, 0x06),
            (EndReason::Misc, 0x01),
            (EndReason::ResourceLimit, 0x01),
            (EndReason::Hibernating, 0x01),
            (EndReason::ConnReset, 0x01),
            (EndReason::Other(200), 0x01),
        ];
        for (reason, code) in table {
            assert_eq!(StreamFailure::End(reason).socks_reply(), code, "{reason:?}");
        }
        assert_eq!(StreamFailure::NoExitForPort.socks_reply(), 0x02);
        assert_eq!(StreamFailure::ResolveFailed.socks_reply(), 0x04);
        assert_eq!(StreamFailure::Timeout.socks_reply(), 0x06);
        assert_eq!(StreamFailure::CircuitFailed.socks_reply(), 0x01);
        assert_eq!(
            StreamFailure::OnionAddressInvalid(shallot_onion::AddressError::Checksum).socks_reply(),
            0xF6
        );
        assert_eq!(StreamFailure::OnionServiceUnreachable.socks_reply(), 0xF0);
        assert_eq!(StreamFailure::TorOnionName.socks_reply(), 0x04);
        assert_eq!(StreamFailure::TorOnionName.http_status().0, 502);
    }

    #[test]
    fn stream_failures_have_the_kinds_callers_act_on() {
        let table = [
            (
                StreamFailure::End(EndReason::ExitPolicy),
                ErrorKind::PolicyRefusal,
            ),
            (StreamFailure::NoExitForPort, ErrorKind::PolicyRefusal),
            (StreamFailure::Timeout, ErrorKind::Timeout),
            (StreamFailure::TooManyCircuits, ErrorKind::ResourceLimit),
            (StreamFailure::CircuitFailed, ErrorKind::Transient),
            (StreamFailure::ShuttingDown, ErrorKind::ShuttingDown),
        ];
        for (failure, kind) in table {
            assert_eq!(failure.kind(), kind, "{failure:?}");
        }
    }

    #[test]
    fn only_path_dependent_failures_retry() {
        assert!(StreamFailure::End(EndReason::ExitPolicy).retry_elsewhere());
        assert!(StreamFailure::CircuitFailed.retry_elsewhere());
        assert!(!StreamFailure::End(EndReason::ConnectRefused).retry_elsewhere());
        assert!(!StreamFailure::End(EndReason::ResolveFailed).retry_elsewhere());
        assert!(!StreamFailure::NoExitForPort.retry_elsewhere());
    }
}
