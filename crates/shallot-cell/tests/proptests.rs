//! Property tests: valid values round trip; decoders never panic on arbitrary bytes.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use shallot_cell::{
    Begin, DestroyReason, EndReason, Extend, Host, LinkCell, MAX_HOPS, OnionKeyId, Preamble,
    RelayFrame, RelayMsg, ResolvedAnswer, StreamId, StreamIdRule, encode_data_into, link_cell_len,
    relay_command, relay_payload_len,
};

fn any_link_len() -> impl Strategy<Value = usize> {
    (0..MAX_HOPS).prop_map(|i| link_cell_len(i).unwrap())
}

fn link_cell_and_len() -> impl Strategy<Value = (LinkCell, usize)> {
    any_link_len().prop_flat_map(|len| {
        let cell = prop_oneof![
            Just(LinkCell::Padding),
            (
                any::<[u8; 8]>(),
                prop::collection::vec(any::<u8>(), 0..=LinkCell::max_create_handshake(len))
            )
                .prop_map(|(id, handshake)| LinkCell::Create {
                    onion_key_id: OnionKeyId(id),
                    handshake
                }),
            prop::collection::vec(any::<u8>(), 0..=LinkCell::max_created_handshake(len))
                .prop_map(|handshake| LinkCell::Created { handshake }),
            prop::collection::vec(any::<u8>(), len - 1).prop_map(LinkCell::Relay),
            any::<u8>().prop_map(|r| LinkCell::Destroy(DestroyReason::from(r))),
        ];
        (cell, Just(len))
    })
}

fn hostname() -> impl Strategy<Value = String> {
    "[ -~]{1,255}"
}

fn host() -> impl Strategy<Value = Host> {
    prop_oneof![
        hostname().prop_map(Host::Name),
        any::<[u8; 4]>().prop_map(|o| Host::V4(Ipv4Addr::from(o))),
        any::<[u8; 16]>().prop_map(|o| Host::V6(Ipv6Addr::from(o))),
    ]
}

fn addr_host() -> impl Strategy<Value = Host> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| Host::V4(Ipv4Addr::from(o))),
        any::<[u8; 16]>().prop_map(|o| Host::V6(Ipv6Addr::from(o))),
    ]
}

fn answer() -> impl Strategy<Value = ResolvedAnswer> {
    prop_oneof![
        (hostname(), any::<u32>()).prop_map(|(n, t)| ResolvedAnswer::Name(n, t)),
        (any::<[u8; 4]>(), any::<u32>()).prop_map(|(o, t)| ResolvedAnswer::V4(o.into(), t)),
        (any::<[u8; 16]>(), any::<u32>()).prop_map(|(o, t)| ResolvedAnswer::V6(o.into(), t)),
    ]
}

fn relay_msg() -> impl Strategy<Value = RelayMsg> {
    prop_oneof![
        (host(), any::<u16>(), any::<u32>())
            .prop_map(|(host, port, flags)| RelayMsg::Begin(Begin { host, port, flags })),
        prop::collection::vec(any::<u8>(), 1..1002).prop_map(RelayMsg::Data),
        any::<u8>().prop_map(|r| RelayMsg::End(EndReason::from(r))),
        (addr_host(), any::<u32>()).prop_map(|(addr, ttl)| RelayMsg::Connected { addr, ttl }),
        any::<u32>().prop_map(RelayMsg::WindowUpdate),
        (
            prop::collection::vec(any::<u8>(), 1..=64),
            prop::collection::vec(prop::collection::vec(any::<u8>(), 1..=100), 0..=8),
            any::<[u8; 8]>(),
            prop::collection::vec(any::<u8>(), 0..=64),
        )
            .prop_map(|(peer_id, addrs, id, handshake)| RelayMsg::Extend(Extend {
                peer_id,
                addrs,
                onion_key_id: OnionKeyId(id),
                handshake,
            })),
        prop::collection::vec(any::<u8>(), 0..200)
            .prop_map(|handshake| RelayMsg::Extended { handshake }),
        any::<u8>().prop_map(|r| RelayMsg::Truncated(DestroyReason::from(r))),
        host().prop_map(RelayMsg::Resolve),
        prop_oneof![
            prop::collection::vec(answer(), 1..=16),
            any::<u32>().prop_map(|t| vec![ResolvedAnswer::TransientError(t)]),
            any::<u32>().prop_map(|t| vec![ResolvedAnswer::PermanentError(t)]),
        ]
        .prop_map(RelayMsg::Resolved),
        Just(RelayMsg::Drop),
        (
            any::<u8>().prop_filter("unknown", |c| !relay_command::is_known(*c)),
            prop::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(command, data)| RelayMsg::Unknown { command, data }),
    ]
}

/// A valid frame (stream id per the rule) and an area length it fits in.
fn relay_frame_and_area() -> impl Strategy<Value = (RelayFrame, usize)> {
    (relay_msg(), 1..=u16::MAX, any::<bool>(), any_link_len()).prop_filter_map(
        "message does not fit the area",
        |(msg, sid, zero_for_unknown, link_len)| {
            let stream_id = match msg.stream_id_rule() {
                Some(StreamIdRule::Circuit) => StreamId::CIRCUIT,
                Some(StreamIdRule::Stream) => StreamId(sid),
                None if zero_for_unknown => StreamId::CIRCUIT,
                None => StreamId(sid),
            };
            let area = relay_payload_len(link_len);
            (msg.data_len() + 5 <= area).then_some((RelayFrame { stream_id, msg }, area))
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn link_cell_round_trips((cell, len) in link_cell_and_len()) {
        let bytes = cell.encode(len).unwrap();
        prop_assert_eq!(bytes.len(), len);
        prop_assert_eq!(LinkCell::decode(&bytes).unwrap(), cell);
    }

    #[test]
    fn relay_frame_round_trips((frame, area) in relay_frame_and_area()) {
        let bytes = frame.encode(area).unwrap();
        prop_assert_eq!(bytes.len(), area);
        prop_assert_eq!(RelayFrame::decode(&bytes).unwrap(), frame);
    }

    #[test]
    fn encode_data_into_equals_encode_into(sid in 1..=u16::MAX, data in prop::collection::vec(any::<u8>(), 1..1001)) {
        let area = relay_payload_len(link_cell_len(0).unwrap());
        let mut fast = vec![0xaa; area];
        encode_data_into(StreamId(sid), &data, &mut fast).unwrap();
        let frame = RelayFrame { stream_id: StreamId(sid), msg: RelayMsg::Data(data) };
        prop_assert_eq!(&fast, &frame.encode(area).unwrap());
        prop_assert_eq!(RelayFrame::decode(&fast).unwrap(), frame);
    }

    #[test]
    fn preamble_round_trips(i in 0..MAX_HOPS) {
        let p = Preamble::for_link(i).unwrap();
        prop_assert_eq!(Preamble::decode(&p.encode()).unwrap(), p);
    }

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..1100)) {
        let _ = Preamble::decode(&bytes);
        let _ = LinkCell::decode(&bytes);
        if let Ok(f) = RelayFrame::decode(&bytes) {
            // What decodes re-encodes into the same area and decodes to the same value.
            let again = f.encode(bytes.len()).unwrap();
            prop_assert_eq!(RelayFrame::decode(&again).unwrap(), f);
        }
    }

    #[test]
    fn link_decoder_never_panics_on_valid_length_garbage(
        (len, fill) in (any_link_len(), prop::collection::vec(any::<u8>(), 0..64)),
        command in 0u8..8,
    ) {
        let mut cell = vec![0u8; len];
        cell[0] = command;
        cell[1..=fill.len()].copy_from_slice(&fill);
        if let Ok(c) = LinkCell::decode(&cell) {
            prop_assert_eq!(LinkCell::decode(&c.encode(len).unwrap()).unwrap(), c);
        }
    }

    #[test]
    fn relay_decoder_never_panics_on_mutated_valid_frames(
        (frame, area) in relay_frame_and_area(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut bytes = frame.encode(area).unwrap();
        // Mutate mostly the header and message, where the parser looks.
        let used = (frame.msg.data_len() + 5).max(6);
        for (idx, v) in flips {
            bytes[idx.index(used)] = v;
        }
        if let Ok(f) = RelayFrame::decode(&bytes) {
            prop_assert_eq!(RelayFrame::decode(&f.encode(area).unwrap()).unwrap(), f);
        }
    }
}
