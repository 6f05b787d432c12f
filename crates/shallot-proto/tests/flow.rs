//! Credit windows, optimistic data, and every bound: pushing past it gives backpressure or a
//! clean teardown, never growth.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::{ManualClient, ManualRelay};
use shallot_cell::{Begin, EndReason, Host, RelayFrame, RelayMsg, StreamId};
use shallot_error::{ErrorKind, HasKind};
use shallot_proto::harness::{Harness, HarnessConfig, Target};
use shallot_proto::{
    CLIENT_QUEUE_CELLS, CONTROL_RESERVE_CELLS, ClientCircuit, ClientEvent,
    MAX_CIRCUIT_STREAM_BUFFER, MAX_PENDING_ACTIONS, MAX_STREAMS_PER_CIRCUIT, OPTIMISTIC_DATA_MAX,
    ProtoError, RELAY_QUEUE_CELLS, RelayAction, STREAM_WINDOW_INITIAL, STREAM_WINDOW_MAX,
    WINDOW_UPDATE_THRESHOLD,
};

const W: usize = STREAM_WINDOW_INITIAL as usize;

fn begin(id: u16) -> RelayFrame {
    RelayFrame {
        stream_id: StreamId(id),
        msg: RelayMsg::Begin(Begin {
            host: Host::Name("echo.test".into()),
            port: 7,
            flags: 0,
        }),
    }
}

fn data(id: u16, len: usize) -> RelayFrame {
    RelayFrame {
        stream_id: StreamId(id),
        msg: RelayMsg::Data(vec![0xAB; len]),
    }
}

/// The most DATA one cell carries to a one-hop circuit (specs/03 §2).
const CHUNK: usize = shallot_cell::max_data_len(shallot_cell::LINK_CELL_LEN);

#[test]
fn a_paused_reader_buffers_exactly_one_window_and_the_exit_gets_backpressure() {
    let mut h = Harness::with_relays(3).unwrap();
    assert!(h.build(3));
    h.internet.add("src.test", Target::Source(4 * W));
    let s = h.open("src.test", 80).unwrap();
    h.set_paused(s, true);
    h.run_idle(100_000);
    assert_eq!(h.client.readable_bytes(s), W);
    assert!(h.received(s).is_empty());
    // No credit was granted back: the exit stopped at one window.
    assert!(h.relays[2].errors.is_empty());
    h.set_paused(s, false);
    h.run_idle(100_000);
    assert_eq!(h.received(s).len(), 4 * W);
}

#[test]
fn window_updates_are_sent_only_after_consumption() {
    let mut m = ManualRelay::new();
    let s = m.connected_stream();
    for _ in 0..(W / CHUNK) {
        m.send(&data(s.0, CHUNK)).unwrap();
    }
    assert!(
        m.recv_all().is_empty(),
        "no update before the application reads"
    );
    let mut buf = vec![0u8; WINDOW_UPDATE_THRESHOLD as usize - 1];
    assert_eq!(m.client.read_stream(s, &mut buf).unwrap(), buf.len());
    assert!(m.recv_all().is_empty(), "no update below the threshold");
    let mut one = [0u8; 1];
    m.client.read_stream(s, &mut one).unwrap();
    let got = m.recv_all();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].as_ref().unwrap().msg,
        RelayMsg::WindowUpdate(WINDOW_UPDATE_THRESHOLD)
    );
}

/// A read that makes a WINDOW_UPDATE due while the send queue is full hands over its bytes and
/// sends the update once the queue drains: neither the bytes nor the credit are lost.
#[test]
fn a_read_with_a_full_send_queue_keeps_its_bytes_and_defers_the_update() {
    let mut m = ManualRelay::new();
    let s = m.connected_stream();
    let sent: Vec<u8> = (0..W).map(|i| (i % 251) as u8).collect();
    for piece in sent.chunks(CHUNK) {
        m.send(&RelayFrame {
            stream_id: s,
            msg: RelayMsg::Data(piece.to_vec()),
        })
        .unwrap();
    }
    // Fill the send queue, control reserve included, with BEGIN/END pairs nobody collects.
    let mut filled = false;
    for _ in 0..(CLIENT_QUEUE_CELLS + CONTROL_RESERVE_CELLS) {
        let extra = match m.client.open_stream(Host::Name("y.test".into()), 1) {
            Ok(extra) => extra,
            Err(ProtoError::WouldBlock) => {
                filled = true;
                break;
            }
            Err(e) => panic!("{e}"),
        };
        if let Err(e) = m.client.close_stream(extra) {
            assert!(matches!(e, ProtoError::WouldBlock), "{e}");
            filled = true;
            break;
        }
    }
    assert!(filled, "the send queue never filled");

    let mut got = vec![0u8; W];
    assert_eq!(m.client.read_stream(s, &mut got).unwrap(), W);
    assert_eq!(got, sent);
    assert_eq!(m.client.readable_bytes(s), 0);
    let updates: u64 = m
        .recv_all()
        .into_iter()
        .flatten()
        .filter(|f| f.stream_id == s)
        .map(|f| match f.msg {
            RelayMsg::WindowUpdate(inc) => u64::from(inc),
            _ => 0,
        })
        .sum();
    assert!(
        updates >= u64::from(WINDOW_UPDATE_THRESHOLD),
        "the deferred WINDOW_UPDATE never went out ({updates} bytes of credit)"
    );
}

#[test]
fn client_detects_credit_violation() {
    let mut m = ManualRelay::new();
    let s = m.connected_stream();
    let mut sent = 0;
    let err = loop {
        match m.send(&data(s.0, CHUNK)) {
            Ok(()) => sent += CHUNK,
            Err(e) => break e,
        }
    };
    assert!(sent <= W && sent + CHUNK > W);
    assert!(matches!(err, ProtoError::CreditViolation(_)));
    assert!(m.client.is_closed());
    assert!(m.client.readable_bytes(s) == 0);
    let out = m.recv_all();
    assert_eq!(out.last(), Some(&None), "DESTROY sent");
}

#[test]
fn client_rejects_window_overflow() {
    let mut m = ManualRelay::new();
    let s = m
        .client
        .open_stream(Host::Name("x.test".into()), 1)
        .unwrap();
    let e = m
        .send(&RelayFrame {
            stream_id: s,
            msg: RelayMsg::WindowUpdate(STREAM_WINDOW_MAX),
        })
        .unwrap_err();
    assert!(matches!(e, ProtoError::WindowOverflow(_)));
    assert_eq!(e.kind(), ErrorKind::Protocol);
}

#[test]
fn exit_detects_credit_violation() {
    let mut m = ManualClient::new(true);
    m.send(&begin(1)).unwrap();
    let Some(RelayAction::Connect { stream, .. }) = m.relay.poll_action() else {
        panic!()
    };
    m.relay
        .handle_exit_connected(stream, [192, 0, 2, 1].into(), 0, m.now)
        .unwrap();
    let mut sent = 0;
    let err = loop {
        match m.send(&data(1, CHUNK)) {
            Ok(()) => sent += CHUNK,
            Err(e) => break e,
        }
        while m.relay.poll_action().is_some() {}
        while m.relay.poll_transmit_prev().is_some() {}
    };
    assert!(sent <= W);
    assert!(matches!(err, ProtoError::CreditViolation(1)));
    assert!(m.relay.is_closed());
}

#[test]
fn exit_grants_credit_only_as_data_is_written() {
    let mut m = ManualClient::new(true);
    m.connected_exit_stream(1);
    let n = WINDOW_UPDATE_THRESHOLD as usize / CHUNK + 1;
    for _ in 0..n {
        m.send(&data(1, CHUNK)).unwrap();
    }
    while m.relay.poll_action().is_some() {}
    assert!(m.recv_all().is_empty());
    m.relay
        .handle_exit_written(StreamId(1), n * CHUNK, m.now)
        .unwrap();
    let got = m.recv_all();
    assert_eq!(
        got,
        vec![Some(RelayFrame {
            stream_id: StreamId(1),
            msg: RelayMsg::WindowUpdate((n * CHUNK) as u32)
        })]
    );
    // Reporting more than was handed out is a usage error, not a teardown.
    let e = m
        .relay
        .handle_exit_written(StreamId(1), 1, m.now)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadApiUsage);
    assert!(!m.relay.is_closed());
}

#[test]
fn exit_data_is_bounded_by_the_clients_credit() {
    let mut m = ManualClient::new(true);
    m.connected_exit_stream(1);
    let big = vec![1u8; 2 * W];
    let mut taken = 0;
    loop {
        let n = m.relay.handle_exit_data(StreamId(1), &big, m.now).unwrap();
        assert!(m.relay.queued_prev() <= RELAY_QUEUE_CELLS);
        if n == 0 {
            break;
        }
        taken += n;
        m.recv_all();
    }
    assert_eq!(taken, W);
    // Credit comes back: the exit is told it may write again.
    m.send(&RelayFrame {
        stream_id: StreamId(1),
        msg: RelayMsg::WindowUpdate(1000),
    })
    .unwrap();
    assert_eq!(
        m.relay.poll_action(),
        Some(RelayAction::ExitWritable {
            stream: StreamId(1)
        })
    );
    assert_eq!(
        m.relay.handle_exit_data(StreamId(1), &big, m.now).unwrap(),
        1000
    );
}

#[test]
fn optimistic_data_is_bounded_at_the_client() {
    let mut m = ManualRelay::new();
    let s = m
        .client
        .open_stream(Host::Name("x.test".into()), 1)
        .unwrap();
    let big = vec![3u8; 100_000];
    let mut total = 0;
    loop {
        let n = m.client.write_stream(s, &big).unwrap();
        if n == 0 {
            break;
        }
        total += n;
        m.recv_all();
    }
    assert_eq!(total, OPTIMISTIC_DATA_MAX);
    m.send(&RelayFrame {
        stream_id: s,
        msg: RelayMsg::Connected {
            addr: Host::V4([192, 0, 2, 1].into()),
            ttl: 0,
        },
    })
    .unwrap();
    assert!(
        m.client
            .poll_event()
            .is_some_and(|e| matches!(e, ClientEvent::HopAdded(1)))
    );
    assert!(matches!(
        m.client.poll_event(),
        Some(ClientEvent::StreamConnected { .. })
    ));
    assert_eq!(m.client.poll_event(), Some(ClientEvent::StreamWritable(s)));
    assert!(m.client.write_stream(s, &big).unwrap() > 0);
}

#[test]
fn optimistic_data_is_delivered_after_connect() {
    let mut h = Harness::new(HarnessConfig {
        relays: 3,
        latency: Duration::from_millis(20),
        ..HarnessConfig::default()
    })
    .unwrap();
    assert!(h.build(3));
    let s = h.open("echo.test", 7).unwrap();
    let data: Vec<u8> = (0..OPTIMISTIC_DATA_MAX).map(|i| i as u8).collect();
    assert_eq!(
        h.client.write_stream(s, &data).unwrap(),
        OPTIMISTIC_DATA_MAX
    );
    assert!(h.run_until(10_000, |h| h.received(s).len() == OPTIMISTIC_DATA_MAX));
    assert_eq!(h.received(s), &data[..]);
}

#[test]
fn exit_rejects_optimistic_data_past_the_bound() {
    let mut m = ManualClient::new(true);
    m.send(&begin(1)).unwrap();
    let mut sent = 0;
    let err = loop {
        match m.send(&data(1, CHUNK)) {
            Ok(()) => sent += CHUNK,
            Err(e) => break e,
        }
    };
    assert!(sent <= OPTIMISTIC_DATA_MAX && sent + CHUNK > OPTIMISTIC_DATA_MAX);
    assert!(matches!(err, ProtoError::OptimisticDataExceeded(1)));
    assert!(m.relay.is_closed());
    // The exit closes the half-open stream.
    let actions: Vec<_> = std::iter::from_fn(|| m.relay.poll_action()).collect();
    assert_eq!(
        actions,
        vec![RelayAction::CloseStream {
            stream: StreamId(1)
        }]
    );
}

#[test]
fn client_send_queue_is_bounded() {
    let mut m = ManualRelay::new();
    let s = m.connected_stream();
    m.recv_all();
    let big = vec![0u8; W];
    let n = m.client.write_stream(s, &big).unwrap();
    assert_eq!(m.client.queued_cells(), CLIENT_QUEUE_CELLS);
    assert_eq!(n, CLIENT_QUEUE_CELLS * ClientCircuit::max_data_len(0));
    assert_eq!(m.client.write_stream(s, &big).unwrap(), 0);
    // Draining the queue wakes the writer.
    m.recv_all();
    let evs: Vec<_> = std::iter::from_fn(|| m.client.poll_event()).collect();
    assert!(evs.contains(&ClientEvent::StreamWritable(s)));
}

#[test]
fn streams_per_circuit_are_bounded_at_the_client() {
    let mut h = Harness::with_relays(1).unwrap();
    assert!(h.build(1));
    for _ in 0..MAX_STREAMS_PER_CIRCUIT {
        h.client
            .open_stream(Host::Name("sink.test".into()), 1)
            .unwrap();
        while h.client.poll_transmit().is_some() {}
    }
    let e = h
        .client
        .open_stream(Host::Name("sink.test".into()), 1)
        .unwrap_err();
    assert!(matches!(e, ProtoError::TooManyStreams));
    assert!(!h.client.is_closed());
}

#[test]
fn streams_per_circuit_are_bounded_at_the_exit() {
    let mut m = ManualClient::new(true);
    for id in 1..=(MAX_STREAMS_PER_CIRCUIT as u16 + 1) {
        m.send(&begin(id)).unwrap();
    }
    assert_eq!(m.relay.stream_count(), MAX_STREAMS_PER_CIRCUIT);
    let last = m.recv_all();
    assert_eq!(
        last,
        vec![Some(RelayFrame {
            stream_id: StreamId(MAX_STREAMS_PER_CIRCUIT as u16 + 1),
            msg: RelayMsg::End(EndReason::ResourceLimit)
        })]
    );
}

#[test]
fn stream_id_reuse_is_rejected() {
    let mut m = ManualClient::new(true);
    m.send(&begin(5)).unwrap();
    let e = m.send(&begin(5)).unwrap_err();
    assert!(matches!(e, ProtoError::StreamIdReuse(5)));
    assert!(m.relay.is_closed());
    // An id the exit closed (half-closed, specs/03 §7.2) cannot be reopened either; a lower,
    // unused id can.
    let mut m = ManualClient::new(true);
    m.send(&begin(5)).unwrap();
    m.relay.poll_action();
    m.relay
        .handle_exit_connect_failed(StreamId(5), EndReason::ConnectRefused, m.now)
        .unwrap();
    m.send(&begin(3)).unwrap();
    assert!(matches!(
        m.send(&begin(5)),
        Err(ProtoError::StreamIdReuse(5))
    ));
    assert!(m.relay.is_closed());
}

#[test]
fn messages_for_unknown_streams_are_dropped_silently() {
    let mut m = ManualClient::new(true);
    m.send(&data(9, 10)).unwrap();
    m.send(&RelayFrame {
        stream_id: StreamId(9),
        msg: RelayMsg::End(EndReason::Done),
    })
    .unwrap();
    assert!(!m.relay.is_closed());
    assert!(m.recv_all().is_empty());
    assert_eq!(m.relay.poll_action(), None);
}

#[test]
fn relay_forward_queue_is_bounded() {
    let mut h = Harness::with_relays(2).unwrap();
    assert!(h.build(2));
    let s = h.open("sink.test", 1).unwrap();
    h.run_idle(10_000);
    let now = h.now;
    let mut pushed = 0;
    let err = loop {
        if h.client.queued_cells() == 0 {
            h.client.write_stream(s, &[0u8; 10_000]).unwrap();
        }
        let cell = h.client.poll_transmit().unwrap();
        let r = h.relays[0].circuit.as_mut().unwrap();
        let wanted = r.wants_prev_cell();
        match r.handle_prev_cell(cell, now) {
            Ok(()) => {
                assert!(wanted);
                pushed += 1;
            }
            Err(e) => {
                assert!(!wanted);
                break e;
            }
        }
        assert!(r.queued_next() <= RELAY_QUEUE_CELLS);
    };
    assert_eq!(pushed, RELAY_QUEUE_CELLS);
    assert!(matches!(err, ProtoError::QueueFull(_)));
    assert_eq!(err.kind(), ErrorKind::ResourceLimit);
    let r = h.relays[0].circuit.as_mut().unwrap();
    assert!(r.is_closed());
    // Exactly one DESTROY each way, nothing else.
    assert_eq!(r.queued_next(), 1);
    assert_eq!(r.queued_prev(), 1);
}

#[test]
fn relay_backward_queue_is_bounded() {
    let mut h = Harness::with_relays(2).unwrap();
    assert!(h.build(2));
    let s = h.open("sink.test", 1).unwrap();
    h.run_idle(10_000);
    // Take the exit's backward cells by hand and push them into relay 0 without draining it.
    let now = h.now;
    let mut pushed = 0;
    let err = loop {
        assert!(pushed < 10 * RELAY_QUEUE_CELLS, "no bound hit");
        let exit = h.relays[1].circuit.as_mut().unwrap();
        let cell = match exit.poll_transmit_prev() {
            Some(c) => c,
            None => {
                assert!(exit.handle_exit_data(s, &[7u8; 5000], now).unwrap() > 0);
                continue;
            }
        };
        let r = h.relays[0].circuit.as_mut().unwrap();
        match r.handle_next_cell(cell, now) {
            Ok(()) => pushed += 1,
            Err(e) => break e,
        }
        assert!(r.queued_prev() <= RELAY_QUEUE_CELLS);
    };
    assert!(pushed >= RELAY_QUEUE_CELLS - h.relays[0].circuit.as_ref().unwrap().queued_prev());
    assert!(matches!(err, ProtoError::QueueFull(_)));
    assert!(h.relays[0].circuit.as_ref().unwrap().is_closed());
}

#[test]
fn pending_actions_are_bounded() {
    let mut m = ManualClient::new(true);
    m.connected_exit_stream(1);
    // Never poll actions: small DATA cells pile up as ExitData until reading stops.
    let mut n = 0;
    while m.relay.wants_prev_cell() {
        m.send(&data(1, 10)).unwrap();
        n += 1;
    }
    assert_eq!(n, MAX_PENDING_ACTIONS);
    let e = m.send(&data(1, 10)).unwrap_err();
    assert!(matches!(e, ProtoError::QueueFull(_)));
    assert!(m.relay.pending_actions() <= MAX_PENDING_ACTIONS);
}

#[test]
fn per_circuit_receive_buffer_is_bounded() {
    let mut h = Harness::with_relays(1).unwrap();
    assert!(h.build(1));
    h.internet.add("src.test", Target::Source(2 * W));
    let n = 6;
    let ids: Vec<_> = (0..n).map(|_| h.open("src.test", 1).unwrap()).collect();
    for s in &ids {
        h.set_paused(*s, true);
    }
    h.run_idle(100_000);
    let total: usize = ids.iter().map(|s| h.client.readable_bytes(*s)).sum();
    assert_eq!(total, n * W);
    assert!(total <= MAX_CIRCUIT_STREAM_BUFFER);
    assert!(!h.client.is_closed());
}
