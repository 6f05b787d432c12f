//! Handshake behaviour and failures (specs/02 §3): wrong identity, wrong key, unknown key id,
//! rotation, malformed messages. Errors, never panics.
#![allow(clippy::unwrap_used)]

use shallot_cell::OnionKeyId;
use shallot_crypto::{
    CLIENT_HANDSHAKE_LEN, ClientHandshake, ClientLayers, CryptoError, ForwardMarker, OnionKeyRing,
    OnionPublicKey, OnionSecretKey, RELAY_HANDSHAKE_LEN, RelayLayer, relay_handshake,
};
use shallot_error::{ErrorKind, HasKind};

const PEER: &[u8] = b"\x00\x24\x08\x01\x12\x20relay-identity-bytes-for-tests!!";

/// The hop keys work iff one cell goes through both ways.
fn keys_agree(client: shallot_crypto::HopKeys, relay: shallot_crypto::HopKeys) -> bool {
    let mut c = ClientLayers::new();
    c.push_hop(client);
    let mut r = RelayLayer::new(relay);
    let mut body = vec![7u8; 100];
    c.seal_forward(0, &mut body).unwrap();
    if !matches!(r.open_forward(&mut body), Ok(ForwardMarker::ForMe)) {
        return false;
    }
    r.seal_backward(true, &mut body).unwrap();
    c.open_backward(&mut body)
        .map(|(hop, _)| hop == 0)
        .unwrap_or(false)
}

#[test]
fn handshake_round_trip_gives_matching_keys() {
    let secret = OnionSecretKey::generate();
    let public = secret.public_key();
    let ring = OnionKeyRing::new(secret);
    let (state, m1) = ClientHandshake::start(PEER, &public).unwrap();
    assert_eq!(m1.len(), CLIENT_HANDSHAKE_LEN);
    let (relay_keys, m2) = relay_handshake(PEER, &ring, &public.id(), &m1).unwrap();
    assert_eq!(m2.len(), RELAY_HANDSHAKE_LEN);
    let client_keys = state.finish(&m2).unwrap();
    let mut c = ClientLayers::new();
    c.push_hop(client_keys);
    let mut r = RelayLayer::new(relay_keys);
    let mut body = vec![1u8; 200];
    c.seal_forward(0, &mut body).unwrap();
    assert!(matches!(
        r.open_forward(&mut body),
        Ok(ForwardMarker::ForMe)
    ));
}

#[test]
fn fresh_handshakes_give_fresh_messages() {
    let secret = OnionSecretKey::generate();
    let public = secret.public_key();
    let (_, a) = ClientHandshake::start(PEER, &public).unwrap();
    let (_, b) = ClientHandshake::start(PEER, &public).unwrap();
    assert_ne!(a, b);
}

#[test]
fn wrong_relay_identity_in_prologue_fails() {
    let secret = OnionSecretKey::generate();
    let public = secret.public_key();
    let ring = OnionKeyRing::new(secret);
    let (_, m1) = ClientHandshake::start(b"some-other-relay", &public).unwrap();
    let err = relay_handshake(PEER, &ring, &public.id(), &m1).unwrap_err();
    assert!(matches!(err, CryptoError::Noise(_)), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Authentication);
}

#[test]
fn wrong_onion_key_fails() {
    let real = OnionSecretKey::generate();
    let id = real.public_key().id();
    let ring = OnionKeyRing::new(real);
    let other = OnionSecretKey::generate().public_key();
    let (_, m1) = ClientHandshake::start(PEER, &other).unwrap();
    // The client names the relay's real key id but encrypted to another key.
    assert!(matches!(
        relay_handshake(PEER, &ring, &id, &m1),
        Err(CryptoError::Noise(_))
    ));
}

#[test]
fn relay_impostor_reply_fails_at_client() {
    // A relay without the onion key cannot answer: the client's finish fails.
    let real = OnionSecretKey::generate().public_key();
    let impostor = OnionSecretKey::generate();
    let impostor_id = impostor.public_key().id();
    let ring = OnionKeyRing::new(impostor);
    let (state, m1) = ClientHandshake::start(PEER, &real).unwrap();
    // The impostor cannot even read message 1 …
    assert!(relay_handshake(PEER, &ring, &impostor_id, &m1).is_err());
    // … and a reply made up for another handshake does not finish this one.
    let (_, m1b) = ClientHandshake::start(PEER, &ring.current_public()).unwrap();
    let (_, m2b) = relay_handshake(PEER, &ring, &impostor_id, &m1b).unwrap();
    assert!(matches!(state.finish(&m2b), Err(CryptoError::Noise(_))));
}

#[test]
fn unknown_key_id_is_refused_before_any_work() {
    let secret = OnionSecretKey::generate();
    let public = secret.public_key();
    let ring = OnionKeyRing::new(secret);
    let (_, m1) = ClientHandshake::start(PEER, &public).unwrap();
    let err = relay_handshake(PEER, &ring, &OnionKeyId([0; 8]), &m1).unwrap_err();
    assert!(matches!(err, CryptoError::UnknownOnionKey));
    // Even with a garbage message, the unknown id is what is reported.
    let err = relay_handshake(PEER, &ring, &OnionKeyId([9; 8]), &[]).unwrap_err();
    assert!(matches!(err, CryptoError::UnknownOnionKey));
}

#[test]
fn previous_key_accepted_after_one_rotation_refused_after_two() {
    let first = OnionSecretKey::generate();
    let old_public = first.public_key();
    let mut ring = OnionKeyRing::new(first);
    ring.rotate(OnionSecretKey::generate());
    // A client still holding last period's descriptor.
    let (state, m1) = ClientHandshake::start(PEER, &old_public).unwrap();
    let (relay_keys, m2) = relay_handshake(PEER, &ring, &old_public.id(), &m1).unwrap();
    assert!(keys_agree(state.finish(&m2).unwrap(), relay_keys));
    // The current key works too.
    let cur = ring.current_public();
    let (state, m1) = ClientHandshake::start(PEER, &cur).unwrap();
    let (relay_keys, m2) = relay_handshake(PEER, &ring, &cur.id(), &m1).unwrap();
    assert!(keys_agree(state.finish(&m2).unwrap(), relay_keys));
    ring.rotate(OnionSecretKey::generate());
    let (_, m1) = ClientHandshake::start(PEER, &old_public).unwrap();
    assert!(matches!(
        relay_handshake(PEER, &ring, &old_public.id(), &m1),
        Err(CryptoError::UnknownOnionKey)
    ));
}

#[test]
fn truncated_extended_and_garbage_messages_are_errors() {
    let secret = OnionSecretKey::generate();
    let public = secret.public_key();
    let id = public.id();
    let ring = OnionKeyRing::new(secret);
    let (_, m1) = ClientHandshake::start(PEER, &public).unwrap();
    for len in 0..m1.len() {
        let err = relay_handshake(PEER, &ring, &id, &m1[..len]).unwrap_err();
        assert!(matches!(err, CryptoError::BadHandshakeLength { expected: 48, got } if got == len));
    }
    let mut long = m1.clone();
    long.push(0);
    assert!(relay_handshake(PEER, &ring, &id, &long).is_err());
    assert!(matches!(
        relay_handshake(PEER, &ring, &id, &vec![0u8; 4096]),
        Err(CryptoError::BadHandshakeLength { .. })
    ));
    for fill in [0u8, 0xff, 0x5a] {
        assert!(relay_handshake(PEER, &ring, &id, &[fill; 48]).is_err());
    }
    // A single-bit change in every byte of message 1 fails (one bit per byte, a different
    // position each time: all 384 bits would take ~15 s in a debug build).
    for bit in (0..m1.len()).map(|byte| byte * 8 + byte % 8) {
        let mut bad = m1.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        assert!(
            relay_handshake(PEER, &ring, &id, &bad).is_err(),
            "bit {bit}"
        );
    }
}

#[test]
fn client_refuses_bad_replies() {
    let secret = OnionSecretKey::generate();
    let public = secret.public_key();
    let ring = OnionKeyRing::new(secret);
    let (state, m1) = ClientHandshake::start(PEER, &public).unwrap();
    let (_, m2) = relay_handshake(PEER, &ring, &public.id(), &m1).unwrap();
    let mut bad = m2.clone();
    bad[40] ^= 0x80;
    assert!(matches!(state.finish(&bad), Err(CryptoError::Noise(_))));
    let (state, _) = ClientHandshake::start(PEER, &public).unwrap();
    assert!(matches!(
        state.finish(&m2[..47]),
        Err(CryptoError::BadHandshakeLength { .. })
    ));
    let (state, _) = ClientHandshake::start(PEER, &public).unwrap();
    assert!(state.finish(&[0u8; 48]).is_err());
}

#[test]
fn non_empty_payload_is_refused() {
    // Build a version-1-shaped message 1 that carries a payload, with snow directly.
    let secret = OnionSecretKey::generate();
    let public = secret.public_key();
    let ring = OnionKeyRing::new(secret);
    let mut prologue = b"shallot-circuit-v1".to_vec();
    prologue.push(PEER.len() as u8);
    prologue.extend_from_slice(PEER);
    let params = shallot_crypto::NOISE_PATTERN.parse().unwrap();
    let mut hs = snow::Builder::new(params)
        .prologue(&prologue)
        .unwrap()
        .remote_public_key(&public.0)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut m1 = vec![0u8; 100];
    let n = hs.write_message(b"hello", &mut m1).unwrap();
    m1.truncate(n);
    assert!(matches!(
        relay_handshake(PEER, &ring, &public.id(), &m1),
        Err(CryptoError::NonEmptyHandshakePayload(5))
    ));
}

#[test]
fn peer_id_longer_than_255_bytes_is_refused() {
    let public = OnionSecretKey::generate().public_key();
    assert!(matches!(
        ClientHandshake::start(&[1u8; 256], &public),
        Err(CryptoError::PeerIdTooLong(256))
    ));
    assert!(ClientHandshake::start(&[1u8; 255], &public).is_ok());
    assert!(ClientHandshake::start(&[], &public).is_ok());
}

#[test]
fn debug_output_never_shows_key_material() {
    let secret = OnionSecretKey::from_bytes([0x3c; 32]);
    let public = secret.public_key();
    let ring = OnionKeyRing::new(OnionSecretKey::from_bytes([0x3c; 32]));
    let (state, m1) = ClientHandshake::start(PEER, &public).unwrap();
    let (keys, _) = relay_handshake(PEER, &ring, &public.id(), &m1).unwrap();
    let shown = format!("{secret:?} {ring:?} {state:?} {keys:?}");
    assert!(
        !shown.contains("3c3c") && !shown.contains("60, 60"),
        "{shown}"
    );
    assert_eq!(format!("{keys:?}"), "HopKeys { .. }");
    let _ = OnionPublicKey([0; 32]); // the public key is fine to print
}
