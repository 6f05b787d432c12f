//! Fuzzes the sans-IO SOCKS5 handshake of the client's proxy port (specs/07 §3, §4): arbitrary
//! bytes, fed whole and cut at arbitrary points, must give the same answers and outcome, never
//! panic, and never leave a full buffer (`MAX_SOCKS_MESSAGE` bytes) waiting.
//!
//! Input: a control byte (its low two bits pick a valid prefix so that the later states are
//! reached, the rest how many cut bytes follow), the cut bytes, then the bytes to feed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shallot_cell::{Host, check_hostname};
use shallot_proxy_proto::feed::{SocksOutcome as Outcome, feed_socks};
use shallot_proxy_proto::{SocksAsk, encode_reply};
use socks5_server::proto::{Address, Reply};

const PREFIXES: [&[u8]; 4] = [b"", &[5, 1, 0], &[5, 1, 2], &[5, 1, 2, 1, 1, b'u', 1, b'p']];

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let cut_count = usize::from(control >> 2) % 16;
    let Some((cuts, payload)) = rest.split_at_checked(cut_count.min(rest.len())) else {
        return;
    };
    let input = [PREFIXES[usize::from(control & 3)], payload].concat();

    let whole = feed_socks(&[&input]);
    if let (_, Outcome::Failed(err)) = &whole {
        let _ = err.to_string();
        let _ = err.reply_before_close();
    }
    let mut chunks: Vec<&[u8]> = Vec::new();
    let mut left = &input[..];
    for &cut in cuts {
        let (chunk, tail) = left.split_at(usize::from(cut).min(left.len()));
        chunks.push(chunk);
        left = tail;
    }
    chunks.push(left);
    assert_eq!(feed_socks(&chunks), whole, "a split changed the outcome");

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
