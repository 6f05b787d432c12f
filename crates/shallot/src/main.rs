//! `shallot`: the command-line front of the Shallot onion-routing overlay.
//!
//! Subcommands grow with the milestones; the surface other tools rely on (see the README) stays
//! stable: `testnet`, `client`, `relay`, `keygen`, `exit-policy check`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd_demo;
mod cmd_exit_policy;

/// Shallot: an anonymizing onion-routing overlay on libp2p.
#[derive(Debug, Parser)]
#[command(name = "shallot", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
    /// Work with exit-policy files (Tor's `accept`/`reject` syntax).
    #[command(subcommand)]
    ExitPolicy(ExitPolicyCommand),
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
        Command::Demo { hops, mib } => cmd_demo::run(hops, mib).map(|()| ExitCode::SUCCESS),
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
