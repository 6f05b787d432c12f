//! Fuzzes the sans-IO HTTP CONNECT handshake of the client's proxy port (specs/07 §6):
//! arbitrary bytes, fed whole and cut at arbitrary points, must give the same outcome, never
//! panic, never leave a full buffer (`HTTP_HANDSHAKE_BUFFER` bytes) waiting, and never accept a
//! head longer than `MAX_HTTP_HEAD`.
//!
//! Input: a control byte (its low two bits pick a prefix so that the later states are reached,
//! the third whether a padding header brings the head near `MAX_HTTP_HEAD`, the rest how many
//! cut bytes follow), the cut bytes (each a chunk length in units of 37 bytes, so a few cuts
//! span the whole buffer), then the bytes to feed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shallot_cell::{Host, check_hostname};
use shallot_proxy_proto::feed::{HttpOutcome as Outcome, feed_http};
use shallot_proxy_proto::{HttpAsk, HttpError, MAX_HTTP_HEAD};

const PREFIXES: [&[u8]; 4] = [
    b"",
    b"CONNECT ",
    b"CONNECT a.example:443 HTTP/1.1\r\n",
    b"GET http://a.example/ HTTP/1.1\r\n",
];

/// A header line that leaves 128 bytes of room below `MAX_HTTP_HEAD` after the longest prefix.
const PADDING: [u8; MAX_HTTP_HEAD - 128] = {
    let mut line = [b'a'; MAX_HTTP_HEAD - 128];
    let start = b"X-Pad: ";
    let mut i = 0;
    while i < start.len() {
        line[i] = start[i];
        i += 1;
    }
    line[MAX_HTTP_HEAD - 130] = b'\r';
    line[MAX_HTTP_HEAD - 129] = b'\n';
    line
};

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let cut_count = usize::from(control >> 3) % 16;
    let Some((cuts, payload)) = rest.split_at_checked(cut_count.min(rest.len())) else {
        return;
    };
    // libFuzzer grows inputs slowly; the padding lets it probe both sides of the bound at once.
    let padding: &[u8] = if control & 4 == 0 { b"" } else { &PADDING };
    let input = [PREFIXES[usize::from(control & 3)], padding, payload].concat();

    let whole = feed_http(&[&input]);
    if let Outcome::Failed(err) = &whole {
        let _ = err.to_string();
        if !matches!(err, HttpError::AlreadyOver) {
            assert!(err.reply_before_close().is_some());
        }
    }
    let mut chunks: Vec<&[u8]> = Vec::new();
    let mut left = &input[..];
    for &cut in cuts {
        let (chunk, tail) = left.split_at((usize::from(cut) * 37).min(left.len()));
        chunks.push(chunk);
        left = tail;
    }
    chunks.push(left);
    assert_eq!(feed_http(&chunks), whole, "a split changed the outcome");

    if let Outcome::Finished(request, _) = &whole {
        match &request.ask {
            HttpAsk::Connect(Host::Name(name), _) => {
                assert!(check_hostname(name.as_bytes()).is_ok());
            }
            HttpAsk::Connect(..) => {}
            HttpAsk::Refuse(refusal) => {
                assert!(refusal.response().starts_with(b"HTTP/1.1 4"));
            }
        }
    }
});
