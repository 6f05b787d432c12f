//! specs/04 §1, self-declared addresses, on loopback: three relays on one host (127.9.0.1),
//! each signing an address in a /16 of its own (127.20–22.0.1) where nothing listens, exits
//! all, next to five honest relays. The client even bootstraps from one of them, at the address
//! it really listens on. Before directory v2 such relays carried 10 of 72 hops of a fresh
//! client's circuits (measured on the version 1 directory); now they carry none, the client's view holds
//! only the honest relays, and its log says why the others were left out.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::capture_logs;
use shallot_client::{Client, ClientConfig, ClientHandle};
use shallot_p2p::PeerId;
use shallot_relay::{Relay, RelayConfig, RelayHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const LIMIT: Duration = Duration::from_secs(90);
/// Isolated streams, each on a circuit of its own.
const STREAMS: usize = 12;

fn exit_policy(dir: &std::path::Path) -> std::path::PathBuf {
    let policy = dir.join("exit-policy");
    std::fs::write(&policy, "accept *:*\n").unwrap();
    policy
}

/// A TCP port free on `ip` a moment ago.
async fn free_port(ip: &str) -> u16 {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    listener.local_addr().unwrap().port()
}

async fn start_relay(
    listen: String,
    announce: Vec<String>,
    exit: bool,
    bootstrap: Option<&RelayHandle>,
    dirs: &mut Vec<tempfile::TempDir>,
    hostile: bool,
) -> RelayHandle {
    let dir = tempfile::tempdir().unwrap();
    let mut config = RelayConfig {
        data_dir: dir.path().to_owned(),
        listen: vec![listen.parse().unwrap()],
        announce: announce.iter().map(|a| a.parse().unwrap()).collect(),
        bootstrap: bootstrap
            .and_then(RelayHandle::bootstrap_addr)
            .into_iter()
            .collect(),
        safe_logging: false,
        allow_private_addresses: true,
        // A hostile relay publishes whatever its own reachability test says: the directory,
        // not the relay's good manners, must keep it out.
        publish_untested: hostile,
        ..RelayConfig::default()
    };
    if exit {
        config.exit_policy_file = Some(exit_policy(dir.path()));
        config.exit_policy_reject_private = false;
    }
    let relay = Relay::start(config).await.expect("relay starts");
    dirs.push(dir);
    relay
}

/// Answers every connection with a short HTTP response.
async fn hello_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 1024];
                let _ = s.read(&mut head).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
                    )
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    port
}

async fn fetch(proxy: SocketAddr, port: u16, user: &str) -> Vec<u8> {
    let mut s = tokio_socks::tcp::Socks5Stream::connect_with_password(
        proxy,
        ("127.0.0.1", port),
        user,
        "x",
    )
    .await
    .expect("socks connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_that_sign_addresses_they_do_not_listen_on_carry_no_hop() {
    let logs = capture_logs("info");

    let mut dirs = Vec::new();
    let mut honest: Vec<RelayHandle> = Vec::new();
    for i in 1..=5u8 {
        let first = honest.first();
        let relay = start_relay(
            format!("/ip4/127.{i}.0.1/tcp/0"),
            Vec::new(),
            i >= 4,
            first,
            &mut dirs,
            false,
        )
        .await;
        honest.push(relay);
    }
    let mut spoofers = Vec::new();
    for fake in 20..=22u8 {
        let port = free_port("127.9.0.1").await;
        let relay = start_relay(
            format!("/ip4/127.9.0.1/tcp/{port}"),
            vec![format!("/ip4/127.{fake}.0.1/tcp/{port}")],
            true,
            honest.first(),
            &mut dirs,
            true,
        )
        .await;
        spoofers.push(relay);
    }
    let spoofer_ids: HashSet<PeerId> = spoofers.iter().map(RelayHandle::peer_id).collect();
    // Honest relays publish once their reachability is known (specs/04 §4.1): wait for every
    // one, so that the view the client builds can hold them all.
    let deadline = Instant::now() + LIMIT;
    while honest
        .iter()
        .any(|r| r.reachability().publishable().is_none())
    {
        assert!(
            Instant::now() < deadline,
            "the honest relays did not learn their reachability"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut bootstrap: Vec<String> = honest
        .iter()
        .filter_map(RelayHandle::bootstrap_addr)
        .map(|a| a.to_string())
        .collect();
    bootstrap.push(spoofers[0].bootstrap_addr().expect("addr").to_string());
    let config = ClientConfig {
        socks_listen: "127.0.0.1:0".parse().unwrap(),
        bootstrap,
        preemptive_ports: vec![],
        ..ClientConfig::default()
    };
    let client: ClientHandle = Client::start(config, None).await.expect("client starts");
    tokio::time::timeout(LIMIT, client.wait_bootstrapped())
        .await
        .expect("bootstrapped within the limit")
        .expect("bootstrapped");

    let port = hello_server().await;
    let mut hops = 0usize;
    let mut spoofed_hops = 0usize;
    let started = Instant::now();
    for i in 0..STREAMS {
        let resp =
            tokio::time::timeout(LIMIT, fetch(client.socks_addr(), port, &format!("site{i}")))
                .await
                .expect("fetch within the limit");
        assert!(resp.ends_with(b"hello"), "stream {i} failed");
        for circuit in client.circuits() {
            hops += circuit.path.len();
            spoofed_hops += circuit
                .path
                .iter()
                .filter(|p| spoofer_ids.contains(p))
                .count();
        }
    }
    println!(
        "{STREAMS} isolated streams in {:?}; {spoofed_hops} of {hops} hops seen on spoofing relays; \
         the client knows {} relays",
        started.elapsed(),
        client.relays_known()
    );
    assert_eq!(
        spoofed_hops, 0,
        "a relay carried a hop at an address it does not listen on"
    );
    assert_eq!(
        client.relays_known(),
        honest.len(),
        "the view holds only the honest relays"
    );
    let text = logs.text();
    let why: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("relays left out"))
        .collect();
    println!("{}", why.join("\n"));
    assert!(
        why.iter()
            .any(|l| l.contains("unreachable=") && !l.contains("unreachable=0")),
        "the client's log does not say why it left relays out"
    );
    client.shutdown().await;
    for relay in honest.into_iter().chain(spoofers) {
        relay.shutdown().await;
    }
}
