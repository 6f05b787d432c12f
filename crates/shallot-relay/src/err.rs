//! Errors of the relay.

use shallot_error::{ErrorKind, HasKind};
use std::path::PathBuf;

/// Why starting or running the relay failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The configuration file could not be read.
    #[error("cannot read the relay config {path}: {source}")]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The configuration does not parse (unknown key, wrong type, bad address).
    #[error("bad relay config: {0}")]
    ConfigParse(#[from] toml::de::Error),
    /// The configuration parses but cannot be used.
    #[error("bad relay config: {0}")]
    Config(String),
    /// A key file or the data directory could not be read or written.
    #[error("key file {path}: {source}")]
    KeyIo {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A key file exists but does not hold a key of the right form.
    #[error("key file {path}: {what}")]
    KeyFormat {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the key itself).
        what: String,
    },
    /// The exit-policy file could not be read.
    #[error("cannot read the exit policy {path}: {source}")]
    PolicyRead {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The exit-policy file does not parse (the message names file, line and column).
    #[error("{0}")]
    Policy(#[from] shallot_exit_policy::PolicyError),
    /// The resolver could not be set up.
    #[error("cannot set up the exit's resolver: {0}")]
    Resolver(String),
    /// The descriptor could not be built or signed.
    #[error("cannot build the descriptor: {0}")]
    Descriptor(#[from] shallot_directory::DirectoryError),
    /// The libp2p node failed.
    #[error("libp2p node: {0}")]
    P2p(#[from] shallot_p2p::P2pError),
    /// The node already accepts circuit streams (a second relay on one node).
    #[error("circuit protocol already registered on this node")]
    AlreadyAccepting,
}

impl HasKind for RelayError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::ConfigRead { .. }
            | Self::ConfigParse(_)
            | Self::Config(_)
            | Self::KeyIo { .. }
            | Self::KeyFormat { .. }
            | Self::PolicyRead { .. }
            | Self::Policy(_)
            | Self::Resolver(_)
            | Self::Descriptor(_) => ErrorKind::BadConfig,
            Self::P2p(e) => e.kind(),
            Self::AlreadyAccepting => ErrorKind::Internal,
        }
    }
}
