//! Errors of the directory crate.

use shallot_error::{ErrorKind, HasKind};
use std::path::PathBuf;

/// Why a descriptor, a view operation or the cache failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryError {
    /// The encoded descriptor is longer than the protocol allows (specs/04 §3.1).
    #[error("descriptor is {len} bytes, more than the {max}-byte limit")]
    Oversized {
        /// Length received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes do not form a descriptor (specs/04 §3).
    #[error("malformed descriptor: {0}")]
    Malformed(&'static str),
    /// A directory-protocol message does not decode (specs/04 §7).
    #[error("malformed directory message: {0}")]
    BadMessage(&'static str),
    /// A directory-protocol message is longer than its bound (specs/04 §7).
    #[error("directory message of {len} bytes, more than the {max}-byte limit")]
    MessageTooLong {
        /// Length received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A field holds a value the protocol forbids (specs/04 §3).
    #[error("invalid descriptor: {0}")]
    Invalid(&'static str),
    /// The re-encoding differs from the bytes received (specs/04 §3.3).
    #[error("descriptor is not in canonical form")]
    NonCanonical,
    /// The Ed25519 signature does not verify under the descriptor's identity key.
    #[error("descriptor signature does not verify")]
    BadSignature,
    /// The descriptor is outside its validity window at the given time (specs/04 §4).
    #[error("descriptor is not valid now: {0}")]
    Expired(&'static str),
    /// The DHT record's key or publisher names another peer than the descriptor (specs/04 §5.4).
    #[error("record names peer {expected}, descriptor is for {actual}")]
    PeerMismatch {
        /// The PeerId the record key or publisher names (boxed: PeerIds are large).
        expected: Box<libp2p_identity::PeerId>,
        /// The PeerId of the descriptor's identity key.
        actual: Box<libp2p_identity::PeerId>,
    },
    /// The record key is not a descriptor key (specs/04 §5.2).
    #[error("record key is not a shallot descriptor key")]
    NotADescriptorKey,
    /// A descriptor could not be signed (the identity key is unusable).
    #[error("cannot sign descriptor: {0}")]
    Signing(&'static str),
    /// The view cache could not be read or written.
    #[error("view cache {path}: {source}")]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The view cache's bytes are not a cache file (specs/04 §6.4).
    #[error("view cache {path} is corrupt: {reason}")]
    CorruptCache {
        /// The cache file.
        path: PathBuf,
        /// What was wrong.
        reason: &'static str,
    },
}

impl HasKind for DirectoryError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Oversized { .. }
            | Self::Malformed(_)
            | Self::BadMessage(_)
            | Self::MessageTooLong { .. }
            | Self::Invalid(_)
            | Self::NonCanonical
            | Self::BadSignature
            | Self::PeerMismatch { .. }
            | Self::NotADescriptorKey => ErrorKind::Protocol,
            Self::Expired(_) => ErrorKind::Stale,
            Self::Cache { .. } | Self::CorruptCache { .. } => ErrorKind::Storage,
            Self::Signing(_) => ErrorKind::Internal,
        }
    }
}
