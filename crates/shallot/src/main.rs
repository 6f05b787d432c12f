//! `shallot`: the command-line front of the Shallot onion-routing overlay.
//!
//! Subcommands grow with the milestones; the surface other tools rely on (see the README) stays
//! stable: `testnet`, `client`, `relay`, `keygen`, `exit-policy check`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

mod cmd_demo;
mod cmd_exit_policy;
mod cmd_node;
mod cmd_status;
mod cmd_testnet;
mod daemon;

/// Shallot: an anonymizing onion-routing overlay on libp2p.
#[derive(Debug, Parser)]
#[command(name = "shallot", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a whole local network on 127.0.0.0/8: relays (some of them exits) and a client,
    /// each its own process. Prints a line with `ready` once a 3-hop circuit works.
    Testnet {
        /// Number of relays (at least 3).
        #[arg(long, default_value_t = 5)]
        relays: usize,
        /// How many of the relays are exits (default: a third of them, rounded up).
        #[arg(long)]
        exits: Option<usize>,
        /// The client's SOCKS5 and HTTP CONNECT address.
        #[arg(long, default_value = "127.0.0.1:9050")]
        socks: SocketAddr,
        /// Serve the client's Prometheus metrics at http://ADDR/metrics.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<SocketAddr>,
        /// Open a DNS port (UDP and TCP) on the client at ADDR: A, AAAA and PTR queries
        /// answered through the exits (the client's `dns_listen`).
        #[arg(long, value_name = "ADDR")]
        dns: Option<SocketAddr>,
        /// The DNS server the exits resolve names with (default: exits resolve only
        /// `localhost` and fail other names cleanly).
        #[arg(long, value_name = "ADDR")]
        dns_upstream: Option<SocketAddr>,
        /// The exits' policy file (Tor syntax; default: accept everything).
        #[arg(long, value_name = "FILE")]
        exit_policy: Option<PathBuf>,
        /// Where keys, configs and logs go (default: a temporary directory, removed at exit).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Seconds to wait for the first working circuit.
        #[arg(long, default_value_t = 120)]
        ready_timeout: u64,
    },
    /// Run a relay (an exit when its config names an exit policy file).
    Relay {
        /// The relay's TOML config (see configs/relay.example.toml).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[command(flatten)]
        process: ProcessArgs,
    },
    /// Run a client: a SOCKS5 and HTTP CONNECT proxy that carries streams over circuits.
    Client {
        /// The client's TOML config (see configs/client.example.toml).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Serve Prometheus metrics at http://ADDR/metrics.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<SocketAddr>,
        #[command(flatten)]
        process: ProcessArgs,
    },
    /// Create a relay's identity and onion keys in DIR (files 0600) and print its PeerId.
    Keygen {
        /// The relay's data directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// Run Shallot's circuit core end to end in memory: build a circuit, carry streams,
    /// detect tampering.
    Demo {
        /// Relays in the circuit (1 to 5); the last one is the exit.
        #[arg(long, default_value_t = 3)]
        hops: usize,
        /// MiB to download through the circuit.
        #[arg(long, default_value_t = 16)]
        mib: usize,
    },
    /// Print a running client's status (bootstrap, relays, circuits with their hops,
    /// streams, bytes, recent throughput), as its status page at http://ADDR/ shows it.
    Status {
        /// The client's metrics address (`shallot client --metrics ADDR`).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9052")]
        metrics: SocketAddr,
    },
    /// Work with exit-policy files (Tor's `accept`/`reject` syntax).
    #[command(subcommand)]
    ExitPolicy(ExitPolicyCommand),
}

/// Options of the long-running subcommands.
#[derive(Debug, clap::Args)]
struct ProcessArgs {
    /// Runtime worker threads; 1 (the default) runs everything on one thread, which measured
    /// faster for Shallot's data path.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Stop when standard input closes (how `shallot testnet` ties its children to itself).
    #[arg(long, hide = true)]
    stop_with_stdin: bool,
}

#[derive(Debug, Subcommand)]
enum ExitPolicyCommand {
    /// Parse FILE and say, for each ADDR:PORT, whether the policy accepts it and which rule decided.
    Check {
        /// The policy file.
        file: PathBuf,
        /// Targets such as `1.1.1.1:443` or `[2001:db8::1]:80`.
        #[arg(required = true, value_name = "ADDR:PORT")]
        targets: Vec<String>,
        /// Do not apply the reject-private prelude, like `exit_policy_reject_private = false`
        /// in a relay's config.
        #[arg(long)]
        allow_private: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Testnet {
            relays,
            exits,
            socks,
            metrics,
            dns,
            dns_upstream,
            exit_policy,
            data_dir,
            ready_timeout,
        } => {
            daemon::init_logging(true);
            cmd_testnet::run(cmd_testnet::TestnetArgs {
                relays,
                exits,
                socks,
                metrics,
                dns,
                dns_upstream,
                exit_policy,
                data_dir,
                ready_timeout: Duration::from_secs(ready_timeout),
            })
            .map(|()| ExitCode::SUCCESS)
        }
        Command::Relay { config, process } => {
            daemon::init_logging(false);
            cmd_node::relay(&config, process.threads, process.stop_with_stdin)
                .map(|()| ExitCode::SUCCESS)
        }
        Command::Client {
            config,
            metrics,
            process,
        } => {
            daemon::init_logging(false);
            cmd_node::client(&config, metrics, process.threads, process.stop_with_stdin)
                .map(|()| ExitCode::SUCCESS)
        }
        Command::Keygen { dir } => cmd_node::keygen(&dir).map(|()| ExitCode::SUCCESS),
        Command::Demo { hops, mib } => cmd_demo::run(hops, mib).map(|()| ExitCode::SUCCESS),
        Command::Status { metrics } => cmd_status::run(metrics).map(|()| ExitCode::SUCCESS),
        Command::ExitPolicy(ExitPolicyCommand::Check {
            file,
            targets,
            allow_private,
        }) => cmd_exit_policy::check_with(&file, &targets, allow_private),
    };
    match outcome {
        Ok(code) => code,
        Err(err) => {
            eprintln!("shallot: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
