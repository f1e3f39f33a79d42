//! `wshub-load`: load generator for wshub.
//!
//! - `hold` opens many idle connections (`hold_cli`, `hold`, `hold_report`);
//! - `fanout` measures delivery from publishers to many subscribers (`fanout_cli`,
//!   `fanout`, `fanout_report`, `track`);
//! - `echo` measures round trips (`echo`).
//!
//! Every subcommand takes the same connection options (`common_args`) and runs its
//! connections on `conn` (client connections on one mio loop; `wss://` through `tls`).
//! Subcommands share one binary so a run can re-execute itself as worker processes
//! (`workers`, `procs`), each with its own fd limit.

mod common_args;
mod conn;
mod echo;
mod failures;
mod fanout;
mod fanout_cli;
mod fanout_report;
mod hold;
mod hold_cli;
mod hold_report;
mod latency;
mod opts;
mod plan;
mod procs;
mod ramp;
mod server_probe;
mod tls;
mod track;
mod workers;
mod ws;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "wshub-load", version, about = "Load generator for wshub")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open many WebSocket connections, keep them idle for a while, then close them.
    ///
    /// Prints `READY established=<n> failed=<n>` once every connection is up (or has
    /// failed), holds for --duration, then prints a summary.
    Hold(hold_cli::HoldArgs),
    /// Publish numbered, timestamped messages to many subscribers and check that each
    /// got every one: delivery rate, loss, duplicates, order and latency percentiles.
    ///
    /// --connections are the subscribers. Exits 1 if anything was lost or duplicated
    /// (or the run timed out).
    Fanout(fanout_cli::FanoutArgs),
    /// Keep one request in flight on each of many connections and measure round trips
    /// (hub: ping/pong; raw: text frames echoed by `wshub --echo`).
    Echo(echo::EchoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    opts::install_signal_handlers();
    // Before anything opens a socket, workers included: every process may hold as
    // many as its hard limit allows.
    opts::raise_fd_limit();
    let result = match cli.command {
        Command::Hold(args) => hold_cli::main(&args),
        Command::Fanout(args) => fanout_cli::main(&args),
        Command::Echo(args) => echo::main(&args),
    };
    result.unwrap_or_else(|msg| {
        eprintln!("wshub-load: error: {msg}");
        ExitCode::from(2)
    })
}
