//! Onion keys: a relay's medium-term x25519 keys for circuit handshakes. specs/02 §2.

use core::fmt;

use shallot_cell::OnionKeyId;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::dalek::KnownKeypair;

/// Domain separation label of the onion-key id. specs/02 §2.1.
const KEY_ID_LABEL: &[u8] = b"shallot-onion-key-id-v1";

/// A relay's secret onion key (x25519). Zeroized on drop; its `Debug` shows only the key id.
pub struct OnionSecretKey {
    // x25519-dalek's StaticSecret zeroizes itself on drop (feature `zeroize`).
    secret: StaticSecret,
    public: OnionPublicKey,
}

impl OnionSecretKey {
    /// A fresh random key from the operating system's generator.
    #[must_use]
    pub fn generate() -> Self {
        Self::from_secret(StaticSecret::random())
    }

    /// The key with these secret bytes (clamped by x25519 when used).
    #[must_use]
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        // `bytes` is a copy the caller owns; StaticSecret keeps (and zeroizes) its own.
        Self::from_secret(StaticSecret::from(bytes))
    }

    fn from_secret(secret: StaticSecret) -> Self {
        let public = OnionPublicKey(PublicKey::from(&secret).to_bytes());
        Self { secret, public }
    }

    /// The secret bytes, for storing the key; zeroized when the returned value drops.
    #[must_use]
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(*self.secret.as_bytes())
    }

    /// The public half, published in the relay's descriptor.
    #[must_use]
    pub fn public_key(&self) -> OnionPublicKey {
        self.public
    }

    /// The secret bytes, borrowed, for handing to snow.
    pub(crate) fn secret_bytes(&self) -> &[u8; 32] {
        self.secret.as_bytes()
    }

    /// Both halves, for the handshake's resolver: it need not recompute the public one.
    pub(crate) fn keypair(&self) -> KnownKeypair {
        KnownKeypair {
            secret: self.secret.clone(),
            public: self.public.0,
        }
    }
}

impl fmt::Debug for OnionSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnionSecretKey")
            .field("id", &KeyIdHex(self.public.id()))
            .finish_non_exhaustive()
    }
}

/// A relay's public onion key (x25519), as carried in its descriptor.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OnionPublicKey(pub [u8; 32]);

impl OnionPublicKey {
    /// The key's id: the first 8 bytes of `SHA-256("shallot-onion-key-id-v1" || key)`.
    /// specs/02 §2.1.
    #[must_use]
    pub fn id(&self) -> OnionKeyId {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(KEY_ID_LABEL);
        ctx.update(&self.0);
        let digest = ctx.finish();
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest.as_ref()[..8]);
        OnionKeyId(id)
    }
}

impl fmt::Debug for OnionPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OnionPublicKey(")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// Hex formatting of a key id for `Debug` output.
struct KeyIdHex(OnionKeyId);

impl fmt::Debug for KeyIdHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A relay's onion keys: the current one and, after a rotation, the previous one, so that
/// clients holding last period's descriptor still get through. specs/02 §2.2.
#[derive(Debug)]
pub struct OnionKeyRing {
    current: (OnionKeyId, OnionSecretKey),
    previous: Option<(OnionKeyId, OnionSecretKey)>,
}

impl OnionKeyRing {
    /// A ring holding only `current`.
    #[must_use]
    pub fn new(current: OnionSecretKey) -> Self {
        Self {
            current: (current.public_key().id(), current),
            previous: None,
        }
    }

    /// Makes `next` current and the current key previous; the old previous key is dropped
    /// (and zeroized). specs/02 §2.2.
    pub fn rotate(&mut self, next: OnionSecretKey) {
        let next = (next.public_key().id(), next);
        let old = core::mem::replace(&mut self.current, next);
        self.previous = Some(old);
    }

    /// Drops (and zeroizes) the previous key: once no valid descriptor names it as current,
    /// nobody may use it, and holding it only helps whoever later steals it. specs/02 §2.2.
    pub fn forget_previous(&mut self) {
        self.previous = None;
    }

    /// The public half of the current key.
    #[must_use]
    pub fn current_public(&self) -> OnionPublicKey {
        self.current.1.public_key()
    }

    /// The public half of the previous key, if there was a rotation.
    #[must_use]
    pub fn previous_public(&self) -> Option<OnionPublicKey> {
        self.previous.as_ref().map(|(_, k)| k.public_key())
    }

    /// The secret key with this id, current or previous. specs/02 §3.4.
    #[must_use]
    pub fn find(&self, id: &OnionKeyId) -> Option<&OnionSecretKey> {
        if self.current.0.0 == id.0 {
            return Some(&self.current.1);
        }
        match &self.previous {
            Some((pid, key)) if pid.0 == id.0 => Some(key),
            _ => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_forgotten_previous_key_is_no_longer_found() {
        let first = OnionSecretKey::generate();
        let first_id = first.public_key().id();
        let mut ring = OnionKeyRing::new(first);
        ring.rotate(OnionSecretKey::generate());
        assert!(ring.find(&first_id).is_some());
        ring.forget_previous();
        assert!(ring.find(&first_id).is_none());
        assert!(ring.previous_public().is_none());
        assert!(ring.find(&ring.current_public().id()).is_some());
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let key = OnionSecretKey::from_bytes([0xab; 32]);
        let shown = format!(
            "{key:?} {:?}",
            OnionKeyRing::new(OnionSecretKey::from_bytes([0xab; 32]))
        );
        assert!(!shown.contains("abab"), "{shown}");
        assert!(!shown.contains("171, 171"), "{shown}");
    }

    #[test]
    fn secret_round_trips_and_public_is_stable() {
        let key = OnionSecretKey::generate();
        let again = OnionSecretKey::from_bytes(*key.to_bytes());
        assert_eq!(key.public_key(), again.public_key());
        assert_eq!(key.public_key().id().0, again.public_key().id().0);
    }

    #[test]
    fn rotation_keeps_exactly_one_previous_key() {
        let a = OnionSecretKey::from_bytes([1; 32]);
        let b = OnionSecretKey::from_bytes([2; 32]);
        let c = OnionSecretKey::from_bytes([3; 32]);
        let (ida, idb, idc) = (
            a.public_key().id(),
            b.public_key().id(),
            c.public_key().id(),
        );
        let (pa, pb) = (a.public_key(), b.public_key());
        let mut ring = OnionKeyRing::new(a);
        assert!(ring.find(&ida).is_some());
        assert!(ring.previous_public().is_none());
        ring.rotate(b);
        assert_eq!(ring.current_public(), pb);
        assert_eq!(ring.previous_public(), Some(pa));
        assert!(ring.find(&ida).is_some() && ring.find(&idb).is_some());
        ring.rotate(c);
        assert!(ring.find(&ida).is_none());
        assert!(ring.find(&idb).is_some() && ring.find(&idc).is_some());
    }

    #[test]
    fn key_ids_differ_per_key() {
        let a = OnionSecretKey::from_bytes([1; 32]).public_key().id();
        let b = OnionSecretKey::from_bytes([2; 32]).public_key().id();
        assert_ne!(a.0, b.0);
    }
}
