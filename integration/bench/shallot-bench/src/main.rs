//! Helpers for `integration/bench/bench.py`: the raw libp2p stream ceiling and a relay's
//! memory per idle circuit. Everything stays on 127.0.0.1 and stops by itself.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures::StreamExt;
use futures::io::{AsyncReadExt, AsyncWriteExt};
use libp2p::StreamProtocol;
use shallot_crypto::OnionSecretKey;
use shallot_p2p::identity::Keypair;
use shallot_p2p::{CIRCUIT_PROTOCOL, Multiaddr, Node, NodeConfig, PeerId, Role};
use shallot_proto::{ClientCircuit, ClientConfig, HopSpec};

/// The protocol of the raw-stream measurement (never spoken by Shallot itself).
const RAW_PROTOCOL: StreamProtocol = StreamProtocol::new("/shallot-bench/raw/1.0.0");
/// Size of each write on the raw stream.
const RAW_WRITE: usize = 64 * 1024;
/// Circuits per helper node (yamux allows 512 streams per connection by default).
const CIRCUITS_PER_NODE: usize = 250;
/// How long any single step may take before the helper gives up.
const STEP_LIMIT: Duration = Duration::from_secs(60);
/// /proc CPU times are in USER_HZ, which Linux fixes at 100 for user space.
const USER_HZ: f64 = 100.0;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        bail!(
            "usage: shallot-bench raw-stream --mib N | idle-circuits --relay-dir D --addr A --pid P --circuits N"
        );
    };
    let opt = |name: &str| -> Option<String> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cmd.as_str() {
        "raw-stream" => {
            let mib: usize = opt("--mib").unwrap_or_else(|| "1024".into()).parse()?;
            rt.block_on(raw_stream(mib))
        }
        "idle-circuits" => {
            let dir = PathBuf::from(opt("--relay-dir").context("--relay-dir")?);
            let addr: Multiaddr = opt("--addr").context("--addr")?.parse()?;
            let pid: u32 = opt("--pid").context("--pid")?.parse()?;
            let n: usize = opt("--circuits").unwrap_or_else(|| "1000".into()).parse()?;
            rt.block_on(idle_circuits(dir, addr, pid, n))
        }
        other => bail!("unknown command {other}"),
    }
}

/// utime + stime of this process, seconds.
fn own_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return f64::NAN;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime 15.
    let ticks = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(14) + ticks(15)) / USER_HZ
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("bad VmRSS")?
        .parse()?)
}

async fn client_node() -> anyhow::Result<Node> {
    Ok(Node::start(
        Keypair::generate_ed25519(),
        NodeConfig::new(Role::Client, Vec::new(), Vec::new()),
    )
    .await?)
}

async fn raw_stream(mib: usize) -> anyhow::Result<()> {
    let listen: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse()?;
    let server = Node::start(
        Keypair::generate_ed25519(),
        NodeConfig::new(Role::Client, vec![listen], Vec::new()),
    )
    .await?;
    let mut incoming = server.stream_control().accept(RAW_PROTOCOL)?;
    let client = client_node().await?;
    for a in server.listen_addrs() {
        client.add_address(server.peer_id(), a.clone()).await?;
    }
    let total = mib * 1024 * 1024;
    let sink = tokio::spawn(async move {
        let Some((_, mut s)) = incoming.next().await else {
            return Err(anyhow::anyhow!("no stream"));
        };
        let mut buf = vec![0u8; RAW_WRITE];
        let mut got = 0usize;
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got += n;
        }
        Ok::<_, anyhow::Error>((got, Instant::now()))
    });
    let mut control = client.stream_control();
    let mut s = tokio::time::timeout(
        STEP_LIMIT,
        control.open_stream(server.peer_id(), RAW_PROTOCOL),
    )
    .await??;
    let buf = vec![0x5au8; RAW_WRITE];
    let cpu0 = own_cpu_seconds();
    let t0 = Instant::now();
    let mut sent = 0;
    while sent < total {
        s.write_all(&buf).await?;
        sent += buf.len();
    }
    s.close().await?;
    let (got, t1) = tokio::time::timeout(STEP_LIMIT * 5, sink).await???;
    let cpu = own_cpu_seconds() - cpu0;
    ensure!(got == total, "sink got {got} of {total} bytes");
    let secs = (t1 - t0).as_secs_f64();
    let mb_s = total as f64 / secs / 1e6;
    let cpu_per_100 = cpu / (total as f64 / (100.0 * 1024.0 * 1024.0));
    println!(
        "{{\"mb_per_s\": {mb_s:.1}, \"seconds\": {secs:.3}, \"cpu_s_per_100mib\": {cpu_per_100:.3}}}"
    );
    Ok(())
}

/// The relay's hop from its key directory and address.
fn hop_from_dir(dir: &std::path::Path, addr: &Multiaddr) -> anyhow::Result<(PeerId, HopSpec)> {
    let id = std::fs::read(dir.join("identity.key")).context("identity.key")?;
    let kp = Keypair::from_protobuf_encoding(&id).context("identity.key format")?;
    let peer = kp.public().to_peer_id();
    let onion = std::fs::read(dir.join("onion.key")).context("onion.key")?;
    let bytes: [u8; 32] = onion
        .as_slice()
        .try_into()
        .context("onion.key is not 32 bytes")?;
    let onion_key = OnionSecretKey::from_bytes(bytes).public_key();
    Ok((
        peer,
        HopSpec {
            peer_id: peer.to_bytes(),
            addrs: vec![addr.to_vec()],
            onion_key,
        },
    ))
}

/// One circuit: CREATE, CREATED; keeps the stream open.
async fn one_circuit(
    control: &mut shallot_p2p::StreamControl,
    peer: PeerId,
    hop: &HopSpec,
) -> anyhow::Result<(ClientCircuit, libp2p::Stream)> {
    let mut circ = ClientCircuit::new(hop, ClientConfig::default(), Instant::now())?;
    let mut s = control.open_stream(peer, CIRCUIT_PROTOCOL).await?;
    let mut out = ClientCircuit::preamble().to_vec();
    while let Some(cell) = circ.poll_transmit() {
        out.extend_from_slice(&cell);
    }
    s.write_all(&out).await?;
    s.flush().await?;
    let mut cell = vec![0u8; circ.cell_len()];
    s.read_exact(&mut cell).await?;
    circ.handle_cell(cell, Instant::now())?;
    ensure!(circ.hops() == 1, "no CREATED");
    Ok((circ, s))
}

async fn idle_circuits(dir: PathBuf, addr: Multiaddr, pid: u32, n: usize) -> anyhow::Result<()> {
    let (peer, hop) = hop_from_dir(&dir, &addr)?;
    // Warm the link first (connection, first circuit), so the delta is circuits, not the link.
    let mut nodes = Vec::new();
    for _ in 0..n.div_ceil(CIRCUITS_PER_NODE) {
        let node = client_node().await?;
        node.add_address(peer, addr.clone()).await?;
        nodes.push(node);
    }
    let mut held = Vec::new();
    for node in &nodes {
        let mut control = node.stream_control();
        held.push(tokio::time::timeout(STEP_LIMIT, one_circuit(&mut control, peer, &hop)).await??);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid)?;
    let t0 = Instant::now();
    let mut opened = 0;
    for (i, node) in nodes.iter().enumerate() {
        let mut control = node.stream_control();
        let want = CIRCUITS_PER_NODE.min(n - i * CIRCUITS_PER_NODE);
        for _ in 0..want {
            held.push(
                tokio::time::timeout(STEP_LIMIT, one_circuit(&mut control, peer, &hop))
                    .await
                    .context("a CREATE took too long")??,
            );
            opened += 1;
        }
    }
    let took = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid)?;
    let per = (after as f64 - before as f64) * 1024.0 / opened as f64;
    println!(
        "{{\"circuits\": {opened}, \"rss_before_kib\": {before}, \"rss_after_kib\": {after}, \"bytes_per_circuit\": {per:.0}, \"creates_per_s\": {:.0}}}",
        opened as f64 / took
    );
    drop(held);
    Ok(())
}
