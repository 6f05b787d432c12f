//! The HTTP CONNECT request head as a sans-IO handshake: specs/07 §6. Any method other than
//! CONNECT is refused with a 405 page that says to use CONNECT or SOCKS5: the client never
//! fetches plain HTTP itself.

use std::net::IpAddr;

use shallot_cell::{Host, check_hostname};

use crate::err::HttpError;

/// Largest HTTP request head (request line and headers) accepted, in bytes (specs/07 §6).
pub const MAX_HTTP_HEAD: usize = 8192;
/// Most headers in a request head (specs/07 §6).
pub const MAX_HTTP_HEADERS: usize = 64;
/// A caller that buffers this many bytes always lets [`HttpConnectHandshake::handshake`]
/// finish or fail: one byte past the largest head proves the head too large.
pub const HTTP_HANDSHAKE_BUFFER: usize = MAX_HTTP_HEAD + 1;

/// The answer to a CONNECT once the stream is open (specs/07 §6).
pub const CONNECT_ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

/// What the application asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpAsk {
    /// CONNECT to this host and port (handled as a SOCKS5 CONNECT, specs/07 §3.5).
    Connect(Host, u16),
    /// Answer with [`HttpRefusal::response`], then close.
    Refuse(HttpRefusal),
}

/// A well-formed head this proxy does not serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpRefusal {
    /// A method other than CONNECT (a plain-HTTP proxy request): 405.
    MethodNotAllowed,
    /// A CONNECT target that is not `host:port`: 400.
    BadTarget,
}

impl HttpRefusal {
    /// The whole response, `Connection: close` included.
    pub fn response(self) -> Vec<u8> {
        match self {
            Self::MethodNotAllowed => http_response(
                405,
                "Method Not Allowed",
                "This is Shallot's proxy port. It does not fetch plain HTTP: configure your \
                 application to use it as an HTTPS proxy (HTTP CONNECT) or as a SOCKS5 proxy \
                 (socks5h://), so that names are resolved by the exit.",
            ),
            Self::BadTarget => http_response(
                400,
                "Bad Request",
                "CONNECT needs a target of the form host:port.",
            ),
        }
    }
}

/// The finished request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// The `Proxy-Authorization` value as sent, if any: the isolation key (specs/07 §6). It is
    /// never decoded.
    pub proxy_authorization: Option<Vec<u8>>,
    /// The request.
    pub ask: HttpAsk,
}

/// The end of the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAction {
    /// Length of the head; the bytes after it are the application's own data (optimistic data
    /// for a CONNECT).
    pub drain: usize,
    /// What the application asked for.
    pub finished: HttpRequest,
}

/// The server side of one HTTP proxy request head, without IO.
#[derive(Debug, Clone, Default)]
pub struct HttpConnectHandshake {
    over: bool,
}

impl HttpConnectHandshake {
    /// A handshake waiting for the head.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses the head at the front of `input` (every byte received so far). `Ok(None)`: the
    /// head is not complete yet (never when `input` holds [`HTTP_HANDSHAKE_BUFFER`] bytes or
    /// more); call again with more bytes. Every error closes the connection, after
    /// [`HttpError::reply_before_close`]. Once finished or failed, every call fails with
    /// [`HttpError::AlreadyOver`].
    pub fn handshake(&mut self, input: &[u8]) -> Result<Option<HttpAction>, HttpError> {
        if self.over {
            return Err(HttpError::AlreadyOver);
        }
        let step = parse_head(input);
        if !matches!(step, Ok(None)) {
            self.over = true;
        }
        step
    }
}

fn parse_head(input: &[u8]) -> Result<Option<HttpAction>, HttpError> {
    // Only the bytes a bounded caller could hold are judged, so that the outcome does not
    // depend on how the input was cut: a flaw past the bound is never seen by a shell that
    // already failed the head as too large.
    let input = input.get(..HTTP_HANDSHAKE_BUFFER).unwrap_or(input);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HTTP_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(input) {
        Ok(httparse::Status::Complete(len)) if len > MAX_HTTP_HEAD => {
            return Err(HttpError::HeadTooLarge);
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if input.len() > MAX_HTTP_HEAD => {
            return Err(HttpError::HeadTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(err) => return Err(HttpError::Malformed(err)),
    };
    let proxy_authorization = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("proxy-authorization"))
        .map(|h| h.value.to_vec());
    // A complete head always has both; an empty one would be refused below all the same.
    let method = req.method.unwrap_or_default();
    let target = req.path.unwrap_or_default();
    let ask = if !method.eq_ignore_ascii_case("CONNECT") {
        HttpAsk::Refuse(HttpRefusal::MethodNotAllowed)
    } else {
        match parse_target(target) {
            Some((host, port)) => HttpAsk::Connect(host, port),
            None => HttpAsk::Refuse(HttpRefusal::BadTarget),
        }
    };
    Ok(Some(HttpAction {
        drain: len,
        finished: HttpRequest {
            proxy_authorization,
            ask,
        },
    }))
}

/// `host:port`, `[v6]:port` → HOST and port. Names are checked, never resolved.
fn parse_target(target: &str) -> Option<(Host, u16)> {
    let (host, port) = target.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        match inner.parse::<IpAddr>().ok()? {
            IpAddr::V6(ip) => Host::V6(ip),
            IpAddr::V4(_) => return None,
        }
    } else {
        match host.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => Host::V4(ip),
            Ok(IpAddr::V6(_)) => return None,
            Err(_) => {
                if host.contains([':', '[', ']']) {
                    return None;
                }
                check_hostname(host.as_bytes()).ok()?;
                Host::Name(host.to_owned())
            }
        }
    };
    Some((host, port))
}

/// A complete HTTP/1.1 response with a short HTML page, ending the connection
/// (`Connection: close`); a 405 names CONNECT in `Allow`.
pub fn http_response(code: u16, reason: &str, body: &str) -> Vec<u8> {
    let page = format!(
        "<html><head><title>{code} {reason}</title></head><body><h1>{reason}</h1><p>{body}</p></body></html>\n"
    );
    let allow = if code == 405 {
        "Allow: CONNECT\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {code} {reason}\r\n{allow}Content-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
        page.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::feed::{HttpOutcome as Outcome, feed_http, split_at};

    fn all_at_once(input: &[u8]) -> Outcome {
        feed_http(&[input])
    }

    fn byte_at_a_time(input: &[u8]) -> Outcome {
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        feed_http(&bytes)
    }

    fn asked(ask: HttpAsk, auth: Option<&[u8]>, rest: &[u8]) -> Outcome {
        Outcome::Finished(
            HttpRequest {
                proxy_authorization: auth.map(<[u8]>::to_vec),
                ask,
            },
            rest.to_vec(),
        )
    }

    /// A head of exactly `len` bytes: a CONNECT with one padding header.
    fn head_of_len(len: usize) -> Vec<u8> {
        let start = b"CONNECT example.com:443 HTTP/1.1\r\nX-Pad: ";
        let end = b"\r\n\r\n";
        let pad = len - start.len() - end.len();
        [&start[..], &vec![b'a'; pad], end].concat()
    }

    fn with_headers(count: usize) -> Vec<u8> {
        [
            b"CONNECT e.com:1 HTTP/1.1\r\n".to_vec(),
            b"A: b\r\n".repeat(count),
            b"\r\n".to_vec(),
        ]
        .concat()
    }

    fn fixtures() -> Vec<(Vec<u8>, Outcome)> {
        let example = Host::Name("example.com".into());
        vec![
            (
                b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\nEARLY".to_vec(),
                asked(HttpAsk::Connect(example.clone(), 443), None, b"EARLY"),
            ),
            (
                b"connect 10.0.0.1:80 HTTP/1.0\r\n\r\n".to_vec(),
                asked(
                    HttpAsk::Connect(Host::V4([10, 0, 0, 1].into()), 80),
                    None,
                    b"",
                ),
            ),
            (
                b"CONNECT [::1]:8443 HTTP/1.1\r\n\r\n".to_vec(),
                asked(
                    HttpAsk::Connect(Host::V6(std::net::Ipv6Addr::LOCALHOST), 8443),
                    None,
                    b"",
                ),
            ),
            (
                b"CONNECT a.example:443 HTTP/1.1\r\nproxy-authorization: Basic dTpw\r\n\r\n"
                    .to_vec(),
                asked(
                    HttpAsk::Connect(Host::Name("a.example".into()), 443),
                    Some(b"Basic dTpw"),
                    b"",
                ),
            ),
            (
                b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n".to_vec(),
                asked(HttpAsk::Refuse(HttpRefusal::MethodNotAllowed), None, b""),
            ),
            (
                b"CONNECT nohostport HTTP/1.1\r\n\r\n".to_vec(),
                asked(HttpAsk::Refuse(HttpRefusal::BadTarget), None, b""),
            ),
            (
                head_of_len(MAX_HTTP_HEAD),
                asked(HttpAsk::Connect(example.clone(), 443), None, b""),
            ),
            (
                head_of_len(MAX_HTTP_HEAD + 1),
                Outcome::Failed(HttpError::HeadTooLarge),
            ),
            // Found by the fuzzer: a flaw past the bound is not judged; the head is too large
            // however the bytes arrive.
            (
                [
                    &b"CONNECT example.com:443 HTTP/1.1\r\nX-Pad: "[..],
                    &[b'a'; HTTP_HANDSHAKE_BUFFER],
                    b"\r\n\x01\r\n\r\n",
                ]
                .concat(),
                Outcome::Failed(HttpError::HeadTooLarge),
            ),
            (
                with_headers(MAX_HTTP_HEADERS),
                asked(HttpAsk::Connect(Host::Name("e.com".into()), 1), None, b""),
            ),
            (
                with_headers(MAX_HTTP_HEADERS + 1),
                Outcome::Failed(HttpError::TooManyHeaders),
            ),
            (
                b"CONNECT \x01\x02 garbage\r\n\r\n".to_vec(),
                Outcome::Failed(HttpError::Malformed(httparse::Error::Token)),
            ),
        ]
    }

    #[test]
    fn every_fixture_gives_its_outcome_whole_and_byte_by_byte() {
        for (input, outcome) in fixtures() {
            let whole = all_at_once(&input);
            assert_eq!(whole, outcome, "{}", String::from_utf8_lossy(&input));
            assert_eq!(byte_at_a_time(&input), whole);
        }
    }

    #[test]
    fn an_unfinished_head_waits_until_it_passes_the_bound() {
        let endless = [
            &b"CONNECT example.com:443 HTTP/1.1\r\nX-Pad: "[..],
            &[b'a'; MAX_HTTP_HEAD],
        ]
        .concat();
        let mut hs = HttpConnectHandshake::new();
        assert_eq!(hs.handshake(&endless[..MAX_HTTP_HEAD]), Ok(None));
        assert_eq!(
            hs.handshake(&endless[..HTTP_HANDSHAKE_BUFFER]),
            Err(HttpError::HeadTooLarge)
        );
    }

    #[test]
    fn error_answers() {
        let page = |e: HttpError| String::from_utf8(e.reply_before_close().expect("page"));
        assert!(
            page(HttpError::HeadTooLarge)
                .expect("utf-8")
                .starts_with("HTTP/1.1 431 ")
        );
        assert!(
            page(HttpError::TooManyHeaders)
                .expect("utf-8")
                .starts_with("HTTP/1.1 431 ")
        );
        let bad = page(HttpError::Malformed(httparse::Error::Version)).expect("utf-8");
        assert!(bad.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{bad}");
        assert_eq!(HttpError::AlreadyOver.reply_before_close(), None);
        let refusal = String::from_utf8(HttpRefusal::MethodNotAllowed.response()).expect("utf-8");
        assert!(refusal.starts_with("HTTP/1.1 405 Method Not Allowed\r\nAllow: CONNECT\r\n"));
        assert!(refusal.contains("SOCKS5"));
        let target = String::from_utf8(HttpRefusal::BadTarget.response()).expect("utf-8");
        assert!(
            target.starts_with("HTTP/1.1 400 Bad Request\r\nContent-Type"),
            "{target}"
        );
    }

    #[test]
    fn responses_announce_their_exact_length() {
        let response = http_response(502, "Bad Gateway", "no");
        let text = String::from_utf8(response).expect("utf-8");
        let (head, page) = text.split_once("\r\n\r\n").expect("head");
        assert!(
            head.contains(&format!("Content-Length: {}", page.len())),
            "{head}"
        );
        assert!(head.ends_with("Connection: close"));
    }

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("example.com:443"),
            Some((Host::Name("example.com".into()), 443))
        );
        assert_eq!(
            parse_target("10.0.0.1:80"),
            Some((Host::V4([10, 0, 0, 1].into()), 80))
        );
        assert_eq!(
            parse_target("[::1]:8443"),
            Some((Host::V6(std::net::Ipv6Addr::LOCALHOST), 8443))
        );
        for bad in [
            "example.com",
            "example.com:x",
            ":80",
            "[::1:80",
            "::1:80",
            "[10.0.0.1]:80",
            "a\u{7f}b:1",
            "a.example:65536",
        ] {
            assert_eq!(parse_target(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn any_split_of_a_fixture_gives_the_same_outcome(
            which in 0usize..64,
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let all = fixtures();
            let (input, outcome) = &all[which % all.len()];
            prop_assert_eq!(&feed_http(&split_at(input, &cuts)), outcome);
        }

        /// A CONNECT head followed by arbitrary bytes: no panic, and `run` checks that a full
        /// buffer never waits.
        #[test]
        fn arbitrary_input_never_panics_nor_waits_on_a_full_buffer(
            prefix in prop_oneof![
                Just(Vec::new()),
                Just(b"CONNECT ".to_vec()),
                Just(b"CONNECT a:1 HTTP/1.1\r\n".to_vec()),
            ],
            noise in proptest::collection::vec(any::<u8>(), 0..64),
            pad in 0usize..(2 * HTTP_HANDSHAKE_BUFFER),
            cuts in proptest::collection::vec(any::<usize>(), 0..4),
        ) {
            let input = [prefix, noise, vec![b'a'; pad]].concat();
            let whole = all_at_once(&input);
            prop_assert_eq!(feed_http(&split_at(&input, &cuts)), whole);
        }
    }
}
