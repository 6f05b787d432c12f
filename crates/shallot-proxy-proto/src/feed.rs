//! A reference shell for the handshakes: feeds an input already in memory, cut into chunks,
//! exactly as the client's IO drivers do (append each chunk to a buffer, call the handshake
//! until it wants more, drain what it consumed), and checks the handshakes' promises on the
//! way. The unit tests and the fuzz targets compare the outcome of one cut with another's; a
//! broken promise is a bug in this crate, so it panics.

use crate::err::{HttpError, SocksError};
use crate::http::{HTTP_HANDSHAKE_BUFFER, HttpConnectHandshake, HttpRequest, MAX_HTTP_HEAD};
use crate::socks::{MAX_SOCKS_MESSAGE, SocksHandshake, SocksRequest};

/// How feeding a SOCKS5 input ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocksOutcome {
    /// Finished: the request and the bytes left after it (the rest of the buffer and every
    /// chunk not fed: what the shell reads later is the application's data).
    Finished(SocksRequest, Vec<u8>),
    /// Failed with this error.
    Failed(SocksError),
    /// Every byte was fed and the handshake still wants more.
    Incomplete,
}

/// How feeding an HTTP CONNECT input ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpOutcome {
    /// Finished: the request and the bytes after the head.
    Finished(HttpRequest, Vec<u8>),
    /// Failed with this error.
    Failed(HttpError),
    /// Every byte was fed and the head is still incomplete.
    Incomplete,
}

/// Feeds `chunks` to a new [`SocksHandshake`]; returns every reply byte and the outcome.
///
/// # Panics
/// If the handshake breaks a promise: it drains nothing or more than it has, or more than
/// [`MAX_SOCKS_MESSAGE`]; it waits with a full buffer; or it answers after it finished.
pub fn feed_socks(chunks: &[&[u8]]) -> (Vec<u8>, SocksOutcome) {
    let mut hs = SocksHandshake::new();
    let mut buf = Vec::new();
    let mut replies = Vec::new();
    for (fed, chunk) in chunks.iter().enumerate() {
        buf.extend_from_slice(chunk);
        loop {
            match hs.handshake(&buf) {
                Ok(Some(action)) => {
                    assert!(action.drain > 0 && action.drain <= buf.len());
                    assert!(action.drain <= MAX_SOCKS_MESSAGE);
                    buf.drain(..action.drain);
                    replies.extend_from_slice(&action.reply);
                    if let Some(request) = action.finished {
                        assert_eq!(hs.handshake(&buf), Err(SocksError::AlreadyOver));
                        let rest = [buf, chunks[fed + 1..].concat()].concat();
                        return (replies, SocksOutcome::Finished(request, rest));
                    }
                }
                Ok(None) => {
                    assert!(buf.len() < MAX_SOCKS_MESSAGE, "waits with a full buffer");
                    break;
                }
                Err(err) => {
                    assert_eq!(hs.handshake(&buf), Err(SocksError::AlreadyOver));
                    return (replies, SocksOutcome::Failed(err));
                }
            }
        }
    }
    (replies, SocksOutcome::Incomplete)
}

/// Feeds `chunks` to a new [`HttpConnectHandshake`].
///
/// # Panics
/// If the handshake breaks a promise: it drains nothing or more than it has, or a head longer
/// than [`MAX_HTTP_HEAD`]; it waits with a full buffer; or it answers after it finished.
pub fn feed_http(chunks: &[&[u8]]) -> HttpOutcome {
    let mut hs = HttpConnectHandshake::new();
    let mut buf = Vec::new();
    for (fed, chunk) in chunks.iter().enumerate() {
        buf.extend_from_slice(chunk);
        match hs.handshake(&buf) {
            Ok(Some(action)) => {
                assert!(action.drain > 0 && action.drain <= buf.len());
                assert!(action.drain <= MAX_HTTP_HEAD);
                assert_eq!(hs.handshake(&buf), Err(HttpError::AlreadyOver));
                let rest = [&buf[action.drain..], &chunks[fed + 1..].concat()].concat();
                return HttpOutcome::Finished(action.finished, rest);
            }
            Ok(None) => assert!(buf.len() < HTTP_HANDSHAKE_BUFFER, "waits when full"),
            Err(err) => {
                assert_eq!(hs.handshake(&buf), Err(HttpError::AlreadyOver));
                return HttpOutcome::Failed(err);
            }
        }
    }
    HttpOutcome::Incomplete
}

/// `input` cut at the given points (each taken modulo one more than its length).
pub fn split_at<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.sort_unstable();
    let mut pieces = Vec::new();
    let mut from = 0;
    for p in points {
        pieces.push(&input[from..p]);
        from = p;
    }
    pieces.push(&input[from..]);
    pieces
}
