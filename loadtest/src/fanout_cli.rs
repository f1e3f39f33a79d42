//! The `fanout` subcommand: its flags, how it is split over processes, and what the
//! parent and its workers say to each other.
//!
//! With one process, one loop holds subscribers and publishers. With more, each worker
//! holds a share of the subscribers and the parent holds only the publishers: a worker
//! says `ready` once its subscribers are in, sends `progress` while receiving, and its
//! report (histogram included) when it has everything, times out or is told to stop.
//! The parent starts publishing once every worker is ready and merges the reports.

use crate::common_args::CommonArgs;
use crate::fanout::{self, FanoutConfig, Side};
use crate::fanout_report::{FanoutReport, Plan};
use crate::opts::{self, format_duration, parse_duration, Progress, Protocol};
use crate::plan::Share;
use crate::procs;
use crate::tls::TlsClient;
use crate::workers::{WorkerMessage, WorkerReport, Workers};
use clap::Args;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The raw protocol has no acknowledgements to pace by, so it sends at a fixed rate
/// that a healthy server keeps up with on a small machine.
const RAW_DEFAULT_RATE: f64 = 20_000.0;

/// Publishes in flight per publisher in the hub protocol, unless --window says otherwise.
const HUB_DEFAULT_WINDOW: u64 = 64;

/// How long after the run's deadline the parent still waits for worker reports.
const REPORT_GRACE: Duration = Duration::from_secs(15);

#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    // `--connections` are the subscribers; the publishers connect from the parent
    // process's own address, without `--source-ips`.
    #[command(flatten)]
    pub common: CommonArgs,
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
    /// Hub protocol: publishers send `broadcast` (to every connection of the server, or of
    /// the cluster) instead of `publish`; subscribers still subscribe to --topic first, so
    /// the server has registered them before publishing starts. No one else may be
    /// connected: they would get the broadcasts too, and the publishers get their own
    #[arg(long)]
    pub broadcast: bool,
    /// Messages per second over all publishers [default: hub: as fast as --window
    /// allows; raw: 20000]
    #[arg(long)]
    pub rate: Option<f64>,
    /// Messages a publisher may have in flight [default: hub: 64; raw: no window]. Hub:
    /// publishes not yet acknowledged. Raw: messages whose own copy has not come back
    /// yet (a relay sends the sender its message too, as wshub --relay and the peers do)
    #[arg(long)]
    pub window: Option<u64>,
    /// Once every subscriber is in, wait this long before publishing: for a cluster of
    /// servers that acknowledge a subscription before it reaches their other instances
    /// (wshub before its acks waited for the Redis SUBSCRIBE did; BENCHMARKS.md)
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub settle: Duration,
    /// Give up on the whole run (connect, subscribe, deliver) after this long; a run
    /// that delivers everything ends sooner
    #[arg(long, value_parser = parse_duration, default_value = "120s")]
    pub timeout: Duration,
    /// The server's process id, if it runs on this machine: the report then gives its
    /// peak RSS and its CPU time per delivery while publishing (from /proc/PID). With
    /// several --url's, the first URL's server (the publishers'); its CPU per delivery then
    /// divides by every delivery of the run, so read the other instances' figures from
    /// /proc yourself (scripts/bench-cluster.sh does)
    #[arg(long)]
    pub server_pid: Option<u32>,
}

pub fn main(args: &FanoutArgs) -> Result<ExitCode, String> {
    let common = &args.common;
    validate(args)?;
    // Read the CA file before anything starts: a bad one is an error, not N failures.
    let tls = common.tls()?;
    let deadline = Instant::now() + args.timeout;
    if let Some(index) = common.worker {
        return worker_main(args, tls, index, deadline);
    }
    let (n, p) = (common.connections, args.publishers);
    let processes = common.processes(p)?;
    let shares = common.shares(processes)?;

    let report = if processes == 1 {
        let cfg = config(args, tls, &shares[0], p, deadline, 0, Arc::new(AtomicBool::new(false)));
        let mut side = Solo { progress: Progress::new(), expected: n * p * args.messages };
        let report = fanout::run(&cfg, &mut side).map_err(|e| e.to_string())?;
        side.progress.clear();
        report
    } else {
        parent_run(args, tls, shares, deadline)?
    };

    let urls_text = common.urls_text();
    let plan = Plan {
        url: &urls_text,
        protocol: args.protocol.name(),
        topic: &args.topic,
        subscribers: n,
        publishers: p,
        messages: args.messages,
        size: args.size,
    };
    if common.json {
        opts::emit_line(&serde_json::to_string(&report.summary(&plan)).expect("summaries serialize"));
    } else {
        opts::emit_line(report.summary_text(&plan).trim_end());
    }
    if report.subscribed == 0 {
        common.nothing_connected("subscriber", "could subscribe", &report.failures);
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
    args.common.validate()?;
    if args.publishers == 0 || args.messages == 0 {
        return Err("--publishers and --messages must be at least 1".into());
    }
    if args.publishers > u64::from(u32::MAX) || args.messages > 1 << 40 {
        return Err("--publishers or --messages is unreasonably large".into());
    }
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return Err("--rate must be a positive number of messages per second".into());
    }
    if args.broadcast && args.protocol != Protocol::Hub {
        return Err("--broadcast is for the hub protocol (a relay sends everything to everyone anyway)".into());
    }
    if args.window == Some(0) {
        return Err("--window must be at least 1".into());
    }
    if args.timeout.is_zero() {
        return Err("--timeout must be positive".into());
    }
    Ok(())
}

fn config(
    args: &FanoutArgs,
    tls: Option<TlsClient>,
    share: &Share,
    publishers: u64,
    deadline: Instant,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> FanoutConfig {
    let default_rate = (args.protocol == Protocol::Raw).then_some(RAW_DEFAULT_RATE);
    let common = &args.common;
    FanoutConfig {
        urls: common.urls.clone(),
        tls,
        protocol: args.protocol,
        topic: args.topic.clone(),
        broadcast: args.broadcast,
        subscribers: share.connections,
        publishers,
        total_publishers: args.publishers,
        messages: args.messages,
        size: args.size,
        rate: args.rate.or(default_rate),
        window: args.window.or((args.protocol == Protocol::Hub).then_some(HUB_DEFAULT_WINDOW)),
        connect_rate: common.connect_rate,
        max_inflight: common.max_inflight,
        handshake_timeout: common.handshake_timeout,
        source_ips: share.source_ips.clone(),
        settle: args.settle,
        deadline,
        seed,
        stop,
        server_pid: if common.worker.is_some() { None } else { args.server_pid },
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

fn worker_main(args: &FanoutArgs, tls: Option<TlsClient>, index: u64, deadline: Instant) -> Result<ExitCode, String> {
    let share = args.common.worker_share();
    let cfg = config(args, tls, &share, 0, deadline, index + 1, procs::stop_flag_from_stdin());
    let mut side = Worker { last: Instant::now() };
    let report = fanout::run(&cfg, &mut side).map_err(|e| format!("worker {index}: {e}"))?;
    WorkerMessage::Report(report).send();
    Ok(ExitCode::SUCCESS)
}

/// In a worker: the parent learns everything through stdout lines.
struct Worker {
    last: Instant,
}

impl Side for Worker {
    fn ready(&mut self, subscribed: u64, failed: u64) -> bool {
        WorkerMessage::<()>::Ready { connected: subscribed, failed }.send();
        true
    }

    fn tick(&mut self, r: &FanoutReport, _subscribing: bool) -> bool {
        if self.last.elapsed() >= Duration::from_millis(250) {
            self.last = Instant::now();
            WorkerMessage::<()>::Progress { connected: r.subscribed, received: r.received }.send();
        }
        true
    }

    fn stop_others(&mut self) {}
}

/// In the parent of several workers.
struct Parent {
    workers: Workers<FanoutReport>,
    display: Progress,
    subscribers: u64,
    expected: u64,
    deadline: Instant,
}

impl Parent {
    fn show(&mut self, subscribing: bool, sent: u64) {
        let (subscribed, received) = self.workers.progress();
        show(&mut self.display, subscribing, subscribed, self.subscribers, sent, received, self.expected);
    }
}

impl Side for Parent {
    fn ready(&mut self, _: u64, _: u64) -> bool {
        let (display, subscribers, expected) = (&mut self.display, self.subscribers, self.expected);
        let all_ready = self.workers.wait_ready(self.deadline, |workers| {
            let (subscribed, received) = workers.progress();
            show(display, true, subscribed, subscribers, 0, received, expected);
            !opts::stop_requested()
        });
        all_ready && self.workers.ready_counts().0 > 0
    }

    fn tick(&mut self, r: &FanoutReport, subscribing: bool) -> bool {
        self.workers.catch_up();
        self.show(subscribing, r.sent);
        self.workers.all_done()
    }

    fn stop_others(&mut self) {
        self.workers.tell_stop_all();
    }
}

fn parent_run(
    args: &FanoutArgs,
    tls: Option<TlsClient>,
    shares: Vec<Share>,
    deadline: Instant,
) -> Result<FanoutReport, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    let extra = [
        ("--publishers", args.publishers.to_string()),
        ("--messages", args.messages.to_string()),
        ("--size", args.size.to_string()),
        ("--protocol", args.protocol.name().to_string()),
        ("--topic", args.topic.clone()),
        ("--timeout", format_duration(left)),
    ];
    let extra: Vec<String> = extra.into_iter().flat_map(|(flag, value)| [flag.to_string(), value]).collect();
    let workers = Workers::start("fanout", &args.common, shares, &extra)?;
    let count = workers.count() as u64;
    let mut side = Parent {
        workers,
        display: Progress::new(),
        subscribers: args.common.connections,
        expected: args.common.connections * args.publishers * args.messages,
        deadline,
    };
    let no_subscribers = Share { connections: 0, source_ips: Vec::new(), first: 0 };
    let cfg = config(args, tls, &no_subscribers, args.publishers, deadline, 0, Arc::new(AtomicBool::new(false)));
    let mut total = fanout::run(&cfg, &mut side).map_err(|e| e.to_string())?;
    side.display.clear();

    // Workers end by themselves (done, or their own deadline) or were told to stop.
    let grace = deadline.max(Instant::now()) + REPORT_GRACE;
    total.merge(side.workers.finish(grace)?);
    total.processes = count;
    Ok(total)
}
