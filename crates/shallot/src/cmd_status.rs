//! `shallot status --metrics ADDR`: what the client's status page shows, as text, read from
//! the running client's metrics address (`GET /status.txt`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, bail};

/// How long reaching the client and reading its answer may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read (a client with thousands of circuits stays far below it).
const MAX_STATUS_BYTES: u64 = 4 << 20;

pub(crate) fn run(metrics: SocketAddr) -> anyhow::Result<()> {
    let text = fetch(metrics)?;
    print!("{text}");
    Ok(())
}

fn fetch(metrics: SocketAddr) -> anyhow::Result<String> {
    let hint = || {
        format!("no Shallot client answers at {metrics}: is it running with `--metrics {metrics}`?")
    };
    let mut conn = TcpStream::connect_timeout(&metrics, STATUS_TIMEOUT).with_context(hint)?;
    conn.set_read_timeout(Some(STATUS_TIMEOUT))?;
    conn.set_write_timeout(Some(STATUS_TIMEOUT))?;
    // One write: `write!` would send the request in pieces, and a server that answers the
    // first piece and closes would make the next one fail.
    let request =
        format!("GET /status.txt HTTP/1.0\r\nHost: {metrics}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).with_context(hint)?;
    let mut raw = Vec::new();
    conn.take(MAX_STATUS_BYTES)
        .read_to_end(&mut raw)
        .with_context(hint)?;
    let raw = String::from_utf8_lossy(&raw);
    let Some((head, body)) = raw.split_once("\r\n\r\n") else {
        bail!(
            "{metrics} answered something that is not HTTP: is it a Shallot client's metrics address?"
        );
    };
    let status_line = head.lines().next().unwrap_or_default();
    if !status_line.contains(" 200 ") {
        bail!(
            "{metrics} answered `{status_line}`: a Shallot client older than `shallot status`, \
             or another server"
        );
    }
    Ok(body.to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn nothing_listening_says_what_to_check() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err = fetch(port).unwrap_err();
        assert!(format!("{err:#}").contains("--metrics"), "{err:#}");
    }

    #[test]
    fn another_server_is_named_as_such() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 512];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = c.read(&mut buf).unwrap();
                assert!(n > 0, "the request ended before its head did");
                head.extend_from_slice(&buf[..n]);
            }
            c.write_all(b"HTTP/1.1 404 Not Found\r\n\r\nnope").unwrap();
        });
        let err = fetch(addr).unwrap_err();
        assert!(format!("{err:#}").contains("404"), "{err:#}");
        server.join().unwrap();
    }
}
