//! The SOCKS5 front (RFC 1928, RFC 1929, Tor's RESOLVE and RESOLVE_PTR): specs/07 §3–§5.
//!
//! The handshake itself is `shallot_proxy_proto::SocksHandshake`, a sans-IO state machine;
//! this module is its IO shell: it reads the socket into a buffer of at most
//! [`MAX_SOCKS_MESSAGE`] bytes, feeds the handshake, writes its answers, and then carries out
//! the request. Replies are encoded with `socks5-server`'s codec types.

use std::net::SocketAddr;

use shallot_cell::{Host, ResolvedAnswer};
use shallot_proxy_proto::{
    Credentials, MAX_SOCKS_MESSAGE, SocksAsk, SocksError, SocksHandshake, SocksRequest,
    encode_reply, encode_reply_code,
};
use socks5_server::proto::{Address, Reply};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use crate::err::StreamFailure;
use crate::front::{Connector, FrontConfig, read_more};
use crate::pool::Isolation;
use crate::sensitive::Sensitive;

/// Serves one SOCKS5 connection.
pub(crate) async fn serve<C, S>(mut conn: S, connector: &C, cfg: FrontConfig)
where
    C: Connector,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let head = tokio::time::timeout(cfg.handshake_timeout, handshake(&mut conn)).await;
    let (request, rest) = match head {
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
    let iso = match request.credentials {
        Credentials::None => Isolation::None,
        Credentials::UserPass { user, pass } => Isolation::Auth { user, pass },
    };
    match request.ask {
        SocksAsk::Refuse(code) => {
            let _ = reply(&mut conn, code, Address::unspecified()).await;
        }
        SocksAsk::Connect(host, port) => {
            // Bytes the application sent behind its request are its first optimistic data.
            let mut early = rest;
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
                    if reply(&mut conn, Reply::Succeeded, bound).await.is_ok() {
                        handle.pump(conn).await;
                    }
                }
                Err(failure) => {
                    debug!(dest = ?Sensitive(&host), %failure, "CONNECT failed");
                    let _ = reply_failure(&mut conn, failure.socks_reply()).await;
                }
            }
        }
        SocksAsk::Resolve(host) | SocksAsk::ResolvePtr(host) => {
            let reverse = !matches!(host, Host::Name(_));
            let answer = connector.resolve(&iso, &host).await;
            let addr = answer.and_then(|answers| {
                pick_answer(&answers, reverse).ok_or(StreamFailure::ResolveFailed)
            });
            match addr {
                Ok(addr) => {
                    let _ = reply(&mut conn, Reply::Succeeded, addr).await;
                }
                Err(failure) => {
                    let _ = reply_failure(&mut conn, failure.socks_reply()).await;
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

/// The codec's reply for a code of specs/07 §5; an unknown code is a general failure.
/// A failure's reply, its code as [`StreamFailure::socks_reply`] gives it (Tor's extended codes
/// included).
async fn reply_failure<S: AsyncWrite + Unpin>(conn: &mut S, code: u8) -> std::io::Result<()> {
    conn.write_all(&encode_reply_code(code, Address::unspecified()))
        .await?;
    conn.flush().await
}

async fn reply<S: AsyncWrite + Unpin>(
    conn: &mut S,
    code: Reply,
    addr: Address,
) -> std::io::Result<()> {
    conn.write_all(&encode_reply(code, addr)).await?;
    conn.flush().await
}

/// Errors of the SOCKS5 handshake (the connection is closed).
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("socks5 handshake: {0}")]
    Socks(#[from] SocksError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Greeting, authentication and request (specs/07 §3): the finished request and the bytes
/// read past it.
async fn handshake<S>(conn: &mut S) -> Result<(SocksRequest, Vec<u8>), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut machine = SocksHandshake::new();
    let mut buf = Vec::with_capacity(MAX_SOCKS_MESSAGE);
    loop {
        match machine.handshake(&buf) {
            Ok(Some(action)) => {
                buf.drain(..action.drain);
                if !action.reply.is_empty() {
                    conn.write_all(&action.reply).await?;
                    conn.flush().await?;
                }
                if let Some(request) = action.finished {
                    return Ok((request, buf));
                }
            }
            Ok(None) => read_more(conn, &mut buf, MAX_SOCKS_MESSAGE).await?,
            Err(err) => {
                if let Some(last) = err.reply_before_close() {
                    conn.write_all(&last).await?;
                    conn.flush().await?;
                }
                return Err(err.into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use shallot_proxy_proto::{CMD_RESOLVE, CMD_RESOLVE_PTR};
    use tokio::io::AsyncReadExt;

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
    async fn longest_credentials_pipelined_with_request_and_data() {
        // Everything in one write: the driver's buffer fills to MAX_SOCKS_MESSAGE with the
        // credentials, and the bytes behind the request reach the connector as early data.
        let user = vec![b'u'; 255];
        let pass = vec![b'p'; 255];
        let auth = [&[1, 255][..], &user, &[255], &pass].concat();
        assert_eq!(auth.len(), MAX_SOCKS_MESSAGE);
        let request = [5, 1, 0, 1, 10, 0, 0, 1, 0, 80];
        let all = [&[5, 1, 2][..], &auth, &request, b"hello"].concat();
        let fake = FakeConnector::default();
        let (mut c, task) = run_front(fake.clone()).await;
        c.write_all(&all).await.expect("write");
        let mut r = [0u8; 4];
        c.read_exact(&mut r).await.expect("method and auth replies");
        assert_eq!(r, [5, 2, 1, 0]);
        assert_eq!(read_reply(&mut c).await.0, 0);
        assert_eq!(fake.asked()[0].0, Isolation::Auth { user, pass });
        assert_eq!(fake.early(), vec![b"hello".to_vec()]);
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
