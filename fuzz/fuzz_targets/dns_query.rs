//! Fuzzes the client's DNS port decisions (specs/07 §8): arbitrary bytes as a UDP datagram
//! or a TCP stream must never panic, and every answer must be a DNS response hickory reads,
//! with the query's id, within the transport's size limit.
//!
//! Input: a control byte (which exit outcome to answer a lookup with, and how many answers),
//! then the bytes that arrived on the port.
#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Message, MessageType};
use libfuzzer_sys::fuzz_target;
use shallot_cell::ResolvedAnswer;
use shallot_proxy_proto::{
    DnsAction, DnsOutcome, MAX_ANSWER_TTL, MAX_DNS_QUERY, MAX_TCP_RESPONSE, MAX_UDP_RESPONSE,
    read_query, split_tcp_frame,
};

fuzz_target!(|data: &[u8]| {
    let Some((&control, bytes)) = data.split_first() else {
        return;
    };
    check_message(bytes, control);
    // The same bytes as a TCP stream: every whole frame is one message.
    let mut rest = bytes;
    while let Ok(Some((consumed, message))) = split_tcp_frame(rest) {
        assert!(consumed == message.len() + 2 && message.len() <= MAX_DNS_QUERY);
        check_message(message, control);
        rest = &rest[consumed..];
    }
});

fn check_message(bytes: &[u8], control: u8) {
    match read_query(bytes) {
        DnsAction::Drop => {}
        DnsAction::Reply(reply) => {
            let message = response_of(&reply, bytes);
            assert!(message.answers.is_empty());
        }
        DnsAction::Resolve(query) => {
            let outcome = outcome(control);
            for limit in [MAX_UDP_RESPONSE, MAX_TCP_RESPONSE] {
                let Some(reply) = query.respond(&outcome, limit) else {
                    continue;
                };
                assert!(reply.len() <= limit);
                let message = response_of(&reply, bytes);
                assert_eq!(message.queries.len(), 1);
                assert!(message.answers.iter().all(|r| r.ttl <= MAX_ANSWER_TTL));
            }
        }
    }
}

/// The response parses, is a response, and carries the query's id.
fn response_of(reply: &[u8], query: &[u8]) -> Message {
    let message = Message::from_vec(reply).expect("the front's own response parses");
    assert_eq!(message.metadata.message_type, MessageType::Response);
    assert_eq!(message.metadata.id.to_be_bytes(), query[..2]);
    message
}

fn outcome(control: u8) -> DnsOutcome {
    let count = usize::from(control >> 2) % 17;
    let ttl = u32::from(control).wrapping_mul(0x0101_0101);
    match control & 3 {
        0 => DnsOutcome::NoSuchName,
        1 => DnsOutcome::Unavailable,
        _ => DnsOutcome::Resolved(
            (0..count)
                .map(|i| match i % 3 {
                    0 => ResolvedAnswer::V4(Ipv4Addr::from(u32::try_from(i).unwrap_or(0)), ttl),
                    1 => ResolvedAnswer::V6(Ipv6Addr::LOCALHOST, ttl),
                    _ => ResolvedAnswer::Name(format!("n{i}.{}.example", "x".repeat(i * 14)), ttl),
                })
                .collect(),
        ),
    }
}
