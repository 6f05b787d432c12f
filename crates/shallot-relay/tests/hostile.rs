//! A relay against hostile peers: garbage on circuit streams, silent streams, and the limits
//! on circuits per address, CREATE rate and total circuits. Each refusal must be clean (a DESTROY
//! or a plain close, counted) and must not disturb the relay's other circuits. These tests skip
//! the DHT: the client is told the relay's address directly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::{
    build_circuit, direct_client, echo_server, exchange, hop_of_relay, pattern, start_relays, step,
    tarpit_server,
};
use futures::io::{AsyncReadExt, AsyncWriteExt};
use rand::RngCore;
use shallot_cell::{DestroyReason, Host, LINK_CELL_LEN, Preamble, link_command};
use shallot_client::{BuildFailure, CircuitHandle};
use shallot_p2p::{CIRCUIT_PROTOCOL, Node};
use shallot_relay::{CreateRate, RelayConfig, RelayHandle};

/// One exit relay that may connect to 127.0.0.1, with `tweak` applied.
async fn one_exit(tweak: impl FnOnce(&mut RelayConfig)) -> (common::Relays, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("loopback.policy");
    std::fs::write(&policy, "accept 127.0.0.1:*\nreject *:*\n").unwrap();
    let mut tweak = Some(tweak);
    let relays = start_relays(1, |_, c| {
        c.exit_policy_file = Some(policy.clone());
        c.exit_policy_reject_private = false;
        if let Some(t) = tweak.take() {
            t(c);
        }
    })
    .await;
    (relays, dir)
}

/// Opens a raw circuit stream, writes `bytes` (then half-closes if `close`), and returns
/// everything the relay sends until it closes the stream.
async fn raw_exchange(client: &Node, relay: &RelayHandle, bytes: &[u8], close: bool) -> Vec<u8> {
    let mut control = client.stream_control();
    let mut stream = control
        .open_stream(relay.peer_id(), CIRCUIT_PROTOCOL)
        .await
        .unwrap();
    // The relay may close before reading everything: write errors are part of the game.
    let _ = stream.write_all(bytes).await;
    if close {
        let _ = stream.close().await;
    }
    let mut got = Vec::new();
    let _ = step("the relay closes the stream", stream.read_to_end(&mut got)).await;
    got
}

fn preamble() -> Vec<u8> {
    Preamble::for_link(0).unwrap().encode().to_vec()
}

fn is_destroy(cells: &[u8], reason: DestroyReason) -> bool {
    cells.len() == LINK_CELL_LEN
        && cells[0] == link_command::DESTROY
        && cells[1] == u8::from(reason)
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    step(what, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_closes_only_that_stream() {
    let (relays, _dir) = one_exit(|_| {}).await;
    let relay = &relays.handles[0];
    let client = direct_client(&[relay]).await;
    let echo = echo_server().await;

    // A healthy circuit with a stream, before and after the garbage.
    let good = build_circuit(&client, vec![hop_of_relay(relay)])
        .await
        .unwrap();
    let mut s = step(
        "BEGIN",
        good.connect(Host::V4(Ipv4Addr::LOCALHOST), echo.port),
    )
    .await
    .unwrap();
    assert_eq!(
        step("echo before", exchange(&mut s, b"before")).await,
        b"before"
    );

    // 1. A bad preamble (version 9): closed without a byte written (specs/01 §4.2).
    let got = raw_exchange(&client, relay, &[9, 0, 8, 0, 1, 2, 3], false).await;
    assert!(got.is_empty(), "a bad preamble gets no answer");
    // 2. A CREATE with a garbage handshake: DESTROY(PROTOCOL), then closed.
    let mut bad_create = preamble();
    let mut cell = vec![0u8; LINK_CELL_LEN];
    cell[0] = link_command::CREATE;
    cell[9] = 0;
    cell[10] = 48;
    bad_create.extend_from_slice(&cell);
    let got = raw_exchange(&client, relay, &bad_create, false).await;
    assert!(
        is_destroy(&got, DestroyReason::Protocol),
        "{:?}",
        &got[..got.len().min(4)]
    );
    // 3. A first cell that is not CREATE.
    let mut relay_first = preamble();
    let mut cell = vec![0u8; LINK_CELL_LEN];
    cell[0] = link_command::RELAY;
    relay_first.extend_from_slice(&cell);
    let got = raw_exchange(&client, relay, &relay_first, false).await;
    assert!(is_destroy(&got, DestroyReason::Protocol));
    // 4. Random bytes after a valid preamble.
    let mut random = preamble();
    let mut noise = vec![0u8; 3 * LINK_CELL_LEN];
    rand::rng().fill_bytes(&mut noise);
    random.extend_from_slice(&noise);
    let got = raw_exchange(&client, relay, &random, false).await;
    assert!(is_destroy(&got, DestroyReason::Protocol));
    // 5. A stream that ends inside its first cell.
    let mut short = preamble();
    short.extend_from_slice(&[1u8; 100]);
    let got = raw_exchange(&client, relay, &short, true).await;
    assert!(got.is_empty());

    let stats = relay.stats();
    wait_for("five refusals counted", || {
        stats.refused_malformed.get() == 5
    })
    .await;
    assert_eq!(stats.circuits_accepted.get(), 1);

    // The healthy circuit never noticed, and new circuits are still served.
    assert_eq!(
        step("echo after", exchange(&mut s, b"after")).await,
        b"after"
    );
    let another = build_circuit(&client, vec![hop_of_relay(relay)])
        .await
        .unwrap();
    let mut s2 = step(
        "BEGIN after",
        another.connect(Host::V4(Ipv4Addr::LOCALHOST), echo.port),
    )
    .await
    .unwrap();
    let data = pattern(200_000, 3);
    let back = step("echo on the new circuit", exchange(&mut s2, &data)).await;
    assert!(back == data);
    assert!(good.destroyed().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_stream_is_closed_after_the_handshake_timeout() {
    let (relays, _dir) = one_exit(|c| c.handshake_timeout_secs = 1).await;
    let relay = &relays.handles[0];
    let client = direct_client(&[relay]).await;
    let mut control = client.stream_control();
    let mut stream = control
        .open_stream(relay.peer_id(), CIRCUIT_PROTOCOL)
        .await
        .unwrap();
    // A valid preamble and then nothing: the relay must not wait forever.
    stream.write_all(&preamble()).await.unwrap();
    let mut got = Vec::new();
    let _ = step("the relay gives up", stream.read_to_end(&mut got)).await;
    assert!(got.is_empty());
    assert_eq!(relay.stats().refused_timeout.get(), 1);
    assert_eq!(relay.stats().circuits_accepted.get(), 0);
}

/// Builds one-hop circuits from `client` until one is refused; returns the circuits.
async fn connect(client: &Node, relay: &RelayHandle) -> Result<CircuitHandle, BuildFailure> {
    build_circuit(client, vec![hop_of_relay(relay)]).await
}

/// How a CREATE the relay's limits refuse fails.
const REFUSED: BuildFailure = BuildFailure::Destroyed {
    hops_built: 0,
    reason: DestroyReason::ResourceLimit,
};

/// The clients of these tests all connect from 127.0.0.1, and none is a relay: the limits
/// that apply are those of one address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_address_circuit_limit_refuses_cleanly() {
    let (relays, _dir) = one_exit(|c| c.max_circuits_per_address = 2).await;
    let relay = &relays.handles[0];
    let a = direct_client(&[relay]).await;
    let first = connect(&a, relay).await.unwrap();
    let _second = connect(&a, relay).await.unwrap();
    let refused = connect(&a, relay).await.err();
    assert_eq!(refused, Some(REFUSED));
    assert_eq!(relay.stats().refused_address_limit.get(), 1);
    // A fresh PeerId on the same address does not get around it.
    let b = direct_client(&[relay]).await;
    assert_eq!(connect(&b, relay).await.err(), Some(REFUSED));
    assert_eq!(relay.stats().refused_address_limit.get(), 2);
    assert_eq!(relay.stats().refused_peer_limit.get(), 0);
    // Closing a circuit frees its slot, for any peer of the address.
    step("DESTROY", first.close()).await;
    wait_for("the slot is freed", || relay.open_circuits() == 1).await;
    let _again = connect(&b, relay).await.unwrap();
    assert_eq!(relay.stats().refused_address_limit.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_create_rate_limit_refuses_cleanly() {
    let (relays, _dir) = one_exit(|c| {
        c.create_rate_per_address = CreateRate {
            per_second: 1,
            burst: 2,
        };
    })
    .await;
    let relay = &relays.handles[0];
    let a = direct_client(&[relay]).await;
    // All at once, so that the refusals do not depend on how fast this machine is: CREATEs
    // that arrive within a second find only the burst's two tokens (one more per second that
    // passes while they arrive).
    let outcomes =
        futures::future::join_all((0..CONCURRENT_CREATES).map(|_| connect(&a, relay))).await;
    let mut held = Vec::new();
    let mut refused = 0;
    for outcome in outcomes {
        match outcome {
            Ok(c) => held.push(c),
            Err(failure) => {
                assert_eq!(failure, REFUSED);
                refused += 1;
            }
        }
    }
    assert!(held.len() >= 2, "the burst is granted");
    assert!(
        refused >= 1,
        "{CONCURRENT_CREATES} CREATEs at once, all granted"
    );
    assert_eq!(relay.stats().refused_rate_limit.get(), refused);
    // A refusal takes no token, so a second after the last one a token is back.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    held.push(connect(&a, relay).await.unwrap());
    assert_eq!(relay.open_circuits(), held.len());
}

/// CREATEs sent at once by the rate-limit test: twice the burst and more.
const CONCURRENT_CREATES: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_total_circuit_limit_refuses_cleanly() {
    let (relays, _dir) = one_exit(|c| c.max_circuits = 2).await;
    let relay = &relays.handles[0];
    let mut held = Vec::new();
    for _ in 0..2 {
        let c = direct_client(&[relay]).await;
        held.push((connect(&c, relay).await.unwrap(), c));
    }
    let c = direct_client(&[relay]).await;
    let refused = connect(&c, relay).await.err();
    assert_eq!(refused, Some(REFUSED));
    assert_eq!(relay.stats().refused_total_limit.get(), 1);
    assert_eq!(relay.open_circuits(), 2);
}

/// A destination that never reads: what the client may send it is bounded by the stream's
/// credit window at the exit (plus the kernel's socket buffers), so 64 MiB cannot all be
/// taken, and the circuit's other streams go on meanwhile (specs/03 §11).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_never_reads_stalls_only_its_stream() {
    let (relays, _dir) = one_exit(|_| {}).await;
    let relay = &relays.handles[0];
    let client = direct_client(&[relay]).await;
    let echo = echo_server().await;
    let tarpit = tarpit_server().await;
    let circuit = connect(&client, relay).await.unwrap();
    let mut stuck = step(
        "BEGIN to the tarpit",
        circuit.connect(Host::V4(Ipv4Addr::LOCALHOST), tarpit.port),
    )
    .await
    .unwrap();
    let flood = pattern(64 << 20, 9);
    let mut writer = Box::pin(tokio::io::AsyncWriteExt::write_all(&mut stuck, &flood));
    let data = pattern(1 << 20, 4);
    let echoed = step("echo beside a stalled stream", async {
        let mut s = circuit
            .connect(Host::V4(Ipv4Addr::LOCALHOST), echo.port)
            .await
            .unwrap();
        exchange(&mut s, &data).await
    });
    // Drive the flood and the echo together; the echo must finish first.
    tokio::select! {
        biased;
        got = echoed => assert!(got == data),
        r = &mut writer => panic!("64 MiB went into a destination that never reads: {r:?}"),
    }
    assert!(
        futures::poll!(&mut writer).is_pending(),
        "the flood is held back by backpressure"
    );
    assert!(circuit.destroyed().is_none());
}

/// An attacker's circuits that carry nothing are not held for ever: the relay destroys a
/// circuit idle for `idle_circuit_timeout_secs` (specs/03 §4.11), counts it, and frees its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_circuit_is_destroyed_and_counted() {
    let (relays, _dir) = one_exit(|c| c.idle_circuit_timeout_secs = 2).await;
    let relay = &relays.handles[0];
    let client = direct_client(&[relay]).await;
    let idle = connect(&client, relay).await.unwrap();
    assert_eq!(relay.open_circuits(), 1);
    wait_for("the idle circuit is destroyed", || {
        relay.stats().circuits_closed_idle.get() == 1 && relay.open_circuits() == 0
    })
    .await;
    wait_for("the client hears of it", || idle.is_closed()).await;
    assert_eq!(idle.destroyed(), Some(DestroyReason::Finished));
}
