//! Spreading one run over several processes (see `procs`): how connections and source
//! addresses are split ([`plan`], used by every mode), and the parent's side of `hold`.
//!
//! A `hold` worker prints its own `READY` line, then one JSON report when it is done;
//! the parent prints the combined `READY` once every worker is ready and owns the
//! clock: it ends the hold by telling the workers to stop, so all of them hold for the
//! same period no matter which finished ramping first.

use crate::hold_report::{ready_line, HoldReport};
use crate::opts::{self, format_duration, SourceIps};
use crate::procs::Procs;
use crate::HoldArgs;
use serde::de::DeserializeOwned;
use std::io;
use std::process::Command;
use std::time::{Duration, Instant};

/// One process's part of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    pub connections: u64,
    pub source_ips: Vec<std::net::Ipv4Addr>,
}

/// Worst case for one ramp: the last connect starts at N/rate and may take a full
/// handshake timeout; plus slack for a loaded machine.
pub fn ramp_bound(args: &HoldArgs) -> Duration {
    Duration::from_secs_f64(args.connections as f64 / args.rate) + args.handshake_timeout + Duration::from_secs(30)
}

/// A subcommand's report, as the parent merges the workers' ones.
pub trait WorkerReport: DeserializeOwned + Default {
    /// Stands in for a worker that ended without a report: its connections failed.
    fn worker_lost(connections: u64, why: String) -> Self;
    fn merge(&mut self, other: Self);
}

/// What the parent has heard from each worker.
struct Heard {
    /// (established, failed) from its READY line.
    ready: Vec<Option<(u64, u64)>>,
    reports: Vec<Option<HoldReport>>,
}

impl Heard {
    fn line(&mut self, i: usize, line: String) {
        if let Some(counts) = parse_ready(&line) {
            self.ready[i] = Some(counts);
        } else if let Ok(report) = serde_json::from_str(&line) {
            self.reports[i] = Some(report);
        } else {
            eprintln!("wshub-load: worker {i}: unexpected output: {line}");
        }
    }
}

pub fn run(args: &HoldArgs, shares: &[Share]) -> io::Result<HoldReport> {
    let exe = std::env::current_exe()?;
    let count = shares.len();
    // A worker holds until told to stop; its own --duration is only a backstop in
    // case this parent vanishes without closing the pipe.
    let backstop = args.duration + ramp_bound(args) + Duration::from_secs(30);
    let commands = shares
        .iter()
        .enumerate()
        .map(|(i, share)| {
            let mut cmd = Command::new(&exe);
            cmd.arg("hold")
                .args(["--url", &args.url.original])
                .args(["--connections", &share.connections.to_string()])
                .args(["--rate", &(args.rate / count as f64).to_string()])
                .args(["--duration", &format_duration(backstop)])
                .args(["--handshake-timeout", &format_duration(args.handshake_timeout)])
                .args(["--max-inflight", &(args.max_inflight / count).max(1).to_string()])
                .args(["--worker", &i.to_string()]);
            if !share.source_ips.is_empty() {
                cmd.args(["--source-ips", &SourceIps(share.source_ips.clone()).to_arg()]);
            }
            cmd
        })
        .collect();
    let mut procs = Procs::spawn(commands)?;
    let mut heard = Heard { ready: vec![None; count], reports: vec![None; count] };

    // Phase 1: wait until every worker is ready (or gone).
    let deadline = Instant::now() + ramp_bound(args) + Duration::from_secs(15);
    let mut stop_sent = false;
    while !(0..count).all(|i| heard.ready[i].is_some() || procs.is_done(i)) {
        if opts::stop_requested() && !stop_sent {
            procs.tell_stop_all();
            stop_sent = true;
        }
        if Instant::now() > deadline {
            eprintln!("wshub-load: workers did not all get ready in time; stopping them");
            procs.tell_stop_all();
            break;
        }
        if let Some((i, line)) = procs.recv(Duration::from_millis(100)) {
            heard.line(i, line);
        }
    }
    let (mut established, mut failed) = (0, 0);
    for (i, share) in shares.iter().enumerate() {
        let (e, f) = heard.ready[i].unwrap_or((0, share.connections));
        established += e;
        failed += f;
    }
    opts::emit_line(&ready_line(established, failed));

    // Phase 2: hold, while noticing signals and workers that die.
    let hold_start = Instant::now();
    if established > 0 {
        let end = hold_start + args.duration;
        while !opts::stop_requested() && Instant::now() < end {
            let left = end.saturating_duration_since(Instant::now());
            if let Some((i, line)) = procs.recv(left.min(Duration::from_millis(100))) {
                heard.line(i, line);
            }
        }
    }
    let held_secs = hold_start.elapsed().as_secs_f64();

    // Phase 3: end the hold everywhere and collect the reports.
    procs.tell_stop_all();
    procs.drain_until(Instant::now() + Duration::from_secs(30), |i, line| heard.line(i, line));
    let statuses = procs.reap()?;
    let mut total = HoldReport::default();
    for (i, share) in shares.iter().enumerate() {
        total.merge(heard.reports[i].take().unwrap_or_else(|| {
            HoldReport::worker_lost(share.connections, format!("worker {i} ended ({}) without a report", statuses[i]))
        }));
    }
    total.processes = count as u64;
    total.held_secs = held_secs;
    total.interrupted |= opts::stop_requested();
    Ok(total)
}

fn parse_ready(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("READY established=")?;
    let (established, failed) = rest.split_once(" failed=")?;
    Some((established.parse().ok()?, failed.trim().parse().ok()?))
}

/// Splits `connections` into `processes` nearly equal shares and gives each its own
/// source addresses, so two processes never compete for the same ports.
pub fn plan(
    connections: u64,
    processes: u64,
    given_ips: Option<&SourceIps>,
    default_ips: bool,
    per_ip: u64,
) -> Result<Vec<Share>, String> {
    let mut shares = Vec::new();
    let mut next_block = 0usize;
    for i in 0..processes {
        let share = connections / processes + u64::from(i < connections % processes);
        let source_ips = match given_ips {
            Some(SourceIps(ips)) if ips.len() as u64 >= processes => {
                // Contiguous slices, the first ones one address longer if uneven.
                let (len, p, i) = (ips.len() as u64, processes, i);
                let start = i * (len / p) + i.min(len % p);
                let size = len / p + u64::from(i < len % p);
                ips[start as usize..(start + size) as usize].to_vec()
            }
            // Fewer addresses than processes: they have to share.
            Some(SourceIps(ips)) => vec![ips[i as usize % ips.len()]],
            None if default_ips => {
                let count = share.div_ceil(per_ip).max(1) as usize;
                let block = SourceIps::loopback_block(next_block, count)?;
                next_block += count;
                block.0
            }
            None => Vec::new(),
        };
        shares.push(Share { connections: share, source_ips });
    }
    Ok(shares)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn ready_lines() {
        assert_eq!(parse_ready("READY established=5 failed=2"), Some((5, 2)));
        assert_eq!(parse_ready("{\"x\":1}"), None);
    }

    #[test]
    fn default_plan_gives_each_process_its_own_addresses() {
        let shares = plan(45_000, 2, None, true, 20_000).unwrap();
        assert_eq!(shares[0].connections, 22_500);
        assert_eq!(shares[1].connections, 22_500);
        let ip = |d| Ipv4Addr::new(127, 0, 0, d);
        assert_eq!(shares[0].source_ips, vec![ip(2), ip(3)]);
        assert_eq!(shares[1].source_ips, vec![ip(4), ip(5)]);
        assert!(plan(10, 1, None, false, 20_000).unwrap()[0].source_ips.is_empty());
    }

    #[test]
    fn given_addresses_are_split_or_shared() {
        let ips = crate::opts::parse_source_ips("127.0.0.2-127.0.0.6").unwrap();
        let shares = plan(7, 2, Some(&ips), true, 20_000).unwrap();
        assert_eq!((shares[0].connections, shares[1].connections), (4, 3));
        assert_eq!(shares[0].source_ips.len(), 3);
        assert_eq!(shares[1].source_ips.len(), 2);
        assert_eq!(shares[1].source_ips[0], Ipv4Addr::new(127, 0, 0, 5));
        let one = crate::opts::parse_source_ips("127.0.0.9").unwrap();
        let shares = plan(7, 3, Some(&one), true, 20_000).unwrap();
        assert!(shares.iter().all(|s| s.source_ips == one.0));
    }
}
