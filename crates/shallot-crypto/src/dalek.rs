//! The Curve25519 operations of the Noise handshake, done by x25519-dalek rather than by
//! snow's default backend. The wire format is unchanged: the same X25519 function, the same
//! keys. It is faster because snow's backend (curve25519-dalek 4 with no default features)
//! computes every public key — the ephemeral one each handshake makes, and the relay's static
//! one, re-derived from the private key every time snow is handed it — without the
//! precomputed basepoint table that x25519-dalek uses; and a relay already knows its onion
//! key's public half, so the static one need not be computed at all. Unlike snow's backend,
//! the private keys held here are zeroized on drop (x25519-dalek's `zeroize` feature).

use snow::params::DHChoice;
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// Length of an X25519 key (private, public) and of a shared secret.
const KEY_LEN: usize = 32;

/// A private key with its public half.
#[derive(Clone)]
pub(crate) struct KnownKeypair {
    pub(crate) secret: StaticSecret,
    pub(crate) public: [u8; KEY_LEN],
}

/// snow's default resolver with the Curve25519 operations replaced by [`DalekDh`]; hash,
/// cipher and random generator stay snow's.
pub(crate) struct DalekResolver {
    /// A keypair whose public half snow need not compute when handed its private half (the
    /// relay's onion key); `None` on the client's side.
    known: Option<KnownKeypair>,
}

impl DalekResolver {
    /// A resolver that computes every public key it is asked for.
    pub(crate) fn new() -> Self {
        Self { known: None }
    }

    /// A resolver that knows the public half of `known` and so never computes it.
    pub(crate) fn knowing(known: KnownKeypair) -> Self {
        Self { known: Some(known) }
    }
}

impl CryptoResolver for DalekResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        DefaultResolver.resolve_rng()
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            DHChoice::Curve25519 => Some(Box::new(DalekDh::new(self.known.clone()))),
            _ => DefaultResolver.resolve_dh(choice),
        }
    }

    fn resolve_hash(&self, choice: &snow::params::HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &snow::params::CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

/// One X25519 key of a handshake (snow asks for one for `s`, one for `e`).
struct DalekDh {
    secret: StaticSecret,
    public: [u8; KEY_LEN],
    known: Option<KnownKeypair>,
}

impl DalekDh {
    fn new(known: Option<KnownKeypair>) -> Self {
        // Like snow's backend, an unset key is all zeros; snow sets or generates it before use.
        Self {
            secret: StaticSecret::from([0u8; KEY_LEN]),
            public: [0u8; KEY_LEN],
            known,
        }
    }

    fn set_secret(&mut self, secret: StaticSecret) {
        self.public = PublicKey::from(&secret).to_bytes();
        self.secret = secret;
    }
}

impl Dh for DalekDh {
    fn name(&self) -> &'static str {
        "25519"
    }

    fn pub_len(&self) -> usize {
        KEY_LEN
    }

    fn priv_len(&self) -> usize {
        KEY_LEN
    }

    fn set(&mut self, privkey: &[u8]) {
        if let Some(known) = &self.known {
            // Constant time: `privkey` is a secret (in practice the known one itself).
            if bool::from(known.secret.as_bytes().as_slice().ct_eq(privkey)) {
                self.secret = known.secret.clone();
                self.public = known.public;
                return;
            }
        }
        // snow's own backend copies a short key into a zeroed buffer; so does this one, and
        // ignores what does not fit rather than panicking (snow only passes 32-byte keys).
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        let n = privkey.len().min(KEY_LEN);
        bytes[..n].copy_from_slice(&privkey[..n]);
        self.set_secret(StaticSecret::from(*bytes));
    }

    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        rng.try_fill_bytes(bytes.as_mut_slice())?;
        self.set_secret(StaticSecret::from(*bytes));
        Ok(())
    }

    fn pubkey(&self) -> &[u8] {
        &self.public
    }

    fn privkey(&self) -> &[u8] {
        self.secret.as_bytes()
    }

    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        // snow's backend asserts these lengths; an error is the same refusal without a panic.
        let (Some(theirs), Some(out)) = (pubkey.get(..KEY_LEN), out.get_mut(..KEY_LEN)) else {
            return Err(snow::Error::Dh);
        };
        let mut their_public = [0u8; KEY_LEN];
        their_public.copy_from_slice(theirs);
        // No check for a low-order point's all-zero result, exactly as snow's backend: Noise
        // does not require one and the NK transcript binds the keys anyway.
        let shared = self.secret.diffie_hellman(&PublicKey::from(their_public));
        out.copy_from_slice(shared.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// What snow's own backend computes, to compare against.
    fn snow_default() -> Box<dyn Dh> {
        DefaultResolver.resolve_dh(&DHChoice::Curve25519).unwrap()
    }

    #[test]
    fn same_public_keys_and_shared_secrets_as_snows_backend() {
        let (mut ours, mut theirs) = (DalekDh::new(None), snow_default());
        let mut rng = DefaultResolver.resolve_rng().unwrap();
        ours.generate(&mut *rng).unwrap();
        theirs.set(ours.privkey());
        assert_eq!(ours.pubkey(), theirs.pubkey());

        let mut peer = snow_default();
        peer.generate(&mut *rng).unwrap();
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        ours.dh(peer.pubkey(), &mut a).unwrap();
        peer.dh(ours.pubkey(), &mut b).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, [0u8; 32]);
    }

    #[test]
    fn a_known_keypair_is_used_only_for_its_own_private_key() {
        // A public half that is not the key's own shows which one `set` took: the known one
        // is copied, not checked (the onion key ring computed it once, when it made the key).
        let marked = [0xeeu8; 32];
        let known = KnownKeypair {
            secret: StaticSecret::from([7u8; 32]),
            public: marked,
        };

        let mut dh = DalekDh::new(Some(known.clone()));
        dh.set(&[7u8; 32]);
        assert_eq!(dh.pubkey(), marked);
        assert_eq!(dh.privkey(), [7u8; 32]);

        // Another key (snow sets a fixed ephemeral key the same way) gets its own public half.
        let mut other = DalekDh::new(Some(known));
        other.set(&[8u8; 32]);
        let mut reference = snow_default();
        reference.set(&[8u8; 32]);
        assert_eq!(other.pubkey(), reference.pubkey());
    }

    #[test]
    fn short_inputs_are_refused_without_a_panic() {
        let dh = DalekDh::new(None);
        assert!(dh.dh(&[1u8; 31], &mut [0u8; 32]).is_err());
        assert!(dh.dh(&[1u8; 32], &mut [0u8; 31]).is_err());
    }
}
