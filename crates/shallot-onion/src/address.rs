//! `.shallot` addresses (specs/09 §2): an Ed25519 public key, a two-byte checksum and a version
//! byte, in base32, like Tor's v3 `.onion` addresses with a checksum label of Shallot's own.

use std::fmt;

use curve25519_dalek::edwards::CompressedEdwardsY;
use data_encoding::BASE32_NOPAD;
use sha3::{Digest, Sha3_256};
use shallot_error::{ErrorKind, HasKind};

/// What every onion service address ends with.
pub const ADDRESS_SUFFIX: &str = ".shallot";
/// Tor's onion service names (RFC 7686), which Shallot does not reach and never resolves.
pub const TOR_ONION_SUFFIX: &str = ".onion";
/// The address version this code knows.
pub const ADDRESS_VERSION: u8 = 1;
/// Characters of the base32 label: 35 bytes (key, checksum, version) in base32.
pub const ADDRESS_LABEL_LEN: usize = 56;
/// The checksum's domain label.
const CHECKSUM_LABEL: &[u8] = b".shallot checksum";
const KEY_LEN: usize = 32;
const RAW_LEN: usize = KEY_LEN + 2 + 1;

/// Why a `.shallot` name is not an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// The label before `.shallot` is not 56 characters.
    #[error("an onion service address has {ADDRESS_LABEL_LEN} characters before .shallot, not {0}")]
    Length(usize),
    /// A character outside base32's a-z and 2-7.
    #[error("an onion service address holds only the letters a-z and the digits 2-7")]
    Alphabet,
    /// The checksum does not match the key (a typing error, most likely).
    #[error("the onion service address's checksum does not match: mistyped?")]
    Checksum,
    /// A version this client does not know.
    #[error("onion service address version {0} is not known (this client knows {ADDRESS_VERSION})")]
    Version(u8),
    /// The key is not a usable Ed25519 public key (not a point, or not of prime order).
    #[error("the onion service address does not hold a usable Ed25519 public key")]
    BadKey,
}

impl HasKind for AddressError {
    fn kind(&self) -> ErrorKind {
        // The user (or a page) gave a name that cannot be reached: nothing to retry.
        ErrorKind::BadConfig
    }
}

/// An onion service's address: its Ed25519 identity public key, checked.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OnionAddress {
    key: [u8; KEY_LEN],
}

impl OnionAddress {
    /// The address of the service whose identity public key is `key`.
    pub fn from_key(key: [u8; KEY_LEN]) -> Result<Self, AddressError> {
        let point = CompressedEdwardsY(key)
            .decompress()
            .ok_or(AddressError::BadKey)?;
        // A key with a small-order component would let two keys share an address's meaning
        // (and blinding, specs/09 §3, needs a point of prime order).
        if !point.is_torsion_free() || point.is_small_order() {
            return Err(AddressError::BadKey);
        }
        Ok(Self { key })
    }

    /// Parses `host`: `LABEL.shallot` or `anything.LABEL.shallot`, in any case, with or without a
    /// final dot. `host` must end in `.shallot` (see [`SpecialName::of`]).
    pub fn parse(host: &str) -> Result<Self, AddressError> {
        let host = host.strip_suffix('.').unwrap_or(host);
        let without = strip_suffix_ignore_case(host, ADDRESS_SUFFIX).unwrap_or(host);
        let label = without.rsplit('.').next().unwrap_or(without);
        if label.len() != ADDRESS_LABEL_LEN {
            return Err(AddressError::Length(label.chars().count()));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphabetic() || (b'2'..=b'7').contains(&b))
        {
            return Err(AddressError::Alphabet);
        }
        let raw = BASE32_NOPAD
            .decode(label.to_ascii_uppercase().as_bytes())
            .map_err(|_| AddressError::Alphabet)?;
        let raw: [u8; RAW_LEN] = raw.try_into().map_err(|_| AddressError::Alphabet)?;
        let (key, rest) = raw.split_at(KEY_LEN);
        let version = rest[2];
        let key: [u8; KEY_LEN] = key.try_into().map_err(|_| AddressError::Alphabet)?;
        // The version first: another version may checksum differently.
        if version != ADDRESS_VERSION {
            return Err(AddressError::Version(version));
        }
        if rest[..2] != checksum(&key, version) {
            return Err(AddressError::Checksum);
        }
        Self::from_key(key)
    }

    /// The service's identity public key.
    pub fn key(&self) -> &[u8; KEY_LEN] {
        &self.key
    }
}

impl fmt::Display for OnionAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = [0u8; RAW_LEN];
        raw[..KEY_LEN].copy_from_slice(&self.key);
        raw[KEY_LEN..KEY_LEN + 2].copy_from_slice(&checksum(&self.key, ADDRESS_VERSION));
        raw[RAW_LEN - 1] = ADDRESS_VERSION;
        write!(
            f,
            "{}{ADDRESS_SUFFIX}",
            BASE32_NOPAD.encode(&raw).to_ascii_lowercase()
        )
    }
}

impl fmt::Debug for OnionAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OnionAddress({self})")
    }
}

/// `CHECKSUM = H(".shallot checksum" | PUBKEY | VERSION)[0..2]`.
fn checksum(key: &[u8; KEY_LEN], version: u8) -> [u8; 2] {
    let digest = Sha3_256::new()
        .chain_update(CHECKSUM_LABEL)
        .chain_update(key)
        .chain_update([version])
        .finalize();
    [digest[0], digest[1]]
}

fn strip_suffix_ignore_case<'a>(s: &'a str, suffix: &str) -> Option<&'a str> {
    let cut = s.len().checked_sub(suffix.len())?;
    (s.is_char_boundary(cut) && s[cut..].eq_ignore_ascii_case(suffix)).then(|| &s[..cut])
}

/// What a host name is, as far as resolving it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecialName {
    /// An ordinary name, for an exit to resolve.
    Ordinary,
    /// A name under `.shallot`: an onion service's address, or a malformed one. Never sent to
    /// an exit.
    Shallot(Result<OnionAddress, AddressError>),
    /// A name under Tor's `.onion` (RFC 7686): never resolved, never sent to an exit.
    TorOnion,
}

impl SpecialName {
    /// Classifies `host` (case and a final dot do not matter).
    pub fn of(host: &str) -> Self {
        let host = host.strip_suffix('.').unwrap_or(host);
        let under = |suffix: &str| {
            strip_suffix_ignore_case(host, suffix).is_some()
                || host.eq_ignore_ascii_case(&suffix[1..])
        };
        if under(ADDRESS_SUFFIX) {
            Self::Shallot(OnionAddress::parse(host))
        } else if under(TOR_ONION_SUFFIX) {
            Self::TorOnion
        } else {
            Self::Ordinary
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// An independent vector: the public key of RFC 8032's test 1 (also rend-spec-v3's example
    /// key), its address computed with Python's hashlib.sha3_256 and base64.b32encode.
    const RFC8032_KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    const RFC8032_ADDRESS: &str =
        "25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhkendnxqb.shallot";

    fn rfc8032_key() -> [u8; 32] {
        data_encoding::HEXLOWER
            .decode(RFC8032_KEY.as_bytes())
            .unwrap()
            .try_into()
            .unwrap()
    }

    #[test]
    fn the_vector_encodes_and_parses() {
        let address = OnionAddress::from_key(rfc8032_key()).unwrap();
        assert_eq!(address.to_string(), RFC8032_ADDRESS);
        assert_eq!(OnionAddress::parse(RFC8032_ADDRESS).unwrap(), address);
        assert_eq!(
            OnionAddress::parse(&RFC8032_ADDRESS.to_ascii_uppercase()).unwrap(),
            address
        );
        assert_eq!(
            OnionAddress::parse(&format!("www.{RFC8032_ADDRESS}.")).unwrap(),
            address
        );
    }

    #[test]
    fn malformed_addresses_say_what_is_wrong() {
        let label = &RFC8032_ADDRESS[..ADDRESS_LABEL_LEN];
        assert_eq!(
            OnionAddress::parse("abc.shallot"),
            Err(AddressError::Length(3))
        );
        let mut typo = label.to_owned();
        typo.replace_range(10..11, if &label[10..11] == "a" { "b" } else { "a" });
        assert_eq!(
            OnionAddress::parse(&format!("{typo}.shallot")),
            Err(AddressError::Checksum)
        );
        let mut bad = label.to_owned();
        bad.replace_range(0..1, "1");
        assert_eq!(
            OnionAddress::parse(&format!("{bad}.shallot")),
            Err(AddressError::Alphabet)
        );
        // Version 2, with a checksum made for it.
        let key = rfc8032_key();
        let mut raw = key.to_vec();
        raw.extend_from_slice(&checksum(&key, 2));
        raw.push(2);
        let v2 = BASE32_NOPAD.encode(&raw).to_ascii_lowercase();
        assert_eq!(
            OnionAddress::parse(&format!("{v2}.shallot")),
            Err(AddressError::Version(2))
        );
    }

    #[test]
    fn keys_of_small_order_are_refused() {
        // The identity point (0, 1) and a point of order 8 are valid encodings, not keys.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(OnionAddress::from_key(identity), Err(AddressError::BadKey));
        let order8 = data_encoding::HEXLOWER
            .decode(b"c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")
            .unwrap();
        assert_eq!(
            OnionAddress::from_key(order8.try_into().unwrap()),
            Err(AddressError::BadKey)
        );
    }

    #[test]
    fn names_are_classified_before_any_lookup() {
        assert_eq!(
            SpecialName::of(RFC8032_ADDRESS),
            SpecialName::Shallot(Ok(OnionAddress::from_key(rfc8032_key()).unwrap()))
        );
        assert!(matches!(
            SpecialName::of("nope.SHALLOT."),
            SpecialName::Shallot(Err(AddressError::Length(4)))
        ));
        assert!(matches!(
            SpecialName::of("shallot"),
            SpecialName::Shallot(Err(_))
        ));
        assert_eq!(
            SpecialName::of("duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion"),
            SpecialName::TorOnion
        );
        assert_eq!(SpecialName::of("www.Example.ONION"), SpecialName::TorOnion);
        for ordinary in [
            "example.org",
            "shallot.example",
            "xshallot",
            "a.shallotx",
            "xonion",
        ] {
            assert_eq!(
                SpecialName::of(ordinary),
                SpecialName::Ordinary,
                "{ordinary}"
            );
        }
        assert_eq!(SpecialName::of("onion"), SpecialName::TorOnion);
    }

    proptest! {
        #[test]
        fn every_key_round_trips(seed in any::<[u8; 32]>()) {
            let key = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().to_bytes();
            let address = OnionAddress::from_key(key).unwrap();
            let text = address.to_string();
            prop_assert_eq!(text.len(), ADDRESS_LABEL_LEN + ADDRESS_SUFFIX.len());
            prop_assert_eq!(OnionAddress::parse(&text).unwrap(), address);
        }

        #[test]
        fn parsing_never_panics(host in "\\PC{0,80}") {
            let _ = SpecialName::of(&host);
            let _ = OnionAddress::parse(&host);
        }
    }
}
