//! Fuzzes the relay's parsers of remote input in shallot-crypto (specs/02 §3.4, §4.4): the
//! relay handshake (key id + message 1) against a fixed key ring, the client's reading of
//! message 2, and `RelayLayer::open_forward` on arbitrary bodies. No input may panic.
//! The first byte selects the case.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use shallot_cell::OnionKeyId;
use shallot_crypto::{
    ClientHandshake, ClientLayers, HopKeys, OnionKeyRing, OnionPublicKey, OnionSecretKey,
    RelayLayer, RustCryptoChaCha, relay_handshake,
};

const PEER: &[u8] = b"\x00\x24\x08\x01\x12\x20fuzz-relay-identity-32-bytes-long";

struct Fixture {
    ring: OnionKeyRing,
    current: OnionPublicKey,
    previous: OnionPublicKey,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let previous = OnionSecretKey::from_bytes([0x11; 32]);
    let previous_public = previous.public_key();
    let mut ring = OnionKeyRing::new(previous);
    ring.rotate(OnionSecretKey::from_bytes([0x22; 32]));
    Fixture {
        current: ring.current_public(),
        previous: previous_public,
        ring,
    }
});

const FWD: [u8; 32] = [0x33; 32];
const BWD: [u8; 32] = [0x44; 32];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let fx = &*FIXTURE;
    match selector % 6 {
        // Key id and message both from the input.
        0 => {
            if let Some((id, message)) = rest.split_first_chunk::<8>() {
                let _ = relay_handshake(PEER, &fx.ring, &OnionKeyId(*id), message);
            }
        }
        // A known key id (current or previous), so the Noise parser sees the message.
        1 | 2 => {
            let key = if selector % 6 == 1 {
                fx.current
            } else {
                fx.previous
            };
            if let Ok((_keys, reply)) = relay_handshake(PEER, &fx.ring, &key.id(), rest) {
                assert_eq!(reply.len(), shallot_crypto::RELAY_HANDSHAKE_LEN);
            }
        }
        // The client reading an arbitrary message 2.
        3 => {
            if let Ok((state, _)) = ClientHandshake::start(PEER, &fx.current) {
                let _ = state.finish(rest);
            }
        }
        // A relay opening an arbitrary forward body, then another one (the layer is closed).
        4 => {
            let mut layer = RelayLayer::new(HopKeys::from_raw_for_testing(FWD, BWD));
            let mut body = rest.to_vec();
            let first = layer.open_forward(&mut body);
            let second = layer.open_forward(&mut body);
            if first.is_err() {
                assert!(second.is_err());
            }
            let mut other =
                RelayLayer::<RustCryptoChaCha>::with_aead(HopKeys::from_raw_for_testing(FWD, BWD));
            let _ = other.open_forward(&mut rest.to_vec());
        }
        // A genuine cell with input bytes XORed in: opens only if nothing changed.
        _ => {
            let mut client = ClientLayers::new();
            client.push_hop(HopKeys::from_raw_for_testing(FWD, BWD));
            let mut body = vec![0u8; 200];
            if client.seal_forward(0, &mut body).is_err() {
                return;
            }
            for (b, x) in body.iter_mut().zip(rest) {
                *b ^= x;
            }
            let mut layer = RelayLayer::new(HopKeys::from_raw_for_testing(FWD, BWD));
            let opened = layer.open_forward(&mut body).is_ok();
            let unchanged = rest.iter().take(200).all(|&x| x == 0);
            assert_eq!(opened, unchanged, "a modified cell must not open");
        }
    }
});
