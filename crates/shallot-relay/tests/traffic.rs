//! A relay's bandwidth limit and accounting allowance on real circuits: a limited relay carries
//! a download no faster than its rate; a relay past its allowance stops carrying, refuses new
//! circuits with DESTROY(HIBERNATING) and publishes a descriptor that says it hibernates.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::{build_circuit, fetch_all, hop_of, read_n, source_server, start_client, step};
use shallot_cell::{DestroyReason, Host};
use shallot_client::{BuildFailure, CircuitHandle, DataStream};
use shallot_directory::SignedDescriptor;
use shallot_relay::{ByteCount, RelayConfig};

const KIB: usize = 1024;

/// Guard, middle and exit (on 127.0.1.1, .2.1, .3.1), the exit open to 127.0.0.1; `tweak`
/// adjusts relay `i`'s config.
async fn three_relays(
    tweak: impl Fn(usize, &mut RelayConfig),
) -> (
    common::Relays,
    shallot_p2p::Node,
    Vec<SignedDescriptor>,
    tempfile::TempDir,
) {
    let policy_dir = tempfile::tempdir().unwrap();
    let policy = policy_dir.path().join("test.policy");
    std::fs::write(&policy, "accept 127.0.0.1:*\nreject *:*\n").unwrap();
    let relays = common::start_relays(3, |i, c| {
        if i == 2 {
            c.exit_policy_file = Some(policy.clone());
            c.exit_policy_reject_private = false;
        }
        tweak(i, c);
    })
    .await;
    let client = start_client(&relays.handles).await;
    let descriptors = fetch_all(&client, &relays.handles).await;
    (relays, client, descriptors, policy_dir)
}

/// A 3-hop circuit through `d` and a stream on it from a local server that sends `len` bytes
/// (the server lives as long as the returned handle).
async fn download_of(
    client: &shallot_p2p::Node,
    d: &[SignedDescriptor],
    len: usize,
) -> (CircuitHandle, DataStream, common::Server) {
    let c = build_circuit(client, vec![hop_of(&d[0])]).await.unwrap();
    step("EXTEND to the middle", c.extend(hop_of(&d[1])))
        .await
        .unwrap();
    step("EXTEND to the exit", c.extend(hop_of(&d[2])))
        .await
        .unwrap();
    let source = source_server(len).await;
    let stream = step(
        "BEGIN",
        c.connect(Host::V4(Ipv4Addr::LOCALHOST), source.port),
    )
    .await
    .unwrap();
    (c, stream, source)
}

/// The middle relay limited to 256 KiB a second (a burst of as much): 1.5 MiB can come no
/// sooner than 5 s. Unlimited, it comes in a fraction of a second on loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_with_a_bandwidth_rate_carries_no_faster_than_it() {
    const RATE: usize = 256 * KIB;
    const LEN: usize = 1536 * KIB;
    let (relays, client, descriptors, _policy) = three_relays(|i, c| {
        if i == 1 {
            c.bandwidth_rate = Some(ByteCount(RATE as u64));
        }
    })
    .await;
    let (_circuit, mut stream, _source) = download_of(&client, &descriptors, LEN).await;
    let started = Instant::now();
    let got = step("the download", read_n(&mut stream, LEN + 1)).await;
    let took = started.elapsed().as_secs_f64();
    assert_eq!(got.len(), LEN);
    // What the bucket lets through at most: the burst at once, then the rate.
    let soonest = (LEN - RATE) as f64 / RATE as f64;
    println!(
        "{LEN} bytes through a relay limited to {RATE} B/s: {took:.2} s, {:.0} B/s",
        LEN as f64 / took
    );
    assert!(
        took >= soonest * 0.95,
        "{LEN} bytes took {took:.2} s through a relay limited to {RATE} B/s (no sooner than \
         {soonest:.2} s)"
    );
    let (received, sent) = relays.handles[1].traffic_totals();
    assert!(
        received >= LEN as u64 && sent >= LEN as u64,
        "{received} {sent}"
    );
}

/// The middle relay's allowance is 1 MiB a day: a download through it stops short of 3 MiB,
/// the relay hibernates, refuses a new circuit with DESTROY(HIBERNATING), and its descriptor in
/// the other relays' stores says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_past_its_allowance_stops_refuses_circuits_and_says_it_hibernates() {
    const LEN: usize = 3 << 20;
    let (relays, client, descriptors, _policy) = three_relays(|i, c| {
        if i == 1 {
            c.accounting_max = Some(ByteCount(1 << 20));
            c.accounting_period = shallot_relay::AccountingPeriod::Day;
        }
    })
    .await;
    let middle = &relays.handles[1];
    assert!(!middle.is_hibernating());
    let (_circuit, mut stream, _source) = download_of(&client, &descriptors, LEN).await;
    // Bounded: past the allowance nothing more comes.
    let got = tokio::time::timeout(Duration::from_secs(5), read_n(&mut stream, LEN))
        .await
        .unwrap_or_default();
    assert!(
        got.len() < LEN,
        "all {LEN} bytes came through a spent allowance"
    );
    assert!(middle.is_hibernating());
    let (received, sent) = middle.traffic_totals();
    assert!(
        received.max(sent) <= (1 << 20) + 256 * KIB as u64,
        "the middle carried {received} in, {sent} out past an allowance of 1 MiB"
    );

    let refused = build_circuit(&client, vec![hop_of(&descriptors[1])]).await;
    assert!(
        matches!(
            refused,
            Err(BuildFailure::Destroyed {
                hops_built: 0,
                reason: DestroyReason::Hibernating
            })
        ),
        "{refused:?}"
    );
    assert_eq!(middle.stats().refused_hibernating.get(), 1);
    // With the allowance spent, the circuits it carried are gone too.
    step("the spent relay destroys its circuits", async {
        while middle.open_circuits() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(middle.stats().circuits_destroyed_hibernating.get(), 1);

    let peer = middle.peer_id();
    step("the guard's store has the hibernating descriptor", async {
        loop {
            let flagged = relays.handles[0]
                .directory()
                .get(&peer)
                .is_some_and(|e| e.descriptor.descriptor().flags.is_hibernating());
            if flagged {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    drop(stream);
}
