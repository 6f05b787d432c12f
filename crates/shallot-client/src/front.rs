//! The local proxy port: SOCKS5 and HTTP CONNECT on one listener, told apart by the first
//! byte (specs/07 §2).

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use shallot_cell::{Host, ResolvedAnswer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::debug;

use crate::err::StreamFailure;
use crate::manager::Manager;
use crate::pool::Isolation;
use crate::stream::StreamHandle;

/// How long an application may take to send its whole SOCKS or HTTP request.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes taken from the socket by one read while a handshake is incomplete.
const HANDSHAKE_READ_CHUNK: usize = 1024;

/// What the front needs from the circuit manager (a trait so the front is tested without a
/// network).
pub(crate) trait Connector: Send + Sync + 'static {
    /// Opens a stream and waits for CONNECTED (see [`Manager::connect`]).
    fn connect<'a, S>(
        &'a self,
        iso: &'a Isolation,
        host: &'a Host,
        port: u16,
        io: &'a mut S,
        early: &'a mut Vec<u8>,
    ) -> impl Future<Output = Result<(StreamHandle, Host), StreamFailure>> + Send + 'a
    where
        S: AsyncRead + Unpin + Send;

    /// Resolves at an exit (see [`Manager::resolve`]).
    fn resolve<'a>(
        &'a self,
        iso: &'a Isolation,
        host: &'a Host,
    ) -> impl Future<Output = Result<Vec<ResolvedAnswer>, StreamFailure>> + Send + 'a;
}

impl Connector for Manager {
    fn connect<'a, S>(
        &'a self,
        iso: &'a Isolation,
        host: &'a Host,
        port: u16,
        io: &'a mut S,
        early: &'a mut Vec<u8>,
    ) -> impl Future<Output = Result<(StreamHandle, Host), StreamFailure>> + Send + 'a
    where
        S: AsyncRead + Unpin + Send,
    {
        Manager::connect(self, iso, host, port, io, early)
    }

    fn resolve<'a>(
        &'a self,
        iso: &'a Isolation,
        host: &'a Host,
    ) -> impl Future<Output = Result<Vec<ResolvedAnswer>, StreamFailure>> + Send + 'a {
        Manager::resolve(self, iso, host)
    }
}

/// Reads more of a handshake into `buf`, which never grows past `bound` bytes (the bound the
/// sans-IO handshake promises to decide within). The end of the stream is an error: the
/// handshake cannot finish.
pub(crate) async fn read_more<S: AsyncRead + Unpin>(
    conn: &mut S,
    buf: &mut Vec<u8>,
    bound: usize,
) -> io::Result<()> {
    let room = bound.saturating_sub(buf.len()).min(HANDSHAKE_READ_CHUNK);
    if room == 0 {
        return Err(io::Error::other("handshake buffer full"));
    }
    let mut chunk = [0u8; HANDSHAKE_READ_CHUNK];
    let n = conn.read(&mut chunk[..room]).await?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// Settings of the front.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrontConfig {
    pub(crate) handshake_timeout: Duration,
    pub(crate) max_connections: usize,
}

/// Accepts connections until the task is dropped; each is served in its own task, at most
/// `max_connections` at once (the rest wait in the listen backlog).
pub(crate) async fn serve<C: Connector>(
    listener: TcpListener,
    connector: Arc<C>,
    cfg: FrontConfig,
) {
    accept_bounded(listener, cfg.max_connections, "proxy", move |conn| {
        let connector = Arc::clone(&connector);
        async move { serve_conn(conn, &*connector, cfg).await }
    })
    .await;
}

/// Accepts TCP connections on `listener` until the task is dropped and serves each with
/// `serve` in its own task, at most `max` at once: the rest wait in the listen backlog, where
/// the kernel bounds them. `what` names the listener in logs.
pub(crate) async fn accept_bounded<F, Fut>(
    listener: TcpListener,
    max: usize,
    what: &'static str,
    serve: F,
) where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let (conn, _peer) = match listener.accept().await {
            Ok(c) => c,
            Err(err) => {
                debug!(%err, listener = what, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = conn.set_nodelay(true);
        let served = serve(conn);
        tokio::spawn(async move {
            let _permit = permit;
            served.await;
        });
    }
}

/// Serves one application connection: peek the first byte, then SOCKS5 or HTTP CONNECT;
/// anything else is closed without a word.
pub(crate) async fn serve_conn<C: Connector>(conn: TcpStream, connector: &C, cfg: FrontConfig) {
    let mut first = [0u8; 1];
    match tokio::time::timeout(cfg.handshake_timeout, conn.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return,
    }
    dispatch(first[0], conn, connector, cfg).await;
}

/// Routes a connection by its first byte (specs/07 §2).
pub(crate) async fn dispatch<C, S>(first: u8, conn: S, connector: &C, cfg: FrontConfig)
where
    C: Connector,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    match first {
        0x05 => crate::socks::serve(conn, connector, cfg).await,
        b'A'..=b'Z' => crate::http_connect::serve(conn, connector, cfg).await,
        other => debug!(first = other, "not SOCKS5 nor HTTP: closed"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::stream::stream_pair;

    /// A connector without a network: records what it was asked, then echoes (or fails).
    #[derive(Clone, Default)]
    pub(crate) struct FakeConnector {
        asked: Arc<Mutex<Vec<(Isolation, Host, u16)>>>,
        resolved: Arc<Mutex<Vec<Host>>>,
        /// The optimistic data each connect was handed by the front.
        early: Arc<Mutex<Vec<Vec<u8>>>>,
        fail: Option<StreamFailure>,
    }

    impl FakeConnector {
        pub(crate) fn failing(failure: StreamFailure) -> Self {
            Self {
                fail: Some(failure),
                ..Self::default()
            }
        }

        pub(crate) fn asked(&self) -> Vec<(Isolation, Host, u16)> {
            self.asked.lock().expect("lock").clone()
        }

        pub(crate) fn early(&self) -> Vec<Vec<u8>> {
            self.early.lock().expect("lock").clone()
        }

        pub(crate) fn resolved(&self) -> Vec<Host> {
            self.resolved.lock().expect("lock").clone()
        }
    }

    #[allow(clippy::manual_async_fn)]
    impl Connector for FakeConnector {
        fn connect<'a, S>(
            &'a self,
            iso: &'a Isolation,
            host: &'a Host,
            port: u16,
            _io: &'a mut S,
            early: &'a mut Vec<u8>,
        ) -> impl Future<Output = Result<(StreamHandle, Host), StreamFailure>> + Send + 'a
        where
            S: AsyncRead + Unpin + Send,
        {
            async move {
                if let Some(f) = &self.fail {
                    return Err(f.clone());
                }
                self.asked
                    .lock()
                    .expect("lock")
                    .push((iso.clone(), host.clone(), port));
                self.early.lock().expect("lock").push(early.clone());
                let (handle, mut end) = stream_pair();
                tokio::spawn(async move {
                    while let Some(chunk) = end.from_app.recv().await {
                        if end.to_app.send(chunk).await.is_err() {
                            break;
                        }
                    }
                });
                Ok((handle, Host::V4(std::net::Ipv4Addr::LOCALHOST)))
            }
        }

        fn resolve<'a>(
            &'a self,
            _iso: &'a Isolation,
            host: &'a Host,
        ) -> impl Future<Output = Result<Vec<ResolvedAnswer>, StreamFailure>> + Send + 'a {
            async move {
                self.resolved.lock().expect("lock").push(host.clone());
                Ok(match host {
                    Host::Name(_) => vec![ResolvedAnswer::V4(std::net::Ipv4Addr::LOCALHOST, 60)],
                    _ => vec![ResolvedAnswer::Name("localhost".into(), 60)],
                })
            }
        }
    }

    pub(crate) const TEST_FRONT: FrontConfig = FrontConfig {
        handshake_timeout: Duration::from_millis(500),
        max_connections: 4,
    };

    /// Serves one connection on a loopback listener; returns the client side.
    pub(crate) async fn run_front(fake: FakeConnector) -> (TcpStream, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (conn, _) = listener.accept().await.expect("accept");
            serve_conn(conn, &fake, TEST_FRONT).await;
        });
        let client = TcpStream::connect(addr).await.expect("connect");
        (client, task)
    }

    #[tokio::test]
    async fn garbage_first_byte_is_closed_silently() {
        for first in [0x00u8, 0x04, 0x16, 0xFF, b'a'] {
            let fake = FakeConnector::default();
            let (mut c, task) = run_front(fake.clone()).await;
            c.write_all(&[first, 1, 2, 3]).await.expect("write");
            let mut out = Vec::new();
            let _ = c.read_to_end(&mut out).await;
            assert!(out.is_empty(), "answered {out:?} to {first:#x}");
            task.await.expect("no panic");
        }
    }

    #[tokio::test]
    async fn silent_client_is_dropped_after_the_timeout() {
        let fake = FakeConnector::default();
        let (mut c, task) = run_front(fake).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out))
            .await
            .expect("closed by the front");
        task.await.expect("no panic");
    }
}
