//! `wshub-load`: load generator for wshub.
//!
//! - `hold` opens many idle connections (`hold`, `spawn`);
//! - `fanout` measures delivery from publishers to many subscribers (`fanout*`, `track`);
//! - `echo` measures round trips (`echo`).
//!
//! The message modes share `conn` (client connections on one mio loop) and `latency`
//! (HdrHistogram). Subcommands share one binary so a run can re-execute itself as
//! worker processes (`procs`), each with its own fd limit.

mod conn;
mod echo;
mod failures;
mod fanout;
mod fanout_cli;
mod fanout_report;
mod hold;
mod hold_report;
mod latency;
mod opts;
mod procs;
mod ramp;
mod spawn;
mod track;
mod ws;

use clap::{Args, Parser, Subcommand};
use opts::{parse_duration, parse_source_ips, SourceIps, WsUrl};
use std::process::ExitCode;
use std::time::Duration;

/// Connections one source address is given by default. An address has ~28k
/// ephemeral ports (32768-60999) towards one server port, but the kernel's port
/// search in connect() gets slow well before they run out: 19000 connections from
/// one address ramped at ~2800/s with 5 s of system time, from two or more at the
/// full 5000/s with 1 s. Loopback addresses are plentiful, so use them generously.
pub const CONNECTIONS_PER_SOURCE_IP: u64 = 5_000;

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
    Hold(HoldArgs),
    /// Publish numbered, timestamped messages to many subscribers and check that each
    /// got every one: delivery rate, loss, duplicates, order and latency percentiles.
    ///
    /// Exits 1 if anything was lost or duplicated (or the run timed out).
    Fanout(fanout_cli::FanoutArgs),
    /// Keep one request in flight on each of many connections and measure round trips
    /// (hub: ping/pong; raw: text frames echoed by `wshub --echo`).
    Echo(echo::EchoArgs),
}

#[derive(Args, Debug, Clone)]
pub struct HoldArgs {
    /// Target as ws://IP:PORT/path (a literal IP; host names and wss:// are not supported)
    #[arg(long, value_parser = opts::parse_ws_url)]
    pub url: WsUrl,
    /// Total connections to open
    #[arg(long, short = 'n')]
    pub connections: u64,
    /// How long to hold them once all are up (e.g. 30s, 500ms, 2m)
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub duration: Duration,
    /// New connections per second, over all processes
    #[arg(long, default_value_t = 5000.0)]
    pub rate: f64,
    /// Processes to spread over [default: as few as the fd limit allows]
    #[arg(long)]
    pub processes: Option<u64>,
    /// Source addresses to bind, e.g. 127.0.0.2-127.0.0.40 or 127.0.0.2,127.0.0.3
    /// [default for loopback targets: 127.0.0.2 upwards, 5000 connections each]
    #[arg(long, value_parser = parse_source_ips)]
    pub source_ips: Option<SourceIps>,
    /// Print the final summary as one JSON object line
    #[arg(long)]
    pub json: bool,
    /// Give up on a connection whose upgrade has not completed by then
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub handshake_timeout: Duration,
    /// Most handshakes in progress at once, over all processes
    #[arg(long, default_value_t = 1000)]
    pub max_inflight: usize,
    /// Internal: run as worker number N of a multi-process hold
    #[arg(long, hide = true)]
    pub worker: Option<u64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    opts::install_signal_handlers();
    let result = match cli.command {
        Command::Hold(args) => hold_main(&args),
        Command::Fanout(args) => fanout_cli::main(&args),
        Command::Echo(args) => echo::main(&args),
    };
    result.unwrap_or_else(|msg| {
        eprintln!("wshub-load: error: {msg}");
        ExitCode::from(2)
    })
}

fn hold_main(args: &HoldArgs) -> Result<ExitCode, String> {
    validate(args)?;
    let fd_limit = opts::raise_fd_limit();
    let per_process = opts::sockets_per_process(fd_limit);
    let loopback = args.url.addr.ip().is_loopback();

    if let Some(index) = args.worker {
        return worker_main(args, index);
    }

    let n = args.connections;
    let processes = args.processes.unwrap_or(n.div_ceil(per_process)).min(n);
    if n.div_ceil(processes) > per_process {
        return Err(format!(
            "{n} connections over {processes} process(es) is {} per process, but the fd \
             limit ({fd_limit}) allows about {per_process}; use --processes {}",
            n.div_ceil(processes),
            n.div_ceil(per_process)
        ));
    }
    let shares = spawn::plan(n, processes, args.source_ips.as_ref(), loopback, CONNECTIONS_PER_SOURCE_IP)?;

    let report = if processes == 1 {
        hold::run(&config(args, &shares[0], None)).map_err(|e| e.to_string())?
    } else {
        spawn::run(args, &shares).map_err(|e| format!("running worker processes: {e}"))?
    };

    if args.json {
        opts::emit_line(&serde_json::to_string(&report.summary()).expect("summaries serialize"));
    } else {
        opts::emit_line(report.to_text(&args.url.original).trim_end());
    }
    if report.established == 0 {
        let hint = report.failures.nothing_connected_hint();
        eprintln!("wshub-load: error: no connection to {} could be established{hint}", args.url.addr);
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// A worker prints its READY line and then its full report (with every latency) as
/// JSON for the parent; nothing else goes to its stdout.
fn worker_main(args: &HoldArgs, index: u64) -> Result<ExitCode, String> {
    let share = spawn::Share {
        connections: args.connections,
        source_ips: args.source_ips.clone().map(|s| s.0).unwrap_or_default(),
    };
    let report = hold::run(&config(args, &share, Some(index))).map_err(|e| format!("worker {index}: {e}"))?;
    opts::emit_line(&serde_json::to_string(&report).expect("reports serialize"));
    Ok(if report.established == 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn config(args: &HoldArgs, share: &spawn::Share, worker: Option<u64>) -> hold::HoldConfig {
    hold::HoldConfig {
        url: args.url.clone(),
        connections: share.connections,
        rate: args.rate,
        duration: args.duration,
        source_ips: share.source_ips.clone(),
        handshake_timeout: args.handshake_timeout,
        max_inflight: args.max_inflight,
        worker: worker.is_some(),
        seed: worker.unwrap_or(0),
    }
}

fn validate(args: &HoldArgs) -> Result<(), String> {
    if args.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err("--rate must be a positive number of connections per second".into());
    }
    if args.processes == Some(0) {
        return Err("--processes must be at least 1".into());
    }
    if args.max_inflight == 0 {
        return Err("--max-inflight must be at least 1".into());
    }
    if args.handshake_timeout.is_zero() {
        return Err("--handshake-timeout must be positive".into());
    }
    if args.source_ips.is_some() && args.url.addr.is_ipv6() {
        return Err("--source-ips are IPv4 addresses but the target is IPv6".into());
    }
    if let Some(ips) = &args.source_ips {
        let target_loopback = args.url.addr.ip().is_loopback();
        if target_loopback && ips.0.iter().any(|ip| !ip.is_loopback()) {
            return Err("to reach a loopback target, --source-ips must be in 127.0.0.0/8".into());
        }
    }
    Ok(())
}
