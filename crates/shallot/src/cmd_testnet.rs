//! `shallot testnet`: a whole Shallot network on 127.0.0.0/8 in one command.
//!
//! Every relay and the client run as their own `shallot` process (the same binary), as they
//! would on real machines: a relay can be killed to watch the client recover, and each
//! process's CPU and memory can be measured on its own. Relay *i* listens on `127.<i+1>.0.1`,
//! so every relay sits in its own /16 and the Sybil caps and path rules stay on
//! (docs/architecture.md, "The local network keeps the real rules on").
//! The children watch their standard input and stop when it closes, so they never outlive this
//! process, however it ends.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use shallot_client::ClientConfig;
use shallot_p2p::{Multiaddr, Protocol};
use shallot_relay::{CreateRate, RelayConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdin, Command};

use crate::daemon::{runtime, stop_requested};

/// How many relays the client bootstraps from.
const BOOTSTRAP_RELAYS: usize = 3;
/// How often readiness is probed.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// How long one readiness probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long children get to stop before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Largest HTTP request head the try-it page reads.
const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Settings of `shallot testnet`.
#[derive(Debug, Clone)]
pub(crate) struct TestnetArgs {
    /// Number of relays (at least 3).
    pub relays: usize,
    /// How many of them are exits (the last ones); `None` = a third, rounded, at least one.
    pub exits: Option<usize>,
    /// The client's SOCKS5 / HTTP CONNECT address.
    pub socks: SocketAddr,
    /// The client's Prometheus endpoint.
    pub metrics: Option<SocketAddr>,
    /// The client's DNS port (`dns_listen`).
    pub dns: Option<SocketAddr>,
    /// The exits' DNS upstream.
    pub dns_upstream: Option<SocketAddr>,
    /// The exits' policy file; default: accept everything.
    pub exit_policy: Option<PathBuf>,
    /// Where keys, configs and logs go; default: a temporary directory removed at exit.
    pub data_dir: Option<PathBuf>,
    /// How long to wait for the first working circuit.
    pub ready_timeout: Duration,
}

/// Set when the client logs "bootstrapped 100%": it has built a circuit.
static CLIENT_BOOTSTRAPPED: AtomicBool = AtomicBool::new(false);

struct Process {
    name: String,
    child: Child,
    /// Closing it tells the child to stop (`--stop-with-stdin`).
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

/// Runs the local network until Ctrl-C, SIGTERM, or a child dies.
pub(crate) fn run(args: TestnetArgs) -> anyhow::Result<()> {
    ensure!(
        (3..=250).contains(&args.relays),
        "--relays must be between 3 and 250 (a circuit needs a guard, a middle and an exit)"
    );
    let exits = args
        .exits
        .unwrap_or(args.relays.div_ceil(3).min(args.relays - 2));
    ensure!(
        (1..=args.relays - 2).contains(&exits),
        "--exits must be between 1 and relays - 2"
    );
    if let Some(policy) = &args.exit_policy {
        ensure!(
            policy.is_file(),
            "exit policy file {} does not exist",
            policy.display()
        );
    }
    runtime(1)?.block_on(async move {
        let temp;
        let dir = match &args.data_dir {
            Some(dir) => dir.clone(),
            None => {
                temp = tempfile::Builder::new()
                    .prefix("shallot-testnet-")
                    .tempdir()
                    .context("cannot create a temporary directory")?;
                temp.path().to_path_buf()
            }
        };
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let mut processes = Vec::new();
        let outcome = run_network(&args, exits, &dir, &mut processes).await;
        stop_all(&mut processes).await;
        outcome
    })
}

async fn run_network(
    args: &TestnetArgs,
    exits: usize,
    dir: &Path,
    processes: &mut Vec<Process>,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the shallot executable")?;
    let policy = match &args.exit_policy {
        Some(policy) => policy.canonicalize()?,
        None => {
            let path = dir.join("testnet-exit.policy");
            std::fs::write(
                &path,
                "# shallot testnet: everything is on 127.0.0.1, so the exits accept every\n\
                 # destination (and `exit_policy_reject_private = false` lets them reach loopback).\n\
                 accept *:*\n",
            )?;
            path
        }
    };
    println!(
        "shallot testnet: {} relays ({exits} exits) and a client on 127.0.0.0/8; files in {}",
        args.relays,
        dir.display()
    );

    let mut bootstrap: Vec<Multiaddr> = Vec::new();
    for i in 0..args.relays {
        let is_exit = i >= args.relays - exits;
        let relay_dir = dir.join(format!("relay-{i}"));
        let peer = shallot_relay::keygen(&relay_dir)
            .with_context(|| format!("cannot create keys for relay {i}"))?;
        let ip = Ipv4Addr::new(127, u8::try_from(i + 1)?, 0, 1);
        let port = free_port(ip)?;
        let listen: Multiaddr = format!("/ip4/{ip}/tcp/{port}").parse()?;
        let config = RelayConfig {
            data_dir: relay_dir.clone(),
            listen: vec![listen.clone()],
            announce: Vec::new(),
            bootstrap: bootstrap.iter().take(BOOTSTRAP_RELAYS).cloned().collect(),
            exit_policy_file: is_exit.then(|| policy.clone()),
            exit_policy_reject_private: false,
            allow_private_addresses: true,
            dns_upstreams: args.dns_upstream.into_iter().collect(),
            // Every client of the local network connects from 127.0.0.1, one address: give
            // them together what a relay gives one relay.
            max_circuits_per_address: shallot_relay::DEFAULT_MAX_CIRCUITS_PER_PEER,
            create_rate_per_address: CreateRate::default(),
            ..RelayConfig::default()
        };
        let config_path = relay_dir.join("relay.toml");
        std::fs::write(&config_path, toml::to_string(&config)?)?;
        let role = if is_exit { "exit" } else { "relay" };
        let name = format!("{role} {i}");
        let process = spawn(
            &exe,
            &name,
            &["relay", "--config"],
            &config_path,
            &relay_dir,
            false,
        )?;
        println!("  started {name} {peer} on {ip}:{port}");
        processes.push(process);
        bootstrap.push(listen.with(Protocol::P2p(peer)));
    }

    let client_dir = dir.join("client");
    std::fs::create_dir_all(&client_dir)?;
    let client_config = ClientConfig {
        socks_listen: args.socks,
        bootstrap: bootstrap
            .iter()
            .take(BOOTSTRAP_RELAYS)
            .map(ToString::to_string)
            .collect(),
        data_dir: Some(client_dir.clone()),
        metrics_listen: args.metrics,
        dns_listen: args.dns,
        ..ClientConfig::default()
    };
    let client_config_path = client_dir.join("client.toml");
    std::fs::write(&client_config_path, toml::to_string(&client_config)?)?;
    processes.push(spawn(
        &exe,
        "client",
        &["client", "--config"],
        &client_config_path,
        &client_dir,
        true,
    )?);
    println!(
        "  started the client; SOCKS5 and HTTP CONNECT on {}",
        args.socks
    );

    let web = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .context("cannot start the try-it web page")?;
    let web_port = web.local_addr()?.port();
    let relays = args.relays;
    tokio::spawn(serve_page(web, relays));

    wait_ready(args, web_port, processes).await?;
    println!(
        "ready: SOCKS5 proxy at socks5h://{} ({} relays, {exits} exits, 3-hop circuits)",
        args.socks, args.relays
    );
    println!(
        "  try: curl --socks5-hostname {} http://localhost:{web_port}/",
        args.socks
    );
    println!(
        "   or: curl -p -x http://{} http://localhost:{web_port}/",
        args.socks
    );
    if let Some(dns) = args.dns {
        // `localhost` is answered by the exits themselves, so this works without
        // --dns-upstream.
        println!(
            "  dns: UDP and TCP on {dns}; try: dig @{} -p {} localhost",
            dns.ip(),
            dns.port()
        );
    }
    if let Some(metrics) = args.metrics {
        println!("  status page: http://{metrics}/ (or: shallot status --metrics {metrics})");
        println!("  metrics: http://{metrics}/metrics");
    }
    println!("  stop with Ctrl-C");

    tokio::select! {
        why = stop_requested(false) => {
            println!("shallot testnet: stopping ({why})");
            Ok(())
        }
        died = watch_children(processes) => Err(died),
    }
}

/// A free TCP port on `ip` (bound and released; on loopback nobody else takes it meanwhile in
/// practice, and a clash shows as a relay that fails to start, reported with its log).
fn free_port(ip: Ipv4Addr) -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind((ip, 0))
        .with_context(|| format!("cannot bind {ip}: is 127.0.0.0/8 routed to loopback?"))?;
    Ok(listener.local_addr()?.port())
}

fn spawn(
    exe: &Path,
    name: &str,
    args: &[&str],
    config: &Path,
    dir: &Path,
    show_progress: bool,
) -> anyhow::Result<Process> {
    let log = dir.join("log.txt");
    let mut child = Command::new(exe)
        .args(args)
        .arg(config)
        .arg("--stop-with-stdin")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    let stdin = child.stdin.take();
    if let Some(stderr) = child.stderr.take() {
        let log_path = log.clone();
        let label = name.to_owned();
        tokio::spawn(async move {
            let Ok(mut file) = tokio::fs::File::create(&log_path).await else {
                return;
            };
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if show_progress && line.contains("bootstrapped 100%") {
                    CLIENT_BOOTSTRAPPED.store(true, Ordering::Relaxed);
                }
                if show_progress && line.contains("bootstrapped") {
                    let text = line
                        .split_once("bootstrapped")
                        .map_or(line.as_str(), |(_, rest)| rest);
                    println!("  {label}: bootstrapped{text}");
                }
                let _ = file.write_all(line.as_bytes()).await;
                let _ = file.write_all(b"\n").await;
            }
        });
    }
    Ok(Process {
        name: name.to_owned(),
        child,
        stdin,
        log,
    })
}

/// Probes the proxy until a stream through a 3-hop circuit reaches the try-it page.
async fn wait_ready(
    args: &TestnetArgs,
    web_port: u16,
    processes: &mut [Process],
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + args.ready_timeout;
    loop {
        if let Some(dead) = first_dead(processes) {
            return Err(dead);
        }
        match tokio::time::timeout(PROBE_TIMEOUT, probe(args.socks, web_port)).await {
            Ok(Ok(ProbeOutcome::Page)) => return Ok(()),
            Ok(Ok(ProbeOutcome::Refused(code))) if CLIENT_BOOTSTRAPPED.load(Ordering::Relaxed) => {
                // The client has built a circuit, and the refusal is the exit policy's (given
                // with --exit-policy), which does not allow the page: the network works.
                println!(
                    "  note: the exits' policy refuses the try-it page (SOCKS reply {code:#04x})"
                );
                return Ok(());
            }
            Ok(Ok(ProbeOutcome::Refused(_)) | Err(_)) | Err(_) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "no circuit worked within {:?}; see the logs in each relay-*/ and client/ \
                 directory",
                args.ready_timeout
            );
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

enum ProbeOutcome {
    Page,
    /// Refused by policy (0x02) or by the destination (0x05).
    Refused(u8),
}

/// One SOCKS5 CONNECT to `localhost:web_port` (resolved at the exit, never here) and a GET.
async fn probe(socks: SocketAddr, web_port: u16) -> anyhow::Result<ProbeOutcome> {
    let mut s = TcpStream::connect(socks).await?;
    s.write_all(&[5, 1, 0]).await?;
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).await?;
    ensure!(choice == [5, 0], "proxy refused the no-auth method");
    let host = b"localhost";
    let mut request = vec![5, 1, 0, 3, host.len() as u8];
    request.extend_from_slice(host);
    request.extend_from_slice(&web_port.to_be_bytes());
    s.write_all(&request).await?;
    let mut reply = [0u8; 4];
    s.read_exact(&mut reply).await?;
    match reply[1] {
        0 => {}
        code @ (0x02 | 0x05) => return Ok(ProbeOutcome::Refused(code)),
        code => bail!("SOCKS reply {code:#04x}"),
    }
    let addr_len = match reply[3] {
        1 => 4,
        4 => 16,
        3 => {
            let mut len = [0u8; 1];
            s.read_exact(&mut len).await?;
            usize::from(len[0])
        }
        _ => bail!("bad SOCKS reply address type"),
    };
    let mut rest = vec![0u8; addr_len + 2];
    s.read_exact(&mut rest).await?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    s.take(64 * 1024).read_to_end(&mut response).await?;
    ensure!(response.starts_with(b"HTTP/1.0 200"), "unexpected response");
    Ok(ProbeOutcome::Page)
}

/// The page behind `curl --socks5-hostname … http://localhost:PORT/`.
async fn serve_page(listener: TcpListener, relays: usize) {
    let body = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Shallot testnet</title></head>\n\
         <body><h1>Hello through Shallot</h1>\n<p>This page came to you through a 3-hop circuit \
         of the local Shallot network ({relays} relays on 127.0.0.0/8). The name \
         <code>localhost</code> was resolved by the exit, not by your machine's resolver.</p>\n\
         </body></html>\n"
    );
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let body = body.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            let read_head = async {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                true
            };
            if !matches!(
                tokio::time::timeout(Duration::from_secs(10), read_head).await,
                Ok(true)
            ) {
                return;
            }
            let response = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(response.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

fn first_dead(processes: &mut [Process]) -> Option<anyhow::Error> {
    for p in processes.iter_mut() {
        if let Ok(Some(status)) = p.child.try_wait() {
            return Some(anyhow::anyhow!(
                "{} exited ({status}); its log: {}\n{}",
                p.name,
                p.log.display(),
                log_tail(&p.log)
            ));
        }
    }
    None
}

async fn watch_children(processes: &mut [Process]) -> anyhow::Error {
    loop {
        if let Some(dead) = first_dead(processes) {
            return dead;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// Closes every child's standard input (they stop cleanly), then kills what is still running
/// after [`STOP_GRACE`].
async fn stop_all(processes: &mut Vec<Process>) {
    for p in processes.iter_mut() {
        p.stdin = None;
    }
    for p in processes.iter_mut() {
        if tokio::time::timeout(STOP_GRACE, p.child.wait())
            .await
            .is_err()
        {
            let _ = p.child.kill().await;
        }
    }
    processes.clear();
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    #[test]
    fn free_ports_are_on_the_asked_address() {
        let ip = Ipv4Addr::new(127, 3, 0, 1);
        let port = free_port(ip).expect("free port");
        assert!(std::net::TcpListener::bind((IpAddr::V4(ip), port)).is_ok());
    }
}
