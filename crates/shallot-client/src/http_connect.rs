//! HTTP CONNECT on the proxy port (specs/07 §6): `curl -p -x http://127.0.0.1:9050 …`.
//! Any other method gets a 405 page that says to use CONNECT or SOCKS5: the client never
//! fetches plain HTTP itself.

use std::net::IpAddr;

use shallot_cell::{Host, check_hostname};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use crate::front::{Connector, FrontConfig, MAX_HTTP_HEAD};
use crate::pool::Isolation;
use crate::sensitive::Sensitive;

/// Headers parsed at most.
const MAX_HEADERS: usize = 64;

/// Why a request head was refused.
#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    /// The connection closed or failed before the head was complete.
    Closed,
    /// Larger than [`MAX_HTTP_HEAD`].
    TooLarge,
    /// Not HTTP/1.x.
    Malformed,
}

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    method: String,
    target: String,
    /// The Proxy-Authorization value, if any.
    auth: Option<Vec<u8>>,
    /// Bytes read past the head (the application's first bytes, e.g. a TLS ClientHello).
    rest: Vec<u8>,
}

/// Serves one HTTP proxy connection.
pub(crate) async fn serve<C, S>(mut conn: S, connector: &C, cfg: FrontConfig)
where
    C: Connector,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let head = match tokio::time::timeout(cfg.handshake_timeout, read_head(&mut conn)).await {
        Ok(Ok(head)) => head,
        Ok(Err(HeadError::TooLarge)) => {
            let _ = respond(
                &mut conn,
                431,
                "Request Header Fields Too Large",
                "The request head is larger than this proxy accepts.",
            )
            .await;
            return;
        }
        Ok(Err(HeadError::Malformed)) => {
            let _ = respond(
                &mut conn,
                400,
                "Bad Request",
                "This is not an HTTP/1 request.",
            )
            .await;
            return;
        }
        Ok(Err(HeadError::Closed)) | Err(_) => return,
    };
    if !head.method.eq_ignore_ascii_case("CONNECT") {
        let _ = respond(
            &mut conn,
            405,
            "Method Not Allowed",
            "This is Shallot's proxy port. It does not fetch plain HTTP: configure your \
             application to use it as an HTTPS proxy (HTTP CONNECT) or as a SOCKS5 proxy \
             (socks5h://), so that names are resolved by the exit.",
        )
        .await;
        return;
    }
    let Some((host, port)) = parse_target(&head.target) else {
        let _ = respond(
            &mut conn,
            400,
            "Bad Request",
            "CONNECT needs a target of the form host:port.",
        )
        .await;
        return;
    };
    let iso = match head.auth {
        // The credential token itself is the isolation key; it is never decoded or logged.
        Some(token) => Isolation::Auth {
            user: b"http-proxy-authorization".to_vec(),
            pass: token,
        },
        None => Isolation::None,
    };
    let mut early = head.rest;
    match connector
        .connect(&iso, &host, port, &mut conn, &mut early)
        .await
    {
        Ok((handle, _addr)) => {
            let ok = conn
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .is_ok();
            if ok && conn.flush().await.is_ok() {
                handle.pump(conn).await;
            }
        }
        Err(failure) => {
            debug!(dest = ?Sensitive(&host), %failure, "CONNECT failed");
            let (code, reason) = failure.http_status();
            let body = format!("Shallot could not open the connection: {failure}.");
            let _ = respond(&mut conn, code, reason, &body).await;
        }
    }
}

/// Reads the request head, at most [`MAX_HTTP_HEAD`] bytes.
async fn read_head<S: AsyncRead + Unpin>(conn: &mut S) -> Result<Head, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = conn.read(&mut chunk).await.map_err(|_| HeadError::Closed)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                if len > MAX_HTTP_HEAD {
                    return Err(HeadError::TooLarge);
                }
                let auth = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("proxy-authorization"))
                    .map(|h| h.value.to_vec());
                return Ok(Head {
                    method: req.method.unwrap_or_default().to_owned(),
                    target: req.path.unwrap_or_default().to_owned(),
                    auth,
                    rest: buf[len..].to_vec(),
                });
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_HTTP_HEAD {
                    return Err(HeadError::TooLarge);
                }
            }
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(_) => return Err(HeadError::Malformed),
        }
    }
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

async fn respond<S: AsyncWrite + Unpin>(
    conn: &mut S,
    code: u16,
    reason: &str,
    body: &str,
) -> std::io::Result<()> {
    let page = format!(
        "<html><head><title>{code} {reason}</title></head><body><h1>{reason}</h1><p>{body}</p></body></html>\n"
    );
    let allow = if code == 405 {
        "Allow: CONNECT\r\n"
    } else {
        ""
    };
    let msg = format!(
        "HTTP/1.1 {code} {reason}\r\n{allow}Content-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
        page.len()
    );
    conn.write_all(msg.as_bytes()).await?;
    conn.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::err::StreamFailure;
    use crate::front::tests::{FakeConnector, run_front};

    async fn exchange(fake: FakeConnector, request: &[u8]) -> String {
        let (mut c, task) = run_front(fake).await;
        c.write_all(request).await.expect("write");
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out).await;
        task.await.expect("no panic");
        String::from_utf8_lossy(&out).into_owned()
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
            "a\u{7f}b:1",
        ] {
            assert_eq!(parse_target(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn connect_tunnels_and_keeps_early_bytes() {
        let fake = FakeConnector::default();
        let (mut c, task) = run_front(fake.clone()).await;
        c.write_all(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\nEARLY")
            .await
            .expect("write");
        let mut resp = vec![0u8; 39];
        c.read_exact(&mut resp).await.expect("200");
        assert_eq!(&resp, b"HTTP/1.1 200 Connection established\r\n\r\n");
        assert_eq!(fake.asked()[0].1, Host::Name("example.com".into()));
        // The fake echoes; the early bytes went first. (The fake ignores `early`, so send
        // fresh bytes and check the tunnel works both ways.)
        c.write_all(b"tls").await.expect("write");
        let mut echo = [0u8; 3];
        c.read_exact(&mut echo).await.expect("echo");
        assert_eq!(&echo, b"tls");
        drop(c);
        task.abort();
    }

    #[tokio::test]
    async fn proxy_authorization_isolates() {
        let fake = FakeConnector::default();
        let (mut c, task) = run_front(fake.clone()).await;
        c.write_all(b"CONNECT a.example:443 HTTP/1.1\r\nProxy-Authorization: Basic dTpw\r\n\r\n")
            .await
            .expect("write");
        let mut resp = vec![0u8; 12];
        c.read_exact(&mut resp).await.expect("status");
        assert_eq!(&resp, b"HTTP/1.1 200");
        assert!(matches!(fake.asked()[0].0, Isolation::Auth { .. }));
        task.abort();
    }

    #[tokio::test]
    async fn plain_http_gets_a_clear_405() {
        let out = exchange(
            FakeConnector::default(),
            b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 405 Method Not Allowed"), "{out}");
        assert!(out.contains("Allow: CONNECT"));
        assert!(out.contains("SOCKS5"));
    }

    #[tokio::test]
    async fn failures_get_http_statuses() {
        for (failure, status) in [
            (StreamFailure::NoExitForPort, "403"),
            (
                StreamFailure::End(shallot_cell::EndReason::ConnectRefused),
                "502",
            ),
            (StreamFailure::Timeout, "504"),
            (StreamFailure::CircuitFailed, "503"),
        ] {
            let out = exchange(
                FakeConnector::failing(failure),
                b"CONNECT example.com:443 HTTP/1.1\r\n\r\n",
            )
            .await;
            assert!(out.starts_with(&format!("HTTP/1.1 {status}")), "{out}");
        }
    }

    #[tokio::test]
    async fn hostile_heads() {
        let huge = [
            b"CONNECT example.com:443 HTTP/1.1\r\n".to_vec(),
            b"X-Pad: ".to_vec(),
            vec![b'a'; MAX_HTTP_HEAD * 2],
            b"\r\n\r\n".to_vec(),
        ]
        .concat();
        let out = exchange(FakeConnector::default(), &huge).await;
        assert!(out.starts_with("HTTP/1.1 431"), "{out}");
        let many: Vec<u8> = [
            b"CONNECT e.com:1 HTTP/1.1\r\n".to_vec(),
            b"A: b\r\n".repeat(MAX_HEADERS + 1),
            b"\r\n".to_vec(),
        ]
        .concat();
        let out = exchange(FakeConnector::default(), &many).await;
        assert!(out.starts_with("HTTP/1.1 431"), "{out}");
        let out = exchange(
            FakeConnector::default(),
            b"CONNECT \x01\x02 garbage\r\n\r\n",
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        let out = exchange(
            FakeConnector::default(),
            b"CONNECT nohostport HTTP/1.1\r\n\r\n",
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        // Truncated: the connection closes without an answer, after the timeout at most.
        let fake = FakeConnector::default();
        let (mut c, task) = run_front(fake.clone()).await;
        c.write_all(b"CONNECT exa").await.expect("write");
        c.shutdown().await.expect("eof");
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out).await;
        assert!(out.is_empty());
        task.await.expect("no panic");
        assert!(fake.asked().is_empty());
    }
}
