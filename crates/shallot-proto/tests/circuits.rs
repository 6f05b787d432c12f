//! Circuit building, extending, timeouts and teardown through the harness.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use shallot_cell::{DestroyReason, EndReason, LinkCell, link_cell_len};
use shallot_error::{ErrorKind, HasKind};
use shallot_proto::harness::{Dir, Harness, HarnessConfig, Target};
use shallot_proto::{ClientConfig, ClientEvent, ProtoError, RelayCircuit};

fn build(hops: usize) -> Harness {
    let mut h = Harness::with_relays(hops).unwrap();
    assert!(h.build(hops), "build failed: {:?}", h.events);
    h
}

fn echo_roundtrip(h: &mut Harness, len: usize) {
    let s = h.open("echo.test", 7).unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
    h.send(s, &data);
    assert!(h.run_until(100_000, |h| h.received(s).len() >= len));
    assert_eq!(h.received(s), &data[..]);
}

#[test]
fn builds_one_hop_and_carries_a_stream() {
    let mut h = build(1);
    echo_roundtrip(&mut h, 10_000);
}

#[test]
fn builds_two_hops() {
    let mut h = build(2);
    echo_roundtrip(&mut h, 10_000);
}

#[test]
fn builds_three_hops() {
    let mut h = build(3);
    echo_roundtrip(&mut h, 300_000);
}

#[test]
fn builds_four_hops() {
    let mut h = build(4);
    echo_roundtrip(&mut h, 10_000);
}

#[test]
fn builds_five_hops_with_cells_shrinking_per_link() {
    let mut h = build(5);
    for (i, r) in h.relays.iter().enumerate() {
        let c = r.circuit.as_ref().unwrap();
        assert_eq!(c.link_index(), i);
        assert_eq!(c.cell_len(), link_cell_len(i).unwrap());
    }
    echo_roundtrip(&mut h, 50_000);
}

#[test]
fn hop_added_events_count_up() {
    let h = build(4);
    let hops: Vec<usize> = h
        .events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::HopAdded(n) => Some(*n),
            _ => None,
        })
        .collect();
    assert_eq!(hops, vec![1, 2, 3, 4]);
}

#[test]
fn create_times_out() {
    let mut h = Harness::new(HarnessConfig {
        relays: 1,
        latency: Duration::from_secs(10),
        client: ClientConfig {
            build_timeout: Duration::from_secs(1),
            ..ClientConfig::default()
        },
        ..HarnessConfig::default()
    })
    .unwrap();
    assert!(!h.build(1));
    assert!(h.client.is_closed());
    assert!(matches!(
        h.client.close_error(),
        Some(ProtoError::BuildTimeout)
    ));
    assert_eq!(h.client.close_error().unwrap().kind(), ErrorKind::Timeout);
    assert!(h.events.contains(&ClientEvent::Destroyed {
        reason: DestroyReason::Timeout
    }));
    // The DESTROY reaches the relay, which then holds no circuit open.
    h.run_idle(10_000);
    assert!(h.destroys_seen(0, Dir::Forward) >= 1);
    assert!(h.all_relays_closed());
}

#[test]
fn extend_times_out() {
    let mut h = Harness::with_relays(2).unwrap();
    assert!(h.build(1));
    let spec = h.hop_spec(1).unwrap();
    h.client.extend(&spec, h.now).unwrap();
    let deadline = h.client.poll_timeout().unwrap();
    h.advance(deadline - h.now);
    h.step();
    assert!(h.client.is_closed());
    assert!(matches!(
        h.client.close_error(),
        Some(ProtoError::BuildTimeout)
    ));
}

#[test]
fn no_timeout_once_built() {
    let mut h = build(2);
    assert_eq!(h.client.poll_timeout(), None);
    h.advance(Duration::from_secs(3600));
    h.step();
    assert!(!h.client.is_closed());
}

#[test]
fn extend_failure_gives_truncated_and_the_circuit_survives() {
    let mut h = Harness::with_relays(2).unwrap();
    h.relays[1].reachable = false;
    assert!(!h.build(2));
    assert!(h.events.contains(&ClientEvent::ExtendFailed {
        reason: DestroyReason::ConnectFailed
    }));
    assert_eq!(h.client.hops(), 1);
    assert!(!h.client.is_closed());
    // Retry once the relay is reachable.
    h.relays[1].reachable = true;
    let spec = h.hop_spec(1).unwrap();
    h.client.extend(&spec, h.now).unwrap();
    assert!(h.run_until(10_000, |h| h.client.hops() == 2));
    echo_roundtrip(&mut h, 5_000);
}

/// A 2-hop circuit whose last hop is not an exit.
fn built_without_exit() -> Harness {
    let mut h = Harness::new(HarnessConfig {
        relays: 2,
        exit: false,
        ..HarnessConfig::default()
    })
    .unwrap();
    assert!(h.build(2));
    h
}

#[test]
fn begin_to_a_non_exit_gets_end_exitpolicy() {
    let mut h = built_without_exit();
    let s = h.open("echo.test", 80).unwrap();
    h.run_idle(10_000);
    assert_eq!(h.app.ended.get(&s.0), Some(&EndReason::ExitPolicy));
    assert!(h.internet.connects.is_empty());
    assert!(!h.client.is_closed());
}

#[test]
fn connect_refused_gives_end_connectrefused() {
    let mut h = build(3);
    let s = h.open("refuse.test", 80).unwrap();
    let t = h.open("nowhere.test", 80).unwrap();
    h.run_idle(10_000);
    assert_eq!(h.app.ended.get(&s.0), Some(&EndReason::ConnectRefused));
    assert_eq!(h.app.ended.get(&t.0), Some(&EndReason::ConnectRefused));
    assert!(h.app.eof.contains(&s.0));
    assert_eq!(h.client.stream_count(), 0);
    assert!(!h.client.is_closed());
}

#[test]
fn resolve_answers() {
    let mut h = build(3);
    let s = h
        .client
        .resolve(shallot_cell::Host::Name("echo.test".into()))
        .unwrap();
    let t = h
        .client
        .resolve(shallot_cell::Host::Name("unknown.test".into()))
        .unwrap();
    h.run_idle(10_000);
    let answers: Vec<_> = h
        .events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Resolved { stream, answers } => Some((*stream, answers.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0].0, s);
    assert!(!answers[0].1[0].is_error());
    assert_eq!(answers[1].0, t);
    assert!(answers[1].1[0].is_error());
    assert_eq!(h.client.stream_count(), 0);
}

#[test]
fn source_stream_ends_after_all_bytes() {
    let mut h = build(3);
    h.internet.add("src.test", Target::Source(200_000));
    let s = h.open("src.test", 80).unwrap();
    h.run_idle(100_000);
    let got = h.received(s);
    assert_eq!(got.len(), 200_000);
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, b)| *b == shallot_proto::harness::pattern_byte(s.0, i))
    );
    assert_eq!(h.app.ended.get(&s.0), Some(&EndReason::Done));
    assert!(h.app.eof.contains(&s.0));
}

#[test]
fn client_destroy_propagates_to_every_relay_and_closes_exit_streams() {
    let mut h = build(4);
    let s = h.open("sink.test", 80).unwrap();
    h.send(s, &[1u8; 1000]);
    h.run_idle(10_000);
    assert_eq!(h.internet.open_connections(), 1);
    h.client.destroy(DestroyReason::Finished);
    h.run_idle(10_000);
    for link in 0..4 {
        assert_eq!(h.destroys_seen(link, Dir::Forward), 1, "link {link}");
        assert_eq!(h.destroys_seen(link, Dir::Backward), 0, "link {link}");
    }
    assert!(h.all_relays_closed());
    assert_eq!(h.internet.open_connections(), 0);
    assert_eq!(h.internet.closed, vec![s]);
}

#[test]
fn relay_destroy_propagates_both_ways() {
    let mut h = build(4);
    h.relays[2]
        .circuit
        .as_mut()
        .unwrap()
        .destroy(DestroyReason::Hibernating);
    h.run_idle(10_000);
    assert!(h.events.contains(&ClientEvent::Destroyed {
        reason: DestroyReason::Destroyed
    }));
    assert!(h.all_relays_closed());
    // Backward over links 2, 1, 0; forward over link 3.
    for link in 0..3 {
        assert_eq!(h.destroys_seen(link, Dir::Backward), 1);
    }
    assert_eq!(h.destroys_seen(3, Dir::Forward), 1);
}

#[test]
fn nothing_is_emitted_after_destroy() {
    let mut h = build(2);
    h.client.destroy(DestroyReason::Requested);
    let destroy = h.client.poll_transmit().unwrap();
    assert_eq!(
        LinkCell::decode(&destroy).unwrap(),
        LinkCell::Destroy(DestroyReason::Requested)
    );
    assert_eq!(h.client.poll_transmit(), None);
    // Further input is ignored.
    assert!(h.client.handle_cell(vec![7u8; 3], h.now).is_ok());
    assert!(
        h.client
            .open_stream(shallot_cell::Host::Name("x.test".into()), 1)
            .is_err()
    );
    assert_eq!(h.client.poll_transmit(), None);
    let r = h.relays[0].circuit.as_mut().unwrap();
    r.destroy(DestroyReason::Requested);
    while r.poll_transmit_prev().is_some() {}
    while r.poll_transmit_next().is_some() {}
    assert!(r.handle_prev_cell(vec![0u8; 5], h.now).is_ok());
    assert!(r.handle_next_cell(vec![0u8; 5], h.now).is_ok());
    assert_eq!(r.poll_transmit_prev(), None);
    assert_eq!(r.poll_transmit_next(), None);
}

#[test]
fn previous_link_closing_destroys_toward_the_next_hop() {
    let mut h = build(3);
    let now = h.now;
    h.relays[1]
        .circuit
        .as_mut()
        .unwrap()
        .handle_prev_closed(now);
    h.run_idle(10_000);
    assert!(h.relays[1].circuit.as_ref().unwrap().is_closed());
    assert!(h.relays[2].circuit.as_ref().unwrap().is_closed());
    assert_eq!(h.destroys_seen(2, Dir::Forward), 1);
}

#[test]
fn bad_preamble_and_bad_create_are_refused() {
    let h = build(1);
    let keys = &h.relays[0].keys;
    let cfg = shallot_proto::RelayConfig::default();
    let create = vec![0u8; shallot_cell::LINK_CELL_LEN];
    assert!(RelayCircuit::accept(&[2, 0, 4, 0], &create, b"r", keys, cfg.clone(), h.now).is_err());
    assert!(RelayCircuit::accept(&[1, 0, 4, 1], &create, b"r", keys, cfg.clone(), h.now).is_err());
    // A CREATE for an onion key the relay does not have.
    let c = LinkCell::Create {
        onion_key_id: shallot_cell::OnionKeyId([9; 8]),
        handshake: vec![0; 48],
    }
    .encode(shallot_cell::LINK_CELL_LEN)
    .unwrap();
    let e = RelayCircuit::accept(
        &shallot_proto::ClientCircuit::preamble(),
        &c,
        b"r",
        keys,
        cfg,
        h.now,
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Authentication);
}

#[test]
fn drop_to_any_hop_is_ignored() {
    let mut h = build(3);
    for hop in 0..3 {
        h.client.send_drop(hop).unwrap();
    }
    assert!(h.client.send_drop(3).is_err());
    h.run_idle(10_000);
    assert!(!h.client.is_closed());
    assert!(h.relays.iter().all(|r| r.errors.is_empty()));
    echo_roundtrip(&mut h, 1000);
}

#[test]
fn closing_a_stream_closes_it_at_the_exit() {
    let mut h = build(2);
    let s = h.open("sink.test", 80).unwrap();
    h.run_idle(10_000);
    assert_eq!(h.internet.open_connections(), 1);
    h.client.close_stream(s).unwrap();
    h.run_idle(10_000);
    assert_eq!(h.internet.open_connections(), 0);
    assert_eq!(h.internet.closed, vec![s]);
    assert!(!h.client.is_closed());
}

#[test]
fn runs_are_deterministic() {
    fn run() -> (Vec<String>, usize) {
        let mut h = build(3);
        let a = h.open("echo.test", 1).unwrap();
        let b = h.open("refuse.test", 1).unwrap();
        h.send(a, &[5u8; 70_000]);
        h.run_idle(100_000);
        let _ = b;
        let ev = h.events.iter().map(|e| format!("{e:?}")).collect();
        (ev, h.received(a).len())
    }
    assert_eq!(run(), run());
}

#[test]
fn extend_to_itself_is_refused_with_truncated() {
    let mut h = build(1);
    let spec = h.hop_spec(0).unwrap();
    h.client.extend(&spec, h.now).unwrap();
    h.run_idle(10_000);
    assert!(h.events.contains(&ClientEvent::ExtendFailed {
        reason: DestroyReason::ConnectFailed
    }));
    assert!(!h.client.is_closed());
}

#[test]
fn refused_create_gets_destroy_protocol() {
    let pre = shallot_proto::ClientCircuit::preamble();
    let cell = RelayCircuit::refusal(&pre).unwrap();
    assert_eq!(cell.len(), link_cell_len(0).unwrap());
    assert_eq!(
        LinkCell::decode(&cell).unwrap(),
        LinkCell::Destroy(DestroyReason::Protocol)
    );
    assert_eq!(RelayCircuit::refusal(&[9, 9, 9, 9]), None);
}

#[test]
fn resolve_at_a_non_exit_gets_end_and_the_circuit_survives() {
    let mut h = built_without_exit();
    let s = h
        .client
        .resolve(shallot_cell::Host::Name("echo.test".into()))
        .unwrap();
    h.run_idle(10_000);
    assert!(
        h.events.contains(&ClientEvent::StreamEnded {
            stream: s,
            reason: EndReason::ExitPolicy
        }),
        "{:?}",
        h.events
    );
    assert_eq!(h.client.stream_count(), 0);
    assert!(!h.client.is_closed());
}

fn idle_harness() -> Harness {
    let mut h = Harness::new(HarnessConfig {
        relay_idle_timeout: Some(Duration::from_secs(600)),
        client: ClientConfig {
            keepalive_interval: Some(Duration::from_secs(120)),
            ..ClientConfig::default()
        },
        ..HarnessConfig::default()
    })
    .unwrap();
    assert!(h.build(3), "build failed: {:?}", h.events);
    h
}

/// specs/03 §4.11: a circuit that carries nothing for the relays' idle timeout is destroyed
/// with FINISHED at every hop, and the client hears of it.
#[test]
fn an_idle_circuit_is_destroyed_by_the_relays() {
    let mut h = idle_harness();
    // No stream: the client sends no keep-alive, and the relays' idle timers fire.
    h.run_idle(10_000);
    assert!(h.all_relays_closed());
    assert!(
        h.relays
            .iter()
            .all(|r| r.circuit.as_ref().is_none_or(|c| c.closed_idle()))
    );
    assert!(h.client.is_closed());
    assert!(h.events.contains(&ClientEvent::Destroyed {
        reason: DestroyReason::Finished
    }));
}

/// specs/03 §4.11: a circuit with an open stream that carries nothing is kept alive by the
/// client's DROPs, for many times the relays' idle timeout.
#[test]
fn a_silent_stream_keeps_its_circuit_alive() {
    let mut h = idle_harness();
    let s = h.open("echo.test", 7).unwrap();
    h.send(s, b"hello");
    assert!(h.run_until(100_000, |h| h.received(s).len() >= 5));
    let quiet_until = h.now + Duration::from_secs(6 * 600);
    // Nothing but timers from here: each step moves the clock to the next one.
    assert!(h.run_until(100_000, |h| h.now >= quiet_until));
    assert!(!h.client.is_closed(), "{:?}", h.events);
    assert!(!h.all_relays_closed());
    h.send(s, b"again");
    assert!(h.run_until(100_000, |h| h.received(s).len() >= 10));
}

/// The idle and keep-alive deadlines move only when they are reached: a deadline that moved
/// with every cell would make the IO layers re-arm a timer per cell.
#[test]
fn traffic_does_not_move_the_idle_and_keepalive_deadlines() {
    let mut h = idle_harness();
    let s = h.open("echo.test", 7).unwrap();
    h.send(s, b"first");
    assert!(h.run_until(100_000, |h| h.received(s).len() >= 5));
    let client_deadline = h.client.poll_timeout();
    let relay_deadlines: Vec<_> = h
        .relays
        .iter()
        .map(|r| r.circuit.as_ref().and_then(RelayCircuit::poll_timeout))
        .collect();
    assert!(client_deadline.is_some() && relay_deadlines.iter().all(Option::is_some));
    h.advance(Duration::from_secs(1));
    h.send(s, &[7u8; 20_000]);
    assert!(h.run_until(100_000, |h| h.received(s).len() >= 20_005));
    assert_eq!(h.client.poll_timeout(), client_deadline);
    let after: Vec<_> = h
        .relays
        .iter()
        .map(|r| r.circuit.as_ref().and_then(RelayCircuit::poll_timeout))
        .collect();
    assert_eq!(after, relay_deadlines);
}
