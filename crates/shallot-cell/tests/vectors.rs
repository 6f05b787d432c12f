//! Hex test vectors (tests/vectors/*.txt), checked both ways:
//! decode(hex) == value and encode(value) == hex.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use shallot_cell::{
    Begin, DestroyReason, EndReason, Extend, Host, LinkCell, OnionKeyId, Preamble, RelayFrame,
    RelayMsg, ResolvedAnswer, StreamId,
};

/// One vector from a file: the whole encoded buffer (hex + zero padding up to `len`).
struct Vector {
    file: String,
    name: String,
    bytes: Vec<u8>,
}

fn load_all() -> Vec<Vector> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        for block in text.split("\n\n") {
            let mut name = None;
            let mut len = None;
            let mut hex_str = None;
            for line in block
                .lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            {
                let (k, v) = line
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{file}: bad line {line:?}"));
                match k.trim() {
                    "name" => name = Some(v.trim().to_owned()),
                    "len" => len = Some(v.trim().parse::<usize>().unwrap()),
                    "hex" => hex_str = Some(v.split_whitespace().collect::<String>()),
                    other => panic!("{file}: unknown key {other}"),
                }
            }
            let (Some(name), Some(len), Some(hex_str)) = (name, len, hex_str) else {
                continue;
            };
            let mut bytes = hex::decode(&hex_str).unwrap_or_else(|e| panic!("{file}/{name}: {e}"));
            assert!(bytes.len() <= len, "{file}/{name}: hex longer than len");
            bytes.resize(len, 0);
            out.push(Vector {
                file: file.clone(),
                name,
                bytes,
            });
        }
    }
    out
}

fn ip4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn ip6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn frame(stream: u16, msg: RelayMsg) -> RelayFrame {
    RelayFrame {
        stream_id: StreamId(stream),
        msg,
    }
}

fn expected_preamble(name: &str) -> Option<Preamble> {
    Some(match name {
        "preamble_link0" => Preamble {
            version: 1,
            cell_len: 2048,
        },
        "preamble_link7" => Preamble {
            version: 1,
            cell_len: 1929,
        },
        _ => return None,
    })
}

fn expected_link(name: &str) -> Option<LinkCell> {
    Some(match name {
        "padding_link0" => LinkCell::Padding,
        "create_link0" => LinkCell::Create {
            onion_key_id: OnionKeyId([1, 2, 3, 4, 5, 6, 7, 8]),
            handshake: (0u8..48).collect(),
        },
        "create_empty_handshake_link7" => LinkCell::Create {
            onion_key_id: OnionKeyId([0xff; 8]),
            handshake: Vec::new(),
        },
        "created_link1" => LinkCell::Created {
            handshake: (0xa0u8..0xd0).collect(),
        },
        "relay_link7" => {
            let mut body = vec![0u8; 1928];
            body[..4].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
            LinkCell::Relay(body)
        }
        "destroy_none" => LinkCell::Destroy(DestroyReason::None),
        "destroy_protocol" => LinkCell::Destroy(DestroyReason::Protocol),
        "destroy_finished_link2" => LinkCell::Destroy(DestroyReason::Finished),
        "destroy_unknown_reason" => LinkCell::Destroy(DestroyReason::Other(42)),
        _ => return None,
    })
}

fn expected_relay(name: &str) -> Option<RelayFrame> {
    let example = || Host::Name("example.com".to_owned());
    Some(match name {
        "begin_hostname" => frame(
            7,
            RelayMsg::Begin(Begin {
                host: example(),
                port: 443,
                flags: 0,
            }),
        ),
        "begin_ipv4" => frame(
            1,
            RelayMsg::Begin(Begin {
                host: Host::V4(ip4("192.0.2.1")),
                port: 80,
                flags: 0,
            }),
        ),
        "begin_ipv6" => frame(
            0xffff,
            RelayMsg::Begin(Begin {
                host: Host::V6(ip6("2001:db8::1")),
                port: 22,
                flags: 0,
            }),
        ),
        "begin_reserved_flags" => frame(
            2,
            RelayMsg::Begin(Begin {
                host: Host::Name("a".to_owned()),
                port: 1,
                flags: 0x8000_0001,
            }),
        ),
        "data_hello" => frame(5, RelayMsg::Data(b"hello".to_vec())),
        "data_one_zero_byte" => frame(0x1234, RelayMsg::Data(vec![0])),
        "end_done" => frame(5, RelayMsg::End(EndReason::Done)),
        "end_exitpolicy" => frame(9, RelayMsg::End(EndReason::ExitPolicy)),
        "end_torprotocol" => frame(9, RelayMsg::End(EndReason::TorProtocol)),
        "end_unknown_reason" => frame(9, RelayMsg::End(EndReason::Other(200))),
        "connected_ipv4" => frame(
            3,
            RelayMsg::Connected {
                addr: Host::V4(ip4("198.51.100.7")),
                ttl: 3600,
            },
        ),
        "connected_ipv6" => frame(
            3,
            RelayMsg::Connected {
                addr: Host::V6(ip6("2001:db8::2")),
                ttl: 60,
            },
        ),
        "window_update_512k" => frame(4, RelayMsg::WindowUpdate(512 * 1024)),
        "extend_two_addrs" => frame(
            0,
            RelayMsg::Extend(Extend {
                peer_id: vec![0x00, 0x24, 0x08, 0x01],
                addrs: vec![
                    hex::decode("047f000001060fa1").unwrap(),
                    hex::decode("040a01020391020fa1cc03").unwrap(),
                ],
                onion_key_id: OnionKeyId([0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]),
                handshake: vec![1, 2, 3, 4],
            }),
        ),
        "extend_no_addrs" => frame(
            0,
            RelayMsg::Extend(Extend {
                peer_id: vec![1],
                addrs: Vec::new(),
                onion_key_id: OnionKeyId([0; 8]),
                handshake: Vec::new(),
            }),
        ),
        "extended_short" => frame(
            0,
            RelayMsg::Extended {
                handshake: vec![0xaa, 0xbb, 0xcc, 0xdd],
            },
        ),
        "truncated_connectfailed" => frame(0, RelayMsg::Truncated(DestroyReason::ConnectFailed)),
        "truncated_unknown_reason" => frame(0, RelayMsg::Truncated(DestroyReason::Other(99))),
        "resolve_name" => frame(2, RelayMsg::Resolve(example())),
        "resolve_reverse_ipv4" => frame(2, RelayMsg::Resolve(Host::V4(ip4("192.0.2.1")))),
        "resolved_v4_and_v6" => frame(
            2,
            RelayMsg::Resolved(vec![
                ResolvedAnswer::V4(ip4("93.184.216.34"), 300),
                ResolvedAnswer::V6(ip6("2606:2800:220:1:248:1893:1c8a:7946"), 300),
            ]),
        ),
        "resolved_name" => frame(
            2,
            RelayMsg::Resolved(vec![ResolvedAnswer::Name("example.com".to_owned(), 3600)]),
        ),
        "resolved_transient_error" => frame(
            2,
            RelayMsg::Resolved(vec![ResolvedAnswer::TransientError(60)]),
        ),
        "resolved_permanent_error" => frame(
            2,
            RelayMsg::Resolved(vec![ResolvedAnswer::PermanentError(0)]),
        ),
        "drop" => frame(0, RelayMsg::Drop),
        "unknown_ignorable_128" => frame(
            7,
            RelayMsg::Unknown {
                command: 128,
                data: vec![1, 2, 3],
            },
        ),
        "unknown_fatal_12_empty" => frame(
            0,
            RelayMsg::Unknown {
                command: 12,
                data: Vec::new(),
            },
        ),
        "unknown_ignorable_255" => frame(
            0x1234,
            RelayMsg::Unknown {
                command: 255,
                data: vec![0xff],
            },
        ),
        "unknown_fatal_0" => frame(
            1,
            RelayMsg::Unknown {
                command: 0,
                data: vec![0xab, 0xcd],
            },
        ),
        _ => return None,
    })
}

#[test]
fn every_vector_decodes_and_encodes_both_ways() {
    let vectors = load_all();
    assert!(vectors.len() >= 40, "only {} vectors loaded", vectors.len());
    for v in &vectors {
        let ctx = format!("{}/{}", v.file, v.name);
        if v.file.starts_with("preamble") {
            let want =
                expected_preamble(&v.name).unwrap_or_else(|| panic!("{ctx}: no expected value"));
            assert_eq!(Preamble::decode(&v.bytes).unwrap(), want, "{ctx}: decode");
            assert_eq!(
                want.encode().as_slice(),
                v.bytes.as_slice(),
                "{ctx}: encode"
            );
        } else if v.file.starts_with("link_") {
            let want = expected_link(&v.name).unwrap_or_else(|| panic!("{ctx}: no expected value"));
            assert_eq!(LinkCell::decode(&v.bytes).unwrap(), want, "{ctx}: decode");
            assert_eq!(
                want.encode(v.bytes.len()).unwrap(),
                v.bytes,
                "{ctx}: encode"
            );
        } else if v.file.starts_with("relay_") {
            let want =
                expected_relay(&v.name).unwrap_or_else(|| panic!("{ctx}: no expected value"));
            assert_eq!(RelayFrame::decode(&v.bytes).unwrap(), want, "{ctx}: decode");
            assert_eq!(
                want.encode(v.bytes.len()).unwrap(),
                v.bytes,
                "{ctx}: encode"
            );
            let mut dirty = vec![0x5a; v.bytes.len()];
            want.encode_into(&mut dirty).unwrap();
            assert_eq!(dirty, v.bytes, "{ctx}: encode_into must zero the padding");
        } else {
            panic!("{ctx}: file name does not say what it holds");
        }
    }
}

#[test]
fn every_link_and_relay_command_has_a_vector() {
    let vectors = load_all();
    let mut link_cmds = BTreeSet::new();
    let mut relay_cmds = BTreeSet::new();
    for v in &vectors {
        if v.file.starts_with("link_") {
            link_cmds.insert(v.bytes[0]);
        } else if v.file.starts_with("relay_") {
            relay_cmds.insert(v.bytes[0]);
        }
    }
    assert_eq!(link_cmds, (0u8..=4).collect());
    for cmd in 1u8..=11 {
        assert!(
            relay_cmds.contains(&cmd),
            "no vector for relay command {cmd}"
        );
    }
    assert!(
        relay_cmds.iter().any(|&c| c >= 128),
        "no ignorable unknown command vector"
    );
    assert!(
        relay_cmds.iter().any(|&c| c == 0 || (12..128).contains(&c)),
        "no fatal unknown vector"
    );
}

#[test]
fn vector_names_are_unique() {
    let vectors = load_all();
    let names: BTreeSet<_> = vectors.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names.len(), vectors.len());
}

#[test]
fn encode_data_into_matches_the_data_vector() {
    let v = load_all()
        .into_iter()
        .find(|v| v.name == "data_hello")
        .unwrap();
    let mut out = vec![0xee; v.bytes.len()];
    shallot_cell::encode_data_into(StreamId(5), b"hello", &mut out).unwrap();
    assert_eq!(out, v.bytes);
}
