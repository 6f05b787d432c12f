//! Where descriptors live in the DHT, and the validation a DHT server applies before storing one
//! (specs/04 §5). Keys are plain bytes here; the libp2p crate wraps them in Kademlia types.

use libp2p_identity::PeerId;

use crate::descriptor::SignedDescriptor;
use crate::err::DirectoryError;

/// Prefix of every descriptor record key (specs/04 §5.2). Version 2: records of the first
/// directory (`/shallot/desc/1/`) are refused as not descriptor keys.
pub const DESCRIPTOR_KEY_PREFIX: &[u8] = b"/shallot/desc/2/";

/// The record key under which `peer`'s descriptor is stored.
pub fn descriptor_key(peer: &PeerId) -> Vec<u8> {
    let mut key = DESCRIPTOR_KEY_PREFIX.to_vec();
    key.extend_from_slice(&peer.to_bytes());
    key
}

/// The PeerId a descriptor record key names.
pub fn peer_of_descriptor_key(key: &[u8]) -> Result<PeerId, DirectoryError> {
    let raw = key
        .strip_prefix(DESCRIPTOR_KEY_PREFIX)
        .ok_or(DirectoryError::NotADescriptorKey)?;
    PeerId::from_bytes(raw).map_err(|_| DirectoryError::NotADescriptorKey)
}

/// Why a DHT server refused a record: the label of the refusal counter (specs/04 §5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordRefusal {
    /// Longer than the size limit.
    Oversized,
    /// Not a descriptor key, or bytes that do not decode.
    Malformed,
    /// The signature does not verify.
    BadSignature,
    /// Key or publisher name another peer.
    PeerMismatch,
    /// Outside its validity window.
    Expired,
    /// Older than what the store already holds for that peer.
    Stale,
}

impl RecordRefusal {
    /// The label used for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Oversized => "oversized",
            Self::Malformed => "malformed",
            Self::BadSignature => "bad_signature",
            Self::PeerMismatch => "peer_mismatch",
            Self::Expired => "expired",
            Self::Stale => "stale",
        }
    }

    /// The refusal class of a validation error.
    pub fn of(err: &DirectoryError) -> Self {
        match err {
            DirectoryError::Oversized { .. } => Self::Oversized,
            DirectoryError::BadSignature => Self::BadSignature,
            DirectoryError::PeerMismatch { .. } => Self::PeerMismatch,
            DirectoryError::Expired(_) => Self::Expired,
            _ => Self::Malformed,
        }
    }
}

/// Validates an inbound descriptor record (specs/04 §5.4 rules 1–5) at `now` (UNIX seconds).
/// Rule 6 (stale) needs the store and is [`is_newer`]'s job.
pub fn validate_record(
    key: &[u8],
    value: &[u8],
    publisher: Option<&PeerId>,
    now: u64,
) -> Result<SignedDescriptor, DirectoryError> {
    let named = peer_of_descriptor_key(key)?;
    let signed = SignedDescriptor::verify(value, now)?;
    let actual = signed.peer_id();
    if named != actual {
        return Err(DirectoryError::PeerMismatch {
            expected: Box::new(named),
            actual: Box::new(actual),
        });
    }
    if let Some(publisher) = publisher
        && *publisher != actual
    {
        return Err(DirectoryError::PeerMismatch {
            expected: Box::new(*publisher),
            actual: Box::new(actual),
        });
    }
    Ok(signed)
}

/// Whether `candidate` may replace `stored` (specs/04 §5.4 rule 6, §6.2).
pub fn is_newer(candidate: &SignedDescriptor, stored: &SignedDescriptor) -> bool {
    candidate.descriptor().published_at > stored.descriptor().published_at
}

#[cfg(test)]
mod tests {
    use libp2p_identity::ed25519;

    use super::*;
    use crate::descriptor::tests::{NOW, sample};

    #[test]
    fn descriptor_keys_round_trip() {
        let peer = PeerId::random();
        assert_eq!(
            peer_of_descriptor_key(&descriptor_key(&peer)).ok(),
            Some(peer)
        );
        assert!(peer_of_descriptor_key(b"/shallot/desc/2/garbage").is_err());
        // A record of the first directory version is not a descriptor key any more.
        let mut v1 = b"/shallot/desc/1/".to_vec();
        v1.extend_from_slice(&peer.to_bytes());
        assert!(peer_of_descriptor_key(&v1).is_err());
        assert!(peer_of_descriptor_key(b"/other/").is_err());
    }

    #[test]
    fn record_validation_rules() {
        let keypair = ed25519::Keypair::generate();
        let signed = sample(&keypair, "/ip4/127.0.1.1/tcp/1")
            .sign(&keypair)
            .expect("sign");
        let peer = signed.peer_id();
        let key = descriptor_key(&peer);
        assert!(validate_record(&key, signed.as_bytes(), Some(&peer), NOW).is_ok());
        assert!(validate_record(&key, signed.as_bytes(), None, NOW).is_ok());

        let other = PeerId::random();
        let refusal = |r: Result<SignedDescriptor, DirectoryError>| {
            RecordRefusal::of(&r.expect_err("must be refused"))
        };
        assert_eq!(
            refusal(validate_record(
                &descriptor_key(&other),
                signed.as_bytes(),
                None,
                NOW
            )),
            RecordRefusal::PeerMismatch
        );
        assert_eq!(
            refusal(validate_record(&key, signed.as_bytes(), Some(&other), NOW)),
            RecordRefusal::PeerMismatch
        );
        assert_eq!(
            refusal(validate_record(
                &key,
                signed.as_bytes(),
                None,
                NOW + 24 * 3600
            )),
            RecordRefusal::Expired
        );
        let mut forged = signed.as_bytes().to_vec();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert_eq!(
            refusal(validate_record(&key, &forged, None, NOW)),
            RecordRefusal::BadSignature
        );
        assert_eq!(
            refusal(validate_record(&key, &vec![0; 5000], None, NOW)),
            RecordRefusal::Oversized
        );
        assert_eq!(
            refusal(validate_record(&key, b"garbage", None, NOW)),
            RecordRefusal::Malformed
        );
    }

    #[test]
    fn newer_means_later_published_at() {
        let keypair = ed25519::Keypair::generate();
        let old = sample(&keypair, "/ip4/127.0.1.1/tcp/1");
        let mut new = old.clone();
        new.published_at += 1;
        let old = old.sign(&keypair).expect("sign");
        let new = new.sign(&keypair).expect("sign");
        assert!(is_newer(&new, &old));
        assert!(!is_newer(&old, &new));
        assert!(!is_newer(&old, &old));
    }
}
