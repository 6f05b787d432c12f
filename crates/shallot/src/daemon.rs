//! What `shallot relay` and `shallot client` share: logging, the runtime, and how a long-running
//! process learns it must stop.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::Context;
use tracing_subscriber::EnvFilter;

/// Logs to stderr: `info` for Shallot and `warn` for its dependencies, or only warnings when
/// `quiet` (a command that prints its own progress), unless `RUST_LOG` says otherwise.
pub(crate) fn init_logging(quiet: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(if quiet {
            "warn"
        } else {
            "warn,shallot=info,shallot_relay=info,shallot_client=info,shallot_p2p=info"
        })
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: logs piped to files (as `shallot testnet` does) stay text.
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// A tokio runtime: single-threaded by default (7–11% more throughput and 13% less CPU than a
/// multi-threaded one for a relay's data path, docs/dependencies.md §2), or `threads` workers.
pub(crate) fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}

/// Resolves when the process should stop: Ctrl-C, SIGTERM, or (with `watch_stdin`) the end of
/// standard input, which is how `shallot testnet` makes its children stop with it even when it
/// is killed outright.
pub(crate) async fn stop_requested(watch_stdin: bool) -> &'static str {
    let stdin_closed = async {
        if !watch_stdin {
            return std::future::pending().await;
        }
        use tokio::io::AsyncReadExt;
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupt",
        _ = terminate() => "terminate signal",
        () = stdin_closed => "standard input closed",
    }
}

#[cfg(unix)]
async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut signal) => {
            signal.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn terminate() {
    std::future::pending().await
}

/// Reads a TOML config file with the file's name in every error.
pub(crate) fn read_config(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))
}
