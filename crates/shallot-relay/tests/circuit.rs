//! What a relay must show: a 3-hop circuit built by the protocol crate over real libp2p streams,
//! from descriptors the client fetched from the DHT and verified, carrying MiBs byte-exact to a
//! local server; and the exit's END reasons on that circuit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::Ipv4Addr;

use common::{
    build_circuit, closed_port, echo_server, exchange, fetch_all, hop_of, pattern, read_n,
    source_server, start_client, start_relays, step,
};
use shallot_cell::{DestroyReason, EndReason, Host, ResolvedAnswer};
use shallot_client::{BuildFailure, CircuitHandle, StreamFailure};
use shallot_directory::SignedDescriptor;

/// Guard, middle, exit on 127.0.1.1, 127.0.2.1, 127.0.3.1; the exit accepts 127.0.0.1 except
/// `denied_port`, with the reject-private prelude off (everything here is loopback).
async fn three_relays(
    denied_port: u16,
) -> (
    common::Relays,
    Vec<SignedDescriptor>,
    shallot_p2p::Node,
    tempfile::TempDir,
) {
    three_relays_with_policy(&format!(
        "# test exit policy\nreject 127.0.0.1:{denied_port}\naccept 127.0.0.1:*\nreject *:*\n"
    ))
    .await
}

/// Guard, middle, exit as in [`three_relays`], the exit with the policy file `text` and the
/// reject-private prelude off.
async fn three_relays_with_policy(
    text: &str,
) -> (
    common::Relays,
    Vec<SignedDescriptor>,
    shallot_p2p::Node,
    tempfile::TempDir,
) {
    let policy_dir = tempfile::tempdir().unwrap();
    let policy = policy_dir.path().join("test.policy");
    std::fs::write(&policy, text).unwrap();
    let relays = start_relays(3, |i, c| {
        if i == 2 {
            c.exit_policy_file = Some(policy.clone());
            c.exit_policy_reject_private = false;
        }
    })
    .await;
    let client = start_client(&relays.handles).await;
    let descriptors = fetch_all(&client, &relays.handles).await;
    (relays, descriptors, client, policy_dir)
}

async fn build(client: &shallot_p2p::Node, d: &[SignedDescriptor]) -> CircuitHandle {
    let c = build_circuit(client, vec![hop_of(&d[0])])
        .await
        .expect("guard answers CREATED");
    step("EXTEND to the middle", c.extend(hop_of(&d[1])))
        .await
        .expect("middle reached");
    step("EXTEND to the exit", c.extend(hop_of(&d[2])))
        .await
        .expect("exit reached");
    assert_eq!(c.hops(), 3);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hop_circuit_carries_mebibytes_byte_exact() {
    let echo = echo_server().await;
    let (relays, descriptors, client, _policy) = three_relays(1).await;
    // The descriptors are the relays' own: the exit is flagged and the others are not.
    assert!(!descriptors[0].descriptor().flags.is_exit());
    assert!(descriptors[2].descriptor().flags.is_exit());
    assert_eq!(
        descriptors[2].descriptor().onion_key,
        relays.handles[2].onion_key()
    );

    let circuit = build(&client, &descriptors).await;

    // Upload and echo: 3 MiB out, the same 3 MiB back, concurrently.
    let mut stream = step(
        "BEGIN to the echo server",
        circuit.connect(Host::V4(Ipv4Addr::LOCALHOST), echo.port),
    )
    .await
    .expect("CONNECTED");
    let data = pattern(3 << 20, 1);
    let back = step(
        "3 MiB through the echo server",
        exchange(&mut stream, &data),
    )
    .await;
    assert_eq!(back.len(), data.len());
    assert!(back == data, "echoed bytes differ");
    drop(stream);

    // Download: 2 MiB from a server that then closes; the stream ends after the last byte.
    let source = source_server(2 << 20).await;
    let mut stream = step(
        "BEGIN to localhost by name",
        circuit.connect(Host::Name("localhost".into()), source.port),
    )
    .await
    .expect("CONNECTED");
    let got = step("2 MiB download", read_n(&mut stream, (2 << 20) + 1)).await;
    assert_eq!(
        got.len(),
        2 << 20,
        "the stream ends after the server's bytes"
    );
    assert!(got == pattern(2 << 20, 7), "downloaded bytes differ");

    // Every relay carried the circuit: one each, and only the exit connected out.
    for r in &relays.handles {
        assert_eq!(r.stats().circuits_accepted.get(), 1);
        assert_eq!(r.open_circuits(), 1);
    }
    assert_eq!(relays.handles[2].stats().exit_connects.get(), 2);
    assert_eq!(relays.handles[0].stats().exit_connects.get(), 0);

    // Tearing down from the client frees the circuit at every hop.
    step("DESTROY", circuit.close()).await;
    step("every relay frees the circuit", async {
        while relays.handles.iter().any(|r| r.open_circuits() > 0) {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_answers_each_failure_with_its_end_reason() {
    let echo = echo_server().await;
    let denied = echo.port;
    let (_relays, descriptors, client, _policy) = three_relays(denied).await;
    let circuit = build(&client, &descriptors).await;
    let lo = Host::V4(Ipv4Addr::LOCALHOST);

    // The policy refuses this port although a server listens there.
    let r = step(
        "BEGIN to a denied port",
        circuit.connect(lo.clone(), denied),
    )
    .await
    .err();
    assert_eq!(r, Some(StreamFailure::End(EndReason::ExitPolicy)));

    // The policy is checked on the resolved address: localhost resolves to 127.0.0.1 (denied
    // port) and ::1 (no rule accepts it).
    let r = step(
        "BEGIN to localhost:denied",
        circuit.connect(Host::Name("localhost".into()), denied),
    )
    .await
    .err();
    assert_eq!(r, Some(StreamFailure::End(EndReason::ExitPolicy)));

    // An address the policy does not accept at all.
    let r = step(
        "BEGIN outside the policy",
        circuit.connect(Host::V4(Ipv4Addr::new(127, 0, 0, 2)), 80),
    )
    .await
    .err();
    assert_eq!(r, Some(StreamFailure::End(EndReason::ExitPolicy)));

    let port = closed_port().await;
    let r = step("BEGIN to a closed port", circuit.connect(lo.clone(), port))
        .await
        .err();
    assert_eq!(r, Some(StreamFailure::End(EndReason::ConnectRefused)));

    // No upstreams configured: names other than localhost fail cleanly.
    let r = step(
        "BEGIN to an unresolvable name",
        circuit.connect(Host::Name("unresolvable.invalid".into()), 80),
    )
    .await
    .err();
    assert_eq!(r, Some(StreamFailure::End(EndReason::ResolveFailed)));
    // The exit answers RESOLVED with an error only, which the driver reports as a failure.
    let answers = step(
        "RESOLVE of an unresolvable name",
        circuit.resolve(Host::Name("unresolvable.invalid".into())),
    )
    .await;
    assert_eq!(answers, Err(StreamFailure::ResolveFailed));
    let answers = step(
        "RESOLVE localhost",
        circuit.resolve(Host::Name("localhost".into())),
    )
    .await
    .unwrap();
    assert!(answers.contains(&ResolvedAnswer::V4(Ipv4Addr::LOCALHOST, 60)));

    // After all these refusals the circuit still carries a stream.
    let source = source_server(100_000).await;
    let mut s = step("BEGIN after refusals", circuit.connect(lo, source.port))
        .await
        .unwrap();
    let got = step("read", read_n(&mut s, 100_001)).await;
    assert!(got == pattern(100_000, 7));
    assert!(circuit.destroyed().is_none());
}

/// The TCP socket address of a relay's first listen address.
fn listen_socket(r: &shallot_relay::RelayHandle) -> std::net::SocketAddr {
    shallot_directory::socket_of(&r.listen_addrs()[0]).expect("an IP listen address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exit_refuses_streams_to_the_relays_it_knows() {
    // specs/06 §6: no circuit inside a circuit. The policy accepts everything and the
    // reject-private prelude is off, so only the relay-address rule refuses.
    let (relays, descriptors, client, _policy) = three_relays_with_policy("accept *:*\n").await;
    let circuit = build(&client, &descriptors).await;
    for (who, relay) in [
        ("the guard", &relays.handles[0]),
        ("the exit", &relays.handles[2]),
    ] {
        let at = listen_socket(relay);
        let r = step(
            "BEGIN to a relay's listen address",
            circuit.connect(Host::V4(ip4(at.ip())), at.port()),
        )
        .await
        .err();
        assert_eq!(
            r,
            Some(StreamFailure::End(EndReason::ExitPolicy)),
            "a stream to {who}'s listen address {at}"
        );
    }
    // Another port of a relay's address is not a relay.
    let guard_ip = listen_socket(&relays.handles[0]).ip();
    let other = tokio::net::TcpListener::bind((guard_ip, 0)).await.unwrap();
    let port = other.local_addr().unwrap().port();
    let accept = tokio::spawn(async move { other.accept().await.map(|_| ()) });
    step(
        "BEGIN to another port of the guard's address",
        circuit.connect(Host::V4(ip4(guard_ip)), port),
    )
    .await
    .expect("CONNECTED");
    step("the server sees the connection", accept)
        .await
        .unwrap()
        .unwrap();
}

fn ip4(ip: std::net::IpAddr) -> Ipv4Addr {
    match ip {
        std::net::IpAddr::V4(a) => a,
        std::net::IpAddr::V6(a) => panic!("{a} is not IPv4"),
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn refused() -> Result<(), BuildFailure> {
    Err(BuildFailure::ExtendRefused {
        hop: 2,
        reason: DestroyReason::ConnectFailed,
    })
}

/// EXTEND failures answer TRUNCATED and keep the circuit (specs/03 §4.6): a PeerId no relay
/// published, the previous hop, a client connected to the relay, a relay at an address its
/// descriptor does not sign, are refused without a dial; a known relay that went down fails
/// its dial. Then a real EXTEND still succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_extends_answer_truncated_and_keep_the_circuit() {
    let mut relays = start_relays(3, |_, _| {}).await;
    let gone = relays.handles.pop().unwrap();
    let (guard, middle) = (&relays.handles[0], &relays.handles[1]);
    let (client, circuit) = one_hop_circuit(guard).await;

    // A PeerId no relay published, at a port where nothing listens.
    let nobody = libp2p::identity::Keypair::generate_ed25519();
    let port = closed_port().await;
    let closed: shallot_p2p::Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
    let ghost = shallot_proto::HopSpec {
        peer_id: nobody.public().to_peer_id().to_bytes(),
        addrs: vec![closed.to_vec()],
        onion_key: middle.onion_key(),
    };
    let r = step("EXTEND to nobody", circuit.extend(ghost)).await;
    assert_eq!(r, refused());
    // Back to the client itself.
    let mut back = common::hop_of_relay(guard);
    back.peer_id = client.peer_id().to_bytes();
    let r = step("EXTEND back to the client", circuit.extend(back)).await;
    assert_eq!(r, refused());
    // Another client, connected to the guard: the probe that would tell an adversary which
    // relay is that client's guard.
    let (victim, _victim_circuit) = one_hop_circuit(guard).await;
    let mut to_victim = common::hop_of_relay(guard);
    to_victim.peer_id = victim.peer_id().to_bytes();
    to_victim.addrs = Vec::new();
    let r = step("EXTEND to a connected client", circuit.extend(to_victim)).await;
    assert_eq!(r, refused());
    // The middle, but at an address its descriptor does not sign.
    let mut elsewhere = common::hop_of_relay(middle);
    elsewhere.addrs = vec![closed.to_vec()];
    let r = step("EXTEND to an unsigned address", circuit.extend(elsewhere)).await;
    assert_eq!(r, refused());
    assert_eq!(guard.stats().extends_refused.get(), 3);
    assert_eq!(guard.stats().extends.get(), 0, "no dial was attempted");

    // A relay the guard knows, that went down: the dial fails.
    let gone_hop = common::hop_of_relay(&gone);
    gone.shutdown().await;
    let r = step("EXTEND to a relay that went down", circuit.extend(gone_hop)).await;
    assert_eq!(r, refused());
    assert_eq!(guard.stats().extends_failed.get(), 1);
    assert_eq!(circuit.hops(), 1);

    step(
        "EXTEND to the middle",
        circuit.extend(common::hop_of_relay(middle)),
    )
    .await
    .unwrap();
    assert_eq!(circuit.hops(), 2);
    // A non-exit answers BEGIN with END(EXITPOLICY).
    let r = step(
        "BEGIN at a non-exit",
        circuit.connect(Host::V4(Ipv4Addr::LOCALHOST), 80),
    )
    .await
    .err();
    assert_eq!(r, Some(StreamFailure::End(EndReason::ExitPolicy)));
}

/// A next hop that takes the stream and the CREATE but never answers: after the relay's extend
/// timeout the EXTEND is answered TRUNCATED(TIMEOUT) (specs/03 §4.8) and the circuit stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_hop_that_never_answers_create_gives_truncated_timeout() {
    let relays = start_relays(1, |_, config| config.extend_timeout_secs = 1).await;
    let guard = &relays.handles[0];
    let (_client, circuit) = one_hop_circuit(guard).await;

    let silent_key = libp2p::identity::Keypair::generate_ed25519();
    let silent = shallot_p2p::Node::start(
        silent_key.clone(),
        shallot_p2p::NodeConfig::new(
            shallot_p2p::Role::Client,
            vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            Vec::new(),
        ),
    )
    .await
    .expect("start the silent node");
    let mut incoming = silent
        .stream_control()
        .accept(shallot_p2p::CIRCUIT_PROTOCOL)
        .expect("accept circuit streams");
    // Holds every stream open, unread and unanswered, until the test ends.
    let held = tokio::spawn(async move {
        use futures::StreamExt as _;
        let mut streams = Vec::new();
        while let Some((_, stream)) = incoming.next().await {
            streams.push(stream);
        }
    });
    // The guard extends only to relays it knows: it hears of the silent node's descriptor.
    let silent_descriptor =
        common::descriptor_for(&silent_key, silent.listen_addrs(), guard.onion_key());
    guard
        .directory()
        .offer(silent_descriptor.as_bytes(), now_secs());
    let spec = common::hop_of(&silent_descriptor);
    let r = step("EXTEND to a silent node", circuit.extend(spec)).await;
    assert_eq!(
        r,
        Err(BuildFailure::ExtendRefused {
            hop: 2,
            reason: DestroyReason::Timeout
        })
    );
    assert_eq!(circuit.hops(), 1);
    assert!(circuit.destroyed().is_none());
    held.abort();
}

/// A next relay whose address takes the TCP connection and then says nothing, so the link is
/// never up: the extension's deadline, kept by the state machine and not by the relay's IO
/// code, answers TRUNCATED(TIMEOUT) and the circuit stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extend_whose_link_never_comes_up_times_out() {
    let relays = start_relays(1, |_, config| config.extend_timeout_secs = 1).await;
    let guard = &relays.handles[0];
    let (_client, circuit) = one_hop_circuit(guard).await;
    let tarpit = common::tarpit_server().await;
    let nobody = libp2p::identity::Keypair::generate_ed25519();
    let tarpit_addr: shallot_p2p::Multiaddr = format!("/ip4/127.0.0.1/tcp/{}", tarpit.port)
        .parse()
        .unwrap();
    // Known to the guard (its probe of the tarpit never completes either).
    let descriptor = common::descriptor_for(&nobody, &[tarpit_addr], guard.onion_key());
    guard.directory().offer(descriptor.as_bytes(), now_secs());
    let spec = common::hop_of(&descriptor);
    let started = std::time::Instant::now();
    let r = step("EXTEND to a silent address", circuit.extend(spec)).await;
    assert_eq!(
        r,
        Err(BuildFailure::ExtendRefused {
            hop: 2,
            reason: DestroyReason::Timeout
        }),
        "after {:?}; extends refused before dialing: {}, probes failed: {}, still in the guard's directory: {}",
        started.elapsed(),
        guard.stats().extends_refused.get(),
        guard
            .node_stats()
            .probes_failed
            .load(std::sync::atomic::Ordering::Relaxed),
        guard
            .directory()
            .get(&nobody.public().to_peer_id())
            .is_some(),
    );
    assert_eq!(guard.stats().extends_failed.get(), 1);
    assert_eq!(circuit.hops(), 1);
    assert!(circuit.destroyed().is_none());
}

/// A client that knows `guard` directly, and a one-hop circuit to it.
async fn one_hop_circuit(guard: &shallot_relay::RelayHandle) -> (shallot_p2p::Node, CircuitHandle) {
    let client = common::direct_client(&[guard]).await;
    let circuit = build_circuit(&client, vec![common::hop_of_relay(guard)])
        .await
        .unwrap();
    (client, circuit)
}
