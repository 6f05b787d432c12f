//! The per-hop circuit handshake: Noise NK. specs/02 §3.

use core::fmt;

use shallot_cell::OnionKeyId;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::dalek::DalekResolver;
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

/// A snow builder for [`NOISE_PATTERN`] whose Curve25519 operations are x25519-dalek's
/// (`dalek.rs` says why).
fn builder(prologue: &[u8], resolver: DalekResolver) -> Result<snow::Builder<'_>, CryptoError> {
    let params: snow::params::NoiseParams = NOISE_PATTERN.parse()?;
    Ok(snow::Builder::with_resolver(params, Box::new(resolver)).prologue(prologue)?)
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
        let mut b = builder(&prologue, DalekResolver::new())?.remote_public_key(&onion_key.0)?;
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
    // The resolver knows the onion key's public half, so the handshake does not recompute it.
    let mut b = builder(&prologue, DalekResolver::knowing(secret.keypair()))?
        .local_private_key(secret.secret_bytes())?;
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! Test vectors (`tests/vectors/nk-handshake.txt`): fixed onion keys, fixed ephemeral keys
    //! and relay identities give fixed messages, keys and cells. Regenerate with
    //! `SHALLOT_REGEN_VECTORS=1 cargo test -p shallot-crypto vectors`.

    use std::collections::BTreeMap;
    use std::fmt::Write as _;

    use super::*;
    use crate::keys::OnionSecretKey;
    use crate::layers::{ClientLayers, RelayLayer};

    const VECTORS: &str = include_str!("../tests/vectors/nk-handshake.txt");
    const VECTOR_PATH: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/nk-handshake.txt"
    );
    const CELL_LEN: usize = 128;

    fn pattern(start: u8, step: u8) -> [u8; 32] {
        core::array::from_fn(|i| start.wrapping_add(step.wrapping_mul(i as u8)))
    }

    struct HopInput {
        peer_id: Vec<u8>,
        onion_secret: [u8; 32],
        client_e: [u8; 32],
        relay_e: [u8; 32],
    }

    fn hop_input(h: u8) -> HopInput {
        // Shaped like a libp2p Ed25519 PeerId (identity multihash of the protobuf public key).
        let mut peer_id = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
        peer_id.extend_from_slice(&pattern(0xa0 + h, 3));
        HopInput {
            peer_id,
            onion_secret: pattern(0x01 + 0x20 * h, 1),
            client_e: pattern(0x40 + h, 5),
            relay_e: pattern(0x90 + h, 7),
        }
    }

    /// Runs the whole vector computation and returns the file text.
    fn generate() -> String {
        let mut out = String::from(
            "# shallot-crypto test vectors: Noise NK per hop (specs/02 §3) and onion layers (§4).\n\
             # All values hex. Generated by crates/shallot-crypto/src/handshake.rs (tests::generate).\n",
        );
        let mut client = ClientLayers::new();
        let mut relays = Vec::new();
        for h in 0..3u8 {
            let input = hop_input(h);
            let secret = OnionSecretKey::from_bytes(input.onion_secret);
            let public = secret.public_key();
            let ring = OnionKeyRing::new(secret);
            let (state, m1) =
                ClientHandshake::start_with_ephemeral(&input.peer_id, &public, &input.client_e)
                    .unwrap();
            let (relay_keys, m2) = relay_handshake_with_ephemeral(
                &input.peer_id,
                &ring,
                &public.id(),
                &m1,
                &input.relay_e,
            )
            .unwrap();
            let client_keys = state.finish(&m2).unwrap();
            assert_eq!(client_keys.forward, relay_keys.forward);
            assert_eq!(client_keys.backward, relay_keys.backward);
            let _ = writeln!(out, "\n[hop{h}]");
            let mut kv = |k: &str, v: &[u8]| {
                let _ = writeln!(out, "{k} = {}", hex::encode(v));
            };
            kv("relay_peer_id", &input.peer_id);
            kv("relay_onion_secret", &input.onion_secret);
            kv("relay_onion_public", &public.0);
            kv("onion_key_id", &public.id().0);
            kv("client_ephemeral_secret", &input.client_e);
            kv("relay_ephemeral_secret", &input.relay_e);
            kv("message1", &m1);
            kv("message2", &m2);
            kv("forward_key", &client_keys.forward);
            kv("backward_key", &client_keys.backward);
            client.push_hop(client_keys);
            relays.push(RelayLayer::new(relay_keys));
        }

        // One forward cell for hop 2 (body n = CELL_LEN - 1), then one backward cell from hop 1.
        let n = CELL_LEN - 1;
        let mut body = vec![0u8; n];
        let area = ClientLayers::message_range(n, 2);
        let message: Vec<u8> = (0..area.len()).map(|i| i as u8).collect();
        body[area].copy_from_slice(&message);
        client.seal_forward(2, &mut body).unwrap();
        let _ = writeln!(out, "\n[forward_cell]");
        let _ = writeln!(out, "cell_len = {CELL_LEN}\ntarget_hop = 2");
        let _ = writeln!(out, "message = {}", hex::encode(&message));
        let _ = writeln!(out, "sealed_body = {}", hex::encode(&body));

        let n1 = n - 17;
        let mut back = vec![0u8; n1];
        let area = RelayLayer::inner_range(n1);
        let reply: Vec<u8> = (0..area.len()).map(|i| 0xff - i as u8).collect();
        back[area].copy_from_slice(&reply);
        relays[1].seal_backward(true, &mut back).unwrap();
        let mut back0 = vec![0u8; n];
        back0[1..n - 16].copy_from_slice(&back);
        relays[0].seal_backward(false, &mut back0).unwrap();
        let _ = writeln!(out, "\n[backward_cell]");
        let _ = writeln!(out, "cell_len = {CELL_LEN}\norigin_hop = 1");
        let _ = writeln!(out, "message = {}", hex::encode(&reply));
        let _ = writeln!(out, "sealed_body = {}", hex::encode(&back0));
        out
    }

    fn parse(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut map: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut section = String::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_owned();
                continue;
            }
            let (k, v) = line.split_once(" = ").unwrap();
            map.entry(section.clone())
                .or_default()
                .insert(k.to_owned(), v.to_owned());
        }
        map
    }

    fn hexv(map: &BTreeMap<String, String>, k: &str) -> Vec<u8> {
        hex::decode(&map[k]).unwrap()
    }

    #[test]
    fn vectors_regenerate_to_the_same_bytes() {
        let text = generate();
        if std::env::var_os("SHALLOT_REGEN_VECTORS").is_some() {
            std::fs::write(VECTOR_PATH, &text).unwrap();
        }
        assert_eq!(
            text, VECTORS,
            "vectors changed; rerun with SHALLOT_REGEN_VECTORS=1 if intended"
        );
    }

    /// The relay side, fed the recorded message 1, answers the recorded message 2 and derives
    /// the recorded keys; the client side accepts the recorded message 2.
    #[test]
    fn vectors_recorded_messages_are_accepted() {
        let v = parse(VECTORS);
        let mut client = ClientLayers::new();
        let mut relays = Vec::new();
        for h in 0..3 {
            let s = &v[&format!("hop{h}")];
            let peer = hexv(s, "relay_peer_id");
            let secret =
                OnionSecretKey::from_bytes(hexv(s, "relay_onion_secret").try_into().unwrap());
            assert_eq!(
                secret.public_key().0.to_vec(),
                hexv(s, "relay_onion_public")
            );
            assert_eq!(secret.public_key().id().0.to_vec(), hexv(s, "onion_key_id"));
            let public = secret.public_key();
            let ring = OnionKeyRing::new(secret);
            let id = OnionKeyId(hexv(s, "onion_key_id").try_into().unwrap());
            let relay_e: [u8; 32] = hexv(s, "relay_ephemeral_secret").try_into().unwrap();
            let (keys, m2) =
                relay_handshake_with_ephemeral(&peer, &ring, &id, &hexv(s, "message1"), &relay_e)
                    .unwrap();
            assert_eq!(m2, hexv(s, "message2"));
            assert_eq!(keys.forward.to_vec(), hexv(s, "forward_key"));
            assert_eq!(keys.backward.to_vec(), hexv(s, "backward_key"));
            // A relay with a random ephemeral also accepts the recorded message 1.
            assert!(relay_handshake(&peer, &ring, &id, &hexv(s, "message1")).is_ok());
            let client_e: [u8; 32] = hexv(s, "client_ephemeral_secret").try_into().unwrap();
            let (state, m1) =
                ClientHandshake::start_with_ephemeral(&peer, &public, &client_e).unwrap();
            assert_eq!(m1, hexv(s, "message1"));
            let ck = state.finish(&hexv(s, "message2")).unwrap();
            assert_eq!(ck.forward, keys.forward);
            client.push_hop(ck);
            relays.push(RelayLayer::new(keys));
        }
        // The recorded forward cell opens at hops 0, 1 (forward) and 2 (for me).
        let f = &v["forward_cell"];
        let mut body = hexv(f, "sealed_body");
        for (j, relay) in relays.iter_mut().enumerate() {
            let marker = relay.open_forward(&mut body).unwrap();
            let n = body.len();
            body = body[1..n - 16].to_vec();
            assert_eq!(marker == crate::ForwardMarker::ForMe, j == 2);
        }
        assert_eq!(body, hexv(f, "message"));
        // The recorded backward cell opens at the client as coming from hop 1. The client's
        // backward counters are fresh, as the relays' were when it was recorded.
        let b = &v["backward_cell"];
        let mut body = hexv(b, "sealed_body");
        let (origin, range) = client.open_backward(&mut body).unwrap();
        assert_eq!(origin, 1);
        assert_eq!(body[range].to_vec(), hexv(b, "message"));
    }
}
