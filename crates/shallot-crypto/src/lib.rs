#![doc = include_str!("../README.md")]

mod aead;
mod dalek;
mod err;
mod handshake;
mod keys;
mod layers;

pub use aead::{DefaultAead, LayerAead, RingChaCha, RustCryptoChaCha};
pub use err::CryptoError;
pub use handshake::{
    CLIENT_HANDSHAKE_LEN, ClientHandshake, HopKeys, NOISE_PATTERN, PROLOGUE_LABEL,
    RELAY_HANDSHAKE_LEN, relay_handshake,
};
pub use keys::{OnionKeyRing, OnionPublicKey, OnionSecretKey};
pub use layers::{
    ClientLayers, ForwardMarker, MARKER_FOR_YOU, MARKER_FORWARD, MARKER_FROM_ME, MARKER_RELAYED,
    RelayLayer,
};
