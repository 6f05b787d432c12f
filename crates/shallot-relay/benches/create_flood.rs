//! Honest circuit builds through one relay, with and without a CREATE flood (issue 13): the
//! latency of a one-hop build (CREATE to CREATED, by the client's own driver) from an honest
//! client, first alone, then while 100 identities, each on an address of its own, send CREATEs
//! as fast as the relay answers them. The relay runs with its default limits, so the flood
//! meets the per-address and total CREATE rates and the handshake queue; the table shows what
//! the honest client sees and what the relay refused. All nodes run in this process on an
//! in-memory network (each node dials from its own address) on a 2-thread runtime: the
//! flooders' own handshake work shares the cores with the relay, so the flood figures are an
//! upper bound on what a relay with cores of its own would show. Prints a table. Run:
//! `cargo bench -p shallot-relay --bench create_flood`

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{hop_of_relay, memory_client, memory_relay};
use shallot_client::CircuitHandle;
use shallot_p2p::{MemoryNet, Node};
use shallot_proto::HopSpec;

/// Honest builds per row, one after another.
const HONEST_BUILDS: usize = 100;
/// Honest clients, each on an address of its own, taking the builds in turn: one client
/// making all of them would meet its own address's CREATE rate (a burst of 90, then 3 a
/// second), which is not what this measures.
const HONEST_CLIENTS: usize = 4;
/// Identities of the flood, each on an address of its own.
const FLOODERS: usize = 100;
/// Builds each flooding identity keeps in flight.
const FLOOD_IN_FLIGHT: usize = 4;
/// How long the flood runs before the honest client starts, so that it meets a relay whose
/// bursts are spent and whose queue is full.
const FLOOD_WARM_UP: Duration = Duration::from_secs(2);
/// The longest any one build may take; a longer one counts as failed.
const BUILD_TIMEOUT: Duration = Duration::from_secs(10);
/// The flood stops after this even if the honest builds have not finished.
const FLOOD_AT_MOST: Duration =
    Duration::from_secs(FLOOD_WARM_UP.as_secs() + (HONEST_BUILDS as u64) * BUILD_TIMEOUT.as_secs());

const RELAY_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

/// One one-hop build; `true` if it was built within [`BUILD_TIMEOUT`]. The circuit is dropped
/// (destroyed) at once.
async fn one_hop(client: &Node, hop: &HopSpec) -> bool {
    let mut control = client.stream_control();
    let build = CircuitHandle::build(&mut control, vec![hop.clone()], BUILD_TIMEOUT);
    matches!(tokio::time::timeout(BUILD_TIMEOUT, build).await, Ok(Ok(_)))
}

/// The `share` (0..=1) percentile of sorted `latencies`, nearest rank.
fn percentile(latencies: &[Duration], share: f64) -> Option<Duration> {
    let rank = (share * latencies.len() as f64).ceil() as usize;
    latencies.get(rank.max(1) - 1).copied()
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "-".to_owned(),
        |d| format!("{:.1}", d.as_secs_f64() * 1e3),
    )
}

/// What one row measured.
struct Row {
    what: &'static str,
    latencies: Vec<Duration>,
    failures: usize,
    flood_sent: u64,
    flood_built: u64,
    flood_for: Duration,
    accepted: u64,
    refused_rate: u64,
    refused_queue: u64,
    refused_handshakes: u64,
    refused_timeout: u64,
    refused_address: u64,
}

/// Runs [`HONEST_BUILDS`] honest builds against a fresh relay, with `flooders` identities
/// flooding it meanwhile (none: no flood).
async fn measure(what: &'static str, flooders: usize) -> Row {
    let net = MemoryNet::new();
    let (relay, _dir) = memory_relay(&net, RELAY_IP, |_| {}).await;
    let hop = hop_of_relay(&relay);
    let stop = Arc::new(AtomicBool::new(false));
    let flood_built = Arc::new(AtomicU64::new(0));
    let mut flood = Vec::new();
    let mut nodes = Vec::new();
    for i in 0..flooders {
        let ip = Ipv4Addr::new(
            10,
            9,
            u8::try_from(i / 200).unwrap(),
            u8::try_from(i % 200 + 1).unwrap(),
        );
        nodes.push(Arc::new(memory_client(&net, ip, &relay).await));
    }
    let flood_started = Instant::now();
    for node in &nodes {
        for _ in 0..FLOOD_IN_FLIGHT {
            let (node, hop) = (Arc::clone(node), hop.clone());
            let (stop, built) = (Arc::clone(&stop), Arc::clone(&flood_built));
            flood.push(tokio::spawn(async move {
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) && flood_started.elapsed() < FLOOD_AT_MOST {
                    // Built or refused, the circuit is dropped at once: what counts is the CREATE.
                    if one_hop(&node, &hop).await {
                        built.fetch_add(1, Ordering::Relaxed);
                    }
                    sent += 1;
                }
                sent
            }));
        }
    }
    if flooders > 0 {
        tokio::time::sleep(FLOOD_WARM_UP).await;
    }

    let mut honest = Vec::new();
    for i in 0..HONEST_CLIENTS {
        let client = memory_client(
            &net,
            Ipv4Addr::new(10, 8, 0, u8::try_from(i + 1).unwrap()),
            &relay,
        )
        .await;
        // One build first, untimed, so that the rows time builds, not the client's dial.
        let _ = one_hop(&client, &hop).await;
        honest.push(client);
    }
    let mut latencies = Vec::new();
    let mut failures = 0;
    for i in 0..HONEST_BUILDS {
        let started = Instant::now();
        if one_hop(&honest[i % HONEST_CLIENTS], &hop).await {
            latencies.push(started.elapsed());
        } else {
            failures += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut flood_sent = 0;
    for f in flood {
        flood_sent += f.await.unwrap();
    }
    latencies.sort();
    let stats = relay.stats();
    Row {
        what,
        latencies,
        failures,
        flood_sent,
        flood_built: flood_built.load(Ordering::Relaxed),
        flood_for: if flooders > 0 {
            flood_started.elapsed()
        } else {
            Duration::ZERO
        },
        accepted: stats.circuits_accepted.get(),
        refused_rate: stats.refused_rate_limit.get(),
        refused_queue: stats.refused_create_queue.get(),
        refused_handshakes: stats.refused_handshakes.get(),
        refused_timeout: stats.refused_timeout.get(),
        refused_address: stats.refused_address_limit.get(),
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let rows = runtime.block_on(async {
        vec![
            measure("no flood", 0).await,
            measure("flood from 100 identities", FLOODERS).await,
        ]
    });

    println!(
        "Honest one-hop builds through one relay (default limits), {HONEST_BUILDS} one after \
         another by {HONEST_CLIENTS} clients in turn; flood: {FLOODERS} identities on {FLOODERS} \
         addresses, {FLOOD_IN_FLIGHT} builds in flight each"
    );
    println!(
        "| | builds | p50 ms | p99 ms | failures | flood CREATEs (built) in s | relay accepted | \
         refused: rate | queue | handshakes | timeout | address |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} ({}) in {:.1} | {} | {} | {} | {} | {} | {} |",
            r.what,
            r.latencies.len(),
            ms(percentile(&r.latencies, 0.50)),
            ms(percentile(&r.latencies, 0.99)),
            r.failures,
            r.flood_sent,
            r.flood_built,
            r.flood_for.as_secs_f64(),
            r.accepted,
            r.refused_rate,
            r.refused_queue,
            r.refused_handshakes,
            r.refused_timeout,
            r.refused_address,
        );
    }
}
