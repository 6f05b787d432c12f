//! Prometheus metrics (`prometheus-client`, the crate libp2p already uses) and a tiny HTTP
//! responder for `GET /metrics`, `GET /status` (JSON), and the status page and its text
//! (`crate::status_page`).
//!
//! The responder is a few lines of tokio: one fixed path, one method, bounded request size,
//! bounded connections. A web framework (axum, hyper's server) would add dozens of crates to
//! the client's dependency tree for that.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::debug;

#[cfg(test)]
use shallot_p2p::BootstrapDial;
use shallot_p2p::{BootstrapPeerStatus, PeerId};
use shallot_path::{BiasState, PathBias};

use crate::client::Bootstrap;
use crate::pool::CircuitSummary;
use crate::status_page;

/// The path metrics are served at.
pub const METRICS_PATH: &str = "/metrics";
/// Where the circuit status view is served (JSON), on the metrics address. It names the relays
/// of each circuit, like Tor's control port does for its controller: serve it only where the
/// operator alone can reach it (the default metrics address is loopback).
pub const STATUS_PATH: &str = "/status";
/// The status as text for a terminal (`shallot status`).
pub const STATUS_TEXT_PATH: &str = "/status.txt";
/// The status page for a browser, refreshing itself from [`STATUS_PATH`].
pub const PAGE_PATH: &str = "/";
/// How often the throughput graph takes a sample of the bytes carried.
pub const THROUGHPUT_INTERVAL: Duration = Duration::from_secs(1);
/// Samples the throughput graph keeps: five minutes' worth.
pub const THROUGHPUT_SAMPLES: usize = 300;
/// Buckets (seconds) of `shallot_circuit_build_seconds`. Millisecond steps at the low end:
/// a 3-hop build on a LAN or loopback takes a few milliseconds, and the benchmark's median is
/// interpolated inside a bucket, so one 0–10 ms bucket could not tell 2 ms from 8 ms.
pub const BUILD_TIME_BUCKETS: [f64; 20] = [
    0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.008, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Most metrics requests served at once.
const MAX_METRICS_CONNECTIONS: usize = 8;
/// Largest request head the responder reads.
const MAX_METRICS_REQUEST: usize = 4096;
/// How long a metrics request may take to arrive.
const METRICS_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

type Labels = [(&'static str, &'static str); 1];

/// Every path-bias state, for the `shallot_guards` gauge.
const BIAS_STATES: [BiasState; 4] = [
    BiasState::Ok,
    BiasState::Notice,
    BiasState::Warn,
    BiasState::Disabled,
];

/// The client's metrics. Cloning shares them.
#[derive(Clone, Debug)]
pub(crate) struct Metrics {
    /// `shallot_relays_known`: relays in the view.
    pub(crate) relays_known: Gauge,
    /// `shallot_bootstrap_percent`: how far bootstrapping got (Tor's "Bootstrapped N%").
    pub(crate) bootstrap_percent: Gauge,
    /// `shallot_bootstrap_peers_failing`: configured bootstrap peers whose latest dial failed.
    pub(crate) bootstrap_peers_failing: Gauge,
    /// `shallot_circuits_open`: built circuits not yet closed.
    pub(crate) circuits_open: Gauge,
    /// `shallot_circuit_build_seconds`.
    pub(crate) build_seconds: Histogram,
    /// `shallot_streams_open`.
    pub(crate) streams_open: Gauge,
    /// `shallot_bytes_total{direction="up"}`: application bytes sent into circuits.
    pub(crate) bytes_up: Counter,
    /// `shallot_bytes_total{direction="down"}`: bytes delivered to applications.
    pub(crate) bytes_down: Counter,
    failures: Family<Labels, Counter>,
    /// `shallot_guards{path_bias=…}`: pinned guards in each path-bias state (specs/05 §5.6).
    guards: Family<Labels, Gauge>,
    /// The bytes carried in each of the last [`THROUGHPUT_SAMPLES`] intervals.
    throughput: Arc<Mutex<Throughput>>,
    registry: Arc<Registry>,
}

/// Bytes up and down per [`THROUGHPUT_INTERVAL`], oldest first, at most
/// [`THROUGHPUT_SAMPLES`].
#[derive(Debug, Default)]
struct Throughput {
    /// The counters at the last sample.
    last: (u64, u64),
    samples: VecDeque<(u64, u64)>,
}

/// What the status shows besides [`Status`]: the metrics' figures at one moment.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    pub(crate) relays_known: i64,
    pub(crate) streams_open: i64,
    pub(crate) bytes_up: u64,
    pub(crate) bytes_down: u64,
    /// (up, down) bytes per [`THROUGHPUT_INTERVAL`], oldest first.
    pub(crate) throughput: Vec<(u64, u64)>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();
        let relays_known = Gauge::default();
        let bootstrap_percent = Gauge::default();
        let bootstrap_peers_failing = Gauge::default();
        let circuits_open = Gauge::default();
        let build_seconds = Histogram::new(BUILD_TIME_BUCKETS);
        let streams_open = Gauge::default();
        let bytes = Family::<Labels, Counter>::default();
        let failures = Family::<Labels, Counter>::default();
        let guards = Family::<Labels, Gauge>::default();
        registry.register(
            "shallot_relays_known",
            "Relays in the client's verified view",
            relays_known.clone(),
        );
        registry.register(
            "shallot_bootstrap_percent",
            "How far bootstrapping got, 0 to 100 (100: a circuit was built)",
            bootstrap_percent.clone(),
        );
        registry.register(
            "shallot_bootstrap_peers_failing",
            "Configured bootstrap peers whose latest dial failed",
            bootstrap_peers_failing.clone(),
        );
        registry.register(
            "shallot_circuits_open",
            "Built circuits not yet closed",
            circuits_open.clone(),
        );
        registry.register(
            "shallot_circuit_build_seconds",
            "Time to build a circuit, dial of the first hop included",
            build_seconds.clone(),
        );
        registry.register(
            "shallot_streams_open",
            "Streams open on circuits",
            streams_open.clone(),
        );
        registry.register(
            "shallot_bytes",
            "Application bytes carried, up (into circuits) and down (to applications)",
            bytes.clone(),
        );
        registry.register(
            "shallot_circuit_failures",
            "Circuits that failed to build or were destroyed, by reason",
            failures.clone(),
        );
        registry.register(
            "shallot_guards",
            "Pinned guards by path-bias state (disabled ones are not used)",
            guards.clone(),
        );
        for state in BIAS_STATES {
            guards
                .get_or_create(&[("path_bias", state.as_str())])
                .set(0);
        }
        let bytes_up = bytes.get_or_create(&[("direction", "up")]).clone();
        let bytes_down = bytes.get_or_create(&[("direction", "down")]).clone();
        Self {
            relays_known,
            bootstrap_percent,
            bootstrap_peers_failing,
            circuits_open,
            build_seconds,
            streams_open,
            bytes_up,
            bytes_down,
            failures,
            guards,
            throughput: Arc::default(),
            registry: Arc::new(registry),
        }
    }

    /// Takes a throughput sample: the bytes carried since the last one.
    pub(crate) fn sample_throughput(&self) {
        let now = (self.bytes_up.get(), self.bytes_down.get());
        let mut t = self
            .throughput
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let delta = (
            now.0.saturating_sub(t.last.0),
            now.1.saturating_sub(t.last.1),
        );
        t.last = now;
        if t.samples.len() >= THROUGHPUT_SAMPLES {
            t.samples.pop_front();
        }
        t.samples.push_back(delta);
    }

    /// The figures the status shows.
    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            relays_known: self.relays_known.get(),
            streams_open: self.streams_open.get(),
            bytes_up: self.bytes_up.get(),
            bytes_down: self.bytes_down.get(),
            throughput: self
                .throughput
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .samples
                .iter()
                .copied()
                .collect(),
        }
    }

    /// Counts a circuit failure with `reason` (a fixed label: timeout, extend_failed, …).
    pub(crate) fn circuit_failure(&self, reason: &'static str) {
        self.failures.get_or_create(&[("reason", reason)]).inc();
    }

    /// Sets `shallot_guards` from the pinned guards' records.
    pub(crate) fn guard_states(&self, guards: &[(PeerId, PathBias)]) {
        for state in BIAS_STATES {
            let n = guards.iter().filter(|(_, b)| b.state() == state).count();
            self.guards
                .get_or_create(&[("path_bias", state.as_str())])
                .set(n as i64);
        }
    }

    /// The metrics in Prometheus text format.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Binds `addr` for the metrics responder.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// What `GET /status` shows.
pub(crate) struct Status {
    /// How far bootstrapping got.
    pub(crate) bootstrap: Bootstrap,
    /// The configured bootstrap peers and their latest dials.
    pub(crate) bootstrap_peers: Vec<BootstrapPeerStatus>,
    /// The circuits whose path is known.
    pub(crate) circuits: Vec<CircuitSummary>,
    /// The pinned guards, first preferred, with their path-bias records.
    pub(crate) guards: Vec<(PeerId, PathBias)>,
}

/// Where `GET /status` gets what it shows.
pub(crate) type StatusSource = Arc<dyn Fn() -> Status + Send + Sync>;

/// Serves `GET /metrics`, `GET /status`, `GET /status.txt` and the page at `/` on
/// `listener`, and samples the throughput, until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, metrics: Metrics, status: StatusSource) {
    let permits = Arc::new(Semaphore::new(MAX_METRICS_CONNECTIONS));
    let mut sampling = tokio::time::interval(THROUGHPUT_INTERVAL);
    sampling.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let accepted = loop {
            tokio::select! {
                accepted = listener.accept() => break accepted,
                _ = sampling.tick() => metrics.sample_throughput(),
            }
        };
        let Ok((conn, _)) = accepted else {
            continue;
        };
        let metrics = metrics.clone();
        let status = Arc::clone(&status);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(err) = answer(conn, &metrics, &status).await {
                debug!(%err, "metrics request failed");
            }
        });
    }
}

async fn answer(
    mut conn: TcpStream,
    metrics: &Metrics,
    status: &StatusSource,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    let read = tokio::time::timeout(METRICS_REQUEST_TIMEOUT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_METRICS_REQUEST {
            let n = conn.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return Ok(());
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let asks = |path: &str| {
        line.starts_with(format!("GET {path} ").as_bytes())
            || line.starts_with(format!("GET {path}?").as_bytes())
    };
    let host = head
        .split(|b| *b == b'\n')
        .skip(1)
        .filter_map(|l| std::str::from_utf8(l).ok())
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("host")
                .then(|| value.trim())
        });
    let (code, ctype, body) = if !status_page::host_allowed(host) {
        (
            "403 Forbidden",
            "text/plain; charset=utf-8",
            "ask by IP address or localhost: other host names are refused, so that a web page \
             cannot rebind its name to this address and read the status\n"
                .to_owned(),
        )
    } else if asks(METRICS_PATH) {
        (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        )
    } else if asks(STATUS_PATH) {
        (
            "200 OK",
            "application/json",
            render_status(&status(), &metrics.snapshot()),
        )
    } else if asks(STATUS_TEXT_PATH) {
        (
            "200 OK",
            "text/plain; charset=utf-8",
            status_page::render_text(&status(), &metrics.snapshot()),
        )
    } else if asks(PAGE_PATH) {
        (
            "200 OK",
            "text/html; charset=utf-8",
            status_page::PAGE_HTML.to_owned(),
        )
    } else {
        (
            "404 Not Found",
            "text/plain; charset=utf-8",
            format!(
                "only GET {PAGE_PATH}, {METRICS_PATH}, {STATUS_PATH} and {STATUS_TEXT_PATH} are served here\n"
            ),
        )
    };
    // The page runs only its own script and talks only to this address.
    let response = format!(
        "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
         Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; \
         style-src 'unsafe-inline'; connect-src 'self'\r\n\
         X-Content-Type-Options: nosniff\r\nCache-Control: no-store\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(response.as_bytes()).await?;
    conn.shutdown().await
}

/// The status as JSON: `{"bootstrap": {"percent", "summary", "peers": [{"addr", "state"}]},
/// "circuits": [{"id", "hops" (guard first), "built", "streams", "age_secs"}],
/// "guards": [{"peer", "path_bias", "circ_attempts", "circ_built", "build_rate",
/// "use_attempts", "use_succeeded", "use_rate"}], "relays_known", "streams_open",
/// "bytes": {"up", "down"}, "throughput": {"interval_secs", "up": [...], "down": [...]}}`
/// (rates `null` before the first count; throughput in bytes per interval, oldest first).
/// PeerIds are base58 and ids numbers; the strings that could hold anything are escaped.
fn render_status(status: &Status, snapshot: &Snapshot) -> String {
    let peers: Vec<String> = status
        .bootstrap_peers
        .iter()
        .map(|p| {
            format!(
                "{{\"addr\": {}, \"state\": {}}}",
                json_string(&p.addr.to_string()),
                json_string(&p.state.to_string())
            )
        })
        .collect();
    let bootstrap = format!(
        "{{\"percent\": {}, \"summary\": {}, \"peers\": [{}]}}",
        status.bootstrap.percent,
        json_string(status.bootstrap.summary),
        peers.join(", ")
    );
    let entries: Vec<String> = status
        .circuits
        .iter()
        .map(|c| {
            let hops: Vec<String> = c.path.iter().map(|p| format!("\"{p}\"")).collect();
            format!(
                "{{\"id\": {}, \"hops\": [{}], \"built\": {}, \"streams\": {}, \"age_secs\": {}}}",
                c.id,
                hops.join(", "),
                c.built,
                c.streams,
                c.age.as_secs()
            )
        })
        .collect();
    let rate = |r: Option<f64>| r.map_or_else(|| "null".to_owned(), |r| format!("{r:.3}"));
    let guards: Vec<String> = status
        .guards
        .iter()
        .map(|(peer, b)| {
            format!(
                "{{\"peer\": \"{peer}\", \"path_bias\": \"{}\", \"circ_attempts\": {}, \
                 \"circ_built\": {}, \"build_rate\": {}, \"use_attempts\": {}, \
                 \"use_succeeded\": {}, \"use_rate\": {}}}",
                b.state().as_str(),
                b.circ_attempts(),
                b.circ_built(),
                rate(b.build_rate()),
                b.use_attempts(),
                b.use_succeeded(),
                rate(b.use_rate()),
            )
        })
        .collect();
    let series = |pick: fn(&(u64, u64)) -> u64| {
        snapshot
            .throughput
            .iter()
            .map(|s| pick(s).to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "{{\"bootstrap\": {bootstrap}, \"circuits\": [{}], \"guards\": [{}], \
         \"relays_known\": {}, \"streams_open\": {}, \"bytes\": {{\"up\": {}, \"down\": {}}}, \
         \"throughput\": {{\"interval_secs\": {}, \"up\": [{}], \"down\": [{}]}}}}\n",
        entries.join(", "),
        guards.join(", "),
        snapshot.relays_known,
        snapshot.streams_open,
        snapshot.bytes_up,
        snapshot.bytes_down,
        THROUGHPUT_INTERVAL.as_secs(),
        series(|s| s.0),
        series(|s| s.1),
    )
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throughput_keeps_its_last_samples_only() {
        let m = Metrics::new();
        for i in 0..THROUGHPUT_SAMPLES as u64 + 5 {
            m.bytes_down.inc_by(i);
            m.bytes_up.inc_by(1);
            m.sample_throughput();
        }
        let t = m.snapshot().throughput;
        assert_eq!(t.len(), THROUGHPUT_SAMPLES);
        assert_eq!(t[0], (1, 5));
        assert_eq!(
            t[THROUGHPUT_SAMPLES - 1],
            (1, THROUGHPUT_SAMPLES as u64 + 4)
        );
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }

    #[test]
    fn every_required_metric_is_exported() {
        let m = Metrics::new();
        m.bytes_up.inc_by(3);
        m.circuit_failure("timeout");
        m.build_seconds.observe(0.2);
        m.guard_states(&[
            (PeerId::random(), PathBias::default()),
            (PeerId::random(), PathBias::default()),
        ]);
        let text = m.render();
        for name in [
            "shallot_relays_known",
            "shallot_circuits_open",
            "shallot_circuit_build_seconds_bucket",
            "shallot_streams_open",
            "shallot_bytes_total{direction=\"up\"} 3",
            "shallot_bytes_total{direction=\"down\"} 0",
            "shallot_circuit_failures_total{reason=\"timeout\"} 1",
            "shallot_guards{path_bias=\"ok\"} 2",
            "shallot_guards{path_bias=\"disabled\"} 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }

    #[tokio::test]
    async fn responder_serves_metrics_and_refuses_other_paths() {
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let m = Metrics::new();
        m.relays_known.set(7);
        let peer = shallot_p2p::PeerId::random();
        let bootstrap_addr: shallot_p2p::Multiaddr = format!("/ip4/127.0.0.1/tcp/1/p2p/{peer}")
            .parse()
            .expect("addr");
        let status: StatusSource = Arc::new(move || Status {
            bootstrap: Bootstrap::at(10, "asking the DHT for relays"),
            bootstrap_peers: vec![BootstrapPeerStatus {
                addr: bootstrap_addr.clone(),
                peer,
                state: BootstrapDial::Failed(shallot_p2p::DialFailure::Refused),
            }],
            circuits: vec![CircuitSummary {
                id: 3,
                path: vec![peer, peer, peer],
                built: true,
                claimed: true,
                streams: 2,
                age: Duration::from_secs(5),
            }],
            guards: vec![(peer, PathBias::default())],
        });
        let task = tokio::spawn(serve(listener, m, status));
        let get_as = |path: &'static str, host: String| async move {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            c.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
                .await
                .expect("write");
            let mut out = String::new();
            c.read_to_string(&mut out).await.expect("read");
            out
        };
        let get = |path: &'static str| get_as(path, addr.to_string());
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("shallot_relays_known 7"), "{ok}");
        let status = get("/status").await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert!(
            status.ends_with(&format!(
                "{{\"bootstrap\": {{\"percent\": 10, \"summary\": \"asking the DHT for relays\", \
                 \"peers\": [{{\"addr\": \"/ip4/127.0.0.1/tcp/1/p2p/{peer}\", \"state\": \
                 \"connection refused\"}}]}}, \"circuits\": [{{\"id\": 3, \"hops\": [\"{peer}\", \
                 \"{peer}\", \"{peer}\"], \"built\": true, \"streams\": 2, \"age_secs\": 5}}], \
                 \"guards\": [{{\"peer\": \"{peer}\", \"path_bias\": \"ok\", \"circ_attempts\": 0, \
                 \"circ_built\": 0, \"build_rate\": null, \"use_attempts\": 0, \
                 \"use_succeeded\": 0, \"use_rate\": null}}], \"relays_known\": 7, \
                 \"streams_open\": 0, \"bytes\": {{\"up\": 0, \"down\": 0}}, \"throughput\": \
                 {{\"interval_secs\": 1, \"up\": [], \"down\": []}}}}\n"
            )),
            "{status}"
        );
        let page = get("/").await;
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        assert!(page.contains("text/html") && page.contains("<title>Shallot client</title>"));
        let text = get("/status.txt").await;
        assert!(text.contains("relays      7 known"), "{text}");
        assert!(text.contains("path bias ok"), "{text}");
        let other = get("/other").await;
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
        // A page that rebound its own name to this address cannot read the status.
        let rebound = get_as("/status", format!("evil.example:{}", addr.port())).await;
        assert!(rebound.starts_with("HTTP/1.1 403"), "{rebound}");
        task.abort();
    }
}
