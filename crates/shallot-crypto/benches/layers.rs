//! Criterion benchmarks of the onion layers and the handshake (specs/02 §7).
//!
//! - `forward/<impl>/<cell>`: the client seals one cell for hop 2 of a 3-hop circuit, then the
//!   three relays open their layers (in place: each hop's body is a sub-slice of the last).
//! - `backward/<impl>/<cell>`: hop 2 seals a reply, hops 1 and 0 wrap it, the client opens it.
//! - `handshake/nk`: one full Noise NK handshake (client start + relay + client finish).
//!
//! Throughput is the relay-message payload of one cell: `cell - 1 - 3 * 17` bytes.
//! Run: `cargo bench -p shallot-crypto --bench layers -- --warm-up-time 1 --measurement-time 3`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use shallot_crypto::{
    ClientHandshake, ClientLayers, HopKeys, LayerAead, OnionKeyRing, OnionSecretKey, RelayLayer,
    RingChaCha, RustCryptoChaCha, relay_handshake,
};

const CELL_SIZES: [usize; 4] = [512, 1024, 2048, 4096];
const HOPS: usize = 3;

fn circuit<A: LayerAead>() -> (ClientLayers<A>, Vec<RelayLayer<A>>) {
    let mut client = ClientLayers::<A>::with_aead();
    let mut relays = Vec::new();
    for j in 0..HOPS {
        let f = [j as u8 + 1; 32];
        let b = [j as u8 + 0x80; 32];
        client.push_hop(HopKeys::from_raw_for_testing(f, b));
        relays.push(RelayLayer::<A>::with_aead(HopKeys::from_raw_for_testing(
            f, b,
        )));
    }
    (client, relays)
}

fn payload(cell: usize) -> usize {
    cell - 1 - HOPS * 17
}

fn bench_forward<A: LayerAead>(c: &mut Criterion, name: &str) {
    let mut group = c.benchmark_group(format!("forward/{name}"));
    for cell in CELL_SIZES {
        group.throughput(Throughput::Bytes(payload(cell) as u64));
        group.bench_with_input(BenchmarkId::from_parameter(cell), &cell, |b, &cell| {
            let (mut client, mut relays) = circuit::<A>();
            let n = cell - 1;
            let mut body = vec![0x42u8; n];
            b.iter(|| {
                client.seal_forward(HOPS - 1, &mut body).unwrap();
                for (j, relay) in relays.iter_mut().enumerate() {
                    // Hop j's incoming body is [j, n - 16 j) of the client's (specs/02 §4.3).
                    black_box(relay.open_forward(&mut body[j..n - 16 * j]).unwrap());
                }
            });
        });
    }
    group.finish();
}

fn bench_backward<A: LayerAead>(c: &mut Criterion, name: &str) {
    let mut group = c.benchmark_group(format!("backward/{name}"));
    for cell in CELL_SIZES {
        group.throughput(Throughput::Bytes(payload(cell) as u64));
        group.bench_with_input(BenchmarkId::from_parameter(cell), &cell, |b, &cell| {
            let (mut client, mut relays) = circuit::<A>();
            let n = cell - 1;
            let mut body = vec![0x24u8; n];
            b.iter(|| {
                for j in (0..HOPS).rev() {
                    relays[j]
                        .seal_backward(j == HOPS - 1, &mut body[j..n - 16 * j])
                        .unwrap();
                }
                black_box(client.open_backward(&mut body).unwrap());
            });
        });
    }
    group.finish();
}

fn bench_handshake(c: &mut Criterion) {
    let secret = OnionSecretKey::generate();
    let public = secret.public_key();
    let id = public.id();
    let ring = OnionKeyRing::new(secret);
    let peer = [7u8; 38];
    c.bench_function("handshake/nk", |b| {
        b.iter(|| {
            let (state, m1) = ClientHandshake::start(&peer, &public).unwrap();
            let (relay_keys, m2) = relay_handshake(&peer, &ring, &id, &m1).unwrap();
            black_box((state.finish(&m2).unwrap(), relay_keys))
        });
    });
}

fn layers(c: &mut Criterion) {
    bench_forward::<RingChaCha>(c, "ring");
    bench_forward::<RustCryptoChaCha>(c, "chacha20poly1305");
    bench_backward::<RingChaCha>(c, "ring");
    bench_backward::<RustCryptoChaCha>(c, "chacha20poly1305");
    bench_handshake(c);
}

criterion_group!(benches, layers);
criterion_main!(benches);
