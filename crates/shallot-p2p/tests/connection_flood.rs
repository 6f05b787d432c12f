//! One address holding thousands of raw TCP connections to every relay, none of which ever
//! starts a handshake (specs/00 §4.4): a connection in its handshake holds a pending slot until
//! the connect timeout, and libp2p's pending limit is global, so without a limit per address one
//! host locks every newcomer out. On loopback TCP: the attacker binds 127.0.0.2, the relays and
//! the fresh client use their own loopback addresses.

mod common;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use libp2p::PeerId;
use shallot_directory::socket_of;
use tokio::net::{TcpSocket, TcpStream};

/// Silent connections the attacker keeps open to each relay.
const SILENT_CONNECTIONS: usize = 2_000;
/// How long the attacker keeps at it: longer than the client may take.
const ATTACK_FOR: Duration = Duration::from_secs(60);
/// How long the flood runs before the newcomer starts: enough to take every slot it can.
const FLOOD_HEAD_START: Duration = Duration::from_secs(1);
/// How long the fresh client may take to see every relay while the attack goes on (well under
/// a second when nothing attacks). Each silent connection holds its slot for the connect
/// timeout, so a relay that counts them only in total has no slot free for the newcomer until
/// the first of them time out, `CONNECT_TIMEOUT - FLOOD_HEAD_START` after it starts: the
/// limit is well below that.
const BOOTSTRAP_LIMIT: Duration = Duration::from_secs(5);
const ATTACKER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

async fn silent_connection(to: SocketAddr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(ATTACKER_IP.into(), 0)).ok()?;
    tokio::time::timeout(Duration::from_secs(2), socket.connect(to))
        .await
        .ok()?
        .ok()
}

/// Keeps [`SILENT_CONNECTIONS`] open to `to` for [`ATTACK_FOR`], opening a new one for each the
/// relay closes; returns how many it opened in all.
async fn hold_silent_connections(to: SocketAddr) -> usize {
    let started = Instant::now();
    let mut open: Vec<TcpStream> = Vec::with_capacity(SILENT_CONNECTIONS);
    let mut opened = 0;
    while started.elapsed() < ATTACK_FOR {
        // A connection the relay closed reads end-of-stream; one it holds would block.
        let mut buf = [0u8; 1];
        open.retain(|s| matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock));
        while open.len() < SILENT_CONNECTIONS && started.elapsed() < ATTACK_FOR {
            match silent_connection(to).await {
                Some(s) => {
                    open.push(s);
                    opened += 1;
                }
                None => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    opened
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_silent_connections_from_one_address_keep_no_newcomer_out() {
    let wire = Wire::Tcp;
    let (relays, _) = converged_relays(&wire, 3).await;
    let targets: Vec<SocketAddr> = relays
        .iter()
        .map(|r| socket_of(&r.node.listen_addrs()[0]).expect("a TCP listen address"))
        .collect();
    let attack: Vec<_> = targets
        .iter()
        .map(|t| tokio::spawn(hold_silent_connections(*t)))
        .collect();
    // Let the flood fill every pending slot it can before the newcomer comes.
    tokio::time::sleep(FLOOD_HEAD_START).await;
    let client = start_client(&wire, bootstrap_of(&relays)).await;
    let expected: HashSet<PeerId> = relays.iter().map(TestRelay::peer_id).collect();
    let outcome = tokio::time::timeout(BOOTSTRAP_LIMIT, try_wait_for_view(&client, &expected))
        .await
        .unwrap_or_else(|_| Err(format!("no complete view within {BOOTSTRAP_LIMIT:?}")));
    let refused: u64 = relays
        .iter()
        .map(|r| {
            r.node
                .stats()
                .connections_refused_by_address
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    for a in &attack {
        a.abort();
    }
    match outcome {
        Ok((took, _)) => println!(
            "a fresh client saw all {} relays in {took:?} while one address held \
             {SILENT_CONNECTIONS} silent connections to each ({refused} refused by address)",
            relays.len()
        ),
        Err(failure) => panic!(
            "while one address held {SILENT_CONNECTIONS} silent connections to each relay, a \
             fresh client on another address failed: {failure} ({refused} refused by address)"
        ),
    }
    assert!(
        refused >= SILENT_CONNECTIONS as u64,
        "the relays refused only {refused} of the silent connections by their address"
    );
}
