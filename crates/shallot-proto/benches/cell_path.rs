//! The per-cell path on one core, through `shallot_proto::harness` (no IO, no clock):
//! stream framing at the exit (DATA into cells), relay forwarding (one onion layer per hop),
//! and the client's deframing, for a 1 MiB download over 1 and 3 hops, plus the same upload.
//! (3-hop − 1-hop) / 2 is the cost of forwarding through one relay; the AEAD alone is in
//! `shallot-crypto`'s `layers` bench. Run:
//! `cargo bench -p shallot-proto --bench cell_path -- --warm-up-time 1 --measurement-time 3`

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use shallot_proto::harness::{Harness, HarnessConfig, Target};

const LEN: usize = 1024 * 1024;

fn harness(relays: usize) -> Harness {
    let mut h = Harness::new(HarnessConfig {
        relays,
        latency: Duration::ZERO,
        link_capacity: 64,
        ..HarnessConfig::default()
    })
    .expect("harness");
    assert!(h.build(relays), "circuit built");
    h
}

fn download(relays: usize) -> usize {
    let mut h = harness(relays);
    h.internet.add("src.test", Target::Source(LEN));
    let s = h.open("src.test", 80).expect("open");
    h.run_until(10_000_000, |h| h.received(s).len() >= LEN);
    h.received(s).len()
}

fn upload(relays: usize) -> usize {
    let mut h = harness(relays);
    h.internet.add("sink.test", Target::Sink);
    let s = h.open("sink.test", 80).expect("open");
    h.send(s, &vec![0x5a; LEN]);
    h.run_idle(10_000_000);
    LEN
}

fn cell_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("cell_path");
    g.throughput(Throughput::Bytes(LEN as u64));
    g.sample_size(10);
    for relays in [1, 3] {
        g.bench_with_input(
            BenchmarkId::new("download_1mib", relays),
            &relays,
            |b, &r| {
                b.iter(|| black_box(download(r)));
            },
        );
        g.bench_with_input(BenchmarkId::new("upload_1mib", relays), &relays, |b, &r| {
            b.iter(|| black_box(upload(r)));
        });
    }
    g.finish();
}

criterion_group!(benches, cell_path);
criterion_main!(benches);
