//! The AEAD behind the onion layers: ChaCha20-Poly1305 (RFC 8439), two implementations behind
//! one small trait. specs/02 §4.1.
//!
//! Key hygiene: every raw key byte this crate holds lives in a zeroize-on-drop type
//! ([`crate::HopKeys`], which the layer constructors consume). `chacha20poly1305` zeroizes its
//! own key copy on drop. `ring`'s `LessSafeKey` offers no way to wipe its internal copy of the
//! key, so with [`RingChaCha`] one copy of each layer key stays in freed memory after the
//! circuit closes (a residual documented in specs/02 §5.4).

use chacha20poly1305::aead::{AeadInPlace, KeyInit};

/// Length of the Poly1305 tag. specs/02 §4.1.
pub(crate) const TAG_LEN: usize = 16;

/// The implementation used when none is named: the one line that selects it. Chosen from the
/// criterion benchmark (`benches/layers.rs`, figures in specs/02 §7): `ring` is 4–7× faster
/// than `chacha20poly1305` 0.10.1 per 512–1024-byte cell, 2× at 4096.
pub type DefaultAead = RingChaCha;

/// Builds the 96-bit nonce: 4 zero bytes || 64-bit little-endian counter (as Noise).
/// specs/02 §4.1.
pub(crate) fn nonce(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

mod sealed {
    /// The operations the layers need from an AEAD. Private: only this crate implements it.
    #[allow(unreachable_pub)] // sealed-trait pattern: public in a private module on purpose
    pub trait Sealed: Sized {
        /// Sets up the cipher with a 32-byte key.
        fn from_key(key: &[u8; 32]) -> Self;
        /// `span` is `PLAINTEXT | 16 bytes of room`: encrypts the plaintext in place with empty
        /// associated data and writes the tag into the last 16 bytes. False if `span` is
        /// shorter than a tag or the implementation failed.
        fn seal(&self, nonce: [u8; 12], span: &mut [u8]) -> bool;
        /// `span` is `CIPHERTEXT | TAG`: checks the tag and decrypts the ciphertext in place.
        /// False if authentication failed (the contents of `span` are then unspecified and
        /// must not be used).
        fn open(&self, nonce: [u8; 12], span: &mut [u8]) -> bool;
    }
}

/// A ChaCha20-Poly1305 implementation usable for onion layers. Sealed: implemented by
/// [`RustCryptoChaCha`] and [`RingChaCha`] only.
pub trait LayerAead: sealed::Sealed + Send + Sync + 'static {}

/// ChaCha20-Poly1305 from the `chacha20poly1305` crate (RustCrypto), which zeroizes its key on
/// drop.
pub struct RustCryptoChaCha(chacha20poly1305::ChaCha20Poly1305);

impl sealed::Sealed for RustCryptoChaCha {
    fn from_key(key: &[u8; 32]) -> Self {
        Self(chacha20poly1305::ChaCha20Poly1305::new(key.into()))
    }

    fn seal(&self, nonce: [u8; 12], span: &mut [u8]) -> bool {
        let Some(split) = span.len().checked_sub(TAG_LEN) else {
            return false;
        };
        let (text, tag_out) = span.split_at_mut(split);
        match self.0.encrypt_in_place_detached(&nonce.into(), &[], text) {
            Ok(tag) => {
                tag_out.copy_from_slice(&tag);
                true
            }
            Err(_) => false,
        }
    }

    fn open(&self, nonce: [u8; 12], span: &mut [u8]) -> bool {
        let Some(split) = span.len().checked_sub(TAG_LEN) else {
            return false;
        };
        let (text, tag) = span.split_at_mut(split);
        let tag = chacha20poly1305::Tag::from_slice(tag);
        self.0
            .decrypt_in_place_detached(&nonce.into(), &[], text, tag)
            .is_ok()
    }
}

impl LayerAead for RustCryptoChaCha {}

impl core::fmt::Debug for RustCryptoChaCha {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("RustCryptoChaCha { .. }")
    }
}

/// ChaCha20-Poly1305 from `ring` (`CHACHA20_POLY1305` through `LessSafeKey`). Faster for
/// cell-sized messages; its internal key copy cannot be zeroized (see the module docs).
pub struct RingChaCha(Option<ring::aead::LessSafeKey>);

impl sealed::Sealed for RingChaCha {
    fn from_key(key: &[u8; 32]) -> Self {
        // `UnboundKey::new` fails only for a key of the wrong length, which `[u8; 32]` rules
        // out; should it ever fail, every seal and open fails (closed, not open).
        let key = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, key).ok();
        Self(key.map(ring::aead::LessSafeKey::new))
    }

    fn seal(&self, nonce: [u8; 12], span: &mut [u8]) -> bool {
        let (Some(key), Some(split)) = (self.0.as_ref(), span.len().checked_sub(TAG_LEN)) else {
            return false;
        };
        let (text, tag_out) = span.split_at_mut(split);
        match key.seal_in_place_separate_tag(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::empty(),
            text,
        ) {
            Ok(tag) => {
                tag_out.copy_from_slice(tag.as_ref());
                true
            }
            Err(_) => false,
        }
    }

    fn open(&self, nonce: [u8; 12], span: &mut [u8]) -> bool {
        let Some(key) = self.0.as_ref() else {
            return false;
        };
        key.open_in_place(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::empty(),
            span,
        )
        .is_ok()
    }
}

impl LayerAead for RingChaCha {}

impl core::fmt::Debug for RingChaCha {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("RingChaCha { .. }")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::sealed::Sealed;
    use super::*;

    #[test]
    fn nonce_is_four_zero_bytes_then_little_endian_counter() {
        assert_eq!(nonce(0), [0; 12]);
        assert_eq!(nonce(1), [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            nonce(0x0102_0304_0506_0708),
            [0, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1]
        );
    }

    /// The two implementations give the same bytes and open each other's output.
    #[test]
    fn implementations_agree_and_round_trip() {
        let key = [0x42u8; 32];
        let a = RustCryptoChaCha::from_key(&key);
        let b = RingChaCha::from_key(&key);
        for len in [0usize, 1, 15, 16, 17, 63, 64, 65, 511, 1006] {
            let msg: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut x = msg.clone();
            x.extend_from_slice(&[0; TAG_LEN]);
            let mut y = x.clone();
            assert!(a.seal(nonce(len as u64), &mut x));
            assert!(b.seal(nonce(len as u64), &mut y));
            assert_eq!(x, y);
            assert!(b.open(nonce(len as u64), &mut x));
            assert!(a.open(nonce(len as u64), &mut y));
            assert_eq!(x[..len], msg[..]);
            assert_eq!(y[..len], msg[..]);
        }
    }

    /// RFC 8439 §2.8.2 (with its AAD dropped, so the tag differs): the ciphertext must match
    /// the RFC's, which pins key, nonce layout and counter start.
    #[test]
    fn rfc8439_ciphertext_prefix() {
        let key: [u8; 32] = core::array::from_fn(|i| 0x80 + i as u8);
        let nonce = [
            0x07, 0, 0, 0, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47,
        ];
        let pt = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let mut buf = pt.to_vec();
        buf.extend_from_slice(&[0; TAG_LEN]);
        assert!(RingChaCha::from_key(&key).seal(nonce, &mut buf));
        assert_eq!(hex::encode(&buf[..16]), "d31a8d34648e60db7b86afbc53ef7ec2");
    }

    #[test]
    fn wrong_tag_nonce_or_short_span_fails_in_both() {
        let key = [7u8; 32];
        let a = RustCryptoChaCha::from_key(&key);
        let b = RingChaCha::from_key(&key);
        let mut m = vec![1u8; 40];
        assert!(a.seal(nonce(5), &mut m));
        let mut bad = m.clone();
        bad[39] ^= 1;
        assert!(!a.open(nonce(5), &mut bad.clone()));
        assert!(!b.open(nonce(5), &mut bad));
        assert!(!a.open(nonce(6), &mut m.clone()));
        assert!(!b.open(nonce(6), &mut m.clone()));
        assert!(!a.seal(nonce(0), &mut [0u8; 15]));
        assert!(!b.seal(nonce(0), &mut [0u8; 15]));
        assert!(!a.open(nonce(0), &mut [0u8; 15]));
        assert!(!b.open(nonce(0), &mut [0u8; 15]));
    }
}
