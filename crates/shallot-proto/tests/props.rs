//! Property tests over the harness: ordering, isolation of slow readers, teardown on tampering.
#![allow(clippy::unwrap_used, missing_docs)]

use shallot_error::HasKind;
use std::time::Duration;

use proptest::prelude::*;
use shallot_proto::harness::{Dir, Harness, HarnessConfig, Target, pattern_byte};
use shallot_proto::{ClientEvent, STREAM_WINDOW_INITIAL};

fn harness(relays: usize, latency_ms: u64) -> Harness {
    let mut h = Harness::new(HarnessConfig {
        relays,
        latency: Duration::from_millis(latency_ms),
        ..HarnessConfig::default()
    })
    .unwrap();
    assert!(h.build(relays));
    h
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Any interleaving of writes on N streams delivers every byte, in order, on each stream.
    #[test]
    fn interleaved_streams_deliver_in_order(
        relays in 1usize..=3,
        latency in 0u64..4,
        n in 1usize..6,
        ops in proptest::collection::vec((0usize..6, 1usize..4000, 0usize..5), 1..30),
        read_chunk in prop_oneof![Just(0usize), 1usize..3000],
    ) {
        let mut h = harness(relays, latency);
        h.app.read_chunk = read_chunk;
        let ids: Vec<_> = (0..n).map(|_| h.open("echo.test", 7).unwrap()).collect();
        let mut sent: Vec<Vec<u8>> = vec![Vec::new(); n];
        for (k, (s, len, steps)) in ops.into_iter().enumerate() {
            let s = s % n;
            let data: Vec<u8> = (0..len).map(|i| (i + k * 13 + s) as u8).collect();
            h.send(ids[s], &data);
            sent[s].extend_from_slice(&data);
            for _ in 0..steps {
                h.step();
            }
        }
        h.run_idle(200_000);
        for (i, id) in ids.iter().enumerate() {
            prop_assert_eq!(h.received(*id), &sent[i][..], "stream {}", i);
        }
        prop_assert!(!h.client.is_closed());
    }

    /// A stream whose reader stops does not stall the other streams of the circuit.
    #[test]
    fn a_stopped_reader_does_not_stall_the_others(
        relays in 1usize..=3,
        others in 1usize..4,
        paused_at in 0usize..3,
        len in 10_000usize..150_000,
    ) {
        let mut h = harness(relays, 1);
        h.internet.add("big.test", Target::Source(4 * STREAM_WINDOW_INITIAL as usize));
        h.internet.add("src.test", Target::Source(len));
        let slow = h.open("big.test", 80).unwrap();
        for _ in 0..paused_at {
            h.step();
        }
        h.set_paused(slow, true);
        let fast: Vec<_> = (0..others).map(|_| h.open("src.test", 80).unwrap()).collect();
        h.run_idle(500_000);
        for s in &fast {
            let got = h.received(*s);
            prop_assert_eq!(got.len(), len);
            prop_assert!(got.iter().enumerate().all(|(i, b)| *b == pattern_byte(s.0, i)));
            prop_assert!(h.app.eof.contains(&s.0));
        }
        // The slow stream holds at most one window, unread, and is still alive.
        let held = h.client.readable_bytes(slow) + h.received(slow).len();
        prop_assert!(held <= STREAM_WINDOW_INITIAL as usize * 2);
        prop_assert!(h.client.readable_bytes(slow) <= STREAM_WINDOW_INITIAL as usize);
        prop_assert!(!h.app.eof.contains(&slow.0));
        h.set_paused(slow, false);
        h.run_idle(500_000);
        prop_assert_eq!(h.received(slow).len(), 4 * STREAM_WINDOW_INITIAL as usize);
    }

    /// Flipping one bit of any RELAY cell on any link, in either direction, in the middle of a
    /// transfer tears the whole circuit down: the client reports Destroyed, every relay closes,
    /// every link carries a DESTROY, and the exit closes its streams.
    #[test]
    fn any_tampering_tears_the_circuit_down_both_ways(
        relays in 1usize..=4,
        link_pick in 0usize..4,
        backward in any::<bool>(),
        skip in 0usize..20,
        byte in any::<usize>(),
    ) {
        let mut h = harness(relays, 1);
        let link = link_pick % relays;
        let s = h.open("echo.test", 7).unwrap();
        let t = h.open("sink.test", 9).unwrap();
        h.send(s, &vec![9u8; 200_000]);
        h.send(t, &vec![8u8; 100_000]);
        prop_assert!(h.run_until(10_000, |h| h.internet.open_connections() == 2));
        let dir = if backward { Dir::Backward } else { Dir::Forward };
        h.corrupt(link, dir, skip, byte);
        h.run_idle(500_000);
        prop_assert!(h.client.is_closed());
        let destroyed = h.events.iter().any(|e| matches!(e, ClientEvent::Destroyed { .. }));
        prop_assert!(destroyed);
        prop_assert!(h.all_relays_closed());
        for l in 0..relays {
            prop_assert!(
                h.destroys_seen(l, Dir::Forward) + h.destroys_seen(l, Dir::Backward) >= 1,
                "no DESTROY on link {}", l
            );
        }
        if !backward {
            // The relay behind the tampered link detected it and sent DESTROY both ways.
            prop_assert!(h.relays[link].errors.iter().any(|e| e.kind() == shallot_error::ErrorKind::Authentication));
            prop_assert_eq!(h.destroys_seen(link, Dir::Backward), 1);
            if link + 1 < relays {
                prop_assert_eq!(h.destroys_seen(link + 1, Dir::Forward), 1);
            }
        } else {
            prop_assert!(h.client_errors.iter().any(|e| e.kind() == shallot_error::ErrorKind::Authentication));
        }
        prop_assert_eq!(h.internet.open_connections(), 0);
        prop_assert!(h.internet.closed.contains(&s) && h.internet.closed.contains(&t));
    }
}
