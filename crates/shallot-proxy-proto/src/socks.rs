//! The SOCKS5 handshake (RFC 1928, RFC 1929, Tor's RESOLVE and RESOLVE_PTR) as a sans-IO state
//! machine: specs/07 §3, §4.
//!
//! `socks5-server`'s codec (`socks5_server::proto`) encodes every answer and names the
//! methods, replies and addresses. Its readers are async and its connection state machine fixes
//! one authentication method per server and refuses 0xF0/0xF1, so the bytes are parsed here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use shallot_cell::{Host, check_hostname};
use socks5_server::proto::handshake::{self, Method, password};
use socks5_server::proto::{Address, Reply, Response};

use crate::err::SocksError;

/// The SOCKS version byte of greetings and requests.
const SOCKS_VERSION: u8 = 0x05;
/// RFC 1929's subnegotiation version.
const PASSWORD_VERSION: u8 = 0x01;

/// CONNECT (specs/07 §3.3).
pub const CMD_CONNECT: u8 = 0x01;
/// BIND: refused with 0x07.
pub const CMD_BIND: u8 = 0x02;
/// UDP ASSOCIATE: refused with 0x07.
pub const CMD_UDP_ASSOCIATE: u8 = 0x03;
/// Tor's RESOLVE command (specs/07 §4).
pub const CMD_RESOLVE: u8 = 0xF0;
/// Tor's RESOLVE_PTR command (specs/07 §4).
pub const CMD_RESOLVE_PTR: u8 = 0xF1;

const ATYP_V4: u8 = 0x01;
const ATYP_NAME: u8 = 0x03;
const ATYP_V6: u8 = 0x04;

/// The longest message of the handshake: a username/password request with a 255-byte name and
/// password (1 + 1 + 255 + 1 + 255). A greeting is at most 257 bytes, a request 262. A caller
/// that buffers this many bytes always lets [`SocksHandshake::handshake`] progress or fail.
pub const MAX_SOCKS_MESSAGE: usize = 513;

/// The credentials the application gave: the isolation key (specs/07 §3.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Credentials {
    /// "No authentication" was chosen.
    #[default]
    None,
    /// RFC 1929 username and password, as sent (accepted whatever they are).
    UserPass {
        /// The username bytes (0..=255).
        user: Vec<u8>,
        /// The password bytes (0..=255).
        pass: Vec<u8>,
    },
}

/// What the application asked for, once the handshake finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocksAsk {
    /// CONNECT to this host and port (specs/07 §3.5).
    Connect(Host, u16),
    /// RESOLVE of this name (specs/07 §4); always a [`Host::Name`].
    Resolve(Host),
    /// RESOLVE_PTR of this address (specs/07 §4); always [`Host::V4`] or [`Host::V6`].
    ResolvePtr(Host),
    /// Answer with this reply (and an unspecified address), then close.
    Refuse(Reply),
}

/// The finished request: who asked (the isolation key) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocksRequest {
    /// The credentials of the handshake.
    pub credentials: Credentials,
    /// The request.
    pub ask: SocksAsk,
}

/// One step of the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocksAction {
    /// How many bytes of the input were consumed; the caller drops them before the next call.
    pub drain: usize,
    /// Bytes to send to the application now (may be empty).
    pub reply: Vec<u8>,
    /// Set on the last step: what the application asked for. Bytes after the request are the
    /// application's own data (optimistic data for a CONNECT).
    pub finished: Option<SocksRequest>,
}

/// Where the handshake is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Greeting,
    Password,
    Request,
    Over,
}

/// The server side of one SOCKS5 handshake, without IO: feed it the bytes received so far.
#[derive(Debug, Clone)]
pub struct SocksHandshake {
    state: State,
    credentials: Credentials,
}

impl Default for SocksHandshake {
    fn default() -> Self {
        Self::new()
    }
}

impl SocksHandshake {
    /// A handshake waiting for the greeting.
    pub fn new() -> Self {
        Self {
            state: State::Greeting,
            credentials: Credentials::None,
        }
    }

    /// Reads the next message from the front of `input` (the bytes received and not yet
    /// drained). `Ok(None)`: `input` holds no complete message yet (never when it holds
    /// [`MAX_SOCKS_MESSAGE`] bytes or more); call again with more bytes. Every error closes
    /// the connection, after [`SocksError::reply_before_close`]. Once finished or failed, every
    /// call fails with [`SocksError::AlreadyOver`].
    pub fn handshake(&mut self, input: &[u8]) -> Result<Option<SocksAction>, SocksError> {
        let step = match self.state {
            State::Greeting => self.greeting(input),
            State::Password => self.password(input),
            State::Request => self.request(input),
            State::Over => Err(SocksError::AlreadyOver),
        };
        if step.is_err() {
            self.state = State::Over;
        }
        step
    }

    /// `VER | NMETHODS | METHODS`: choose username/password if offered, else no
    /// authentication (specs/07 §3.1).
    fn greeting(&mut self, input: &[u8]) -> Result<Option<SocksAction>, SocksError> {
        let Some((&version, rest)) = input.split_first() else {
            return Ok(None);
        };
        if version != SOCKS_VERSION {
            return Err(SocksError::Version(version));
        }
        let Some((&count, rest)) = rest.split_first() else {
            return Ok(None);
        };
        let Some(methods) = rest.get(..usize::from(count)) else {
            return Ok(None);
        };
        // Prefer username/password when offered: the credentials are the isolation key.
        let (method, next) = if methods.contains(&u8::from(Method::PASSWORD)) {
            (Method::PASSWORD, State::Password)
        } else if methods.contains(&u8::from(Method::NONE)) {
            (Method::NONE, State::Request)
        } else {
            return Err(SocksError::NoAcceptableMethod);
        };
        self.state = next;
        let mut reply = Vec::with_capacity(2);
        handshake::Response::new(method).write_to_buf(&mut reply);
        Ok(Some(SocksAction {
            drain: 2 + methods.len(),
            reply,
            finished: None,
        }))
    }

    /// `0x01 | ULEN | UNAME | PLEN | PASSWD`: any credentials are accepted, they only isolate
    /// (specs/07 §3.2).
    fn password(&mut self, input: &[u8]) -> Result<Option<SocksAction>, SocksError> {
        let Some((&version, rest)) = input.split_first() else {
            return Ok(None);
        };
        if version != PASSWORD_VERSION {
            return Err(SocksError::PasswordVersion(version));
        }
        let Some((user, rest)) = length_prefixed(rest) else {
            return Ok(None);
        };
        let Some((pass, _)) = length_prefixed(rest) else {
            return Ok(None);
        };
        let drain = 3 + user.len() + pass.len();
        self.credentials = Credentials::UserPass {
            user: user.to_vec(),
            pass: pass.to_vec(),
        };
        self.state = State::Request;
        let mut reply = Vec::with_capacity(2);
        password::Response::new(true).write_to_buf(&mut reply);
        Ok(Some(SocksAction {
            drain,
            reply,
            finished: None,
        }))
    }

    /// `VER | CMD | RSV | ATYP | DST.ADDR | DST.PORT`, handled in the order of specs/07 §3.3.
    fn request(&mut self, input: &[u8]) -> Result<Option<SocksAction>, SocksError> {
        // The whole header is read before it is judged, so a refusal never comes early.
        let Some((&[version, command, _reserved, address_type], rest)) =
            input.split_first_chunk::<4>()
        else {
            return Ok(None);
        };
        if version != SOCKS_VERSION {
            return Err(SocksError::Version(version));
        }
        let refuse_now = if !matches!(address_type, ATYP_V4 | ATYP_NAME | ATYP_V6) {
            Some(Reply::AddressTypeNotSupported)
        } else if !matches!(
            command,
            CMD_CONNECT | CMD_BIND | CMD_UDP_ASSOCIATE | CMD_RESOLVE | CMD_RESOLVE_PTR
        ) {
            Some(Reply::CommandNotSupported)
        } else {
            None
        };
        if let Some(reply) = refuse_now {
            return Ok(Some(self.finish(4, SocksAsk::Refuse(reply))));
        }
        let Some((address, address_len)) = parse_address(address_type, rest) else {
            return Ok(None);
        };
        let ask = match command {
            CMD_CONNECT => match to_host(address) {
                Some((host, port)) => SocksAsk::Connect(host, port),
                None => SocksAsk::Refuse(Reply::HostUnreachable),
            },
            CMD_RESOLVE => match to_host(address) {
                Some((host @ Host::Name(_), _)) => SocksAsk::Resolve(host),
                // RESOLVE of an address: nothing to look up (specs/07 §4).
                Some(_) | None => SocksAsk::Refuse(Reply::HostUnreachable),
            },
            CMD_RESOLVE_PTR => match to_host(address) {
                Some((host @ (Host::V4(_) | Host::V6(_)), _)) => SocksAsk::ResolvePtr(host),
                _ => SocksAsk::Refuse(Reply::AddressTypeNotSupported),
            },
            // BIND and UDP ASSOCIATE: not offered (specs/07 §3.3); their address is read first.
            _ => SocksAsk::Refuse(Reply::CommandNotSupported),
        };
        Ok(Some(self.finish(4 + address_len, ask)))
    }

    fn finish(&mut self, drain: usize, ask: SocksAsk) -> SocksAction {
        self.state = State::Over;
        SocksAction {
            drain,
            reply: Vec::new(),
            finished: Some(SocksRequest {
                credentials: std::mem::take(&mut self.credentials),
                ask,
            }),
        }
    }
}

/// `LEN [1] | BYTES [LEN]` at the front of `input`, and what follows; `None` if truncated.
fn length_prefixed(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&len, rest) = input.split_first()?;
    let len = usize::from(len);
    Some((rest.get(..len)?, rest.get(len..)?))
}

/// DST.ADDR and DST.PORT of a known ATYP, and their length; `None` if truncated.
fn parse_address(address_type: u8, input: &[u8]) -> Option<(Address, usize)> {
    match address_type {
        ATYP_V4 => {
            let (ip, rest) = input.split_first_chunk::<4>()?;
            let port = u16::from_be_bytes(*rest.first_chunk::<2>()?);
            let addr = SocketAddr::new(Ipv4Addr::from(*ip).into(), port);
            Some((Address::SocketAddress(addr), 6))
        }
        ATYP_V6 => {
            let (ip, rest) = input.split_first_chunk::<16>()?;
            let port = u16::from_be_bytes(*rest.first_chunk::<2>()?);
            let addr = SocketAddr::new(Ipv6Addr::from(*ip).into(), port);
            Some((Address::SocketAddress(addr), 18))
        }
        _ => {
            let (name, rest) = length_prefixed(input)?;
            let port = u16::from_be_bytes(*rest.first_chunk::<2>()?);
            Some((
                Address::DomainAddress(name.to_vec(), port),
                1 + name.len() + 2,
            ))
        }
    }
}

/// A SOCKS5 address as a HOST (specs/07 §3.4): IP literals stay addresses, names are checked
/// and sent unresolved. `None` for a name the protocol cannot carry.
fn to_host(addr: Address) -> Option<(Host, u16)> {
    match addr {
        Address::SocketAddress(SocketAddr::V4(a)) => Some((Host::V4(*a.ip()), a.port())),
        Address::SocketAddress(SocketAddr::V6(a)) => Some((Host::V6(*a.ip()), a.port())),
        Address::DomainAddress(name, port) => {
            check_hostname(&name).ok()?;
            let name = String::from_utf8(name).ok()?;
            let host = match name.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) => Host::V4(ip),
                Ok(IpAddr::V6(ip)) => Host::V6(ip),
                Err(_) => Host::Name(name),
            };
            Some((host, port))
        }
    }
}

/// The reply to a request: `VER | REP | RSV | ATYP | BND.ADDR | BND.PORT` (specs/07 §3.5, §4).
pub fn encode_reply(reply: Reply, bound: Address) -> Vec<u8> {
    let response = Response::new(reply, bound);
    let mut out = Vec::with_capacity(response.serialized_len());
    response.write_to_buf(&mut out);
    out
}

/// A reply whose code is the byte `code`: RFC 1928's, or one of Tor's extended codes
/// (proposal 304, 0xF0..=0xF7, for onion service names) that `socks5-proto`'s `Reply` does not
/// list. The bound address is as in [`encode_reply`].
pub fn encode_reply_code(code: u8, bound: Address) -> Vec<u8> {
    let mut out = encode_reply(Reply::GeneralFailure, bound);
    // VER, REP, RSV, ATYP, ...: the code is the second byte.
    out[1] = code;
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::feed::{SocksOutcome as Outcome, feed_socks, split_at};

    fn all_at_once(input: &[u8]) -> (Vec<u8>, Outcome) {
        feed_socks(&[input])
    }

    fn byte_at_a_time(input: &[u8]) -> (Vec<u8>, Outcome) {
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        feed_socks(&bytes)
    }

    fn finished(ask: SocksAsk) -> Outcome {
        Outcome::Finished(
            SocksRequest {
                credentials: Credentials::None,
                ask,
            },
            Vec::new(),
        )
    }

    fn request(cmd: u8, atyp: u8, addr: &[u8], port: u16) -> Vec<u8> {
        [&[5, cmd, 0, atyp], addr, &port.to_be_bytes()].concat()
    }

    fn name(cmd: u8, host: &[u8], port: u16) -> Vec<u8> {
        let len = u8::try_from(host.len()).expect("short name");
        request(cmd, ATYP_NAME, &[&[len], host].concat(), port)
    }

    const NO_AUTH: &[u8] = &[5, 1, 0];

    /// Every valid exchange of the tests, with what it must give.
    fn fixtures() -> Vec<(Vec<u8>, Vec<u8>, Outcome)> {
        let example = Host::Name("example.com".into());
        vec![
            (
                [NO_AUTH, &name(CMD_CONNECT, b"example.com", 443)].concat(),
                vec![5, 0],
                finished(SocksAsk::Connect(example.clone(), 443)),
            ),
            // The application's first bytes, sent before the reply came, stay its data.
            (
                [NO_AUTH, &name(CMD_CONNECT, b"example.com", 443), b"GET /"].concat(),
                vec![5, 0],
                Outcome::Finished(
                    SocksRequest {
                        credentials: Credentials::None,
                        ask: SocksAsk::Connect(example.clone(), 443),
                    },
                    b"GET /".to_vec(),
                ),
            ),
            (
                [NO_AUTH, &request(CMD_CONNECT, ATYP_V4, &[10, 0, 0, 1], 80)].concat(),
                vec![5, 0],
                finished(SocksAsk::Connect(Host::V4([10, 0, 0, 1].into()), 80)),
            ),
            (
                [
                    NO_AUTH,
                    &request(CMD_CONNECT, ATYP_V6, &Ipv6Addr::LOCALHOST.octets(), 80),
                ]
                .concat(),
                vec![5, 0],
                finished(SocksAsk::Connect(Host::V6(Ipv6Addr::LOCALHOST), 80)),
            ),
            (
                [NO_AUTH, &name(CMD_CONNECT, b"10.1.2.3", 80)].concat(),
                vec![5, 0],
                finished(SocksAsk::Connect(Host::V4([10, 1, 2, 3].into()), 80)),
            ),
            (
                [NO_AUTH, &name(CMD_CONNECT, b"::1", 80)].concat(),
                vec![5, 0],
                finished(SocksAsk::Connect(Host::V6(Ipv6Addr::LOCALHOST), 80)),
            ),
            // Username/password is preferred, wherever it is in the list.
            (
                [
                    &[5, 2, 0, 2][..],
                    &[1, 1, b'u', 2, b'p', b'w'],
                    &request(CMD_CONNECT, ATYP_V4, &[1, 2, 3, 4], 80),
                ]
                .concat(),
                vec![5, 2, 1, 0],
                Outcome::Finished(
                    SocksRequest {
                        credentials: Credentials::UserPass {
                            user: b"u".to_vec(),
                            pass: b"pw".to_vec(),
                        },
                        ask: SocksAsk::Connect(Host::V4([1, 2, 3, 4].into()), 80),
                    },
                    Vec::new(),
                ),
            ),
            // Empty credentials are credentials too.
            (
                [
                    &[5, 1, 2][..],
                    &[1, 0, 0],
                    &name(CMD_RESOLVE, b"localhost", 0),
                ]
                .concat(),
                vec![5, 2, 1, 0],
                Outcome::Finished(
                    SocksRequest {
                        credentials: Credentials::UserPass {
                            user: Vec::new(),
                            pass: Vec::new(),
                        },
                        ask: SocksAsk::Resolve(Host::Name("localhost".into())),
                    },
                    Vec::new(),
                ),
            ),
            (
                [NO_AUTH, &name(CMD_RESOLVE, b"example.com", 0)].concat(),
                vec![5, 0],
                finished(SocksAsk::Resolve(example.clone())),
            ),
            (
                [
                    NO_AUTH,
                    &request(CMD_RESOLVE_PTR, ATYP_V4, &[127, 0, 0, 1], 0),
                ]
                .concat(),
                vec![5, 0],
                finished(SocksAsk::ResolvePtr(Host::V4(Ipv4Addr::LOCALHOST))),
            ),
            // RESOLVE_PTR of a literal name is of an address.
            (
                [NO_AUTH, &name(CMD_RESOLVE_PTR, b"127.0.0.1", 0)].concat(),
                vec![5, 0],
                finished(SocksAsk::ResolvePtr(Host::V4(Ipv4Addr::LOCALHOST))),
            ),
            // Refusals, in the order of specs/07 §3.3.
            (
                [NO_AUTH, &[5, CMD_CONNECT, 0, 7][..]].concat(),
                vec![5, 0],
                finished(SocksAsk::Refuse(Reply::AddressTypeNotSupported)),
            ),
            (
                [NO_AUTH, &[5, 9, 0, 7][..]].concat(),
                vec![5, 0],
                finished(SocksAsk::Refuse(Reply::AddressTypeNotSupported)),
            ),
            (
                [NO_AUTH, &[5, 9, 0, ATYP_V4][..]].concat(),
                vec![5, 0],
                finished(SocksAsk::Refuse(Reply::CommandNotSupported)),
            ),
            (
                [NO_AUTH, &request(CMD_BIND, ATYP_V4, &[0; 4], 0)].concat(),
                vec![5, 0],
                finished(SocksAsk::Refuse(Reply::CommandNotSupported)),
            ),
            (
                [NO_AUTH, &request(CMD_UDP_ASSOCIATE, ATYP_V4, &[0; 4], 0)].concat(),
                vec![5, 0],
                finished(SocksAsk::Refuse(Reply::CommandNotSupported)),
            ),
            (
                [NO_AUTH, &name(CMD_CONNECT, b"", 80)].concat(),
                vec![5, 0],
                finished(SocksAsk::Refuse(Reply::HostUnreachable)),
            ),
            (
                [NO_AUTH, &name(CMD_CONNECT, b"a\0b", 80)].concat(),
                vec![5, 0],
                finished(SocksAsk::Refuse(Reply::HostUnreachable)),
            ),
            (
                [NO_AUTH, &name(CMD_CONNECT, b"caf\xc3\xa9", 80)].concat(),
                vec![5, 0],
                finished(SocksAsk::Refuse(Reply::HostUnreachable)),
            ),
            (
                [NO_AUTH, &request(CMD_RESOLVE, ATYP_V4, &[1, 2, 3, 4], 0)].concat(),
                vec![5, 0],
                finished(SocksAsk::Refuse(Reply::HostUnreachable)),
            ),
            (
                [NO_AUTH, &name(CMD_RESOLVE, b"1.2.3.4", 0)].concat(),
                vec![5, 0],
                finished(SocksAsk::Refuse(Reply::HostUnreachable)),
            ),
            (
                [NO_AUTH, &name(CMD_RESOLVE_PTR, b"example.com", 0)].concat(),
                vec![5, 0],
                finished(SocksAsk::Refuse(Reply::AddressTypeNotSupported)),
            ),
            // Errors.
            (
                vec![4, 1, 0],
                vec![],
                Outcome::Failed(SocksError::Version(4)),
            ),
            (
                vec![5, 0],
                vec![],
                Outcome::Failed(SocksError::NoAcceptableMethod),
            ),
            (
                vec![5, 2, 0x80, 1],
                vec![],
                Outcome::Failed(SocksError::NoAcceptableMethod),
            ),
            (
                vec![5, 1, 2, 5, 1, b'u', 1, b'p'],
                vec![5, 2],
                Outcome::Failed(SocksError::PasswordVersion(5)),
            ),
            (
                [NO_AUTH, &[4, 1, 0, 3][..]].concat(),
                vec![5, 0],
                Outcome::Failed(SocksError::Version(4)),
            ),
        ]
    }

    #[test]
    fn every_fixture_gives_its_outcome_whole_and_byte_by_byte() {
        for (input, replies, outcome) in fixtures() {
            let whole = all_at_once(&input);
            assert_eq!(whole, (replies, outcome), "{input:?}");
            assert_eq!(byte_at_a_time(&input), whole, "{input:?}");
        }
    }

    #[test]
    fn every_proper_prefix_of_a_valid_exchange_waits() {
        for (input, _, outcome) in fixtures() {
            if !matches!(&outcome, Outcome::Finished(_, rest) if rest.is_empty()) {
                continue;
            }
            for cut in 0..input.len() {
                let (_, prefix) = all_at_once(&input[..cut]);
                assert_eq!(prefix, Outcome::Incomplete, "{input:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn bytes_after_the_request_are_left_to_the_caller() {
        let input = [NO_AUTH, &name(CMD_CONNECT, b"example.com", 443), b"GET /"].concat();
        let (_, outcome) = all_at_once(&input);
        let Outcome::Finished(_, rest) = outcome else {
            panic!("{outcome:?}");
        };
        assert_eq!(rest, b"GET /");
    }

    #[test]
    fn a_refusal_for_an_unknown_address_type_reads_only_the_header() {
        let mut hs = SocksHandshake::new();
        let greeted = hs.handshake(NO_AUTH).expect("greeting").expect("complete");
        assert_eq!(greeted.drain, 3);
        let refused = hs.handshake(&[5, 1, 0, 9, 0xAA]).expect("request");
        assert_eq!(refused.expect("complete").drain, 4);
    }

    #[test]
    fn bind_waits_for_its_address_before_refusing() {
        let (_, outcome) = all_at_once(&[NO_AUTH, &[5, CMD_BIND, 0, ATYP_V4][..]].concat());
        assert_eq!(outcome, Outcome::Incomplete);
    }

    #[test]
    fn only_no_acceptable_method_answers_before_closing() {
        assert_eq!(
            SocksError::NoAcceptableMethod.reply_before_close(),
            Some(vec![5, 0xFF])
        );
        for err in [
            SocksError::Version(4),
            SocksError::PasswordVersion(0),
            SocksError::AlreadyOver,
        ] {
            assert_eq!(err.reply_before_close(), None, "{err}");
        }
    }

    #[test]
    fn the_largest_message_fits_the_bound_exactly() {
        let user = vec![b'u'; 255];
        let pass = vec![b'p'; 255];
        let auth = [&[1, 255][..], &user, &[255], &pass].concat();
        assert_eq!(auth.len(), MAX_SOCKS_MESSAGE);
        let mut hs = SocksHandshake::new();
        hs.handshake(&[5, 1, 2])
            .expect("greeting")
            .expect("complete");
        // One byte short waits; the whole message, and no more, is consumed.
        assert_eq!(hs.handshake(&auth[..MAX_SOCKS_MESSAGE - 1]), Ok(None));
        let action = hs.handshake(&auth).expect("auth").expect("complete");
        assert_eq!(action.drain, MAX_SOCKS_MESSAGE);
        // The longest request (a 255-byte name) fits too.
        let long = name(CMD_CONNECT, &[b'a'; 255], 80);
        assert_eq!(long.len(), 262);
        let done = hs.handshake(&long).expect("request").expect("complete");
        assert_eq!(
            done.finished.expect("finished").credentials,
            Credentials::UserPass { user, pass }
        );
    }

    #[test]
    fn replies_use_the_codec_layout() {
        assert_eq!(
            encode_reply(Reply::Succeeded, Address::unspecified()),
            [5, 0, 0, 1, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            encode_reply(
                Reply::HostUnreachable,
                Address::DomainAddress(b"ab".to_vec(), 0)
            ),
            [5, 4, 0, 3, 2, b'a', b'b', 0, 0]
        );
    }

    proptest! {
        #[test]
        fn any_split_of_a_fixture_gives_the_same_outcome(
            which in 0usize..64,
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let all = fixtures();
            let (input, replies, outcome) = &all[which % all.len()];
            let pieces = split_at(input, &cuts);
            prop_assert_eq!(feed_socks(&pieces), (replies.clone(), outcome.clone()));
        }

        /// Arbitrary bytes, after a greeting or none: no panic, and `run` checks that a full
        /// buffer never waits.
        #[test]
        fn arbitrary_input_never_panics_nor_waits_on_a_full_buffer(
            prefix in prop_oneof![
                Just(Vec::new()),
                Just(NO_AUTH.to_vec()),
                Just(vec![5, 1, 2]),
            ],
            noise in proptest::collection::vec(any::<u8>(), 0..(2 * MAX_SOCKS_MESSAGE)),
            cuts in proptest::collection::vec(any::<usize>(), 0..4),
        ) {
            let input = [prefix, noise].concat();
            let whole = all_at_once(&input);
            prop_assert_eq!(feed_socks(&split_at(&input, &cuts)), whole);
        }
    }

    #[test]
    fn extended_reply_codes_are_sent_as_given() {
        let standard = encode_reply(Reply::HostUnreachable, Address::unspecified());
        assert_eq!(encode_reply_code(0x04, Address::unspecified()), standard);
        let onion = encode_reply_code(0xF6, Address::unspecified());
        assert_eq!(onion[..2], [0x05, 0xF6]);
        assert_eq!(onion[2..], standard[2..]);
    }
}
