//! Every malformed input gives the right error (specs/01 §7, specs/03 §10), and what the
//! receiver must ignore is ignored.
#![allow(clippy::unwrap_used)]

use shallot_cell::{
    Begin, CellError, DestroyReason, Extend, Host, LINK_CELL_LEN, LinkCell, MAX_HOPS, OnionKeyId,
    Preamble, RelayFrame, RelayMsg, ResolvedAnswer, StreamId, encode_data_into, link_cell_len,
    max_data_len, relay_payload_len,
};

const AREA: usize = relay_payload_len(LINK_CELL_LEN);

/// A relay-message area of `AREA` bytes starting with `prefix`.
fn area(prefix: &[u8]) -> Vec<u8> {
    let mut a = prefix.to_vec();
    a.resize(AREA, 0);
    a
}

/// A link cell of `len` bytes starting with `prefix`.
fn cell(len: usize, prefix: &[u8]) -> Vec<u8> {
    let mut c = prefix.to_vec();
    c.resize(len, 0);
    c
}

fn decode(prefix: &[u8]) -> Result<RelayFrame, CellError> {
    RelayFrame::decode(&area(prefix))
}

// ---- preamble (specs/01 §4.2) ----

#[test]
fn preamble_bad_version() {
    assert_eq!(
        Preamble::decode(&[2, 0, 0x04, 0x00]),
        Err(CellError::BadVersion(2))
    );
    assert_eq!(
        Preamble::decode(&[0, 0, 0x04, 0x00]),
        Err(CellError::BadVersion(0))
    );
}

#[test]
fn preamble_cell_len_not_a_link_length() {
    assert_eq!(
        Preamble::decode(&[1, 0, 0x04, 0x01]),
        Err(CellError::BadCellLen(1025))
    );
    assert_eq!(
        Preamble::decode(&[1, 0, 0x00, 0x00]),
        Err(CellError::BadCellLen(0))
    );
    assert_eq!(
        Preamble::decode(&[1, 0, 0xff, 0xff]),
        Err(CellError::BadCellLen(65535))
    );
    // One layer below the last valid link.
    let below = LINK_CELL_LEN - 17 * MAX_HOPS;
    let b = u16::try_from(below).unwrap().to_be_bytes();
    assert_eq!(
        Preamble::decode(&[1, 0, b[0], b[1]]),
        Err(CellError::BadCellLen(below))
    );
}

#[test]
fn preamble_wrong_length() {
    assert_eq!(
        Preamble::decode(&[1, 0, 4]),
        Err(CellError::PreambleLength { got: 3 })
    );
    assert_eq!(
        Preamble::decode(&[1, 0, 4, 0, 0]),
        Err(CellError::PreambleLength { got: 5 })
    );
    assert_eq!(
        Preamble::decode(&[]),
        Err(CellError::PreambleLength { got: 0 })
    );
}

// ---- link cells (specs/01 §5–§7) ----

#[test]
fn link_cell_of_invalid_length() {
    for len in [
        0,
        1,
        4,
        LINK_CELL_LEN - 1,
        LINK_CELL_LEN + 1,
        LINK_CELL_LEN - 17 * MAX_HOPS,
    ] {
        assert_eq!(
            LinkCell::decode(&cell(len, &[4, 1])),
            Err(CellError::BadCellLen(len)),
            "len {len}"
        );
        assert_eq!(
            LinkCell::Padding.encode(len),
            Err(CellError::BadCellLen(len)),
            "len {len}"
        );
    }
}

#[test]
fn unknown_link_command() {
    for cmd in [5u8, 6, 127, 128, 255] {
        assert_eq!(
            LinkCell::decode(&cell(LINK_CELL_LEN, &[cmd])),
            Err(CellError::UnknownLinkCommand(cmd))
        );
    }
}

#[test]
fn create_hlen_beyond_body() {
    // Room after COMMAND, ONION_KEY_ID and HLEN: LINK_CELL_LEN - 1 - 10.
    let room = LINK_CELL_LEN - 11;
    let over = u16::try_from(room + 1).unwrap().to_be_bytes();
    let c = cell(
        LINK_CELL_LEN,
        &[1, 0, 0, 0, 0, 0, 0, 0, 0, over[0], over[1]],
    );
    assert_eq!(
        LinkCell::decode(&c),
        Err(CellError::HandshakeTooLong {
            what: "create cell",
            len: room + 1,
            max: room
        })
    );
    let fits = u16::try_from(room).unwrap().to_be_bytes();
    let c = cell(
        LINK_CELL_LEN,
        &[1, 0, 0, 0, 0, 0, 0, 0, 0, fits[0], fits[1]],
    );
    assert!(
        matches!(LinkCell::decode(&c), Ok(LinkCell::Create { handshake, .. }) if handshake.len() == room)
    );
}

#[test]
fn created_hlen_beyond_body() {
    let len = link_cell_len(7).unwrap();
    let c = cell(len, &[2, 0xff, 0xff]);
    assert_eq!(
        LinkCell::decode(&c),
        Err(CellError::HandshakeTooLong {
            what: "created cell",
            len: 65535,
            max: len - 3
        })
    );
}

#[test]
fn relay_body_of_wrong_length_is_not_encoded() {
    let c = LinkCell::Relay(vec![0; 10]);
    assert_eq!(
        c.encode(LINK_CELL_LEN),
        Err(CellError::RelayBodyLength {
            got: 10,
            expected: LINK_CELL_LEN - 1
        })
    );
}

#[test]
fn padding_after_messages_is_ignored() {
    // specs/01 §6: receivers MUST ignore the bytes after a message, whatever they are.
    let mut c = LinkCell::Destroy(DestroyReason::Timeout)
        .encode(LINK_CELL_LEN)
        .unwrap();
    c[2..].fill(0xa5);
    assert_eq!(
        LinkCell::decode(&c).unwrap(),
        LinkCell::Destroy(DestroyReason::Timeout)
    );
    let mut p = LinkCell::Padding.encode(LINK_CELL_LEN).unwrap();
    p[1..].fill(0xff);
    assert_eq!(LinkCell::decode(&p).unwrap(), LinkCell::Padding);
    let created = LinkCell::Created {
        handshake: vec![9; 48],
    };
    let mut c = created.encode(link_cell_len(3).unwrap()).unwrap();
    let last = c.len() - 1;
    c[51..=last].fill(1);
    assert_eq!(LinkCell::decode(&c).unwrap(), created);
}

// ---- relay header, LENGTH and padding (specs/03 §2–§3) ----

#[test]
fn area_smaller_than_header() {
    for len in 0..5 {
        assert_eq!(
            RelayFrame::decode(&vec![2; len]),
            Err(CellError::AreaTooSmall(len))
        );
    }
    let f = RelayFrame {
        stream_id: StreamId::CIRCUIT,
        msg: RelayMsg::Drop,
    };
    assert_eq!(f.encode(4), Err(CellError::AreaTooSmall(4)));
    assert_eq!(f.encode(5).unwrap(), vec![11, 0, 0, 0, 0]);
}

#[test]
fn length_beyond_area() {
    let length = u16::try_from(AREA + 100).unwrap().to_be_bytes();
    assert_eq!(
        decode(&[2, 0, 1, length[0], length[1]]),
        Err(CellError::LengthExceedsArea {
            length: AREA + 100,
            max: AREA - 5
        })
    );
    let msg = CellError::LengthExceedsArea {
        length: 2000,
        max: 967,
    }
    .to_string();
    assert_eq!(msg, "relay message length 2000 exceeds the 967-byte area");
    // Exactly the maximum is fine.
    let max = u16::try_from(AREA - 5).unwrap().to_be_bytes();
    assert!(decode(&[2, 0, 1, max[0], max[1]]).is_ok());
    let over = u16::try_from(AREA - 4).unwrap().to_be_bytes();
    assert!(matches!(
        decode(&[2, 0, 1, over[0], over[1]]),
        Err(CellError::LengthExceedsArea { .. })
    ));
}

#[test]
fn zero_length_data() {
    assert_eq!(decode(&[2, 0, 1, 0, 0]), Err(CellError::EmptyData));
    let f = RelayFrame {
        stream_id: StreamId(1),
        msg: RelayMsg::Data(Vec::new()),
    };
    assert_eq!(f.encode(AREA), Err(CellError::EmptyData));
    assert_eq!(
        encode_data_into(StreamId(1), &[], &mut [0; 64]),
        Err(CellError::EmptyData)
    );
}

#[test]
fn data_too_long_to_encode() {
    let max = max_data_len(LINK_CELL_LEN);
    let mut out = vec![0; AREA];
    assert!(encode_data_into(StreamId(1), &vec![7; max], &mut out).is_ok());
    assert_eq!(
        encode_data_into(StreamId(1), &vec![7; max + 1], &mut out),
        Err(CellError::LengthExceedsArea {
            length: max + 1,
            max
        })
    );
    let f = RelayFrame {
        stream_id: StreamId(1),
        msg: RelayMsg::Data(vec![7; max + 1]),
    };
    assert_eq!(
        f.encode(AREA),
        Err(CellError::LengthExceedsArea {
            length: max + 1,
            max
        })
    );
}

#[test]
fn relay_padding_is_ignored() {
    // specs/03 §2.3: bytes after DATA are ignored, even when not zero.
    let mut a = area(&[3, 0, 5, 0, 1, 6]);
    a[6..].fill(0xcc);
    assert_eq!(
        RelayFrame::decode(&a).unwrap().msg,
        RelayMsg::End(shallot_cell::EndReason::Done)
    );
}

#[test]
fn trailing_bytes_inside_data() {
    // END with 2 bytes of DATA.
    assert_eq!(
        decode(&[3, 0, 5, 0, 2, 6, 0]),
        Err(CellError::TrailingBytes {
            command: 3,
            extra: 1
        })
    );
    // WINDOW_UPDATE with 5 bytes.
    assert_eq!(
        decode(&[5, 0, 5, 0, 5, 0, 0, 1, 0, 9]),
        Err(CellError::TrailingBytes {
            command: 5,
            extra: 1
        })
    );
    // EXTENDED whose HLEN is 1 but LENGTH is 4.
    assert_eq!(
        decode(&[7, 0, 0, 0, 4, 0, 1, 0xaa, 0xbb]),
        Err(CellError::TrailingBytes {
            command: 7,
            extra: 1
        })
    );
    // RESOLVE with a byte after the HOST.
    assert_eq!(
        decode(&[9, 0, 2, 0, 7, 4, 4, 1, 2, 3, 4, 0]),
        Err(CellError::TrailingBytes {
            command: 9,
            extra: 1
        })
    );
}

#[test]
fn truncated_messages() {
    // END with LENGTH 0.
    assert!(matches!(
        decode(&[3, 0, 5, 0, 0]),
        Err(CellError::Truncated {
            needed: 1,
            got: 0,
            ..
        })
    ));
    // BEGIN cut inside the HOST.
    assert!(matches!(
        decode(&[1, 0, 1, 0, 5, 0, 80, 0, 11, b'e']),
        Err(CellError::Truncated {
            needed: 11,
            got: 1,
            ..
        })
    ));
    // BEGIN without FLAGS.
    assert!(matches!(
        decode(&[1, 0, 1, 0, 8, 0, 80, 4, 4, 1, 2, 3, 4]),
        Err(CellError::Truncated {
            needed: 4,
            got: 0,
            ..
        })
    ));
    // CONNECTED without TTL.
    assert!(matches!(
        decode(&[4, 0, 1, 0, 6, 4, 4, 1, 2, 3, 4]),
        Err(CellError::Truncated { .. })
    ));
    // EXTENDED whose HLEN points beyond LENGTH.
    assert!(matches!(
        decode(&[7, 0, 0, 0, 3, 0, 9, 1]),
        Err(CellError::Truncated {
            needed: 9,
            got: 1,
            ..
        })
    ));
    // RESOLVED announcing 2 answers, carrying 1.
    assert!(matches!(
        decode(&[10, 0, 2, 0, 11, 2, 4, 4, 1, 2, 3, 4, 0, 0, 0, 1]),
        Err(CellError::Truncated { .. })
    ));
}

// ---- stream-id rule (specs/03 §3.3) ----

#[test]
fn stream_commands_need_a_stream_id() {
    for cmd in [1u8, 2, 3, 4, 5, 9, 10] {
        assert_eq!(
            decode(&[cmd, 0, 0, 0, 1, 1]),
            Err(CellError::StreamIdRequired { command: cmd }),
            "cmd {cmd}"
        );
    }
    let f = RelayFrame {
        stream_id: StreamId::CIRCUIT,
        msg: RelayMsg::WindowUpdate(1),
    };
    assert_eq!(
        f.encode(AREA),
        Err(CellError::StreamIdRequired { command: 5 })
    );
    assert_eq!(
        encode_data_into(StreamId::CIRCUIT, b"x", &mut [0; 64]),
        Err(CellError::StreamIdRequired { command: 2 })
    );
}

#[test]
fn circuit_commands_need_stream_zero() {
    for cmd in [6u8, 7, 8, 11] {
        assert_eq!(
            decode(&[cmd, 0x01, 0x00, 0, 0]),
            Err(CellError::StreamIdForbidden {
                command: cmd,
                stream_id: 256
            }),
            "cmd {cmd}"
        );
    }
    let f = RelayFrame {
        stream_id: StreamId(3),
        msg: RelayMsg::Truncated(DestroyReason::None),
    };
    assert_eq!(
        f.encode(AREA),
        Err(CellError::StreamIdForbidden {
            command: 8,
            stream_id: 3
        })
    );
}

#[test]
fn unknown_commands_have_no_stream_rule() {
    for (cmd, sid) in [(12u8, 0u16), (12, 9), (200, 0), (200, 9)] {
        let s = sid.to_be_bytes();
        let f = decode(&[cmd, s[0], s[1], 0, 0]).unwrap();
        assert_eq!(
            f.msg,
            RelayMsg::Unknown {
                command: cmd,
                data: Vec::new()
            }
        );
    }
}

// ---- HOST (specs/03 §5) ----

#[test]
fn bad_host_type() {
    assert_eq!(
        decode(&[9, 0, 1, 0, 3, 5, 1, 0]),
        Err(CellError::BadHostType(5))
    );
    assert_eq!(
        decode(&[1, 0, 1, 0, 9, 0, 80, 1, 1, b'a', 0, 0, 0, 0]),
        Err(CellError::BadHostType(1))
    );
}

#[test]
fn bad_host_length() {
    assert_eq!(
        decode(&[9, 0, 1, 0, 5, 4, 3, 1, 2, 3]),
        Err(CellError::BadHostLength {
            host_type: 4,
            len: 3
        })
    );
    assert_eq!(
        decode(&[9, 0, 1, 0, 6, 6, 4, 1, 2, 3, 4]),
        Err(CellError::BadHostLength {
            host_type: 6,
            len: 4
        })
    );
}

#[test]
fn bad_hostnames_are_rejected_on_decode() {
    let cases: [(&[u8], &str); 5] = [
        (b"", "empty"),
        (b"a\0b", "contains a NUL byte"),
        (b"a\tb", "contains a control character"),
        (b"a\x7fb", "contains a control character"),
        ("caf\u{e9}.example".as_bytes(), "contains a non-ASCII byte"),
    ];
    for (name, reason) in cases {
        let mut msg = vec![
            9,
            0,
            1,
            0,
            u8::try_from(name.len() + 2).unwrap(),
            0,
            u8::try_from(name.len()).unwrap(),
        ];
        msg.extend_from_slice(name);
        assert_eq!(
            decode(&msg),
            Err(CellError::BadHostname { reason }),
            "{name:?}"
        );
    }
}

#[test]
fn bad_hostnames_are_refused_on_encode() {
    for name in ["", "tab\there", "ünïcode.example"] {
        let f = RelayFrame {
            stream_id: StreamId(1),
            msg: RelayMsg::Resolve(Host::Name(name.to_owned())),
        };
        assert!(
            matches!(f.encode(AREA), Err(CellError::BadHostname { .. })),
            "{name:?}"
        );
    }
    let long = "a".repeat(256);
    let f = RelayFrame {
        stream_id: StreamId(1),
        msg: RelayMsg::Begin(Begin {
            host: Host::Name(long),
            port: 1,
            flags: 0,
        }),
    };
    assert_eq!(
        f.encode(AREA),
        Err(CellError::BadHostname {
            reason: "longer than 255 bytes"
        })
    );
    let max = "a".repeat(255);
    let f = RelayFrame {
        stream_id: StreamId(1),
        msg: RelayMsg::Resolve(Host::Name(max)),
    };
    assert_eq!(RelayFrame::decode(&f.encode(AREA).unwrap()).unwrap(), f);
}

#[test]
fn connected_with_a_hostname() {
    assert_eq!(
        decode(&[4, 0, 1, 0, 7, 0, 1, b'a', 0, 0, 0, 0]),
        Err(CellError::HostTypeNotAllowed {
            command: 4,
            host_type: 0
        })
    );
    let f = RelayFrame {
        stream_id: StreamId(1),
        msg: RelayMsg::Connected {
            addr: Host::Name("a".into()),
            ttl: 0,
        },
    };
    assert_eq!(
        f.encode(AREA),
        Err(CellError::HostTypeNotAllowed {
            command: 4,
            host_type: 0
        })
    );
}

// ---- EXTEND limits (specs/03 §4.6) ----

fn extend(peer_id: Vec<u8>, addrs: Vec<Vec<u8>>) -> RelayFrame {
    RelayFrame {
        stream_id: StreamId::CIRCUIT,
        msg: RelayMsg::Extend(Extend {
            peer_id,
            addrs,
            onion_key_id: OnionKeyId([0; 8]),
            handshake: vec![0; 48],
        }),
    }
}

#[test]
fn extend_limits_on_encode() {
    assert_eq!(
        extend(vec![], vec![]).encode(AREA),
        Err(CellError::BadPeerIdLength(0))
    );
    assert_eq!(
        extend(vec![1; 65], vec![]).encode(AREA),
        Err(CellError::BadPeerIdLength(65))
    );
    assert_eq!(
        extend(vec![1; 64], vec![vec![1]; 9]).encode(AREA),
        Err(CellError::TooManyAddrs(9))
    );
    assert_eq!(
        extend(vec![1; 38], vec![vec![]]).encode(AREA),
        Err(CellError::BadAddrLength(0))
    );
    assert_eq!(
        extend(vec![1; 38], vec![vec![1; 256]]).encode(AREA),
        Err(CellError::BadAddrLength(256))
    );
    // At the limits: 64-byte peer id, 8 addresses of 100 bytes fit the first hop's area.
    let f = extend(vec![1; 64], vec![vec![2; 100]; 8]);
    assert_eq!(RelayFrame::decode(&f.encode(AREA).unwrap()).unwrap(), f);
    // 8 addresses of 255 bytes do not fit any area: a length error, not a panic.
    assert!(matches!(
        extend(vec![1; 64], vec![vec![2; 255]; 8]).encode(AREA),
        Err(CellError::LengthExceedsArea { .. })
    ));
}

#[test]
fn extend_limits_on_decode() {
    assert_eq!(
        decode(&[6, 0, 0, 0, 1, 0]),
        Err(CellError::BadPeerIdLength(0))
    );
    assert_eq!(
        decode(&[6, 0, 0, 0, 1, 65]),
        Err(CellError::BadPeerIdLength(65))
    );
    assert_eq!(
        decode(&[6, 0, 0, 0, 3, 1, 7, 9]),
        Err(CellError::TooManyAddrs(9))
    );
    assert_eq!(
        decode(&[6, 0, 0, 0, 5, 1, 7, 1, 0, 0]),
        Err(CellError::BadAddrLength(0))
    );
    assert_eq!(
        decode(&[6, 0, 0, 0, 5, 1, 7, 1, 1, 0]),
        Err(CellError::BadAddrLength(256))
    );
}

// ---- RESOLVED (specs/03 §4.10) ----

fn resolved(answers: Vec<ResolvedAnswer>) -> RelayFrame {
    RelayFrame {
        stream_id: StreamId(1),
        msg: RelayMsg::Resolved(answers),
    }
}

#[test]
fn resolved_answer_count() {
    assert_eq!(
        decode(&[10, 0, 1, 0, 1, 0]),
        Err(CellError::BadAnswerCount(0))
    );
    assert_eq!(
        decode(&[10, 0, 1, 0, 1, 17]),
        Err(CellError::BadAnswerCount(17))
    );
    assert_eq!(
        resolved(vec![]).encode(AREA),
        Err(CellError::BadAnswerCount(0))
    );
    let many = vec![ResolvedAnswer::V4([1, 2, 3, 4].into(), 1); 17];
    assert_eq!(
        resolved(many).encode(AREA),
        Err(CellError::BadAnswerCount(17))
    );
    let sixteen = resolved(vec![
        ResolvedAnswer::V6(std::net::Ipv6Addr::LOCALHOST, 1);
        16
    ]);
    assert_eq!(
        RelayFrame::decode(&sixteen.encode(AREA).unwrap()).unwrap(),
        sixteen
    );
}

#[test]
fn resolved_bad_answers() {
    assert_eq!(
        decode(&[10, 0, 1, 0, 7, 1, 0x42, 0, 0, 0, 0, 0]),
        Err(CellError::BadAnswerType(0x42))
    );
    assert_eq!(
        decode(&[10, 0, 1, 0, 8, 1, 0xf0, 1, 9, 0, 0, 0, 0]),
        Err(CellError::BadAnswerLength {
            answer_type: 0xf0,
            len: 1
        })
    );
    assert_eq!(
        decode(&[10, 0, 1, 0, 9, 1, 4, 2, 1, 2, 0, 0, 0, 0]),
        Err(CellError::BadAnswerLength {
            answer_type: 4,
            len: 2
        })
    );
    assert_eq!(
        decode(&[10, 0, 1, 0, 7, 1, 0, 0, 0, 0, 0, 0]),
        Err(CellError::BadHostname { reason: "empty" })
    );
}

#[test]
fn resolved_error_must_be_alone() {
    let mixed = [
        10, 0, 1, 0, 17, 2, 0xf1, 0, 0, 0, 0, 0, 4, 4, 1, 2, 3, 4, 0, 0, 0, 0,
    ];
    assert_eq!(decode(&mixed), Err(CellError::ErrorAnswerNotAlone(1)));
    let f = resolved(vec![
        ResolvedAnswer::TransientError(1),
        ResolvedAnswer::PermanentError(1),
    ]);
    assert_eq!(f.encode(AREA), Err(CellError::ErrorAnswerNotAlone(1)));
}

// ---- DROP and Unknown (specs/03 §4.11, §9) ----

#[test]
fn drop_data_is_ignored() {
    let f = decode(&[11, 0, 0, 0, 3, 0xde, 0xad, 0]).unwrap();
    assert_eq!(
        f,
        RelayFrame {
            stream_id: StreamId::CIRCUIT,
            msg: RelayMsg::Drop
        }
    );
}

#[test]
fn unknown_classification() {
    let ignorable = decode(&[200, 0, 1, 0, 0]).unwrap().msg;
    assert!(ignorable.is_ignorable_unknown());
    assert!(!ignorable.is_fatal_unknown());
    let fatal = decode(&[100, 0, 1, 0, 0]).unwrap().msg;
    assert!(fatal.is_fatal_unknown());
    assert!(!fatal.is_ignorable_unknown());
    let zero = decode(&[0, 0, 0, 0, 0]).unwrap().msg;
    assert!(zero.is_fatal_unknown());
    assert!(!RelayMsg::Drop.is_ignorable_unknown());
    assert!(!RelayMsg::Drop.is_fatal_unknown());
}

#[test]
fn unknown_with_a_known_command_is_not_encoded() {
    let f = RelayFrame {
        stream_id: StreamId(1),
        msg: RelayMsg::Unknown {
            command: 2,
            data: vec![1],
        },
    };
    assert_eq!(f.encode(AREA), Err(CellError::UnknownIsKnown(2)));
}

#[test]
fn errors_are_lowercase_with_context() {
    let samples = [
        CellError::BadVersion(9),
        CellError::BadCellLen(7),
        CellError::UnknownLinkCommand(9),
        CellError::StreamIdRequired { command: 2 },
        CellError::TrailingBytes {
            command: 3,
            extra: 2,
        },
        CellError::BadHostname { reason: "empty" },
    ];
    for e in samples {
        let s = e.to_string();
        assert!(s.chars().next().unwrap().is_lowercase(), "{s}");
        assert!(
            s.chars().any(|c| c.is_ascii_digit()) || s.contains("empty"),
            "{s}: no context"
        );
    }
}
