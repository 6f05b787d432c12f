//! HTTP CONNECT on the proxy port (specs/07 §6): `curl -p -x http://127.0.0.1:9050 …`.
//!
//! The request head is parsed by `shallot_proxy_proto::HttpConnectHandshake`, a sans-IO
//! handshake; this module is its IO shell: it reads the socket into a buffer of at most
//! [`HTTP_HANDSHAKE_BUFFER`] bytes, feeds the handshake, and carries out the request. Any
//! method but CONNECT gets a 405 page that says to use CONNECT or SOCKS5: the client never
//! fetches plain HTTP itself.

use shallot_proxy_proto::{
    CONNECT_ESTABLISHED, HTTP_HANDSHAKE_BUFFER, HttpAsk, HttpConnectHandshake, HttpError,
    HttpRequest, http_response,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use crate::front::{Connector, FrontConfig, read_more};
use crate::pool::Isolation;
use crate::sensitive::Sensitive;

/// Why no request head came.
#[derive(Debug, thiserror::Error)]
enum HeadError {
    /// The head is refused; the error says what to answer.
    #[error("http request head: {0}")]
    Http(#[from] HttpError),
    /// The connection closed or failed before the head was complete.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves one HTTP proxy connection.
pub(crate) async fn serve<C, S>(mut conn: S, connector: &C, cfg: FrontConfig)
where
    C: Connector,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (request, rest) =
        match tokio::time::timeout(cfg.handshake_timeout, read_head(&mut conn)).await {
            Ok(Ok(head)) => head,
            Ok(Err(HeadError::Http(err))) => {
                debug!(%err, "bad HTTP request head: answered and closed");
                if let Some(page) = err.reply_before_close() {
                    let _ = respond(&mut conn, &page).await;
                }
                return;
            }
            Ok(Err(HeadError::Io(_))) | Err(_) => return,
        };
    let (host, port) = match request.ask {
        HttpAsk::Connect(host, port) => (host, port),
        HttpAsk::Refuse(refusal) => {
            let _ = respond(&mut conn, &refusal.response()).await;
            return;
        }
    };
    let iso = match request.proxy_authorization {
        // The credential token itself is the isolation key; it is never decoded or logged.
        Some(token) => Isolation::Auth {
            user: b"http-proxy-authorization".to_vec(),
            pass: token,
        },
        None => Isolation::None,
    };
    // Bytes read past the head (e.g. a TLS ClientHello) are the first optimistic data.
    let mut early = rest;
    match connector
        .connect(&iso, &host, port, &mut conn, &mut early)
        .await
    {
        Ok((handle, _addr)) => {
            let ok = conn.write_all(CONNECT_ESTABLISHED).await.is_ok();
            if ok && conn.flush().await.is_ok() {
                handle.pump(conn).await;
            }
        }
        Err(failure) => {
            debug!(dest = ?Sensitive(&host), %failure, "CONNECT failed");
            let (code, reason) = failure.http_status();
            let body = format!("Shallot could not open the connection: {failure}.");
            let _ = respond(&mut conn, &http_response(code, reason, &body)).await;
        }
    }
}

/// Reads the request head: the finished request and the bytes read past it.
async fn read_head<S: AsyncRead + Unpin>(
    conn: &mut S,
) -> Result<(HttpRequest, Vec<u8>), HeadError> {
    let mut machine = HttpConnectHandshake::new();
    let mut buf = Vec::with_capacity(HTTP_HANDSHAKE_BUFFER);
    loop {
        read_more(conn, &mut buf, HTTP_HANDSHAKE_BUFFER).await?;
        if let Some(action) = machine.handshake(&buf)? {
            buf.drain(..action.drain);
            return Ok((action.finished, buf));
        }
    }
}

/// Sends a whole response and ends the connection.
async fn respond<S: AsyncWrite + Unpin>(conn: &mut S, response: &[u8]) -> std::io::Result<()> {
    conn.write_all(response).await?;
    conn.shutdown().await
}

#[cfg(test)]
mod tests {
    use shallot_cell::Host;
    use shallot_proxy_proto::{MAX_HTTP_HEAD, MAX_HTTP_HEADERS};
    use tokio::io::AsyncReadExt;

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
        assert_eq!(fake.early(), vec![b"EARLY".to_vec()]);
        // The fake echoes: the tunnel works both ways.
        c.write_all(b"tls").await.expect("write");
        let mut echo = [0u8; 3];
        c.read_exact(&mut echo).await.expect("echo");
        assert_eq!(&echo, b"tls");
        drop(c);
        task.abort();
    }

    #[tokio::test]
    async fn a_head_of_exactly_the_bound_is_served() {
        let start = b"CONNECT example.com:443 HTTP/1.1\r\nX-Pad: ";
        let pad = MAX_HTTP_HEAD - start.len() - 4;
        let head = [&start[..], &vec![b'a'; pad], b"\r\n\r\n"].concat();
        assert_eq!(head.len(), MAX_HTTP_HEAD);
        let fake = FakeConnector::default();
        let (mut c, task) = run_front(fake.clone()).await;
        c.write_all(&head).await.expect("write");
        let mut resp = vec![0u8; 12];
        c.read_exact(&mut resp).await.expect("status");
        assert_eq!(&resp, b"HTTP/1.1 200");
        assert_eq!(fake.asked()[0].1, Host::Name("example.com".into()));
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
            b"A: b\r\n".repeat(MAX_HTTP_HEADERS + 1),
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
