//! `shallot relay --config FILE`, `shallot client --config FILE` and `shallot keygen --dir DIR`.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use shallot_client::{Client, ClientConfig};
use shallot_relay::{Relay, RelayConfig};
use tracing::info;

use crate::daemon::{read_config, runtime, stop_requested};

/// Creates a relay's identity and onion keys in `dir` (0600 files) and prints its PeerId.
pub(crate) fn keygen(dir: &Path) -> anyhow::Result<()> {
    let peer = shallot_relay::keygen(dir)
        .with_context(|| format!("cannot create keys in {}", dir.display()))?;
    println!("{peer}");
    Ok(())
}

/// Runs a relay until it is told to stop.
pub(crate) fn relay(config: &Path, threads: usize, watch_stdin: bool) -> anyhow::Result<()> {
    let config = RelayConfig::load(config)
        .with_context(|| format!("invalid relay config {}", config.display()))?;
    runtime(threads)?.block_on(async {
        let relay = Relay::start(config)
            .await
            .context("cannot start the relay")?;
        info!(
            peer_id = %relay.peer_id(),
            exit = relay.is_exit(),
            bootstrap = ?relay.bootstrap_addr().map(|a| a.to_string()),
            "relay running"
        );
        let why = stop_requested(watch_stdin).await;
        info!("stopping the relay ({why})");
        relay.shutdown().await;
        Ok(())
    })
}

/// Runs a client until it is told to stop.
pub(crate) fn client(
    config: &Path,
    metrics: Option<SocketAddr>,
    threads: usize,
    watch_stdin: bool,
) -> anyhow::Result<()> {
    let text = read_config(config)?;
    let config: ClientConfig = toml::from_str(&text)
        .with_context(|| format!("invalid client config {}", config.display()))?;
    runtime(threads)?.block_on(async {
        let client = Client::start(config, metrics)
            .await
            .context("cannot start the client")?;
        info!(socks = %client.socks_addr(), "SOCKS5 and HTTP CONNECT proxy listening");
        let why = stop_requested(watch_stdin).await;
        info!("stopping the client ({why})");
        client.shutdown().await;
        Ok(())
    })
}
