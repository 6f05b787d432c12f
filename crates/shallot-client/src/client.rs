//! The client process: starts the libp2p node, the view refresh, the circuit manager, the
//! proxy front and the metrics responder; reports bootstrap progress the way Tor does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shallot_directory::{NetworkView, Verdicts, ViewConfig, gather, load_cache, write_cache};
use shallot_p2p::{BootstrapDial, Node, NodeConfig, Role, identity::Keypair};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use crate::pool::CircuitSummary;

use crate::config::ClientConfig;
use crate::dns::{self, DnsFront};
use crate::err::ClientError;
use crate::front::{self, FrontConfig, HANDSHAKE_TIMEOUT};
use crate::manager::{MAINTENANCE_INTERVAL, Manager};
use crate::metrics::{self, Metrics};
use crate::path::Paths;
use crate::sensitive::set_safe_logging;

/// The view cache's file name inside the data directory.
const VIEW_CACHE_FILE: &str = "view.cache";
/// Longest wait between view fetches while the view cannot make a path yet.
const BOOTSTRAP_RETRY_MAX: Duration = Duration::from_secs(30);
/// Waits between the first refreshes once the view can make a path: relays that started with
/// the client publish a little later, and republish 15 s, 60 s and 5 min after their start
/// (specs/04 §4), so a young view is completed soon instead of one `view_refresh_secs` later.
const YOUNG_VIEW_REFRESHES: [Duration; 3] = [
    Duration::from_secs(15),
    Duration::from_secs(45),
    Duration::from_secs(240),
];

/// How far the client got (Tor's "Bootstrapped N%: …").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bootstrap {
    /// 0..=100; 100 means a circuit was built and the proxy can carry streams.
    pub percent: u8,
    /// What the client is doing, as in the log line.
    pub summary: &'static str,
}

impl Bootstrap {
    const STARTING: Self = Self::at(0, "starting");
    const CACHE: Self = Self::at(5, "loaded relays from the cache");
    const CONNECTING: Self = Self::at(10, "asking the DHT for relays");
    const FOUND: Self = Self::at(25, "found relays");
    const ENOUGH: Self = Self::at(50, "enough relays for a path");
    const BUILDING: Self = Self::at(75, "building a first circuit");
    const DONE: Self = Self::at(100, "done");

    pub(crate) const fn at(percent: u8, summary: &'static str) -> Self {
        Self { percent, summary }
    }
}

/// Starts the client.
pub struct Client;

impl Client {
    /// Starts a client with `config`; `metrics` (e.g. from `--metrics ADDR`) overrides
    /// `config.metrics_listen`. Returns once every listener is bound and the node is up;
    /// bootstrapping continues in the background ([`ClientHandle::wait_bootstrapped`]).
    /// Must be called inside a tokio runtime (multi-threaded or not).
    pub async fn start(
        config: ClientConfig,
        metrics: Option<SocketAddr>,
    ) -> Result<ClientHandle, ClientError> {
        config.validate()?;
        set_safe_logging(config.safe_logging);
        let bootstrap = config.bootstrap_addrs()?;
        let no_bootstrap = bootstrap.is_empty();
        let (progress_tx, progress) = watch::channel(Bootstrap::STARTING);
        let report = move |b: Bootstrap| {
            progress_tx.send_if_modified(|cur| {
                if b.percent > cur.percent {
                    info!("bootstrapped {}%: {}", b.percent, b.summary);
                    *cur = b;
                    true
                } else {
                    false
                }
            });
        };
        let report = Arc::new(report);
        report(Bootstrap::STARTING);

        let cache_path = match &config.data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| ClientError::DataDir {
                    path: dir.clone(),
                    source,
                })?;
                Some(dir.join(VIEW_CACHE_FILE))
            }
            None => None,
        };
        let socks = bind_front(config.socks_listen).map_err(|source| ClientError::Bind {
            addr: config.socks_listen,
            source,
        })?;
        let socks_addr = socks.local_addr().map_err(|source| ClientError::Bind {
            addr: config.socks_listen,
            source,
        })?;
        let metrics_listen = metrics.or(config.metrics_listen);
        let metrics_listener = match metrics_listen {
            Some(addr) => Some(
                metrics::bind(addr)
                    .await
                    .map_err(|source| ClientError::Bind { addr, source })?,
            ),
            None => None,
        };
        let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
        let dns_sockets = match config.dns_listen {
            Some(addr) => {
                Some(dns::bind(addr).map_err(|source| ClientError::Bind { addr, source })?)
            }
            None => None,
        };
        let dns_addr = dns_sockets
            .as_ref()
            .and_then(|(udp, _)| udp.local_addr().ok());

        // A fresh identity on every run (specs/00 §3).
        let node = Node::start(
            Keypair::generate_ed25519(),
            NodeConfig::new(Role::Client, Vec::new(), bootstrap),
        )
        .await
        .map_err(ClientError::P2p)?;
        let node = Arc::new(node);

        let metrics = Metrics::new();
        let mut view = NetworkView::new(ViewConfig::default());
        if let Some(path) = &cache_path {
            match load_cache(path, &mut view, node.clock().now()) {
                Ok(n) if n > 0 => {
                    info!(relays = n, "view cache loaded");
                    report(Bootstrap::CACHE);
                }
                Ok(_) => {}
                Err(err) => warn!(%err, "view cache unreadable: ignored"),
            }
        }
        // Tor's "Problem bootstrapping" for a client that could never find a relay: say so at
        // once, and what to set, instead of asking an empty DHT forever.
        if no_bootstrap && view.is_empty() {
            return Err(ClientError::NoBootstrap);
        }
        for entry in view.entries() {
            let peer = entry.descriptor.peer_id();
            for addr in &entry.descriptor.descriptor().addrs {
                let _ = node.add_address(peer, addr.clone()).await;
            }
        }
        let paths = Paths::open(config.data_dir.as_deref(), node.clock().clone())
            .map_err(ClientError::GuardState)?;
        let manager = Manager::new(
            config.clone(),
            Arc::clone(&node),
            view,
            paths,
            metrics.clone(),
        );
        manager.update_view(|_| ());

        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(front::serve(
            socks,
            Arc::clone(&manager),
            FrontConfig {
                handshake_timeout: HANDSHAKE_TIMEOUT,
                max_connections: config.max_connections,
            },
        )));
        if let Some((udp, tcp)) = dns_sockets {
            let dns_front = DnsFront::new(Arc::clone(&manager));
            tasks.push(tokio::spawn(dns::serve_udp(udp, Arc::clone(&dns_front))));
            tasks.push(tokio::spawn(dns::serve_tcp(tcp, dns_front)));
        }
        if let Some(listener) = metrics_listener {
            let circuits = Arc::clone(&manager);
            let (node, progress) = (Arc::clone(&node), progress.clone());
            let status: metrics::StatusSource = Arc::new(move || metrics::Status {
                bootstrap: *progress.borrow(),
                bootstrap_peers: node.bootstrap_status(),
                circuits: circuits.circuits(),
                guards: circuits.guards(),
            });
            tasks.push(tokio::spawn(metrics::serve(
                listener,
                metrics.clone(),
                status,
            )));
        }
        tasks.push(tokio::spawn(refresh_view(
            Arc::clone(&node),
            Arc::clone(&manager),
            cache_path,
            config.view_refresh(),
            {
                let report = Arc::clone(&report);
                move |b| report(b)
            },
        )));
        tasks.push(tokio::spawn(maintain(Arc::clone(&manager))));
        tasks.push(tokio::spawn(watch_bootstrap(
            Arc::clone(&node),
            progress.clone(),
            metrics.clone(),
        )));
        tasks.push(tokio::spawn({
            let mut built = manager.first_built();
            let report = Arc::clone(&report);
            async move {
                if built.wait_for(|b| *b).await.is_ok() {
                    report(Bootstrap::DONE);
                }
            }
        }));
        info!(%socks_addr, metrics = ?metrics_addr, "shallot client listening (SOCKS5 and HTTP CONNECT)");
        if let Some(dns_addr) = dns_addr {
            info!(%dns_addr, "DNS port listening (UDP and TCP)");
        }
        Ok(ClientHandle {
            socks_addr,
            metrics_addr,
            dns_addr,
            manager,
            progress,
            tasks,
            _node: node,
        })
    }
}

/// A running client. Dropping it stops it (as [`ClientHandle::shutdown`] does, without
/// waiting).
pub struct ClientHandle {
    socks_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    dns_addr: Option<SocketAddr>,
    manager: Arc<Manager>,
    progress: watch::Receiver<Bootstrap>,
    tasks: Vec<JoinHandle<()>>,
    _node: Arc<Node>,
}

impl std::fmt::Debug for ClientHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHandle")
            .field("socks_addr", &self.socks_addr)
            .field("metrics_addr", &self.metrics_addr)
            .field("dns_addr", &self.dns_addr)
            .finish_non_exhaustive()
    }
}

impl ClientHandle {
    /// Where the SOCKS5 / HTTP CONNECT front listens (the port resolved if 0 was asked).
    pub fn socks_addr(&self) -> SocketAddr {
        self.socks_addr
    }

    /// Where metrics are served, if they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Where the DNS port listens (UDP and TCP), if it does.
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns_addr
    }

    /// Bootstrap progress now.
    pub fn bootstrap(&self) -> Bootstrap {
        *self.progress.borrow()
    }

    /// Waits until bootstrapped to 100% (a circuit was built). Bound it with a timeout:
    /// without relays it never finishes.
    pub async fn wait_bootstrapped(&self) -> Result<(), ClientError> {
        let mut rx = self.progress.clone();
        rx.wait_for(|b| b.percent >= 100)
            .await
            .map(|_| ())
            .map_err(|_| ClientError::Stopped)
    }

    /// Relays in the verified view.
    pub fn relays_known(&self) -> usize {
        self.manager.with_view(NetworkView::len)
    }

    /// A snapshot of the open circuits (for status views and tests).
    pub fn circuits(&self) -> Vec<CircuitSummary> {
        self.manager.circuits()
    }

    /// Stops accepting connections, closes every circuit (DESTROY is sent by each circuit
    /// task) and stops the background tasks.
    pub async fn shutdown(mut self) {
        self.stop();
        // Give circuit tasks a moment to write their DESTROY cells.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        self.manager.close_all();
    }
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Connections the kernel queues for the proxy port before the front accepts them. A browser
/// or crawler opening hundreds of connections at once overflows the default of 1,024 that
/// tokio's `bind` asks for; the SYNs dropped then are retried only after a second.
const FRONT_BACKLOG: u32 = 4096;

/// Binds the proxy port with [`FRONT_BACKLOG`].
pub(crate) fn bind_front(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(FRONT_BACKLOG)
}

/// Refreshes the view from the DHT at start, after [`YOUNG_VIEW_REFRESHES`], then every
/// `interval` (faster while the view cannot make a path yet, and at once when a build asks),
/// caching it on disk. specs/04 §6.1.
async fn refresh_view(
    node: Arc<Node>,
    manager: Arc<Manager>,
    cache_path: Option<PathBuf>,
    interval: Duration,
    report: impl Fn(Bootstrap) + Send + 'static,
) {
    let mut retry = Duration::from_millis(500);
    let mut young = YOUNG_VIEW_REFRESHES.iter();
    let mut verdicts = Verdicts::new();
    loop {
        report(Bootstrap::CONNECTING);
        match node.fetch_descriptors().await {
            Ok(outcome) => {
                let bytes = outcome.bytes;
                let gathered = gather(outcome.listings, node.clock().now());
                // Where more relays claim a subnet than its cap admits, dial them first
                // (specs/04 §6.3); the view takes only those found there.
                let snapshot = manager.with_view(NetworkView::clone);
                let dials = node
                    .verify_contests(&gathered, &snapshot, &mut verdicts)
                    .await;
                // A relay a source reports down leaves the view only if this client cannot
                // reach it either (specs/04 §6.1): one source's word removes no one.
                let gone = node
                    .check_down_reports(&gathered, &snapshot, &mut verdicts)
                    .await;
                drop(snapshot);
                let now = node.clock().now();
                let (known, usable, assembled) = manager.update_view(|view| {
                    for peer in &gone {
                        view.remove(peer);
                    }
                    let assembled = gathered.offer_to(view, Some(&verdicts));
                    view.prune_expired(now);
                    (view.len(), view.clone(), assembled)
                });
                if assembled.reported_down > 0 {
                    info!(
                        reported = assembled.reported_down,
                        removed = gone.len(),
                        "relays reported down by a directory source; those this client could \
                         not reach either left the view"
                    );
                }
                info!(
                    known,
                    sources = assembled.sources_used,
                    added = assembled.added,
                    hibernating = assembled.hibernating,
                    bytes,
                    "view refreshed"
                );
                let waiting = assembled.unverified + assembled.minority + assembled.unproven;
                if assembled.unreachable > 0 || waiting > 0 {
                    info!(
                        dials,
                        unreachable = assembled.unreachable,
                        contested = assembled.unverified,
                        minority = assembled.minority,
                        unproven = assembled.unproven,
                        "relays left out until this client reaches them at the addresses they \
                         sign: unreachable ones were not found there; the others (in a subnet \
                         more relays claim than its cap admits, listed by no more than half the \
                         sources, or proven by no source but themselves) are not dialed yet"
                    );
                }
                if !assembled.sources_dropped.is_empty() || assembled.invalid > 0 {
                    warn!(
                        dropped = assembled.sources_dropped.len(),
                        invalid = assembled.invalid,
                        "directory sources listed invalid descriptors"
                    );
                }
                if known > 0 {
                    report(Bootstrap::FOUND);
                }
                if manager.path_possible(&usable) {
                    report(Bootstrap::ENOUGH);
                    report(Bootstrap::BUILDING);
                }
                if let Some(Err(err)) = cache_path.as_ref().map(|p| write_cache(p, &usable)) {
                    warn!(%err, "cannot write the view cache");
                }
            }
            Err(err) => warn!(%err, "view refresh failed"),
        }
        let ready = manager.with_view(|v| manager.path_possible(v));
        let wait = if ready {
            retry = Duration::from_millis(500);
            young.next().map_or(interval, |w| (*w).min(interval))
        } else {
            retry = (retry * 2).min(BOOTSTRAP_RETRY_MAX);
            retry
        };
        tokio::time::sleep(jittered(wait)).await;
    }
}

/// `wait` give or take up to 10 %, so that when a client refreshes says nothing about what it
/// does (specs/04 §6.1).
fn jittered(wait: Duration) -> Duration {
    let tenth = wait / 10;
    wait - tenth + tenth.mul_f64(rand::random::<f64>() * 2.0)
}

/// How long a client may stay short of relays before it says which bootstrap peers failed and
/// why (Tor waits a little before "Problem bootstrapping" too: the first dials take a moment).
pub const BOOTSTRAP_WARN_AFTER: Duration = Duration::from_secs(15);
/// How often it says so again while it is still stuck.
pub const BOOTSTRAP_WARN_INTERVAL: Duration = Duration::from_secs(60);
/// How often the bootstrap peers' states are looked at while bootstrapping (they change
/// without a change of progress).
const BOOTSTRAP_POLL: Duration = Duration::from_secs(1);

/// Until a circuit is built: keeps the bootstrap metrics current and, while the client is
/// still short of relays after [`BOOTSTRAP_WARN_AFTER`], warns once per bootstrap peer that
/// did not answer, naming it and why (Tor's "Problem bootstrapping. Stuck at 10% ...
/// (Connection refused)"), again every [`BOOTSTRAP_WARN_INTERVAL`].
async fn watch_bootstrap(
    node: Arc<Node>,
    mut progress: watch::Receiver<Bootstrap>,
    metrics: Metrics,
) {
    let mut next_warning = tokio::time::Instant::now() + BOOTSTRAP_WARN_AFTER;
    loop {
        let now = *progress.borrow_and_update();
        let peers = node.bootstrap_status();
        let failing = peers
            .iter()
            .filter(|p| matches!(p.state, BootstrapDial::Failed(_)))
            .count();
        metrics.bootstrap_percent.set(i64::from(now.percent));
        metrics
            .bootstrap_peers_failing
            .set(i64::try_from(failing).unwrap_or(i64::MAX));
        if now.percent >= Bootstrap::DONE.percent {
            return;
        }
        if now.percent < Bootstrap::FOUND.percent && tokio::time::Instant::now() >= next_warning {
            next_warning += BOOTSTRAP_WARN_INTERVAL;
            let mut named = 0;
            for peer in peers.iter().filter(|p| p.state != BootstrapDial::Connected) {
                named += 1;
                warn!(
                    "problem bootstrapping: stuck at {}% ({}); bootstrap peer {} {}",
                    now.percent, now.summary, peer.addr, peer.state
                );
            }
            if named == 0 {
                warn!(
                    "problem bootstrapping: stuck at {}% ({}); the bootstrap peers answer but \
                     listed no usable relay",
                    now.percent, now.summary
                );
            }
        }
        if tokio::time::timeout(BOOTSTRAP_POLL, progress.changed())
            .await
            .is_ok_and(|changed| changed.is_err())
        {
            // The client is stopping.
            return;
        }
    }
}

/// Builds ahead and closes used-up circuits, every few seconds or when woken.
async fn maintain(manager: Arc<Manager>) {
    loop {
        if manager.with_view(|v| manager.path_possible(v)) {
            manager.maintain().await;
        }
        tokio::select! {
            () = manager.wake.notified() => {}
            () = tokio::time::sleep(MAINTENANCE_INTERVAL) => {}
        }
    }
}
