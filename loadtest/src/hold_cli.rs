//! The `hold` subcommand: its options, and how a run is split over processes.
//!
//! With several processes the parent holds no connections: it prints the combined
//! `READY` once every worker is ready and owns the clock, ending the hold by telling
//! the workers to stop, so all of them hold for the same period no matter which
//! finished ramping first.

use crate::common_args::CommonArgs;
use crate::hold::{self, HoldConfig};
use crate::hold_report::{ready_line, HoldReport};
use crate::opts::{self, format_duration, parse_duration};
use crate::plan::Share;
use crate::tls::TlsClient;
use crate::workers::{WorkerMessage, Workers};
use clap::Args;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct HoldArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// How long to hold the connections once all are up (e.g. 30s, 500ms, 2m)
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub duration: Duration,
    /// Give each connection its own user (`?user=u<process>x<index>` added to the URL)
    #[arg(long)]
    pub user: bool,
    /// After the upgrade, subscribe each connection (hub protocol) to this many topics:
    /// `global` (shared by all) and `room.<process>x<index>.<k>` of its own; a
    /// connection counts as ready once every subscription is acknowledged
    #[arg(long, default_value_t = 0)]
    pub topics: u32,
}

pub fn main(args: &HoldArgs) -> Result<ExitCode, String> {
    let common = &args.common;
    common.validate()?;
    // Read the CA file before anything starts: a bad one is an error, not N failures.
    let tls = common.tls()?;
    if let Some(index) = common.worker {
        return worker_main(args, tls, index);
    }
    let processes = common.processes(0)?;
    let shares = common.shares(processes)?;
    let report = if processes == 1 {
        hold::run(&config(args, tls, &shares[0], None)).map_err(|e| e.to_string())?
    } else {
        parent_run(args, shares)?
    };

    if common.json {
        opts::emit_line(&serde_json::to_string(&report.summary()).expect("summaries serialize"));
    } else {
        opts::emit_line(report.to_text(&common.urls_text()).trim_end());
    }
    if report.established == 0 {
        common.nothing_connected("connection", "could be established", &report.failures);
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// A worker sends its `ready` and then its full report (every latency) to the parent;
/// nothing else goes to its stdout.
fn worker_main(args: &HoldArgs, tls: Option<TlsClient>, index: u64) -> Result<ExitCode, String> {
    let share = args.common.worker_share();
    let report = hold::run(&config(args, tls, &share, Some(index))).map_err(|e| format!("worker {index}: {e}"))?;
    let failed = report.established == 0;
    WorkerMessage::Report(report).send();
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn config(args: &HoldArgs, tls: Option<TlsClient>, share: &Share, worker: Option<u64>) -> HoldConfig {
    let common = &args.common;
    HoldConfig {
        urls: common.urls.clone(),
        tls,
        connections: share.connections,
        connect_rate: common.connect_rate,
        duration: args.duration,
        source_ips: share.source_ips.clone(),
        handshake_timeout: common.handshake_timeout,
        max_inflight: common.max_inflight,
        worker: worker.is_some(),
        seed: worker.unwrap_or(0),
        user: args.user,
        topics: args.topics,
    }
}

fn parent_run(args: &HoldArgs, shares: Vec<Share>) -> Result<HoldReport, String> {
    let common = &args.common;
    let ramp_bound = hold::ramp_bound(common.connections, common.connect_rate, common.handshake_timeout);
    // A worker holds until told to stop; its own --duration is only a backstop in
    // case this parent vanishes without closing the pipe.
    let backstop = args.duration + ramp_bound + Duration::from_secs(30);
    let mut extra = vec!["--duration".to_string(), format_duration(backstop), "--topics".to_string()];
    extra.push(args.topics.to_string());
    if args.user {
        extra.push("--user".to_string());
    }
    let mut workers = Workers::<HoldReport>::start("hold", common, shares, &extra)?;

    // Phase 1: wait until every worker is ready (or gone). A signal stops the ramps,
    // after which the workers still say how far they got.
    let mut stop_sent = false;
    let all_ready = workers.wait_ready(Instant::now() + ramp_bound + Duration::from_secs(15), |workers| {
        if opts::stop_requested() && !stop_sent {
            workers.tell_stop_all();
            stop_sent = true;
        }
        true
    });
    if !all_ready {
        eprintln!("wshub-load: workers did not all get ready in time; stopping them");
        workers.tell_stop_all();
    }
    let (established, failed) = workers.ready_counts();
    opts::emit_line(&ready_line(established, failed));

    // Phase 2: hold, while noticing signals and workers that die.
    let hold_start = Instant::now();
    if established > 0 {
        let end = hold_start + args.duration;
        while !opts::stop_requested() && Instant::now() < end {
            workers.listen(end.saturating_duration_since(Instant::now()).min(Duration::from_millis(100)));
        }
    }
    let held_secs = hold_start.elapsed().as_secs_f64();

    // Phase 3: end the hold everywhere and collect the reports.
    workers.tell_stop_all();
    let count = workers.count() as u64;
    let mut total = workers.finish(Instant::now() + Duration::from_secs(30))?;
    total.processes = count;
    total.held_secs = held_secs;
    total.interrupted |= opts::stop_requested();
    Ok(total)
}
