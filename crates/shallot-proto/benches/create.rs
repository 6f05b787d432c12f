//! CREATE handling on one core against the X25519 bound (specs/00 §4.4): how many CREATEs a
//! relay accepts per second (`RelayCircuit::accept`: the preamble, the Noise NK responder
//! handshake, the CREATED cell, the circuit's state), and how many the curve work alone would
//! allow: each NK responder handshake needs two X25519 Diffie–Hellman operations (`es`, `ee`)
//! and one key generation (its ephemeral key), timed here alone with x25519-dalek on the same
//! curve backend. The share of the bound is what the rest of a CREATE costs; the relay's
//! `create_rate_total` default is set against the accept rate. The CREATE cells are made
//! before the clock starts (the client's half is not the relay's cost). Prints a table. Run:
//! `cargo bench -p shallot-proto --bench create`

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use shallot_cell::{LINK_CELL_LEN, LinkCell};
use shallot_crypto::{ClientHandshake, OnionKeyRing, OnionSecretKey};
use shallot_proto::{ClientCircuit, RelayCircuit, RelayConfig};
use x25519_dalek::{PublicKey, StaticSecret};

/// CREATEs (and curve operations) per measured round.
const PER_ROUND: usize = 4_000;
/// Rounds; the table shows the fastest of each (the least disturbed by the machine's other
/// work). Each round times all three in turn, so that a busy spell on a shared machine slows
/// them alike instead of only the one it falls on.
const ROUNDS: usize = 7;

fn per_second(per_op: Duration) -> f64 {
    1.0 / per_op.as_secs_f64()
}

fn main() {
    let keys = OnionKeyRing::new(OnionSecretKey::generate());
    let preamble = ClientCircuit::preamble();
    let now = Instant::now();

    let their_public = PublicKey::from(&StaticSecret::random());
    let (mut accept, mut dh, mut keygen) = (Duration::MAX, Duration::MAX, Duration::MAX);
    for _ in 0..ROUNDS {
        let creates: Vec<Vec<u8>> = (0..PER_ROUND)
            .map(|_| {
                let (_, hdata) = ClientHandshake::start(b"relay", &keys.current_public()).unwrap();
                LinkCell::Create {
                    onion_key_id: keys.current_public().id(),
                    handshake: hdata,
                }
                .encode(LINK_CELL_LEN)
                .unwrap()
            })
            .collect();
        let started = Instant::now();
        for create in &creates {
            let circuit = RelayCircuit::accept(
                &preamble,
                create,
                b"relay",
                &keys,
                RelayConfig::default(),
                now,
            )
            .unwrap();
            black_box(circuit);
        }
        accept = accept.min(started.elapsed() / PER_ROUND as u32);

        let ours = StaticSecret::random();
        let started = Instant::now();
        for _ in 0..PER_ROUND {
            black_box(ours.diffie_hellman(black_box(&their_public)));
        }
        dh = dh.min(started.elapsed() / PER_ROUND as u32);

        let started = Instant::now();
        for _ in 0..PER_ROUND {
            black_box(PublicKey::from(&StaticSecret::random()));
        }
        keygen = keygen.min(started.elapsed() / PER_ROUND as u32);
    }
    let bound = 2 * dh + keygen;

    println!("CREATE handling on one core ({ROUNDS} rounds of {PER_ROUND}, fastest shown)");
    println!("| what | per operation | per second |");
    println!("|---|---|---|");
    for (what, t) in [
        ("X25519 Diffie-Hellman", dh),
        ("X25519 key generation", keygen),
        ("X25519 bound of a CREATE (2 DH + 1 keygen)", bound),
        ("RelayCircuit::accept (whole CREATE)", accept),
    ] {
        println!("| {what} | {t:.2?} | {:.0} |", per_second(t));
    }
    println!(
        "share of the X25519 bound: {:.0} %",
        100.0 * bound.as_secs_f64() / accept.as_secs_f64()
    );
}
