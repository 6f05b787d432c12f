//! specs/04 §6.1.2: the directory at 1,000 relays, on the in-memory network. The relays start
//! together, publish, and prove each other; then a fresh client refreshes. Prints the time the
//! relays took, what one refresh put in the client's view, the bytes of a full and of an
//! incremental refresh, and what each relay serves at steady state.
//!
//! `SHALLOT_SCALE_RELAYS` sets the number of relays (default 1,000). Run with
//! `cargo test --release -p shallot-p2p --test scale -- --ignored --nocapture`.

mod common;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use libp2p::PeerId;
use shallot_directory::Verdicts;

/// Relay `i` in a /16 of its own (10.1.0.1, 10.2.0.1, …, 11.1.0.1, …).
fn scale_ip(i: usize) -> Ipv4Addr {
    let first = 10 + u8::try_from(i / 250).expect("at most 60,000 relays");
    let second = 1 + u8::try_from(i % 250).expect("fits");
    Ipv4Addr::new(first, second, 0, 1)
}

/// How long the relays may take to prove each other before the test gives up.
const RELAYS_CONVERGE_LIMIT: Duration = Duration::from_secs(600);
/// The share of the relays a fresh client's first refresh must put in its view.
const COMPLETE: f64 = 0.995;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check for every change: 1,000 relays proving each other is a \
            million Noise handshakes, about 20 minutes of 2 cores in a release build; run it \
            as specs/04 §6.1.2 says"]
async fn a_thousand_relays_one_refresh_makes_a_complete_view() {
    let n: usize = std::env::var("SHALLOT_SCALE_RELAYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    init_tracing();
    let wire = Wire::memory();
    let started = Instant::now();
    let mut relays: Vec<TestRelay> = Vec::with_capacity(n);
    for i in 0..n {
        // Each bootstraps from one of the first ten, as operators would from a few known relays.
        let bootstrap = relays
            .get(i % 10)
            .or(relays.first())
            .and_then(|r| r.node.bootstrap_addr())
            .into_iter()
            .collect();
        relays.push(start_relay(&wire, scale_ip(i), bootstrap).await);
    }
    println!("{n} relays started in {:?}", started.elapsed());
    let started = Instant::now();
    publish_all(&relays, 3600).await;
    println!("{n} relays published in {:?}", started.elapsed());

    let started = Instant::now();
    let target = (n as f64 * COMPLETE).ceil() as usize;
    loop {
        let listed: Vec<usize> = relays
            .iter()
            .map(|r| r.node.directory().expect("store").listed_len())
            .collect();
        let lowest = listed.iter().copied().min().unwrap_or(0);
        let mean = listed.iter().sum::<usize>() / n.max(1);
        println!(
            "{:>5.1} s: relays' stores list {lowest} (lowest) {mean} (mean) of {n}",
            started.elapsed().as_secs_f64()
        );
        if lowest >= target {
            break;
        }
        assert!(
            started.elapsed() < RELAYS_CONVERGE_LIMIT,
            "the relays did not prove each other within {RELAYS_CONVERGE_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    println!(
        "every relay's store lists {COMPLETE} of the relays after {:?}",
        started.elapsed()
    );

    // Steady state: what the relays serve each other while nothing changes.
    let served = |relays: &[TestRelay]| -> (u64, u64) {
        relays.iter().fold((0, 0), |(n, b), r| {
            let s = r.node.stats();
            (
                n + s.listings_served.load(Ordering::Relaxed),
                b + s.listing_bytes_served.load(Ordering::Relaxed),
            )
        })
    };
    let window = 4 * TEST_SYNC_INTERVAL;
    let (requests_before, bytes_before) = served(&relays);
    tokio::time::sleep(window).await;
    let (requests_after, bytes_after) = served(&relays);
    // Scaled from the test's sync interval to the default's, per relay and hour.
    let scale = 3600.0 / window.as_secs_f64() * TEST_SYNC_INTERVAL.as_secs_f64()
        / shallot_p2p::DEFAULT_SYNC_INTERVAL.as_secs_f64()
        / n as f64;
    println!(
        "steady state, per relay and hour at the default sync interval: {:.0} listing requests \
         served, {:.0} bytes",
        (requests_after - requests_before) as f64 * scale,
        (bytes_after - bytes_before) as f64 * scale,
    );

    let client = start_client(&wire, bootstrap_of(&relays[..3])).await;
    let all: HashSet<PeerId> = relays.iter().map(TestRelay::peer_id).collect();
    let mut view = fresh_view();
    let mut verdicts = Verdicts::new();
    let began = Instant::now();
    let (full, report) = refresh_into(&client, &mut view, &mut verdicts).await;
    let took = began.elapsed();
    let seen = view
        .entries()
        .filter(|e| all.contains(&e.descriptor.peer_id()))
        .count();
    println!(
        "a fresh client's first refresh: {seen} of {n} relays in {took:?}, {} bytes (full); \
         {report:?}",
        full.bytes
    );
    let began = Instant::now();
    let (incremental, _) = refresh_into(&client, &mut view, &mut verdicts).await;
    println!(
        "its next refresh: {} bytes (incremental) in {:?}",
        incremental.bytes,
        began.elapsed()
    );
    assert!(
        seen >= target,
        "one refresh put {seen} of {n} relays in a fresh view, fewer than {COMPLETE}"
    );
}
