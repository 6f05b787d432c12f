//! End to end on loopback: three relays (`shallot_relay::Relay`, relay i on 127.i.0.1 so each
//! sits in its own /16), a client (`Client::start`), a local HTTP-ish source server. Bounded:
//! every wait has a limit, and a limit hit is a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use shallot_client::{Client, ClientConfig, ClientHandle};
use shallot_relay::{Relay, RelayConfig, RelayHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const LIMIT: Duration = Duration::from_secs(90);
const FILE_LEN: usize = 20 * 1024 * 1024;
const DENIED_PORT: u16 = 9;

struct Net {
    relays: Vec<RelayHandle>,
    _dirs: Vec<tempfile::TempDir>,
    client: ClientHandle,
}

/// Logs of relays and client in the test's output (shown for a failed test), by `RUST_LOG`.
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn start_net() -> Net {
    init_logs();
    let mut relays: Vec<RelayHandle> = Vec::new();
    let mut dirs = Vec::new();
    for i in 1..=3u8 {
        let dir = tempfile::tempdir().unwrap();
        let mut config = RelayConfig {
            data_dir: dir.path().to_owned(),
            listen: vec![format!("/ip4/127.{i}.0.1/tcp/0").parse().unwrap()],
            bootstrap: relays
                .first()
                .and_then(RelayHandle::bootstrap_addr)
                .into_iter()
                .collect(),
            safe_logging: false,
            allow_private_addresses: true,
            ..RelayConfig::default()
        };
        if i == 3 {
            let policy = dir.path().join("exit-policy");
            std::fs::write(&policy, format!("reject *:{DENIED_PORT}\naccept *:*\n")).unwrap();
            config.exit_policy_file = Some(policy);
            config.exit_policy_reject_private = false;
        }
        relays.push(Relay::start(config).await.expect("relay starts"));
        dirs.push(dir);
    }
    let client = start_client(&relays, None).await;
    Net {
        relays,
        _dirs: dirs,
        client,
    }
}

/// Starts a client against `relays` (with `data_dir`, if any) and waits until it bootstrapped.
async fn start_client(relays: &[RelayHandle], data_dir: Option<PathBuf>) -> ClientHandle {
    let config = ClientConfig {
        socks_listen: "127.0.0.1:0".parse().unwrap(),
        bootstrap: relays
            .iter()
            .filter_map(RelayHandle::bootstrap_addr)
            .map(|a| a.to_string())
            .collect(),
        preemptive_ports: vec![],
        data_dir,
        ..ClientConfig::default()
    };
    let client = Client::start(config, Some("127.0.0.1:0".parse().unwrap()))
        .await
        .expect("client starts");
    tokio::time::timeout(LIMIT, client.wait_bootstrapped())
        .await
        .expect("bootstrapped within the limit")
        .expect("bootstrapped");
    client
}

/// Serves FILE_LEN deterministic bytes after any request line.
async fn file_server() -> (u16, [u8; 32]) {
    let data: Vec<u8> = (0..FILE_LEN).map(|i| (i * 131 % 251) as u8).collect();
    let digest: [u8; 32] = Sha256::digest(&data).into();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let data = data.clone();
            tokio::spawn(async move {
                let mut head = [0u8; 1024];
                let _ = s.read(&mut head).await;
                let hdr = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {FILE_LEN}\r\nConnection: close\r\n\r\n"
                );
                let _ = s.write_all(hdr.as_bytes()).await;
                let _ = s.write_all(&data).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (port, digest)
}

async fn fetch_socks(
    proxy: SocketAddr,
    target: (&str, u16),
    creds: Option<(&str, &str)>,
) -> Vec<u8> {
    let mut s = match creds {
        Some((u, p)) => tokio_socks::tcp::Socks5Stream::connect_with_password(proxy, target, u, p)
            .await
            .expect("socks connect"),
        None => tokio_socks::tcp::Socks5Stream::connect(proxy, target)
            .await
            .expect("socks connect"),
    };
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    out
}

/// Bound on an error the client can answer by itself: far below the stream timeout (15 s),
/// which is what a hang would end in.
const ERROR_BOUND: Duration = Duration::from_secs(5);

/// Circuit builds the client attempted so far (built ones and failed ones), from its metrics.
async fn builds_attempted(client: &ClientHandle) -> u64 {
    let addr = client.metrics_addr().expect("metrics served");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("shallot_circuit_build_seconds_count")
                || l.starts_with("shallot_circuit_failures_total")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn body_digest(resp: &[u8]) -> [u8; 32] {
    let at = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("head")
        + 4;
    assert_eq!(resp.len() - at, FILE_LEN, "body length");
    Sha256::digest(&resp[at..]).into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_twenty_mib_by_ip_and_name_and_reports_refusals() {
    let net = tokio::time::timeout(LIMIT, start_net())
        .await
        .expect("network up");
    let proxy = net.client.socks_addr();
    let (port, digest) = file_server().await;

    // By IP and by name (`localhost` is resolved by the exit, never here), over SOCKS5.
    for host in ["127.0.0.1", "localhost"] {
        let resp = tokio::time::timeout(LIMIT, fetch_socks(proxy, (host, port), None))
            .await
            .expect("fetch within the limit");
        assert_eq!(body_digest(&resp), digest, "{host}");
    }

    // curl through HTTP CONNECT; curl must exist (CI installs it).
    let out = tokio::process::Command::new("curl")
        .args([
            "-s",
            "-p",
            "-x",
            &format!("http://{proxy}"),
            &format!("http://localhost:{port}/"),
        ])
        .output();
    let out = tokio::time::timeout(LIMIT, out)
        .await
        .expect("curl within the limit")
        .expect("curl must be installed for this test (apt-get install curl)");
    assert!(out.status.success(), "curl failed: {:?}", out.status);
    assert_eq!(out.stdout.len(), FILE_LEN);
    let got: [u8; 32] = Sha256::digest(&out.stdout).into();
    assert_eq!(got, digest, "curl -p body");

    // Policy refusal: 0x02, answered without building anything (no exit allows the port), and
    // soon: well within the stream timeout, with slack for a loaded machine.
    let builds = builds_attempted(&net.client).await;
    let started = Instant::now();
    let err = tokio_socks::tcp::Socks5Stream::connect(proxy, ("127.0.0.1", DENIED_PORT))
        .await
        .expect_err("refused");
    assert!(
        started.elapsed() < ERROR_BOUND,
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        builds_attempted(&net.client).await,
        builds,
        "a refusal the view can decide builds nothing"
    );
    assert!(
        matches!(err, tokio_socks::Error::ConnectionNotAllowedByRuleset),
        "{err:?}"
    );

    // Closed port: 0x05.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = tokio_socks::tcp::Socks5Stream::connect(proxy, ("127.0.0.1", closed))
        .await
        .expect_err("refused");
    assert!(
        matches!(err, tokio_socks::Error::ConnectionRefused),
        "{err:?}"
    );
    drop(net.relays);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_isolate_circuits() {
    let net = tokio::time::timeout(LIMIT, start_net())
        .await
        .expect("network up");
    let proxy = net.client.socks_addr();
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let open = |u: &'static str| async move {
        tokio_socks::tcp::Socks5Stream::connect_with_password(proxy, ("127.0.0.1", port), u, "pw")
            .await
            .expect("connect")
    };
    let busy = |c: &ClientHandle| {
        let mut v: Vec<(u64, usize)> = c
            .circuits()
            .into_iter()
            .filter(|s| s.streams > 0)
            .map(|s| (s.id, s.streams))
            .collect();
        v.sort_unstable();
        v
    };
    let _a1 = open("alice").await;
    let first = busy(&net.client);
    assert_eq!(first.len(), 1, "{first:?}");
    let _a2 = open("alice").await;
    assert_eq!(
        busy(&net.client),
        vec![(first[0].0, 2)],
        "same credentials share"
    );
    let _b = open("bob").await;
    let now = busy(&net.client);
    assert_eq!(now.len(), 2, "different credentials never share: {now:?}");
    assert!(now.contains(&(first[0].0, 2)));
}

/// The first hop of the client's built circuits, which must all share it (specs/05 §5.5).
fn first_hop(client: &ClientHandle) -> String {
    let hops: Vec<String> = client
        .circuits()
        .into_iter()
        .filter(|c| c.built)
        .filter_map(|c| c.path.first().map(ToString::to_string))
        .collect();
    assert!(!hops.is_empty(), "a circuit is built");
    assert!(
        hops.iter().all(|h| h == &hops[0]),
        "one guard in use: {hops:?}"
    );
    hops[0].clone()
}

fn guard_lines(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("guards.state"))
        .expect("guards.state written")
        .lines()
        .filter_map(|l| l.strip_prefix("guard "))
        .filter_map(|l| l.split(' ').next().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guards_stay_pinned_across_restarts() {
    let net = tokio::time::timeout(LIMIT, start_net())
        .await
        .expect("network up");
    let data = tempfile::tempdir().unwrap();
    let first = tokio::time::timeout(
        LIMIT,
        start_client(&net.relays, Some(data.path().to_owned())),
    )
    .await
    .expect("first client up");
    let guard = first_hop(&first);
    let pinned = guard_lines(data.path());
    assert!(pinned.contains(&guard), "{guard} not in {pinned:?}");
    first.shutdown().await;

    let second = tokio::time::timeout(
        LIMIT,
        start_client(&net.relays, Some(data.path().to_owned())),
    )
    .await
    .expect("second client up");
    assert_eq!(first_hop(&second), guard, "the same guard after a restart");
    assert_eq!(guard_lines(data.path()), pinned, "the same pinned guards");
    second.shutdown().await;
}

/// specs/04 §6.1: refreshes follow the schedule, never a stream. A port no exit in the view
/// allows is refused at once (0x02) even when an exit that allows it has just joined; once a
/// scheduled refresh brought that exit into the view, the same request is carried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_exit_serves_its_port_after_the_scheduled_refresh_not_before() {
    init_logs();
    let (port, digest) = file_server().await;
    let mut relays: Vec<RelayHandle> = Vec::new();
    let mut dirs = Vec::new();
    let start_relay = |i: u8, policy: Option<String>, bootstrap: Option<shallot_p2p::Multiaddr>| {
        let dir = tempfile::tempdir().unwrap();
        let mut config = RelayConfig {
            data_dir: dir.path().to_owned(),
            listen: vec![format!("/ip4/127.{i}.0.1/tcp/0").parse().unwrap()],
            bootstrap: bootstrap.into_iter().collect(),
            safe_logging: false,
            allow_private_addresses: true,
            ..RelayConfig::default()
        };
        if let Some(policy) = policy {
            let file = dir.path().join("exit-policy");
            std::fs::write(&file, policy).unwrap();
            config.exit_policy_file = Some(file);
            config.exit_policy_reject_private = false;
        }
        (config, dir)
    };
    // Relays 1–3; relay 3 the only exit, refusing the file server's port.
    for i in 1..=3u8 {
        let policy = (i == 3).then(|| format!("reject *:{port}\naccept *:*\n"));
        let bootstrap = relays.first().and_then(RelayHandle::bootstrap_addr);
        let (config, dir) = start_relay(i, policy, bootstrap);
        relays.push(Relay::start(config).await.expect("relay starts"));
        dirs.push(dir);
    }
    let client = start_client(&relays, None).await;
    assert_eq!(client.relays_known(), 3);

    // Relay 4, an exit allowing every port, joins and publishes after the client's refresh.
    let bootstrap = relays.first().and_then(RelayHandle::bootstrap_addr);
    let (config, dir) = start_relay(4, Some("accept *:*\n".into()), bootstrap);
    let late_exit = Relay::start(config).await.expect("relay starts");
    dirs.push(dir);
    let published = async {
        for _ in 0..900 {
            if late_exit.stats().descriptors_published.get() > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the late exit did not publish within the limit");
    };
    tokio::time::timeout(LIMIT, published)
        .await
        .expect("published");
    assert_eq!(client.relays_known(), 3, "the client refreshed on its own");

    // No exit in the view allows the port: refused at once, and no refresh follows.
    let started = Instant::now();
    let err = tokio_socks::tcp::Socks5Stream::connect(client.socks_addr(), ("127.0.0.1", port))
        .await
        .expect_err("no exit for the port yet");
    assert!(
        matches!(err, tokio_socks::Error::ConnectionNotAllowedByRuleset),
        "{err:?}"
    );
    assert!(
        started.elapsed() < ERROR_BOUND,
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(client.relays_known(), 3, "a stream refreshed the view");

    // The young view's scheduled refreshes (15 s, then 45 s) bring the late exit in.
    let refreshed = async {
        while client.relays_known() < 4 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(LIMIT, refreshed)
        .await
        .expect("a scheduled refresh brought the late exit");
    let resp = tokio::time::timeout(
        LIMIT,
        fetch_socks(client.socks_addr(), ("127.0.0.1", port), None),
    )
    .await
    .expect("fetch within the limit");
    assert_eq!(body_digest(&resp), digest);
    drop(late_exit);
    drop(relays);
}
