//! Onion layers through whole circuits (specs/02 §4, §5): every single-bit change on every
//! link is detected, replay/reorder/drop are detected, seal/open round-trips through 1..=5 hops,
//! and both AEAD implementations give the same bytes.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use shallot_crypto::{
    ClientHandshake, ClientLayers, CryptoError, ForwardMarker, HopKeys, LayerAead, OnionKeyRing,
    OnionSecretKey, RelayLayer, RingChaCha, RustCryptoChaCha, relay_handshake,
};
use shallot_error::{ErrorKind, HasKind};

const LINK0_BODY: usize = shallot_cell::LINK_CELL_LEN - 1;

/// Deterministic raw keys for hop `j` (two identical copies: client's and relay's).
fn raw_keys(seed: u8, j: usize) -> (HopKeys, HopKeys) {
    let f: [u8; 32] = core::array::from_fn(|i| seed ^ (j as u8 * 31) ^ i as u8);
    let b: [u8; 32] = core::array::from_fn(|i| !(seed ^ (j as u8 * 17)) ^ (i as u8 * 3));
    (
        HopKeys::from_raw_for_testing(f, b),
        HopKeys::from_raw_for_testing(f, b),
    )
}

fn raw_circuit<A: LayerAead>(seed: u8, hops: usize) -> (ClientLayers<A>, Vec<RelayLayer<A>>) {
    let mut client = ClientLayers::<A>::with_aead();
    let mut relays = Vec::new();
    for j in 0..hops {
        let (c, r) = raw_keys(seed, j);
        client.push_hop(c);
        relays.push(RelayLayer::<A>::with_aead(r));
    }
    (client, relays)
}

/// A circuit whose keys come from real handshakes.
fn handshake_circuit(hops: usize) -> (ClientLayers, Vec<RelayLayer>) {
    let mut client = ClientLayers::new();
    let mut relays = Vec::new();
    for j in 0..hops {
        let peer = format!("relay-{j}").into_bytes();
        let secret = OnionSecretKey::generate();
        let public = secret.public_key();
        let ring = OnionKeyRing::new(secret);
        let (state, m1) = ClientHandshake::start(&peer, &public).unwrap();
        let (rk, m2) = relay_handshake(&peer, &ring, &public.id(), &m1).unwrap();
        client.push_hop(state.finish(&m2).unwrap());
        relays.push(RelayLayer::new(rk));
    }
    (client, relays)
}

/// Passes a sealed forward body through the relays; returns (hop that said "for me", its
/// relay-message area). Panics on any failure.
fn deliver_forward<A: LayerAead>(
    relays: &mut [RelayLayer<A>],
    mut body: Vec<u8>,
) -> (usize, Vec<u8>) {
    for (j, relay) in relays.iter_mut().enumerate() {
        let marker = relay.open_forward(&mut body).unwrap();
        let n = body.len();
        body = body[1..n - 16].to_vec();
        if marker == ForwardMarker::ForMe {
            return (j, body);
        }
    }
    panic!("no hop took the cell")
}

/// Hop `origin` sends `msg` (its whole relay-message area) back; returns what each link
/// carried, link 0 last.
fn send_backward<A: LayerAead>(
    relays: &mut [RelayLayer<A>],
    origin: usize,
    n: usize,
    msg: &[u8],
) -> Vec<Vec<u8>> {
    let mut links = Vec::new();
    let mut inner = msg.to_vec();
    for j in (0..=origin).rev() {
        let nj = n - 17 * j;
        let mut body = vec![0u8; nj];
        body[1..nj - 16].copy_from_slice(&inner);
        relays[j].seal_backward(j == origin, &mut body).unwrap();
        inner = body.clone();
        links.push(body);
    }
    links
}

fn message(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13) ^ salt)
        .collect()
}

fn seal_for<A: LayerAead>(
    client: &mut ClientLayers<A>,
    hop: usize,
    n: usize,
    salt: u8,
) -> (Vec<u8>, Vec<u8>) {
    let mut body = vec![0u8; n];
    let area = ClientLayers::message_range(n, hop);
    let msg = message(area.len(), salt);
    body[area].copy_from_slice(&msg);
    client.seal_forward(hop, &mut body).unwrap();
    (body, msg)
}

#[test]
fn three_hop_circuit_from_real_handshakes_works_both_ways() {
    let (mut client, mut relays) = handshake_circuit(3);
    for round in 0..4u8 {
        for hop in 0..3 {
            let (body, msg) = seal_for(&mut client, hop, LINK0_BODY, round);
            assert_eq!(deliver_forward(&mut relays, body), (hop, msg));
            let area_len =
                shallot_cell::relay_payload_len(shallot_cell::link_cell_len(hop).unwrap());
            let reply = message(area_len, !round);
            let mut links = send_backward(&mut relays, hop, LINK0_BODY, &reply);
            let mut body = links.pop().unwrap();
            let (origin, range) = client.open_backward(&mut body).unwrap();
            assert_eq!(origin, hop);
            assert_eq!(body[range], reply[..]);
        }
    }
}

/// Every single-bit flip of a forward cell on link i (i = 0, 1, 2) fails authentication at
/// hop i, the next hop; earlier hops are unaffected.
#[test]
fn every_bit_flip_on_every_forward_link_is_detected_at_the_next_hop() {
    let (mut client, mut relays) = raw_circuit::<RingChaCha>(0x11, 3);
    let (body, _) = seal_for(&mut client, 2, LINK0_BODY, 0);
    // What each link carries (link i: into hop i), from an honest run.
    let mut links = vec![body.clone()];
    let mut cur = body;
    for relay in relays.iter_mut().take(2) {
        relay.open_forward(&mut cur).unwrap();
        let n = cur.len();
        cur = cur[1..n - 16].to_vec();
        links.push(cur.clone());
    }
    let mut checked = 0usize;
    for (i, link) in links.iter().enumerate() {
        assert_eq!(link.len(), LINK0_BODY - 17 * i);
        for bit in 0..link.len() * 8 {
            let mut bad = link.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            // A fresh copy of hop i's layer, in the state it had before this cell.
            let (_, r) = raw_keys(0x11, i);
            let mut relay = RelayLayer::<RingChaCha>::with_aead(r);
            let err = relay.open_forward(&mut bad).unwrap_err();
            assert!(
                matches!(err, CryptoError::AuthenticationFailed { hop: None }),
                "link {i} bit {bit}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, (3 * LINK0_BODY - 17 * 3) * 8);
}

/// Every single-bit flip of a backward cell on link i (i = 0, 1, 2; link i carries hop i's
/// output) is detected by the client, which names hop i: relays cannot check other hops'
/// layers, the client checks them all (specs/02 §4.6).
#[test]
fn every_bit_flip_on_every_backward_link_is_detected_at_the_client() {
    let (_, mut relays) = raw_circuit::<RingChaCha>(0x22, 3);
    let origin = 2;
    let area = LINK0_BODY - 17 * 3;
    let links = send_backward(&mut relays, origin, LINK0_BODY, &message(area, 9));
    // links[0] is hop 2's output (link 2), links[2] is hop 0's (link 0).
    for (k, link) in links.iter().enumerate() {
        let link_index = origin - k;
        for bit in 0..link.len() * 8 {
            let mut bad = link.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            // Honest hops below link_index wrap it, with fresh copies of their layers.
            let mut inner = bad;
            for j in (0..link_index).rev() {
                let (_, r) = raw_keys(0x22, j);
                let mut relay = RelayLayer::<RingChaCha>::with_aead(r);
                let nj = LINK0_BODY - 17 * j;
                let mut body = vec![0u8; nj];
                body[1..nj - 16].copy_from_slice(&inner);
                relay.seal_backward(false, &mut body).unwrap();
                inner = body;
            }
            let (mut client, _) = raw_circuit::<RingChaCha>(0x22, 3);
            let err = client.open_backward(&mut inner).unwrap_err();
            assert!(
                matches!(err, CryptoError::AuthenticationFailed { hop: Some(h) } if h == link_index),
                "link {link_index} bit {bit}: {err:?}"
            );
        }
    }
}

#[test]
fn forward_replay_reorder_and_drop_are_detected_at_every_hop() {
    for attacked_link in 0..3 {
        for attack in ["replay", "reorder", "drop"] {
            let (mut client, mut relays) = raw_circuit::<RingChaCha>(0x33, 3);
            let cells: Vec<Vec<u8>> = (0..3).map(|s| seal_for(&mut client, 2, 300, s).0).collect();
            // Honest hops before the attacked link.
            let mut cells: Vec<Vec<u8>> = cells
                .into_iter()
                .map(|mut c| {
                    for relay in relays.iter_mut().take(attacked_link) {
                        relay.open_forward(&mut c).unwrap();
                        let n = c.len();
                        c = c[1..n - 16].to_vec();
                    }
                    c
                })
                .collect();
            let victim = &mut relays[attacked_link];
            match attack {
                "replay" => {
                    victim.open_forward(&mut cells[0].clone()).unwrap();
                    assert!(victim.open_forward(&mut cells[0]).is_err());
                }
                "reorder" => assert!(victim.open_forward(&mut cells[1]).is_err()),
                _ => {
                    victim.open_forward(&mut cells[0]).unwrap();
                    assert!(
                        victim.open_forward(&mut cells[2]).is_err(),
                        "dropped cell 1"
                    );
                }
            }
            // The layer is closed now, even for the cell that would have been next.
            assert!(matches!(
                victim.open_forward(&mut cells[1].clone()),
                Err(CryptoError::LayersClosed)
            ));
        }
    }
}

#[test]
fn backward_replay_reorder_and_drop_are_detected_at_the_client() {
    for attacked_link in 0..3 {
        for attack in ["replay", "reorder", "drop"] {
            let (mut client, mut relays) = raw_circuit::<RingChaCha>(0x44, 3);
            // Three cells from hop 2; the attacker sits on `attacked_link` and the honest hops
            // below it wrap whatever it passes on.
            let n = 300;
            let outputs: Vec<Vec<u8>> = (0..3u8)
                .map(|s| {
                    let mut b = vec![0u8; n - 17 * 2];
                    b[1..n - 17 * 2 - 16].copy_from_slice(&message(n - 17 * 3, s));
                    relays[2].seal_backward(true, &mut b).unwrap();
                    for j in (attacked_link..2).rev() {
                        let nj = n - 17 * j;
                        let mut w = vec![0u8; nj];
                        w[1..nj - 16].copy_from_slice(&b);
                        relays[j].seal_backward(false, &mut w).unwrap();
                        b = w;
                    }
                    b
                })
                .collect();
            let order: &[usize] = match attack {
                "replay" => &[0, 0],
                "reorder" => &[1, 0],
                _ => &[0, 2],
            };
            let mut results = Vec::new();
            for &i in order {
                let mut b = outputs[i].clone();
                for j in (0..attacked_link).rev() {
                    let nj = n - 17 * j;
                    let mut w = vec![0u8; nj];
                    w[1..nj - 16].copy_from_slice(&b);
                    relays[j].seal_backward(false, &mut w).unwrap();
                    b = w;
                }
                results.push(client.open_backward(&mut b).map(|(h, _)| h));
            }
            let expect_first_ok = attack != "reorder";
            assert_eq!(
                results[0].is_ok(),
                expect_first_ok,
                "{attack} on link {attacked_link}"
            );
            // The first failure is an authentication failure (a later call finds the layers
            // closed).
            let err = results.iter().find_map(|r| r.as_ref().err()).unwrap();
            assert!(
                matches!(err, CryptoError::AuthenticationFailed { .. }),
                "{attack} on link {attacked_link}: {err:?}"
            );
            assert_eq!(err.kind(), ErrorKind::Authentication);
        }
    }
}

#[test]
fn both_aead_implementations_produce_identical_cells() {
    let (mut ring_client, mut ring_relays) = raw_circuit::<RingChaCha>(0x55, 3);
    let (mut rc_client, mut rc_relays) = raw_circuit::<RustCryptoChaCha>(0x55, 3);
    for round in 0..3u8 {
        for hop in 0..3 {
            let (a, msg) = seal_for(&mut ring_client, hop, LINK0_BODY, round);
            let (b, _) = seal_for(&mut rc_client, hop, LINK0_BODY, round);
            assert_eq!(a, b, "forward cell for hop {hop}");
            // Cross-open: ring-sealed through RustCrypto relays and vice versa.
            assert_eq!(deliver_forward(&mut rc_relays, a), (hop, msg.clone()));
            assert_eq!(deliver_forward(&mut ring_relays, b), (hop, msg));
            let area = LINK0_BODY - 17 * (hop + 1);
            let la = send_backward(&mut ring_relays, hop, LINK0_BODY, &message(area, round));
            let lb = send_backward(&mut rc_relays, hop, LINK0_BODY, &message(area, round));
            assert_eq!(la, lb, "backward cells from hop {hop}");
            let (mut x, mut y) = (la.last().unwrap().clone(), lb.last().unwrap().clone());
            assert_eq!(rc_client.open_backward(&mut x).unwrap().0, hop);
            assert_eq!(ring_client.open_backward(&mut y).unwrap().0, hop);
            assert_eq!(x, y);
        }
    }
}

#[test]
fn api_misuse_is_an_error_not_a_panic() {
    let (mut client, mut relays) = raw_circuit::<RingChaCha>(0x66, 2);
    let mut body = vec![0u8; 200];
    assert!(matches!(
        client.seal_forward(2, &mut body),
        Err(CryptoError::NoSuchHop { target: 2, hops: 2 })
    ));
    assert!(matches!(
        client.seal_forward(1, &mut [0u8; 33]),
        Err(CryptoError::BodyTooShort {
            len: 33,
            needed: 34
        })
    ));
    assert_eq!(
        CryptoError::BodyTooShort { len: 0, needed: 1 }.kind(),
        ErrorKind::BadApiUsage
    );
    assert!(matches!(
        relays[0].seal_backward(true, &mut [0u8; 16]),
        Err(CryptoError::BodyTooShort { .. })
    ));
    // Relays given short or empty bodies fail authentication.
    let (_, mut fresh) = raw_circuit::<RingChaCha>(0x66, 1);
    assert!(fresh[0].open_forward(&mut []).is_err());
    let mut empty = ClientLayers::new();
    assert!(matches!(
        empty.seal_forward(0, &mut body),
        Err(CryptoError::NoSuchHop { .. })
    ));
    assert!(empty.open_backward(&mut body).is_err());
    // A minimal body (only markers and tags, empty message) works.
    let mut minimal = vec![0u8; 34];
    client.seal_forward(1, &mut minimal).unwrap();
    assert_eq!(deliver_forward(&mut relays, minimal), (1, vec![]));
}

#[test]
fn bad_markers_are_protocol_errors() {
    use chacha20poly1305::aead::{AeadInPlace, KeyInit};
    let key = [0x77u8; 32];
    let aead = chacha20poly1305::ChaCha20Poly1305::new(&key.into());
    let mut relay = RelayLayer::new(HopKeys::from_raw_for_testing(key, key));
    let mut body = vec![0u8; 64];
    body[0] = 0x07;
    let (text, tag) = body.split_at_mut(48);
    tag.copy_from_slice(
        &aead
            .encrypt_in_place_detached(&[0u8; 12].into(), &[], text)
            .unwrap(),
    );
    assert!(matches!(
        relay.open_forward(&mut body),
        Err(CryptoError::BadMarker(7))
    ));
    // "relayed" from the client's last hop is refused too.
    let mut client = ClientLayers::new();
    client.push_hop(HopKeys::from_raw_for_testing(key, key));
    let mut relay = RelayLayer::new(HopKeys::from_raw_for_testing(key, key));
    let mut body = vec![0u8; 64];
    relay.seal_backward(false, &mut body).unwrap();
    let err = client.open_backward(&mut body).unwrap_err();
    assert!(matches!(err, CryptoError::BadMarker(2)));
    assert_eq!(err.kind(), ErrorKind::Protocol);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Seal then open through k hops returns the message, for any k in 1..=5, any target,
    /// any content and any body length; only the target hop says "for me".
    #[test]
    fn round_trip_through_k_hops(
        hops in 1usize..=5,
        target_seed in any::<usize>(),
        extra in 0usize..400,
        content in proptest::collection::vec(any::<u8>(), 400),
        seed in any::<u8>(),
        cells in 1usize..4,
    ) {
        let target = target_seed % hops;
        let n = 17 * hops + extra;
        let (mut client, mut relays) = raw_circuit::<RingChaCha>(seed, hops);
        for c in 0..cells {
            let mut body = vec![0u8; n];
            let area = ClientLayers::message_range(n, target);
            let msg: Vec<u8> = content.iter().cycle().skip(c).take(area.len()).copied().collect();
            body[area].copy_from_slice(&msg);
            client.seal_forward(target, &mut body).unwrap();
            let mut cur = body;
            for (j, relay) in relays.iter_mut().enumerate().take(target + 1) {
                let marker = relay.open_forward(&mut cur).unwrap();
                prop_assert_eq!(marker == ForwardMarker::ForMe, j == target);
                let len = cur.len();
                cur = cur[1..len - 16].to_vec();
            }
            prop_assert_eq!(&cur, &msg);

            let links = send_backward(&mut relays, target, n, &msg);
            let mut back = links.last().unwrap().clone();
            let (origin, range) = client.open_backward(&mut back).unwrap();
            prop_assert_eq!(origin, target);
            prop_assert_eq!(&back[range], &msg[..]);
        }
    }
}
