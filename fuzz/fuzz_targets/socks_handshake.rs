//! Fuzzes the sans-IO SOCKS5 handshake of the client's proxy port (specs/07 §3, §4): arbitrary
//! bytes, fed whole and cut at arbitrary points, must give the same answers and outcome, never
//! panic, and never leave a full buffer (`MAX_SOCKS_MESSAGE` bytes) waiting.
//!
//! Input: a control byte (its low two bits pick a valid prefix so that the later states are
//! reached, the rest how many cut bytes follow), the cut bytes, then the bytes to feed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shallot_cell::{Host, check_hostname};
use shallot_proxy_proto::{
    MAX_SOCKS_MESSAGE, SocksAsk, SocksError, SocksHandshake, SocksRequest, encode_reply,
};
use socks5_server::proto::{Address, Reply};

const PREFIXES: [&[u8]; 4] = [b"", &[5, 1, 0], &[5, 1, 2], &[5, 1, 2, 1, 1, b'u', 1, b'p']];

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Finished(SocksRequest, Vec<u8>),
    Failed(SocksError),
    Incomplete,
}

/// Feeds the chunks as an IO shell would; returns the answers and the outcome (the leftover of
/// a finished handshake is the rest of the buffer and every chunk not fed).
fn run(chunks: &[&[u8]]) -> (Vec<u8>, Outcome) {
    let mut machine = SocksHandshake::new();
    let mut buf = Vec::new();
    let mut replies = Vec::new();
    for (fed, chunk) in chunks.iter().enumerate() {
        buf.extend_from_slice(chunk);
        loop {
            match machine.handshake(&buf) {
                Ok(Some(action)) => {
                    assert!(action.drain > 0 && action.drain <= buf.len());
                    assert!(action.drain <= MAX_SOCKS_MESSAGE);
                    buf.drain(..action.drain);
                    replies.extend_from_slice(&action.reply);
                    if let Some(request) = action.finished {
                        assert_eq!(machine.handshake(&buf), Err(SocksError::AlreadyOver));
                        let rest = [buf, chunks[fed + 1..].concat()].concat();
                        return (replies, Outcome::Finished(request, rest));
                    }
                }
                Ok(None) => {
                    assert!(buf.len() < MAX_SOCKS_MESSAGE, "waits with a full buffer");
                    break;
                }
                Err(err) => {
                    let _ = err.to_string();
                    let _ = err.reply_before_close();
                    assert_eq!(machine.handshake(&buf), Err(SocksError::AlreadyOver));
                    return (replies, Outcome::Failed(err));
                }
            }
        }
    }
    (replies, Outcome::Incomplete)
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let cut_count = usize::from(control >> 2) % 16;
    let Some((cuts, payload)) = rest.split_at_checked(cut_count.min(rest.len())) else {
        return;
    };
    let input = [PREFIXES[usize::from(control & 3)], payload].concat();

    let whole = run(&[&input]);
    let mut chunks: Vec<&[u8]> = Vec::new();
    let mut left = &input[..];
    for &cut in cuts {
        let (chunk, tail) = left.split_at(usize::from(cut).min(left.len()));
        chunks.push(chunk);
        left = tail;
    }
    chunks.push(left);
    assert_eq!(run(&chunks), whole, "a split changed the outcome");

    if let (_, Outcome::Finished(request, _)) = &whole {
        match &request.ask {
            SocksAsk::Connect(Host::Name(name), _) | SocksAsk::Resolve(Host::Name(name)) => {
                assert!(check_hostname(name.as_bytes()).is_ok());
                assert!(
                    name.parse::<std::net::IpAddr>().is_err(),
                    "a literal stays a name"
                );
            }
            SocksAsk::Resolve(host) => panic!("RESOLVE of an address: {host:?}"),
            SocksAsk::ResolvePtr(Host::Name(name)) => panic!("RESOLVE_PTR of a name: {name}"),
            SocksAsk::Connect(..) | SocksAsk::ResolvePtr(_) => {}
            SocksAsk::Refuse(reply) => {
                let encoded = encode_reply(*reply, Address::unspecified());
                assert_eq!(encoded.len(), 10);
                assert_ne!(*reply, Reply::Succeeded);
            }
        }
    }
});
