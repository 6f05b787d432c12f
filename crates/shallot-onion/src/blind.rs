//! Periods, blinded keys and subcredentials (specs/09 §3): Tor's Ed25519 key blinding
//! (rend-spec-v3 §2.1 and Appendix A.2) byte for byte, so that Tor's own test vectors check it.

use curve25519_dalek::Scalar;
use curve25519_dalek::edwards::CompressedEdwardsY;
use ed25519_dalek::hazmat::{ExpandedSecretKey, raw_sign};
use ed25519_dalek::{Signature, VerifyingKey};
use sha2_v011::Sha512;
use sha3::{Digest, Sha3_256};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::address::{AddressError, OnionAddress};

/// Minutes in one period (Tor's default `hsdir-interval`).
pub const PERIOD_LENGTH_MINUTES: u64 = 1440;
/// Periods turn this many minutes after 00:00 UTC (Tor's rotation time offset).
pub const PERIOD_OFFSET_MINUTES: u64 = 720;

const BLIND_STRING: &[u8] = b"Derive temporary signing key\0";
const PREFIX_STRING: &[u8] = b"Derive temporary signing key hash input";
/// The base point as rend-spec-v3 §2.1 writes it into the blinding hash: its coordinates in
/// decimal, not its encoding.
const BASEPOINT_STRING: &[u8] = b"(15112221349535400772501151409588531511454012693041857206046113283949847762202, 46316835694926478169428394003475163141307993866256225615783033603165251855960)";

/// The period holding `unix_secs`, with periods of `length_minutes`.
pub fn period_num(unix_secs: u64, length_minutes: u64) -> u64 {
    (unix_secs / 60).saturating_sub(PERIOD_OFFSET_MINUTES) / length_minutes.max(1)
}

/// `h`, the clamped blinding factor of `identity` for one period.
fn blinding_factor(identity: &[u8; 32], period: u64, length_minutes: u64) -> Scalar {
    let digest = Sha3_256::new()
        .chain_update(BLIND_STRING)
        .chain_update(identity)
        .chain_update(BASEPOINT_STRING)
        .chain_update(b"key-blind")
        .chain_update(period.to_be_bytes())
        .chain_update(length_minutes.to_be_bytes())
        .finalize();
    let mut h = [0u8; 32];
    h.copy_from_slice(&digest);
    // The identity is of prime order, so h·A = (h mod ℓ)·A.
    Scalar::from_bytes_mod_order(clamped(h))
}

/// Ed25519 clamping of a scalar's bytes.
fn clamped(mut h: [u8; 32]) -> [u8; 32] {
    h[0] &= 248;
    h[31] &= 63;
    h[31] |= 64;
    h
}

/// The blinded public key `A'` of a service for one period.
pub fn blinded_public_key(
    address: &OnionAddress,
    period: u64,
    length_minutes: u64,
) -> Result<[u8; 32], AddressError> {
    let point = CompressedEdwardsY(*address.key())
        .decompress()
        .ok_or(AddressError::BadKey)?;
    let h = blinding_factor(address.key(), period, length_minutes);
    Ok((h * point).compress().to_bytes())
}

/// `subcredential = H("subcredential" | H("credential" | A) | A')`.
pub fn subcredential(address: &OnionAddress, blinded: &[u8; 32]) -> [u8; 32] {
    let credential = Sha3_256::new()
        .chain_update(b"credential")
        .chain_update(address.key())
        .finalize();
    let digest = Sha3_256::new()
        .chain_update(b"subcredential")
        .chain_update(credential)
        .chain_update(blinded)
        .finalize();
    let mut out = [0u8; 32];
    out.copy_from_slice(&digest);
    out
}

/// A service's blinded signing key for one period. Its secret halves are wiped on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct BlindedSigningKey {
    scalar: Scalar,
    prefix: [u8; 32],
    #[zeroize(skip)]
    public: [u8; 32],
}

impl BlindedSigningKey {
    /// Blinds the identity whose Ed25519 secret seed is `seed` (what a key file holds) for one
    /// period.
    pub fn derive(seed: &[u8; 32], period: u64, length_minutes: u64) -> Self {
        let expanded = ExpandedSecretKey::from(seed);
        let identity = VerifyingKey::from(&expanded).to_bytes();
        Self::from_expanded(&expanded, &identity, period, length_minutes)
    }

    fn from_expanded(
        expanded: &ExpandedSecretKey,
        identity: &[u8; 32],
        period: u64,
        length_minutes: u64,
    ) -> Self {
        let h = blinding_factor(identity, period, length_minutes);
        let scalar = h * expanded.scalar;
        let digest = Sha512::new()
            .chain_update(PREFIX_STRING)
            .chain_update(expanded.hash_prefix)
            .finalize();
        let mut prefix = [0u8; 32];
        prefix.copy_from_slice(&digest[..32]);
        let public = curve25519_dalek::constants::ED25519_BASEPOINT_POINT * scalar;
        Self {
            scalar,
            prefix,
            public: public.compress().to_bytes(),
        }
    }

    /// The blinded public key `A'`.
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// An Ed25519 signature of `message` that verifies under [`Self::public_key`].
    pub fn sign(&self, message: &[u8]) -> Result<[u8; 64], AddressError> {
        let verifying = VerifyingKey::from_bytes(&self.public).map_err(|_| AddressError::BadKey)?;
        let esk = ExpandedSecretKey {
            scalar: self.scalar,
            hash_prefix: self.prefix,
        };
        let signature: Signature = raw_sign::<Sha512>(&esk, message, &verifying);
        Ok(signature.to_bytes())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use ed25519_dalek::Verifier;

    use super::*;

    fn hex32(s: &str) -> [u8; 32] {
        data_encoding::HEXUPPER
            .decode(s.as_bytes())
            .unwrap()
            .try_into()
            .unwrap()
    }

    /// tor's src/test/test_hs_common.c, test_blinding_basics: period 1234 of 1440 minutes is
    /// 1973-05-20 01:50:33 UTC.
    const TOR_IDENTITY: &str = "833990B085C1A688C1D4C8B1F6B56AFAF5A2ECA674449E1D704F83765CCB7BC6";
    const TOR_BLINDED: &str = "3A50BF210E8F9EE955AE0014F7A6917FB65EBF098A86305ABB508D1A7291B6D5";
    const TOR_SUBCREDENTIAL: &str =
        "635D55907816E8D76398A675A50B1C2F3E36B42A5CA77BA3A0441285161AE07D";
    const TOR_SECRET_EXPANDED: &str = "D8C7FF0E31295B66540D789AF3E3DF992038A9592EEA01D8B7CBA06D6E66D1594D6167696320576F7264733A20737065697373636F62616C742062697669756D";

    #[test]
    fn tors_blinding_vector_holds() {
        assert_eq!(period_num(106_710_633, PERIOD_LENGTH_MINUTES), 1234);
        // Tor's build_blinded_key_param output for this period, which Tor clamps when it
        // multiplies.
        let param = hex32("379E50DB31FEE6775ABD0AF6FB7C371E060308F4F847DB09FE4CFE13AF602287");
        assert_eq!(
            blinding_factor(&hex32(TOR_IDENTITY), 1234, PERIOD_LENGTH_MINUTES),
            Scalar::from_bytes_mod_order(clamped(param))
        );
        let address = OnionAddress::from_key(hex32(TOR_IDENTITY)).unwrap();
        let blinded = blinded_public_key(&address, 1234, PERIOD_LENGTH_MINUTES).unwrap();
        assert_eq!(blinded, hex32(TOR_BLINDED));
        assert_eq!(subcredential(&address, &blinded), hex32(TOR_SUBCREDENTIAL));
    }

    #[test]
    fn the_blinded_secret_signs_for_the_blinded_public_key() {
        // Tor's expanded secret key of the vector above: its blinding gives Tor's A'.
        let raw = data_encoding::HEXUPPER
            .decode(TOR_SECRET_EXPANDED.as_bytes())
            .unwrap();
        let bytes: [u8; 64] = raw.try_into().unwrap();
        let expanded = ExpandedSecretKey::from_bytes(&bytes);
        let key = BlindedSigningKey::from_expanded(
            &expanded,
            &hex32(TOR_IDENTITY),
            1234,
            PERIOD_LENGTH_MINUTES,
        );
        assert_eq!(key.public_key(), hex32(TOR_BLINDED));
        let signature = key.sign(b"a descriptor").unwrap();
        let verifying = VerifyingKey::from_bytes(&key.public_key()).unwrap();
        assert!(
            verifying
                .verify(b"a descriptor", &Signature::from_bytes(&signature))
                .is_ok()
        );
        assert!(
            verifying
                .verify(b"another", &Signature::from_bytes(&signature))
                .is_err()
        );
    }

    #[test]
    fn periods_give_unlinkable_keys_that_the_address_predicts() {
        let seed = [7u8; 32];
        let identity = ed25519_dalek::SigningKey::from_bytes(&seed)
            .verifying_key()
            .to_bytes();
        let address = OnionAddress::from_key(identity).unwrap();
        let this = BlindedSigningKey::derive(&seed, 20_000, PERIOD_LENGTH_MINUTES);
        let next = BlindedSigningKey::derive(&seed, 20_001, PERIOD_LENGTH_MINUTES);
        assert_ne!(this.public_key(), next.public_key());
        assert_ne!(this.public_key(), identity);
        assert_eq!(
            blinded_public_key(&address, 20_000, PERIOD_LENGTH_MINUTES).unwrap(),
            this.public_key()
        );
        assert_ne!(
            subcredential(&address, &this.public_key()),
            subcredential(&address, &next.public_key())
        );
    }

    #[test]
    fn periods_turn_at_noon_utc() {
        let noon = 1_796_385_600; // 2026-12-04 12:00:00 UTC
        assert_eq!(
            period_num(noon, PERIOD_LENGTH_MINUTES),
            period_num(noon - 1, PERIOD_LENGTH_MINUTES) + 1
        );
        assert_eq!(period_num(0, PERIOD_LENGTH_MINUTES), 0);
        assert_eq!(period_num(noon, 0), (noon / 60 - PERIOD_OFFSET_MINUTES));
    }
}
