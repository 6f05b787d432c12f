//! The SOCKS5 front (RFC 1928, RFC 1929, Tor's RESOLVE and RESOLVE_PTR): specs/07 §3–§5.
//!
//! Messages are read and written with `socks5-server`'s protocol codec
//! (`socks5_server::proto`). Its connection state machine is not used: it fixes one
//! authentication method per server (we must accept both "none" and username/password, the
//! latter for isolation), and it refuses Tor's commands 0xF0/0xF1. So this module reads the
//! 4-byte request header itself, answers unknown commands (0x07) and address types (0x08),
//! and for RESOLVE/RESOLVE_PTR hands the codec a header with CONNECT's command byte to parse
//! the address (specs/07 §4).

use std::net::{IpAddr, SocketAddr};

use shallot_cell::{Host, ResolvedAnswer, check_hostname};
use socks5_server::proto::handshake::{self, Method, password};
use socks5_server::proto::{Address, Command, Reply, Request, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use crate::err::StreamFailure;
use crate::front::{Connector, FrontConfig};
use crate::pool::Isolation;
use crate::sensitive::Sensitive;

/// Tor's RESOLVE command.
pub(crate) const CMD_RESOLVE: u8 = 0xF0;
/// Tor's RESOLVE_PTR command.
pub(crate) const CMD_RESOLVE_PTR: u8 = 0xF1;

/// What the application asked for.
#[derive(Debug, PartialEq, Eq)]
enum Ask {
    Connect(Host, u16),
    Resolve(Host),
    ResolvePtr(Host),
    /// Answer with this reply code and close.
    Refuse(u8),
}

/// Serves one SOCKS5 connection.
pub(crate) async fn serve<C, S>(mut conn: S, connector: &C, cfg: FrontConfig)
where
    C: Connector,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let head = tokio::time::timeout(cfg.handshake_timeout, handshake(&mut conn)).await;
    let (iso, ask) = match head {
        Ok(Ok(x)) => x,
        Ok(Err(err)) => {
            debug!(%err, "bad SOCKS5 request: closed");
            return;
        }
        Err(_) => {
            debug!("SOCKS5 request timed out: closed");
            return;
        }
    };
    match ask {
        Ask::Refuse(code) => {
            let _ = reply(&mut conn, code, Address::unspecified()).await;
        }
        Ask::Connect(host, port) => {
            let mut early = Vec::new();
            match connector
                .connect(&iso, &host, port, &mut conn, &mut early)
                .await
            {
                Ok((handle, addr)) => {
                    let bound = match addr {
                        Host::V4(ip) => Address::SocketAddress(SocketAddr::new(ip.into(), port)),
                        Host::V6(ip) => Address::SocketAddress(SocketAddr::new(ip.into(), port)),
                        Host::Name(_) => Address::unspecified(),
                    };
                    if reply(&mut conn, 0x00, bound).await.is_ok() {
                        handle.pump(conn).await;
                    }
                }
                Err(failure) => {
                    debug!(dest = ?Sensitive(&host), %failure, "CONNECT failed");
                    let _ = reply(&mut conn, failure.socks_reply(), Address::unspecified()).await;
                }
            }
        }
        Ask::Resolve(host) | Ask::ResolvePtr(host) => {
            let reverse = !matches!(host, Host::Name(_));
            let answer = connector.resolve(&iso, &host).await;
            let addr = answer.and_then(|answers| {
                pick_answer(&answers, reverse).ok_or(StreamFailure::ResolveFailed)
            });
            match addr {
                Ok(addr) => {
                    let _ = reply(&mut conn, 0x00, addr).await;
                }
                Err(failure) => {
                    let _ = reply(&mut conn, failure.socks_reply(), Address::unspecified()).await;
                }
            }
        }
    }
}

/// The SOCKS5 address answering a RESOLVE (the first address) or RESOLVE_PTR (the first name).
fn pick_answer(answers: &[ResolvedAnswer], reverse: bool) -> Option<Address> {
    answers.iter().find_map(|a| match (a, reverse) {
        (ResolvedAnswer::V4(ip, _), false) => {
            Some(Address::SocketAddress(SocketAddr::new((*ip).into(), 0)))
        }
        (ResolvedAnswer::V6(ip, _), false) => {
            Some(Address::SocketAddress(SocketAddr::new((*ip).into(), 0)))
        }
        (ResolvedAnswer::Name(name, _), true) => {
            Some(Address::DomainAddress(name.as_bytes().to_vec(), 0))
        }
        _ => None,
    })
}

async fn reply<S: AsyncWrite + Unpin>(
    conn: &mut S,
    code: u8,
    addr: Address,
) -> std::io::Result<()> {
    let reply = match code {
        0x00 => Reply::Succeeded,
        0x02 => Reply::ConnectionNotAllowed,
        0x03 => Reply::NetworkUnreachable,
        0x04 => Reply::HostUnreachable,
        0x05 => Reply::ConnectionRefused,
        0x06 => Reply::TtlExpired,
        0x07 => Reply::CommandNotSupported,
        0x08 => Reply::AddressTypeNotSupported,
        _ => Reply::GeneralFailure,
    };
    Response::new(reply, addr).write_to(conn).await?;
    conn.flush().await
}

/// Errors of the SOCKS5 handshake (the connection is closed).
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("socks5 codec: {0}")]
    Codec(#[from] socks5_server::proto::Error),
    #[error("password subnegotiation: {0}")]
    Password(#[from] password::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("no acceptable authentication method")]
    NoMethod,
    #[error("not SOCKS version 5")]
    Version,
}

/// Greeting, authentication and request. specs/07 §3.
async fn handshake<S>(conn: &mut S) -> Result<(Isolation, Ask), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let greeting = handshake::Request::read_from(conn).await?;
    // Prefer username/password when offered: the credentials are the isolation key.
    let iso = if greeting.methods.contains(&Method::PASSWORD) {
        handshake::Response::new(Method::PASSWORD)
            .write_to(conn)
            .await?;
        let creds = password::Request::read_from(conn).await?;
        // Any credentials are accepted: they only isolate (specs/07 §3.2).
        password::Response::new(true).write_to(conn).await?;
        Isolation::Auth {
            user: creds.username,
            pass: creds.password,
        }
    } else if greeting.methods.contains(&Method::NONE) {
        handshake::Response::new(Method::NONE)
            .write_to(conn)
            .await?;
        Isolation::None
    } else {
        handshake::Response::new(Method::UNACCEPTABLE)
            .write_to(conn)
            .await?;
        return Err(HandshakeError::NoMethod);
    };
    conn.flush().await?;
    let mut header = [0u8; 4];
    conn.read_exact(&mut header).await?;
    let [ver, cmd, _rsv, atyp] = header;
    if ver != 0x05 {
        return Err(HandshakeError::Version);
    }
    if !matches!(atyp, 0x01 | 0x03 | 0x04) {
        return Ok((iso, Ask::Refuse(0x08)));
    }
    let as_connect = match cmd {
        0x01..=0x03 => cmd,
        CMD_RESOLVE | CMD_RESOLVE_PTR => 0x01,
        _ => return Ok((iso, Ask::Refuse(0x07))),
    };
    // Let the codec parse the address behind a header it knows.
    let prefix = [ver, as_connect, 0x00, atyp];
    let request = {
        let mut chained = (&prefix[..]).chain(&mut *conn);
        Request::read_from(&mut chained).await?
    };
    let ask = match (cmd, request.command) {
        (0x01, Command::Connect) => match to_host(request.address) {
            Some((host, port)) => Ask::Connect(host, port),
            None => Ask::Refuse(0x04),
        },
        (CMD_RESOLVE, _) => match to_host(request.address) {
            Some((host @ Host::Name(_), _)) => Ask::Resolve(host),
            // RESOLVE of an address: nothing to look up; Tor answers with the address.
            Some(_) | None => Ask::Refuse(0x04),
        },
        (CMD_RESOLVE_PTR, _) => match to_host(request.address) {
            Some((host @ (Host::V4(_) | Host::V6(_)), _)) => Ask::ResolvePtr(host),
            _ => Ask::Refuse(0x08),
        },
        // BIND and UDP ASSOCIATE: not offered (specs/07 §3.4).
        _ => Ask::Refuse(0x07),
    };
    Ok((iso, ask))
}

/// A SOCKS5 address as a HOST (specs/03 §5): IP literals stay addresses, names are checked
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::front::tests::{FakeConnector, run_front};

    async fn greet_none(c: &mut tokio::net::TcpStream) {
        c.write_all(&[5, 1, 0]).await.expect("write");
        let mut r = [0u8; 2];
        c.read_exact(&mut r).await.expect("method");
        assert_eq!(r, [5, 0]);
    }

    async fn read_reply(c: &mut tokio::net::TcpStream) -> (u8, Vec<u8>) {
        let mut h = [0u8; 4];
        c.read_exact(&mut h).await.expect("reply head");
        let rest = match h[3] {
            1 => 6,
            4 => 18,
            3 => {
                let mut l = [0u8; 1];
                c.read_exact(&mut l).await.expect("len");
                usize::from(l[0]) + 2
            }
            other => panic!("atyp {other}"),
        };
        let mut addr = vec![0u8; rest];
        c.read_exact(&mut addr).await.expect("addr");
        (h[1], addr)
    }

    #[tokio::test]
    async fn connect_by_name_travels_unresolved_and_pipes() {
        let fake = FakeConnector::default();
        let (mut c, task) = run_front(fake.clone()).await;
        greet_none(&mut c).await;
        let mut req = vec![5, 1, 0, 3, 11];
        req.extend_from_slice(b"example.com");
        req.extend_from_slice(&443u16.to_be_bytes());
        c.write_all(&req).await.expect("req");
        let (code, _) = read_reply(&mut c).await;
        assert_eq!(code, 0);
        c.write_all(b"ping").await.expect("data");
        let mut echo = [0u8; 4];
        c.read_exact(&mut echo).await.expect("echo");
        assert_eq!(&echo, b"ping");
        assert_eq!(
            fake.asked(),
            vec![(Isolation::None, Host::Name("example.com".into()), 443)]
        );
        drop(c);
        task.abort();
    }

    #[tokio::test]
    async fn ipv4_ipv6_and_ip_literal_names_are_addresses() {
        for (req, want) in [
            (
                vec![5, 1, 0, 1, 10, 0, 0, 1, 0, 80],
                Host::V4([10, 0, 0, 1].into()),
            ),
            (
                [vec![5, 1, 0, 4], vec![0; 15], vec![1, 0, 80]].concat(),
                Host::V6(std::net::Ipv6Addr::LOCALHOST),
            ),
            (
                [vec![5, 1, 0, 3, 8], b"10.1.2.3".to_vec(), vec![0, 80]].concat(),
                Host::V4([10, 1, 2, 3].into()),
            ),
        ] {
            let fake = FakeConnector::default();
            let (mut c, task) = run_front(fake.clone()).await;
            greet_none(&mut c).await;
            c.write_all(&req).await.expect("req");
            assert_eq!(read_reply(&mut c).await.0, 0);
            assert_eq!(fake.asked()[0].1, want);
            drop(c);
            task.abort();
        }
    }

    #[tokio::test]
    async fn credentials_become_the_isolation_key() {
        let fake = FakeConnector::default();
        let (mut c, task) = run_front(fake.clone()).await;
        c.write_all(&[5, 2, 0, 2]).await.expect("greet");
        let mut r = [0u8; 2];
        c.read_exact(&mut r).await.expect("method");
        assert_eq!(r, [5, 2]);
        c.write_all(&[1, 1, b'u', 2, b'p', b'w'])
            .await
            .expect("auth");
        c.read_exact(&mut r).await.expect("auth reply");
        assert_eq!(r, [1, 0]);
        c.write_all(&[5, 1, 0, 1, 1, 2, 3, 4, 0, 80])
            .await
            .expect("req");
        assert_eq!(read_reply(&mut c).await.0, 0);
        assert_eq!(
            fake.asked()[0].0,
            Isolation::Auth {
                user: b"u".to_vec(),
                pass: b"pw".to_vec()
            }
        );
        drop(c);
        task.abort();
    }

    #[tokio::test]
    async fn failures_map_to_reply_codes() {
        for (failure, code) in [
            (StreamFailure::End(shallot_cell::EndReason::ExitPolicy), 2),
            (StreamFailure::End(shallot_cell::EndReason::NoRoute), 3),
            (
                StreamFailure::End(shallot_cell::EndReason::ResolveFailed),
                4,
            ),
            (
                StreamFailure::End(shallot_cell::EndReason::ConnectRefused),
                5,
            ),
            (StreamFailure::End(shallot_cell::EndReason::Timeout), 6),
            (StreamFailure::NoExitForPort, 2),
            (StreamFailure::CircuitFailed, 1),
        ] {
            let fake = FakeConnector::failing(failure);
            let (mut c, task) = run_front(fake).await;
            greet_none(&mut c).await;
            c.write_all(&[5, 1, 0, 1, 1, 2, 3, 4, 0, 80])
                .await
                .expect("req");
            assert_eq!(read_reply(&mut c).await.0, code);
            let mut rest = Vec::new();
            c.read_to_end(&mut rest).await.expect("closed");
            assert!(rest.is_empty());
            task.await.expect("front");
        }
    }

    #[tokio::test]
    async fn unsupported_commands_and_address_types() {
        for (req, code) in [
            (vec![5, 3, 0, 1, 0, 0, 0, 0, 0, 0], 7), // UDP ASSOCIATE
            (vec![5, 2, 0, 1, 0, 0, 0, 0, 0, 0], 7), // BIND
            (vec![5, 9, 0, 1, 0, 0, 0, 0, 0, 0], 7), // unknown
            (vec![5, 1, 0, 7], 8),                   // unknown address type
        ] {
            let fake = FakeConnector::default();
            let (mut c, task) = run_front(fake.clone()).await;
            greet_none(&mut c).await;
            c.write_all(&req).await.expect("req");
            assert_eq!(read_reply(&mut c).await.0, code, "{req:?}");
            assert!(fake.asked().is_empty());
            task.await.expect("front");
        }
    }

    #[tokio::test]
    async fn tor_resolve_and_resolve_ptr() {
        let fake = FakeConnector::default();
        let (mut c, task) = run_front(fake.clone()).await;
        greet_none(&mut c).await;
        let mut req = vec![5, CMD_RESOLVE, 0, 3, 9];
        req.extend_from_slice(b"localhost");
        req.extend_from_slice(&[0, 0]);
        c.write_all(&req).await.expect("req");
        let (code, addr) = read_reply(&mut c).await;
        assert_eq!(code, 0);
        assert_eq!(&addr[..4], &[127, 0, 0, 1]);
        task.await.expect("front");

        let (mut c, task) = run_front(fake.clone()).await;
        greet_none(&mut c).await;
        c.write_all(&[5, CMD_RESOLVE_PTR, 0, 1, 127, 0, 0, 1, 0, 0])
            .await
            .expect("req");
        let (code, addr) = read_reply(&mut c).await;
        assert_eq!(code, 0);
        assert_eq!(&addr[..addr.len() - 2], b"localhost");
        task.await.expect("front");
        assert_eq!(
            fake.resolved(),
            vec![
                Host::Name("localhost".into()),
                Host::V4(std::net::Ipv4Addr::LOCALHOST)
            ]
        );
    }

    #[tokio::test]
    async fn hostile_input_closes_cleanly() {
        let cases: Vec<Vec<u8>> = vec![
            vec![5],                                                                // truncated greeting
            vec![5, 0],                                                             // no methods
            vec![5, 1, 0x80],                   // only an unknown method
            vec![5, 1, 0, 5, 1],                // truncated request
            vec![5, 1, 0, 4, 1, 0, 3, 0],       // bad version in request
            vec![5, 1, 0, 5, 1, 0, 3, 0, 1, 2], // zero-length name
            [vec![5, 1, 0, 5, 1, 0, 3, 3], b"a\0b".to_vec(), vec![0, 80]].concat(), // NUL in name
        ];
        for input in cases {
            let fake = FakeConnector::default();
            let (mut c, task) = run_front(fake.clone()).await;
            c.write_all(&input).await.expect("write");
            c.shutdown().await.expect("eof");
            let mut out = Vec::new();
            let _ = c.read_to_end(&mut out).await;
            task.await.expect("no panic");
            assert!(fake.asked().is_empty(), "{input:?}");
        }
    }
}
