//! The `fanout` subcommand: its flags, how it is split over processes, and what the
//! parent and its workers say to each other.
//!
//! With one process, one loop holds subscribers and publishers. With more, each worker
//! holds a share of the subscribers and the parent holds only the publishers: a worker
//! prints `READY subscribed=<n> failed=<n>` once its subscribers are in, `PROGRESS ...`
//! lines while receiving, and one JSON report (histogram included) when it has
//! everything, times out or is told to stop. The parent starts publishing once every
//! worker is ready and merges the reports.

use crate::fanout::{self, FanoutConfig, Side};
use crate::fanout_report::{FanoutReport, Plan};
use crate::opts::{self, format_duration, parse_duration, ConnectArgs, Progress, Protocol, WsUrl};
use crate::procs::{self, Procs};
use crate::spawn::{self, Share, WorkerReport};
use clap::Args;
use std::process::{Command, ExitCode};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The raw protocol has no acknowledgements to pace by, so it sends at a fixed rate
/// that a healthy server keeps up with on a small machine.
const RAW_DEFAULT_RATE: f64 = 20_000.0;

/// How long after the run's deadline the parent still waits for worker reports.
const REPORT_GRACE: Duration = Duration::from_secs(15);

#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    /// Target as ws://IP:PORT/path (a literal IP; host names and wss:// are not supported)
    #[arg(long, value_parser = opts::parse_ws_url)]
    pub url: WsUrl,
    /// Subscriber connections, over all processes
    #[arg(long, short = 'n')]
    pub subscribers: u64,
    /// Publisher connections (held by the parent process)
    #[arg(long, default_value_t = 1)]
    pub publishers: u64,
    /// Messages each publisher sends
    #[arg(long, default_value_t = 100)]
    pub messages: u64,
    /// Bytes of each message's payload (hub: the `data` object; raw: the whole frame)
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// hub: wshub's JSON protocol (subscribe, publish); raw: text frames to a relay
    /// that sends every message to every connection (`wshub --relay`)
    #[arg(long, value_enum, default_value_t = Protocol::Hub)]
    pub protocol: Protocol,
    /// Topic to subscribe and publish to (hub protocol)
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// Messages per second over all publishers [default: hub: as fast as --window
    /// allows; raw: 20000]
    #[arg(long)]
    pub rate: Option<f64>,
    /// Hub protocol: publishes a publisher may have unacknowledged
    #[arg(long, default_value_t = 64)]
    pub window: u64,
    /// Processes to spread subscribers over [default: as few as the fd limit allows]
    #[arg(long)]
    pub processes: Option<u64>,
    /// Give up on the whole run (connect, subscribe, deliver) after this long
    #[arg(long, value_parser = parse_duration, default_value = "120s")]
    pub timeout: Duration,
    /// How subscribers connect (publishers connect from the parent's own address)
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print the final summary as one JSON object line
    #[arg(long)]
    pub json: bool,
    /// Internal: run as worker number N (subscribers only)
    #[arg(long, hide = true)]
    pub worker: Option<u64>,
}

pub fn main(args: &FanoutArgs) -> Result<ExitCode, String> {
    validate(args)?;
    let deadline = Instant::now() + args.timeout;
    let per_process = opts::sockets_per_process(opts::raise_fd_limit());
    if let Some(index) = args.worker {
        return worker_main(args, index, deadline);
    }
    let (n, p) = (args.subscribers, args.publishers);
    // One process while subscribers and publishers fit; else workers for the
    // subscribers (at least two, as the parent then holds only the publishers).
    let fewest = if n + p <= per_process { 1 } else { n.div_ceil(per_process).max(2) };
    let processes = args.processes.unwrap_or(fewest).min(n);
    let most = if processes == 1 { n + p } else { n.div_ceil(processes).max(p) };
    if most > per_process {
        return Err(format!(
            "{n} subscribers and {p} publishers over {processes} process(es) need {most} sockets in one \
             process, but the fd limit allows about {per_process}; use --processes {}",
            n.div_ceil(per_process).max(2)
        ));
    }
    let loopback = args.url.addr.ip().is_loopback();
    let shares =
        spawn::plan(n, processes, args.connect.source_ips.as_ref(), loopback, crate::CONNECTIONS_PER_SOURCE_IP)?;

    let report = if processes == 1 {
        let cfg = config(args, &shares[0], p, deadline, 0, Arc::new(AtomicBool::new(false)));
        let mut side = Solo { progress: Progress::new(), expected: n * p * args.messages };
        let report = fanout::run(&cfg, &mut side).map_err(|e| e.to_string())?;
        side.progress.clear();
        report
    } else {
        parent_run(args, &shares, deadline)?
    };

    let plan = Plan {
        url: &args.url.original,
        protocol: args.protocol.name(),
        topic: &args.topic,
        subscribers: n,
        publishers: p,
        messages: args.messages,
        size: args.size,
    };
    if args.json {
        opts::emit_line(&serde_json::to_string(&report.summary(&plan)).expect("summaries serialize"));
    } else {
        opts::emit_line(report.summary_text(&plan).trim_end());
    }
    if report.subscribed == 0 {
        let hint = report.failures.nothing_connected_hint();
        eprintln!("wshub-load: error: no subscriber to {} could subscribe{hint}", args.url.addr);
        return Ok(ExitCode::FAILURE);
    }
    let lost = report.lost(&plan);
    if report.timed_out {
        eprintln!("wshub-load: timed out after {:?}: {lost} of {} deliveries missing", args.timeout, plan.expected());
    }
    let clean = lost == 0 && report.duplicates == 0 && report.invalid == 0 && !report.timed_out;
    Ok(if clean { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn validate(args: &FanoutArgs) -> Result<(), String> {
    if args.subscribers == 0 || args.publishers == 0 || args.messages == 0 {
        return Err("--subscribers, --publishers and --messages must be at least 1".into());
    }
    if args.publishers > u64::from(u32::MAX) || args.messages > 1 << 40 {
        return Err("--publishers or --messages is unreasonably large".into());
    }
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return Err("--rate must be a positive number of messages per second".into());
    }
    if args.window == 0 || args.processes == Some(0) {
        return Err("--window and --processes must be at least 1".into());
    }
    if args.timeout.is_zero() {
        return Err("--timeout must be positive".into());
    }
    args.connect.validate(&args.url)?;
    Ok(())
}

fn config(
    args: &FanoutArgs,
    share: &Share,
    publishers: u64,
    deadline: Instant,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> FanoutConfig {
    let default_rate = (args.protocol == Protocol::Raw).then_some(RAW_DEFAULT_RATE);
    FanoutConfig {
        url: args.url.clone(),
        protocol: args.protocol,
        topic: args.topic.clone(),
        subscribers: share.connections,
        publishers,
        total_publishers: args.publishers,
        messages: args.messages,
        size: args.size,
        rate: args.rate.or(default_rate),
        window: args.window,
        connect_rate: args.connect.connect_rate,
        max_inflight: args.connect.max_inflight,
        handshake_timeout: args.connect.handshake_timeout,
        source_ips: share.source_ips.clone(),
        deadline,
        seed,
        stop,
    }
}

/// One process: nothing else to wait for; a progress line for a person watching.
struct Solo {
    progress: Progress,
    expected: u64,
}

impl Side for Solo {
    fn ready(&mut self, subscribed: u64, _failed: u64) -> bool {
        subscribed > 0
    }

    fn tick(&mut self, r: &FanoutReport, subscribing: bool) -> bool {
        show(&mut self.progress, subscribing, r.subscribed, r.subscribers, r.sent, r.received, self.expected);
        true
    }

    fn stop_others(&mut self) {}
}

fn show(progress: &mut Progress, subscribing: bool, subs: u64, of: u64, sent: u64, received: u64, expected: u64) {
    progress.show(|| {
        if subscribing {
            format!("fanout: subscribed {subs}/{of}")
        } else {
            let pct = if expected > 0 { received as f64 * 100.0 / expected as f64 } else { 0.0 };
            format!("fanout: sent {sent}, received {received}/{expected} ({pct:.1}%)")
        }
    });
}

fn worker_main(args: &FanoutArgs, index: u64, deadline: Instant) -> Result<ExitCode, String> {
    let share = Share {
        connections: args.subscribers,
        source_ips: args.connect.source_ips.clone().map(|s| s.0).unwrap_or_default(),
    };
    let cfg = config(args, &share, 0, deadline, index + 1, procs::stop_flag_from_stdin());
    let mut side = Worker { last: Instant::now() };
    let report = fanout::run(&cfg, &mut side).map_err(|e| format!("worker {index}: {e}"))?;
    opts::emit_line(&serde_json::to_string(&report).expect("reports serialize"));
    Ok(ExitCode::SUCCESS)
}

/// In a worker: the parent learns everything through stdout lines.
struct Worker {
    last: Instant,
}

impl Side for Worker {
    fn ready(&mut self, subscribed: u64, failed: u64) -> bool {
        opts::emit_line(&format!("READY subscribed={subscribed} failed={failed}"));
        true
    }

    fn tick(&mut self, r: &FanoutReport, _subscribing: bool) -> bool {
        if self.last.elapsed() >= Duration::from_millis(250) {
            self.last = Instant::now();
            opts::emit_line(&format!("PROGRESS subscribed={} received={}", r.subscribed, r.received));
        }
        true
    }

    fn stop_others(&mut self) {}
}

/// In the parent of several workers.
struct Parent {
    procs: Procs,
    /// Per worker: (subscribed, failed) from READY, latest PROGRESS, final report.
    ready: Vec<Option<(u64, u64)>>,
    progress: Vec<(u64, u64)>,
    reports: Vec<Option<FanoutReport>>,
    display: Progress,
    subscribers: u64,
    expected: u64,
    deadline: Instant,
}

impl Parent {
    fn line(&mut self, i: usize, line: String) {
        if let Some(counts) = parse_pair(&line, "READY subscribed=", " failed=") {
            self.ready[i] = Some(counts);
        } else if let Some(counts) = parse_pair(&line, "PROGRESS subscribed=", " received=") {
            self.progress[i] = counts;
        } else if let Ok(r) = serde_json::from_str(&line) {
            self.reports[i] = Some(r);
        } else {
            eprintln!("wshub-load: worker {i}: unexpected output: {line}");
        }
    }

    fn show(&mut self, subscribing: bool, sent: u64) {
        let subscribed = self.progress.iter().map(|p| p.0).sum();
        let received = self.progress.iter().map(|p| p.1).sum();
        show(&mut self.display, subscribing, subscribed, self.subscribers, sent, received, self.expected);
    }
}

impl Side for Parent {
    fn ready(&mut self, _: u64, _: u64) -> bool {
        let count = self.ready.len();
        while !(0..count).all(|i| self.ready[i].is_some() || self.procs.is_done(i)) {
            if opts::stop_requested() || Instant::now() > self.deadline {
                return false;
            }
            if let Some((i, line)) = self.procs.recv(Duration::from_millis(100)) {
                self.line(i, line);
            }
            self.show(true, 0);
        }
        self.ready.iter().flatten().map(|r| r.0).sum::<u64>() > 0
    }

    fn tick(&mut self, r: &FanoutReport, subscribing: bool) -> bool {
        while let Some((i, line)) = self.procs.try_recv() {
            self.line(i, line);
        }
        self.show(subscribing, r.sent);
        self.procs.all_done()
    }

    fn stop_others(&mut self) {
        self.procs.tell_stop_all();
    }
}

fn parse_pair(line: &str, first: &str, second: &str) -> Option<(u64, u64)> {
    let (a, b) = line.strip_prefix(first)?.split_once(second)?;
    Some((a.parse().ok()?, b.trim().parse().ok()?))
}

fn parent_run(args: &FanoutArgs, shares: &[Share], deadline: Instant) -> Result<FanoutReport, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding our own executable: {e}"))?;
    let count = shares.len();
    let left = deadline.saturating_duration_since(Instant::now());
    let commands = shares
        .iter()
        .enumerate()
        .map(|(i, share)| {
            let mut cmd = Command::new(&exe);
            cmd.arg("fanout")
                .args(["--url", &args.url.original])
                .args(["--subscribers", &share.connections.to_string()])
                .args(["--publishers", &args.publishers.to_string()])
                .args(["--messages", &args.messages.to_string()])
                .args(["--size", &args.size.to_string()])
                .args(["--protocol", args.protocol.name()])
                .args(["--topic", &args.topic])
                .args(["--timeout", &format_duration(left)])
                .args(args.connect.worker_args(count, &share.source_ips))
                .args(["--worker", &i.to_string()]);
            cmd
        })
        .collect();
    let procs = Procs::spawn(commands).map_err(|e| format!("starting worker processes: {e}"))?;
    let mut side = Parent {
        procs,
        ready: vec![None; count],
        progress: vec![(0, 0); count],
        reports: vec![None; count],
        display: Progress::new(),
        subscribers: args.subscribers,
        expected: args.subscribers * args.publishers * args.messages,
        deadline,
    };
    let no_subscribers = Share { connections: 0, source_ips: Vec::new() };
    let cfg = config(args, &no_subscribers, args.publishers, deadline, 0, Arc::new(AtomicBool::new(false)));
    let mut total = fanout::run(&cfg, &mut side).map_err(|e| e.to_string())?;
    side.display.clear();

    // Workers end by themselves (done, or their own deadline) or were told to stop.
    let grace = deadline.max(Instant::now()) + REPORT_GRACE;
    let mut heard = Vec::new();
    side.procs.drain_until(grace, |i, line| heard.push((i, line)));
    let statuses = side.procs.reap().map_err(|e| format!("waiting for workers: {e}"))?;
    for (i, line) in heard {
        side.line(i, line);
    }
    for (i, share) in shares.iter().enumerate() {
        total.merge(side.reports[i].take().unwrap_or_else(|| {
            FanoutReport::worker_lost(share.connections, format!("worker {i} ended ({}) without a report", statuses[i]))
        }));
    }
    total.processes = count as u64;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_lines() {
        assert_eq!(parse_pair("READY subscribed=5 failed=2", "READY subscribed=", " failed="), Some((5, 2)));
        assert_eq!(parse_pair("PROGRESS subscribed=5 received=9", "PROGRESS subscribed=", " received="), Some((5, 9)));
        assert_eq!(parse_pair("READY established=5 failed=2", "READY subscribed=", " failed="), None);
    }
}
