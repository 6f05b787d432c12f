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
use shallot_directory::{DirStore, StoreConfig, Verdicts};
use shallot_p2p::{DEFAULT_SYNC_INTERVAL, Directory, NodeConfig, Role};

/// Relay `i` in a /16 of its own (10.1.0.1, 10.2.0.1, …, 11.1.0.1, …).
fn scale_ip(i: usize) -> Ipv4Addr {
    let first = 10 + u8::try_from(i / 250).expect("at most 60,000 relays");
    let second = 1 + u8::try_from(i % 250).expect("fits");
    Ipv4Addr::new(first, second, 0, 1)
}

/// How long the relays may take to prove each other before the test gives up.
const RELAYS_CONVERGE_LIMIT: Duration = Duration::from_secs(900);
/// How many relays the progress lines sample for their connection count.
const SAMPLED: usize = 10;
/// The share of the relays a fresh client's first refresh must put in its view.
const COMPLETE: f64 = 0.995;

/// This process's resident memory, from /proc (0 where there is none).
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check for every change: 1,000 relays proving each other is a \
            million dials, about 10 minutes and 4.5 GB in a release build; run it as specs/04 \
            §6.1.2 says"]
async fn a_thousand_relays_one_refresh_makes_a_complete_view() {
    let n: usize = std::env::var("SHALLOT_SCALE_RELAYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    init_tracing();
    let wire = Wire::simulated();
    let started = Instant::now();
    let relays = start_scale_relays(&wire, n, |_| {}).await;
    println!("{n} relays started in {:?}", started.elapsed());
    let started = Instant::now();
    publish_all(&relays, 3600).await;
    println!("{n} relays published in {:?}", started.elapsed());

    let mut last_served = (0, 0, 0);
    let started = Instant::now();
    let target = (n as f64 * COMPLETE).ceil() as usize;
    loop {
        let listed: Vec<usize> = relays
            .iter()
            .map(|r| r.node.directory().expect("store").listed_len())
            .collect();
        let lowest = listed.iter().copied().min().unwrap_or(0);
        let mean = listed.iter().sum::<usize>() / n.max(1);
        let (requests, bytes, full) = served(&relays);
        let mut connections = 0;
        for r in relays.iter().take(SAMPLED) {
            connections += r.node.connected_peers().await.unwrap_or(0);
        }
        println!(
            "{:>5.1} s: relays' stores list {lowest} (lowest) {mean} (mean) of {n}; {} MB \
             resident; {} peers connected (mean of {SAMPLED}); {} listings ({} full) of {} MB \
             served",
            started.elapsed().as_secs_f64(),
            resident_bytes() / 1_000_000,
            connections / SAMPLED.min(n).max(1),
            requests - last_served.0,
            full - last_served.2,
            (bytes - last_served.1) / 1_000_000,
        );
        last_served = (requests, bytes, full);
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

    steady_state(&wire, &relays).await;
    fresh_client_refreshes(&wire, &relays, &relays[..3]).await;
}

/// How often the relays sharing a complete store look for something to probe.
const SHARED_PROBE_INTERVAL: Duration = Duration::from_secs(10);
/// How often the relays sharing a complete store re-replicate their DHT records: not while
/// the simulation runs.
const SHARED_REPLICATION_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// How long the simulation waits for the nodes' start-up work to end.
const QUIET_LIMIT: Duration = Duration::from_secs(600);
/// The window over which the simulation measures whether the nodes are quiet.
const QUIET_WINDOW: Duration = Duration::from_secs(5);
/// How long the newcomer of the 10,000-relay simulation may take to prove the network.
const NEWCOMER_LIMIT: Duration = Duration::from_secs(900);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a simulation, not a check for every change: 10,000 libp2p nodes in one process \
            take minutes and gigabytes; run it as specs/04 §6.1.2 says"]
async fn ten_thousand_relays_simulated_a_fresh_client_and_a_newcomer() {
    let n: usize = std::env::var("SHALLOT_SIM_RELAYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    init_tracing();
    let wire = Wire::simulated();
    // Ten thousand stores of ten thousand entries do not fit one machine, and proving them
    // would be a hundred million dials: the relays share one store, which stands for the
    // converged network that the 1,000-relay test reaches by proving. They do not
    // synchronise during the simulation (their first sync is an interval after start); the
    // client and the newcomer below run the whole protocol with stores of their own.
    let shared = Directory::new(StoreConfig::default(), rand_epoch());
    let started = Instant::now();
    let relays = start_scale_relays(&wire, n, |config| {
        config.directory.sync_interval = 60 * DEFAULT_SYNC_INTERVAL;
        // Their store is complete: nothing to probe, so their probe timers need not wake
        // ten thousand tasks every 20 ms.
        config.directory.probe_interval = SHARED_PROBE_INTERVAL;
        config.shared_directory = Some(shared.clone());
        // Nor do they maintain the DHT while the simulation runs: ten thousand nodes'
        // routing-table refreshes and re-replications, each nothing for one machine, are two
        // cores' worth together and would starve the client being measured.
        config.kad_bootstrap_interval = None;
        config.replication_interval = SHARED_REPLICATION_INTERVAL;
    })
    .await;
    println!(
        "{n} relays started in {:?}; {} MB resident",
        started.elapsed(),
        resident_bytes() / 1_000_000
    );
    // The store is filled as if every relay had published and been proven (one offer and one
    // successful probe per relay, without the dials). They do not publish: ten thousand
    // publications announce to 32 relays each, and that storm is not the steady state.
    let started = Instant::now();
    let now = wire.clock().now();
    let proven = shared.update(|store| {
        // One at a time: the store holds at most MAX_HEARD unproven descriptors.
        let mut proven = 0;
        for relay in &relays {
            store.offer_verified(relay.descriptor(3600), now);
            while let Some(probe) = store.next_probe() {
                store.probed(&probe, true);
                proven += 1;
            }
        }
        proven
    });
    println!(
        "the shared store filled in {:?} ({proven} addresses proven): it lists {}",
        started.elapsed(),
        shared.listed_len(),
    );
    let quiet = until_quiet().await;
    println!(
        "the network was quiet after {quiet:?}; {} MB resident",
        resident_bytes() / 1_000_000
    );
    let target = (n as f64 * COMPLETE).ceil() as usize;
    assert!(
        shared.listed_len() >= target,
        "the shared store is not complete"
    );

    // A fresh client, as in the 1,000-relay test, bootstrapping from three relays that are not
    // everyone's bootstrap peers (those hold the other relays' first connections).
    let middle = n / 2;
    fresh_client_refreshes(&wire, &relays, &relays[middle..middle + 3]).await;

    // A newcomer relay with a store of its own learns the network by synchronising and
    // proves every relay itself, as every relay of a real network does.
    let newcomer = start_relay_with(wire.config(
        Role::Relay,
        Ipv4Addr::new(9, 9, 0, 1),
        true,
        bootstrap_of(&relays[middle + 3..middle + 6]),
    ))
    .await;
    publish_all(std::slice::from_ref(&newcomer), 3600).await;
    let store = newcomer.store();
    let began = Instant::now();
    loop {
        let listed = store.listed_len();
        let (vouched, heard) = store.inspect(DirStore::pending_len);
        println!(
            "{:>6.1} s: the newcomer lists {listed} of {n}, {heard} heard and {vouched} vouched pending; {} MB \
             resident",
            began.elapsed().as_secs_f64(),
            resident_bytes() / 1_000_000
        );
        if listed >= target {
            break;
        }
        assert!(
            began.elapsed() < NEWCOMER_LIMIT,
            "the newcomer did not prove {COMPLETE} of the network within {NEWCOMER_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let stats = newcomer.node.stats();
    println!(
        "the newcomer listed {COMPLETE} of {n} relays after {:?}: {} probes reached, {} MB of \
         listings read",
        began.elapsed(),
        stats.probes_reached.load(Ordering::Relaxed),
        stats.listing_bytes_read.load(Ordering::Relaxed) / 1_000_000,
    );
    newcomer_steady_state(&wire, &newcomer, &shared, &relays).await;
}

/// What the newcomer, once it proved the network, reads at steady state: every listing a
/// relay reads is one that another relay serves, so this is also what a relay of this network
/// serves on average (clients aside). A window in which nothing changes, scaled from the
/// test's sync interval to the default's, and one round in which every relay of the shared
/// store publishes a fresh descriptor, as each does once every REPUBLISH_INTERVAL.
async fn newcomer_steady_state(
    wire: &Wire,
    newcomer: &TestRelay,
    shared: &Directory,
    relays: &[TestRelay],
) {
    let n = relays.len();
    let (quiet_pages, quiet_bytes) = quiet_hour(wire, || read_by(newcomer)).await;
    println!(
        "the newcomer at steady state, nothing changing, per hour at the default sync interval: \
         {quiet_pages:.0} listing pages and {quiet_bytes:.0} bytes read"
    );

    let all: HashSet<PeerId> = relays.iter().map(TestRelay::peer_id).collect();
    let target = (n as f64 * COMPLETE).ceil() as usize;
    let since = wire.clock().now();
    // Signed before the store is locked: ten thousand signatures would stall every relay.
    let fresh: Vec<_> = relays.iter().map(|r| r.descriptor(3600)).collect();
    let (pages_before, bytes_before) = read_by(newcomer);
    let began = Instant::now();
    shared.update(|store| {
        for descriptor in fresh {
            store.offer_verified(descriptor, since);
        }
    });
    let store = newcomer.store();
    loop {
        let held = holding_since(&store, &all, since);
        if held >= target {
            break;
        }
        assert!(
            began.elapsed() < ROUND_LIMIT,
            "a republication round reached the newcomer for only {held} of {n} relays within \
             {ROUND_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let (pages_after, bytes_after) = read_by(newcomer);
    let round_bytes = (bytes_after - bytes_before) as f64;
    println!(
        "a republication round reached the newcomer in {:?}: {} listing pages, {round_bytes:.0} \
         bytes read",
        began.elapsed(),
        pages_after - pages_before,
    );
    println!(
        "steady state, per relay and hour at the default intervals (one round an hour): \
         {quiet_pages:.0} listing pages and {:.0} bytes read, as many served on average",
        quiet_bytes + round_bytes
    );
}

/// Starts `n` relays at [`scale_ip`], each bootstrapping from one of the first ten (as operators
/// would from a few known relays), with `configure` applied to each one's config.
async fn start_scale_relays(
    wire: &Wire,
    n: usize,
    configure: impl Fn(&mut NodeConfig),
) -> Vec<TestRelay> {
    let mut relays: Vec<TestRelay> = Vec::with_capacity(n);
    for i in 0..n {
        let bootstrap = relays
            .get(i % 10)
            .or(relays.first())
            .and_then(|r| r.node.bootstrap_addr())
            .into_iter()
            .collect();
        let mut config = wire.config(Role::Relay, scale_ip(i), true, bootstrap);
        configure(&mut config);
        relays.push(start_relay_with(config).await);
    }
    relays
}

/// This process's CPU time so far (user and system), from /proc.
fn cpu_time() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // Fields after the command's closing parenthesis; utime and stime are the 12th
            // and 13th of them.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    // Linux counts in USER_HZ, 100 a second on every architecture it supports.
    Duration::from_millis(ticks * 10)
}

/// Waits until the process uses less than half a core (the nodes' start-up work is done), at
/// most [`QUIET_LIMIT`]; returns how long that took.
async fn until_quiet() -> Duration {
    let began = Instant::now();
    while began.elapsed() < QUIET_LIMIT {
        let before = cpu_time();
        tokio::time::sleep(QUIET_WINDOW).await;
        if cpu_time().saturating_sub(before) < QUIET_WINDOW / 2 {
            break;
        }
    }
    began.elapsed()
}

/// Listing requests, bytes and full listings the relays served so far.
fn served(relays: &[TestRelay]) -> (u64, u64, u64) {
    relays.iter().fold((0, 0, 0), |(n, b, f), r| {
        let s = r.node.stats();
        (
            n + s.listings_served.load(Ordering::Relaxed),
            b + s.listing_bytes_served.load(Ordering::Relaxed),
            f + s.full_listings_served.load(Ordering::Relaxed),
        )
    })
}

/// Listing pages and bytes `relay` read so far.
fn read_by(relay: &TestRelay) -> (u64, u64) {
    let s = relay.node.stats();
    (
        s.listings_read.load(Ordering::Relaxed),
        s.listing_bytes_read.load(Ordering::Relaxed),
    )
}

/// How many of `relays` hold a descriptor published at `since` or later in `store`.
fn holding_since(store: &Directory, relays: &HashSet<PeerId>, since: u64) -> usize {
    store.inspect(|s| {
        s.entries()
            .filter(|e| {
                e.descriptor.descriptor().published_at >= since
                    && relays.contains(&e.descriptor.peer_id())
            })
            .count()
    })
}

/// Over how long the steady-state measurement spreads its round of publications. A real
/// network's spread over REPUBLISH_INTERVAL; a thousand at once would measure the burst (each
/// publication is a Kademlia put and announcements to 32 relays) rather than the steady state.
const ROUND_SPREAD: Duration = Duration::from_secs(100);
/// What `counters` grow by in an hour of synchronisations in which nothing changes: measured
/// over four of the test's sync intervals, scaled to the default interval.
async fn quiet_hour(wire: &Wire, counters: impl Fn() -> (u64, u64)) -> (f64, f64) {
    let sync_interval = wire.sync_interval();
    let window = 4 * sync_interval;
    let before = counters();
    tokio::time::sleep(window).await;
    let after = counters();
    let scale = 3600.0 / window.as_secs_f64() * sync_interval.as_secs_f64()
        / DEFAULT_SYNC_INTERVAL.as_secs_f64();
    (
        (after.0 - before.0) as f64 * scale,
        (after.1 - before.1) as f64 * scale,
    )
}

/// How long a republication round may take to reach every store.
const ROUND_LIMIT: Duration = Duration::from_secs(600);

/// What each relay serves at steady state, per hour at the default intervals: a window of
/// synchronisations in which nothing changes (scaled from the test's sync interval to the
/// default's), and one round in which every relay publishes a fresh descriptor, as each does
/// once every REPUBLISH_INTERVAL (so one round is an hour's changes).
async fn steady_state(wire: &Wire, relays: &[TestRelay]) {
    let n = relays.len();
    let (requests, bytes) = quiet_hour(wire, || {
        let (requests, bytes, _) = served(relays);
        (requests, bytes)
    })
    .await;
    let (quiet_requests, quiet_bytes) = (requests / n as f64, bytes / n as f64);
    println!(
        "steady state, nothing changing, per relay and hour at the default sync interval: \
         {quiet_requests:.0} listing requests served, {quiet_bytes:.0} bytes"
    );

    let all: HashSet<PeerId> = relays.iter().map(TestRelay::peer_id).collect();
    let target = (n as f64 * COMPLETE).ceil() as usize;
    let since = wire.clock().now();
    let (requests_before, bytes_before, full_before) = served(relays);
    let began = Instant::now();
    futures::future::join_all(relays.iter().enumerate().map(|(i, relay)| async move {
        tokio::time::sleep(ROUND_SPREAD * u32::try_from(i).unwrap_or(u32::MAX) / n.max(1) as u32)
            .await;
        publish_all(std::slice::from_ref(relay), 3600).await;
    }))
    .await;
    loop {
        let lowest = relays
            .iter()
            .map(|r| holding_since(&r.store(), &all, since))
            .min()
            .unwrap_or(0);
        if lowest >= target {
            break;
        }
        assert!(
            began.elapsed() < ROUND_LIMIT,
            "a republication round reached only {lowest} of {n} in some store within \
             {ROUND_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let took = began.elapsed();
    let (requests_after, bytes_after, full_after) = served(relays);
    let round_bytes = (bytes_after - bytes_before) as f64 / n as f64;
    println!(
        "a republication round reached {COMPLETE} of every store in {took:?}: per relay {:.0} \
         listing requests ({:.1} full) and {round_bytes:.0} bytes served",
        (requests_after - requests_before) as f64 / n as f64,
        (full_after - full_before) as f64 / n as f64,
    );
    println!(
        "steady state, per relay and hour at the default intervals (one round an hour): \
         {quiet_requests:.0} listing requests and {:.0} bytes served",
        quiet_bytes + round_bytes
    );
}

/// A fresh client bootstrapping from `bootstrap` refreshes twice; prints what each refresh
/// cost and checks that the first put at least [`COMPLETE`] of `relays` in its view.
async fn fresh_client_refreshes(wire: &Wire, relays: &[TestRelay], bootstrap: &[TestRelay]) {
    let n = relays.len();
    let target = (n as f64 * COMPLETE).ceil() as usize;
    let all: HashSet<PeerId> = relays.iter().map(TestRelay::peer_id).collect();
    let client = start_client(wire, bootstrap_of(bootstrap)).await;
    let (requests_before, bytes_before, _) = served(relays);
    let mut view = fresh_view();
    let mut verdicts = Verdicts::new();
    let began = Instant::now();
    let (full, report) = refresh_into(&client, &mut view, &mut verdicts).await;
    let took = began.elapsed();
    let seen = view
        .entries()
        .filter(|e| all.contains(&e.descriptor.peer_id()))
        .count();
    let (requests_after, bytes_after, _) = served(relays);
    println!(
        "a fresh client's first refresh: {seen} of {n} relays in {took:?}, {} bytes (full), \
         {} listing requests and {} bytes served by the relays; {} walks, {} sources failed, \
         {} left out for their block; {report:?}",
        full.bytes,
        requests_after - requests_before,
        bytes_after - bytes_before,
        full.walks,
        full.failed,
        full.same_block,
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

fn rand_epoch() -> u64 {
    u64::from(std::process::id()) << 32 | 1
}
