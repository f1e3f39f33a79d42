//! Spreading one run over several processes, for every subcommand that does: one process
//! can hold only as many sockets as its fd limit allows (20000 on our machines), so a
//! bigger run re-executes this binary as workers (`procs`), each with a share of the
//! connections ([`plan`](crate::plan::plan)) and its own source addresses.
//!
//! A worker speaks to its parent in [`WorkerMessage`]s, one JSON object per stdout line:
//! `ready` once its connections are up (or have failed), `progress` now and then, and
//! its `report` last. The parent ([`Workers`]) waits for every `ready`, runs the
//! subcommand's own part, tells the workers to stop, and merges their reports.

use crate::common_args::CommonArgs;
use crate::opts;
use crate::plan::Share;
use crate::procs::Procs;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::process::Command;
use std::time::{Duration, Instant};

/// One line from a worker to its parent.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum WorkerMessage<R> {
    /// Every connection of the worker is up or has failed.
    Ready { connected: u64, failed: u64 },
    /// While a fanout worker receives: for the parent's progress line.
    Progress { connected: u64, received: u64 },
    /// The last line: everything the worker measured.
    Report(R),
}

impl<R: Serialize> WorkerMessage<R> {
    /// In a worker: sends this to the parent.
    pub fn send(&self) {
        opts::emit_line(&serde_json::to_string(self).expect("reports serialize to JSON"));
    }
}

/// A subcommand's report, as the parent merges the workers' ones.
pub trait WorkerReport: DeserializeOwned + Default {
    /// Stands in for a worker that ended without a report: its connections failed.
    fn worker_lost(connections: u64, why: String) -> Self;
    fn merge(&mut self, other: Self);
}

/// The parent's side: the running workers and what each has said so far.
pub struct Workers<R> {
    procs: Procs,
    shares: Vec<Share>,
    /// (connected, failed) from each worker's `ready`.
    ready: Vec<Option<(u64, u64)>>,
    /// (connected, received) from each worker's latest `progress`.
    progress: Vec<(u64, u64)>,
    reports: Vec<Option<R>>,
}

impl<R: WorkerReport> Workers<R> {
    /// Starts one worker per share: `wshub-load <subcommand> <common options for its
    /// share> <extra>`, where `extra` are the subcommand's own options.
    pub fn start(subcommand: &str, common: &CommonArgs, shares: Vec<Share>, extra: &[String]) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("finding our own executable: {e}"))?;
        let commands = (shares.iter().enumerate())
            .map(|(i, share)| {
                let mut cmd = Command::new(&exe);
                cmd.arg(subcommand).args(common.worker_args(share, shares.len(), i)).args(extra);
                cmd
            })
            .collect();
        let procs = Procs::spawn(commands).map_err(|e| format!("starting worker processes: {e}"))?;
        let count = shares.len();
        Ok(Workers {
            procs,
            shares,
            ready: vec![None; count],
            progress: vec![(0, 0); count],
            reports: (0..count).map(|_| None).collect(),
        })
    }

    pub fn count(&self) -> usize {
        self.shares.len()
    }

    fn hear(&mut self, i: usize, line: String) {
        match serde_json::from_str(&line) {
            Ok(WorkerMessage::Ready { connected, failed }) => self.ready[i] = Some((connected, failed)),
            Ok(WorkerMessage::Progress { connected, received }) => self.progress[i] = (connected, received),
            Ok(WorkerMessage::Report(report)) => self.reports[i] = Some(report),
            Err(e) => eprintln!("wshub-load: worker {i}: unexpected output ({e}): {line}"),
        }
    }

    /// Takes in at most one line, waiting up to `timeout` for it.
    pub fn listen(&mut self, timeout: Duration) {
        if let Some((i, line)) = self.procs.recv(timeout) {
            self.hear(i, line);
        }
    }

    /// Takes in every line already waiting.
    pub fn catch_up(&mut self) {
        while let Some((i, line)) = self.procs.try_recv() {
            self.hear(i, line);
        }
    }

    /// Waits until every worker is ready (or gone): true then; false if `deadline`
    /// passed first or `keep_waiting` (called every 100 ms at most) said to give up.
    pub fn wait_ready(&mut self, deadline: Instant, mut keep_waiting: impl FnMut(&mut Self) -> bool) -> bool {
        loop {
            if (0..self.count()).all(|i| self.ready[i].is_some() || self.procs.is_done(i)) {
                return true;
            }
            if Instant::now() > deadline || !keep_waiting(self) {
                return false;
            }
            self.listen(Duration::from_millis(100));
        }
    }

    /// (connected, failed) over all workers; one not ready counts all its share failed.
    pub fn ready_counts(&self) -> (u64, u64) {
        let counts = self.ready.iter().zip(&self.shares).map(|(ready, share)| ready.unwrap_or((0, share.connections)));
        counts.fold((0, 0), |(c, f), (dc, df)| (c + dc, f + df))
    }

    /// (connected, received) over all workers, as of their latest `progress`.
    pub fn progress(&self) -> (u64, u64) {
        self.progress.iter().fold((0, 0), |(c, r), (dc, dr)| (c + dc, r + dr))
    }

    /// Every worker has closed its stdout (it is done, or about to exit).
    pub fn all_done(&self) -> bool {
        self.procs.all_done()
    }

    pub fn tell_stop_all(&mut self) {
        self.procs.tell_stop_all();
    }

    /// Waits (until `deadline` at most) for the workers to end, and merges their
    /// reports; a worker without one counts all its connections failed.
    pub fn finish(mut self, deadline: Instant) -> Result<R, String> {
        let mut heard = Vec::new();
        self.procs.drain_until(deadline, |i, line| heard.push((i, line)));
        let statuses = self.procs.reap().map_err(|e| format!("waiting for workers: {e}"))?;
        for (i, line) in heard {
            self.hear(i, line);
        }
        let mut total = R::default();
        for (i, (report, share)) in self.reports.into_iter().zip(&self.shares).enumerate() {
            total.merge(report.unwrap_or_else(|| {
                R::worker_lost(share.connections, format!("worker {i} ended ({}) without a report", statuses[i]))
            }));
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let ready: WorkerMessage<u64> = WorkerMessage::Ready { connected: 5, failed: 2 };
        let line = serde_json::to_string(&ready).unwrap();
        assert_eq!(line, r#"{"ready":{"connected":5,"failed":2}}"#);
        assert_eq!(serde_json::from_str::<WorkerMessage<u64>>(&line).unwrap(), ready);
        let report = serde_json::to_string(&WorkerMessage::Report(7u64)).unwrap();
        assert_eq!(serde_json::from_str::<WorkerMessage<u64>>(&report).unwrap(), WorkerMessage::Report(7));
        assert!(serde_json::from_str::<WorkerMessage<u64>>("READY established=5 failed=2").is_err());
    }
}
