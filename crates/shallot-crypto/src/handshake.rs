//! The per-hop circuit handshake: Noise NK. specs/02 §3.

use core::fmt;

use shallot_cell::OnionKeyId;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::err::CryptoError;
use crate::keys::{OnionKeyRing, OnionPublicKey};

/// The Noise protocol name. specs/02 §3.1.
pub const NOISE_PATTERN: &str = "Noise_NK_25519_ChaChaPoly_BLAKE2s";

/// The prologue label binding protocol version 1. specs/02 §3.1.
pub const PROLOGUE_LABEL: &[u8] = b"shallot-circuit-v1";

/// Length of handshake message 1 (`e, es`, empty payload): the CREATE/EXTEND HDATA.
/// specs/02 §3.2.
pub const CLIENT_HANDSHAKE_LEN: usize = 48;

/// Length of handshake message 2 (`e, ee`, empty payload): the CREATED/EXTENDED HDATA.
/// specs/02 §3.3.
pub const RELAY_HANDSHAKE_LEN: usize = 48;

/// The largest payload this implementation reads so that it can report a non-empty one
/// (version 1 allows none). Longer messages are refused by length. specs/02 §3.4.
const MAX_READ_PAYLOAD: usize = 256;

/// Builds the prologue: `"shallot-circuit-v1" || PEER_ID_LEN [1] || PEER_ID`. specs/02 §3.1.
fn prologue(relay_peer_id: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let len = u8::try_from(relay_peer_id.len())
        .map_err(|_| CryptoError::PeerIdTooLong(relay_peer_id.len()))?;
    let mut p = Vec::with_capacity(PROLOGUE_LABEL.len() + 1 + relay_peer_id.len());
    p.extend_from_slice(PROLOGUE_LABEL);
    p.push(len);
    p.extend_from_slice(relay_peer_id);
    Ok(p)
}

fn builder<'a>(prologue: &'a [u8]) -> Result<snow::Builder<'a>, CryptoError> {
    let params: snow::params::NoiseParams = NOISE_PATTERN.parse()?;
    Ok(snow::Builder::new(params).prologue(prologue)?)
}

/// Checks a received message's length: at least `expected`, at most `expected` plus the
/// largest payload we read. specs/02 §3.4.
fn check_len(message: &[u8], expected: usize) -> Result<(), CryptoError> {
    if message.len() < expected || message.len() > expected + MAX_READ_PAYLOAD {
        return Err(CryptoError::BadHandshakeLength {
            expected,
            got: message.len(),
        });
    }
    Ok(())
}

/// Reads a handshake message and insists its payload is empty. specs/02 §3.4.
fn read_empty(state: &mut snow::HandshakeState, message: &[u8]) -> Result<(), CryptoError> {
    let mut payload = [0u8; MAX_READ_PAYLOAD];
    let n = state.read_message(message, &mut payload)?;
    if n != 0 {
        return Err(CryptoError::NonEmptyHandshakePayload(n));
    }
    Ok(())
}

/// Takes the layer keys out of a finished handshake. specs/02 §3.5.
fn split(state: &mut snow::HandshakeState) -> HopKeys {
    let (mut forward, mut backward) = state.dangerously_get_raw_split();
    let keys = HopKeys { forward, backward };
    forward.zeroize();
    backward.zeroize();
    keys
}

/// The two layer keys of one hop: forward (client → relay) and backward (relay → client).
/// Zeroized on drop; never printed. specs/02 §3.5.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct HopKeys {
    pub(crate) forward: [u8; 32],
    pub(crate) backward: [u8; 32],
}

impl HopKeys {
    /// Builds keys from raw bytes, for tests, benchmarks and fuzzing only: real keys come out of
    /// a handshake.
    #[doc(hidden)]
    #[must_use]
    pub fn from_raw_for_testing(forward: [u8; 32], backward: [u8; 32]) -> Self {
        Self { forward, backward }
    }
}

impl fmt::Debug for HopKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HopKeys { .. }")
    }
}

/// The client's side of one hop's handshake, between sending message 1 and receiving message 2.
pub struct ClientHandshake {
    state: snow::HandshakeState,
}

impl fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientHandshake { .. }")
    }
}

impl ClientHandshake {
    /// Starts a handshake with the relay named `relay_peer_id` whose onion key is `onion_key`;
    /// returns the state and message 1 (the CREATE/EXTEND HDATA, 48 bytes). specs/02 §3.2.
    pub fn start(
        relay_peer_id: &[u8],
        onion_key: &OnionPublicKey,
    ) -> Result<(Self, Vec<u8>), CryptoError> {
        Self::start_inner(relay_peer_id, onion_key, None)
    }

    /// [`ClientHandshake::start`] with a fixed ephemeral key: for test vectors only.
    #[cfg(test)]
    pub(crate) fn start_with_ephemeral(
        relay_peer_id: &[u8],
        onion_key: &OnionPublicKey,
        ephemeral: &[u8; 32],
    ) -> Result<(Self, Vec<u8>), CryptoError> {
        Self::start_inner(relay_peer_id, onion_key, Some(ephemeral))
    }

    fn start_inner(
        relay_peer_id: &[u8],
        onion_key: &OnionPublicKey,
        ephemeral: Option<&[u8; 32]>,
    ) -> Result<(Self, Vec<u8>), CryptoError> {
        let prologue = prologue(relay_peer_id)?;
        let mut b = builder(&prologue)?.remote_public_key(&onion_key.0)?;
        if let Some(e) = ephemeral {
            b = b.fixed_ephemeral_key_for_testing_only(e);
        }
        let mut state = b.build_initiator()?;
        let mut message = vec![0u8; CLIENT_HANDSHAKE_LEN];
        let n = state.write_message(&[], &mut message)?;
        message.truncate(n);
        Ok((Self { state }, message))
    }

    /// Reads message 2 (the CREATED/EXTENDED HDATA) and returns the hop's layer keys.
    /// specs/02 §3.3, §3.5.
    pub fn finish(mut self, reply: &[u8]) -> Result<HopKeys, CryptoError> {
        check_len(reply, RELAY_HANDSHAKE_LEN)?;
        read_empty(&mut self.state, reply)?;
        if !self.state.is_handshake_finished() {
            return Err(CryptoError::Internal);
        }
        Ok(split(&mut self.state))
    }
}

/// The relay's side of a handshake: reads message 1 sent for the onion key `key_id`, answers
/// with message 2 (48 bytes) and returns the hop's layer keys. `relay_peer_id` is this relay's
/// own identity. Parses remote input: fails with an error, never panics. specs/02 §3.4.
pub fn relay_handshake(
    relay_peer_id: &[u8],
    keys: &OnionKeyRing,
    key_id: &OnionKeyId,
    message: &[u8],
) -> Result<(HopKeys, Vec<u8>), CryptoError> {
    relay_handshake_inner(relay_peer_id, keys, key_id, message, None)
}

/// [`relay_handshake`] with a fixed ephemeral key: for test vectors only.
#[cfg(test)]
pub(crate) fn relay_handshake_with_ephemeral(
    relay_peer_id: &[u8],
    keys: &OnionKeyRing,
    key_id: &OnionKeyId,
    message: &[u8],
    ephemeral: &[u8; 32],
) -> Result<(HopKeys, Vec<u8>), CryptoError> {
    relay_handshake_inner(relay_peer_id, keys, key_id, message, Some(ephemeral))
}

fn relay_handshake_inner(
    relay_peer_id: &[u8],
    keys: &OnionKeyRing,
    key_id: &OnionKeyId,
    message: &[u8],
    ephemeral: Option<&[u8; 32]>,
) -> Result<(HopKeys, Vec<u8>), CryptoError> {
    let secret = keys.find(key_id).ok_or(CryptoError::UnknownOnionKey)?;
    check_len(message, CLIENT_HANDSHAKE_LEN)?;
    let prologue = prologue(relay_peer_id)?;
    let mut b = builder(&prologue)?.local_private_key(secret.secret_bytes())?;
    if let Some(e) = ephemeral {
        b = b.fixed_ephemeral_key_for_testing_only(e);
    }
    let mut state = b.build_responder()?;
    read_empty(&mut state, message)?;
    let mut reply = vec![0u8; RELAY_HANDSHAKE_LEN];
    let n = state.write_message(&[], &mut reply)?;
    reply.truncate(n);
    if !state.is_handshake_finished() {
        return Err(CryptoError::Internal);
    }
    Ok((split(&mut state), reply))
}
