//! `shallot demo`: Shallot's circuit core end to end, in memory.
//!
//! A client and N relays built from the real handshake, onion layers and circuit state machines
//! (`shallot_proto::harness`), with the links simulated in memory and a fake internet behind the
//! exit. It shows what works before any process or socket is involved: building a circuit hop
//! by hop, carrying streams, and destroying a circuit whose cells were tampered with.

use std::time::Instant;

use anyhow::{Context, bail, ensure};
use shallot_proto::harness::{Dir, Harness, HarnessConfig, Target, pattern_byte};
use shallot_proto::{ClientEvent, RelayCircuit};

const DOWNLOAD_HOST: &str = "download.test";
const ECHO_BYTES: usize = 64 * 1024;
/// Step bound for every phase: the harness is deterministic, so a healthy run needs far fewer.
const MAX_STEPS: usize = 50_000_000;

/// Runs the demo with `hops` relays and a download of `mib` MiB; prints what happened.
pub(crate) fn run(hops: usize, mib: usize) -> anyhow::Result<()> {
    ensure!((1..=5).contains(&hops), "--hops must be between 1 and 5");
    ensure!(
        (1..=1024).contains(&mib),
        "--mib must be between 1 and 1024"
    );
    let download_bytes = mib * 1024 * 1024;

    let mut net = Harness::new(HarnessConfig {
        relays: hops,
        ..HarnessConfig::default()
    })
    .context("cannot set up the in-memory network")?;
    net.internet
        .add(DOWNLOAD_HOST, Target::Source(download_bytes));
    println!(
        "shallot demo: a client and {hops} relays in memory (the last one an exit), \
         5 ms per link each way"
    );

    let wall = Instant::now();
    let virtual_start = net.now;
    if !net.build(hops) {
        bail!("the circuit could not be built: {:?}", net.events);
    }
    println!(
        "  built a {hops}-hop circuit: {} round trips of Noise NK, {:.1} ms of simulated network \
         time, {:.2} ms of CPU",
        hops,
        (net.now - virtual_start).as_secs_f64() * 1e3,
        wall.elapsed().as_secs_f64() * 1e3,
    );
    for (i, relay) in net.relays.iter().enumerate() {
        let cell_len = relay.circuit.as_ref().map_or(0, RelayCircuit::cell_len);
        println!(
            "    hop {i}: {}, {cell_len}-byte cells on its incoming link",
            String::from_utf8_lossy(&relay.peer_id)
        );
    }

    let echo = net.open("echo.test", 7)?;
    let message: Vec<u8> = (0..ECHO_BYTES).map(|i| (i % 251) as u8).collect();
    net.send(echo, &message);
    let echoed = net.run_until(MAX_STEPS, |n| n.received(echo).len() >= ECHO_BYTES);
    ensure!(
        echoed && net.received(echo) == message.as_slice(),
        "the echo stream did not come back intact"
    );
    println!("  stream 1: {ECHO_BYTES} bytes to an echo server at the exit and back, byte-exact");

    let download = net.open(DOWNLOAD_HOST, 80)?;
    let wall = Instant::now();
    let done = net.run_until(MAX_STEPS, |n| n.received(download).len() >= download_bytes);
    let cpu = wall.elapsed();
    let intact = net
        .received(download)
        .iter()
        .enumerate()
        .all(|(i, b)| *b == pattern_byte(download.0, i));
    ensure!(
        done && intact && net.received(download).len() == download_bytes,
        "the download did not arrive intact"
    );
    println!(
        "  stream 2: downloaded {mib} MiB through {hops} onion layers, byte-exact; \
         all {} parties on one core: {:.0} MB/s",
        hops + 1,
        download_bytes as f64 / cpu.as_secs_f64() / 1e6
    );

    // Integrity at every hop: flip one bit of the next cell on the second link.
    let tamper_link = usize::from(hops > 1);
    let sink = net.open("sink.test", 9)?;
    net.corrupt(tamper_link, Dir::Forward, 0, 100);
    net.send(sink, b"this cell is tampered with on its way");
    net.run_idle(MAX_STEPS);
    let destroyed = net
        .events
        .iter()
        .any(|e| matches!(e, ClientEvent::Destroyed { .. }));
    ensure!(
        destroyed && net.all_relays_closed(),
        "a tampered cell was not detected"
    );
    println!(
        "  a bit flipped on link {tamper_link} was detected by hop {tamper_link}'s \
         authentication: the circuit was destroyed in both directions"
    );
    println!(
        "shallot demo: ok. Next: `shallot exit-policy check FILE ADDR:PORT...`; the local \
         network of real processes is `shallot testnet` (see the README)."
    );
    Ok(())
}
