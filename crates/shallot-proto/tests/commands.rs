//! Unknown and misplaced commands (specs/03 §9).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::{ManualClient, ManualRelay};
use shallot_cell::{DestroyReason, EndReason, Host, RelayFrame, RelayMsg, StreamId};
use shallot_error::{ErrorKind, HasKind};
use shallot_proto::{ClientEvent, ProtoError};

fn unknown(command: u8, stream: u16) -> RelayFrame {
    RelayFrame {
        stream_id: StreamId(stream),
        msg: RelayMsg::Unknown {
            command,
            data: vec![1, 2, 3],
        },
    }
}

#[test]
fn relay_drops_ignorable_unknown_commands() {
    let mut m = ManualClient::new(true);
    for c in [128u8, 200, 255] {
        m.send(&unknown(c, 0)).unwrap();
        m.send(&unknown(c, 4)).unwrap();
    }
    assert!(!m.relay.is_closed());
    assert!(m.recv_all().is_empty());
}

#[test]
fn relay_destroys_on_unknown_non_ignorable_command() {
    let mut m = ManualClient::new(true);
    let e = m.send(&unknown(100, 0)).unwrap_err();
    assert!(matches!(e, ProtoError::UnknownRelayCommand(100)));
    assert_eq!(e.kind(), ErrorKind::Protocol);
    assert!(m.relay.is_closed());
    assert_eq!(m.recv_all(), vec![None]);
}

#[test]
fn client_drops_ignorable_and_destroys_on_fatal_unknown() {
    let mut m = ManualRelay::new();
    m.send(&unknown(180, 0)).unwrap();
    assert!(!m.client.is_closed());
    let e = m.send(&unknown(42, 0)).unwrap_err();
    assert!(matches!(e, ProtoError::UnknownRelayCommand(42)));
    assert!(m.client.is_closed());
    assert_eq!(m.recv_all(), vec![None]);
    let evs: Vec<_> = std::iter::from_fn(|| m.client.poll_event()).collect();
    assert_eq!(
        evs,
        vec![ClientEvent::Destroyed {
            reason: DestroyReason::Protocol
        }]
    );
}

#[test]
fn relay_rejects_client_bound_messages() {
    for msg in [
        RelayMsg::Extended {
            handshake: vec![0; 48],
        },
        RelayMsg::Truncated(DestroyReason::None),
    ] {
        let mut m = ManualClient::new(true);
        let e = m
            .send(&RelayFrame {
                stream_id: StreamId(0),
                msg,
            })
            .unwrap_err();
        assert!(matches!(e, ProtoError::Unexpected { .. }));
        assert!(m.relay.is_closed());
    }
}

#[test]
fn client_drops_data_for_a_stream_it_never_opened() {
    let mut m = ManualRelay::new();
    m.send(&RelayFrame {
        stream_id: StreamId(77),
        msg: RelayMsg::Data(vec![1]),
    })
    .unwrap();
    assert!(!m.client.is_closed());
}

#[test]
fn client_ignores_late_messages_for_streams_it_closed() {
    let mut m = ManualRelay::new();
    let s = m
        .client
        .open_stream(Host::Name("x.test".into()), 1)
        .unwrap();
    m.client.close_stream(s).unwrap();
    m.send(&RelayFrame {
        stream_id: s,
        msg: RelayMsg::End(EndReason::Done),
    })
    .unwrap();
    assert!(!m.client.is_closed());
}

#[test]
fn unsolicited_truncated_tears_the_client_circuit_down() {
    let mut m = ManualRelay::new();
    let e = m
        .send(&RelayFrame {
            stream_id: StreamId(0),
            msg: RelayMsg::Truncated(DestroyReason::ChannelClosed),
        })
        .unwrap_err();
    assert!(matches!(e, ProtoError::Unexpected { .. }));
    assert!(m.client.is_closed());
}

#[test]
fn data_before_connected_is_a_protocol_error_at_the_client() {
    let mut m = ManualRelay::new();
    let s = m
        .client
        .open_stream(Host::Name("x.test".into()), 1)
        .unwrap();
    let e = m
        .send(&RelayFrame {
            stream_id: s,
            msg: RelayMsg::Data(vec![1]),
        })
        .unwrap_err();
    assert!(matches!(e, ProtoError::Unexpected { .. }));
}

#[test]
fn extend_twice_is_a_protocol_error_at_the_relay() {
    let mut m = ManualClient::new(false);
    let ext = RelayFrame {
        stream_id: StreamId(0),
        msg: RelayMsg::Extend(shallot_cell::Extend {
            peer_id: b"next".to_vec(),
            addrs: vec![],
            onion_key_id: shallot_cell::OnionKeyId([1; 8]),
            handshake: vec![0; 48],
        }),
    };
    m.send(&ext).unwrap();
    assert!(matches!(
        m.relay.poll_action(),
        Some(shallot_proto::RelayAction::OpenNextHop { .. })
    ));
    assert!(m.send(&ext).is_err());
    assert!(m.relay.is_closed());
}

/// An EXTEND to a next hop named `next`, from the client of `m`.
fn send_extend(m: &mut ManualClient) {
    m.send(&RelayFrame {
        stream_id: StreamId(0),
        msg: RelayMsg::Extend(shallot_cell::Extend {
            peer_id: b"next".to_vec(),
            addrs: vec![],
            onion_key_id: shallot_cell::OnionKeyId([1; 8]),
            handshake: vec![0; 48],
        }),
    })
    .unwrap();
}

fn truncated(reason: DestroyReason) -> RelayFrame {
    RelayFrame {
        stream_id: StreamId(0),
        msg: RelayMsg::Truncated(reason),
    }
}

#[test]
fn a_relay_with_a_failed_next_hop_sends_truncated() {
    let mut m = ManualClient::new(false);
    send_extend(&mut m);
    m.relay
        .handle_next_hop_failed(DestroyReason::ConnectFailed, m.now)
        .unwrap();
    assert_eq!(
        m.recv_all(),
        vec![Some(truncated(DestroyReason::ConnectFailed))]
    );
    assert!(!m.relay.is_closed());
}

#[test]
fn an_extension_past_its_deadline_gives_truncated_timeout_and_the_circuit_stays() {
    for opened in [false, true] {
        let mut m = ManualClient::new(false);
        assert_eq!(
            m.relay.poll_timeout(),
            None,
            "no timer without an extension"
        );
        send_extend(&mut m);
        let deadline = m.relay.poll_timeout().expect("the extension's deadline");
        assert_eq!(deadline, m.now + shallot_proto::DEFAULT_EXTEND_TIMEOUT);
        assert!(m.relay.is_extending());
        if opened {
            m.relay
                .handle_next_hop_opened(m.now + Duration::from_secs(1))
                .unwrap();
            assert_eq!(
                m.relay.poll_timeout(),
                Some(deadline),
                "one deadline for the whole extension"
            );
        }
        m.relay.handle_timeout(deadline - Duration::from_millis(1));
        assert_eq!(m.recv_all(), vec![], "not yet");
        m.relay.handle_timeout(deadline);
        assert_eq!(m.recv_all(), vec![Some(truncated(DestroyReason::Timeout))]);
        assert!(!m.relay.is_closed());
        assert!(!m.relay.is_extending() && !m.relay.has_next_hop());
        assert_eq!(m.relay.poll_timeout(), None);
        // The extension is over: a later timeout says nothing, a late "opened" is refused.
        m.relay.handle_timeout(deadline + Duration::from_secs(60));
        assert_eq!(m.recv_all(), vec![]);
        if !opened {
            assert!(m.relay.handle_next_hop_opened(deadline).is_err());
            assert!(!m.relay.is_closed());
        }
    }
}
