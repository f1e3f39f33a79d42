//! What a `hold` run measured: one [`HoldReport`] per process (a worker sends its own to
//! the parent, every connect latency included, so the parent's percentiles are exact),
//! merged by the parent, and shown as text or as the [`HoldSummary`] JSON line.

use crate::failures::{Cause, Failures};
use crate::workers::WorkerReport;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct HoldReport {
    pub connections: u64,
    pub established: u64,
    pub failures: Failures,
    /// Open connections the server closed (close frame, EOF or reset) before we did.
    pub dropped: u64,
    pub pings_answered: u64,
    /// From the first connect attempt until every attempt had finished.
    pub ramp_secs: f64,
    pub held_secs: f64,
    /// Connect start to 101 received, one entry per established connection.
    pub latencies_us: Vec<u64>,
    pub processes: u64,
    /// Stopped early by SIGINT/SIGTERM.
    pub interrupted: bool,
}

/// The `--json` line. Its keys are what scripts read (`established`, `failed_total`, ...).
#[derive(Serialize)]
pub struct HoldSummary<'a> {
    connections: u64,
    established: u64,
    failed: BTreeMap<&'static str, u64>,
    failed_total: u64,
    first_errors: BTreeMap<&'static str, &'a str>,
    dropped: u64,
    pings_answered: u64,
    processes: u64,
    ramp_secs: f64,
    connect_rate: f64,
    latency_us: ConnectLatency,
    held_secs: f64,
    interrupted: bool,
}

/// TCP connect + upgrade, in microseconds.
#[derive(Debug, Serialize, PartialEq)]
pub struct ConnectLatency {
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

/// The line scripts wait for before they measure (`READY established=<n> failed=<n>`),
/// from one process or, summed over its workers, from the parent.
pub fn ready_line(established: u64, failed: u64) -> String {
    format!("READY established={established} failed={failed}")
}

impl HoldReport {
    pub fn connect_rate(&self) -> f64 {
        if self.ramp_secs > 0.0 {
            self.established as f64 / self.ramp_secs
        } else {
            0.0
        }
    }

    /// Sorts a copy: at ~20k entries per process that is cheap, and it keeps reporting
    /// free of side effects.
    pub fn latency(&self) -> ConnectLatency {
        let mut v = self.latencies_us.clone();
        v.sort_unstable();
        if v.is_empty() {
            return ConnectLatency { p50: 0, p99: 0, max: 0 };
        }
        let pick = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        ConnectLatency { p50: pick(0.50), p99: pick(0.99), max: v[v.len() - 1] }
    }

    pub fn summary(&self) -> HoldSummary<'_> {
        HoldSummary {
            connections: self.connections,
            established: self.established,
            failed: self.failures.by_cause(),
            failed_total: self.failures.total(),
            first_errors: self.failures.first_by_cause(),
            dropped: self.dropped,
            pings_answered: self.pings_answered,
            processes: self.processes,
            ramp_secs: self.ramp_secs,
            connect_rate: self.connect_rate(),
            latency_us: self.latency(),
            held_secs: self.held_secs,
            interrupted: self.interrupted,
        }
    }

    pub fn to_text(&self, target: &str) -> String {
        let ConnectLatency { p50, p99, max } = self.latency();
        let mut out = format!(
            "hold summary: {} connections to {} from {} process(es){}\n",
            self.connections,
            target,
            self.processes,
            if self.interrupted { " (stopped early by signal)" } else { "" }
        );
        out += &format!(
            "  established:    {} (dropped by server: {}, pings answered: {})\n",
            self.established, self.dropped, self.pings_answered
        );
        out += &format!("  failed:         {}", self.failures.to_text());
        out += &format!(
            "  connect rate:   {:.0} conn/s ({} in {:.2} s)\n",
            self.connect_rate(),
            self.established,
            self.ramp_secs
        );
        out += &format!("  latency:        p50 {} us, p99 {} us, max {} us (TCP connect + upgrade)\n", p50, p99, max);
        out += &format!("  held:           {:.2} s\n", self.held_secs);
        out
    }
}

impl WorkerReport for HoldReport {
    fn worker_lost(connections: u64, why: String) -> HoldReport {
        HoldReport { connections, failures: Failures::all(Cause::Other, connections, why), ..HoldReport::default() }
    }

    fn merge(&mut self, other: HoldReport) {
        self.connections += other.connections;
        self.established += other.established;
        self.failures.merge(other.failures);
        self.dropped += other.dropped;
        self.pings_answered += other.pings_answered;
        // Workers ramp side by side, so the slowest one is how long the whole ramp took.
        self.ramp_secs = self.ramp_secs.max(other.ramp_secs);
        self.held_secs = self.held_secs.max(other.held_secs);
        self.latencies_us.extend(other.latencies_us);
        self.interrupted |= other.interrupted;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let r = HoldReport { latencies_us: (1..=100).rev().collect(), ..HoldReport::default() };
        assert_eq!(r.latency(), ConnectLatency { p50: 50, p99: 99, max: 100 });
        let one = HoldReport { latencies_us: vec![7], ..HoldReport::default() };
        assert_eq!(one.latency(), ConnectLatency { p50: 7, p99: 7, max: 7 });
    }

    #[test]
    fn worker_reports_round_trip_and_merge() {
        let mut a = HoldReport {
            connections: 10,
            established: 8,
            dropped: 1,
            processes: 1,
            ramp_secs: 2.0,
            held_secs: 5.0,
            latencies_us: vec![3, 1, 2],
            ..HoldReport::default()
        };
        a.failures.fail(Cause::Refused, || "refused!".into());
        a.failures.fail(Cause::Refused, || unreachable!());
        a.failures.fail(Cause::FdLimit, || "EMFILE".into());
        let back: HoldReport = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(back.failures, a.failures);
        assert_eq!(back.latencies_us, vec![3, 1, 2]);

        let mut total = HoldReport::default();
        total.merge(back.clone());
        total.merge(back);
        assert_eq!(total.established, 16);
        assert_eq!(total.failures.total(), 6);
        assert_eq!(total.ramp_secs, 2.0);
        assert_eq!(ready_line(total.established, total.failures.total()), "READY established=16 failed=6");
        assert_eq!(total.connect_rate(), 8.0);
    }

    #[test]
    fn summary_keys_are_the_ones_scripts_read() {
        let mut r = HoldReport { connections: 3, established: 2, latencies_us: vec![5, 9], ..HoldReport::default() };
        r.failures.fail(Cause::Timeout, || "slow".into());
        let s = serde_json::to_value(r.summary()).unwrap();
        assert_eq!((s["established"].as_u64(), s["failed_total"].as_u64()), (Some(2), Some(1)));
        assert_eq!(s["failed"]["timeout"], 1);
        assert_eq!(s["failed"]["refused"], 0);
        assert_eq!(s["first_errors"]["timeout"], "slow");
        assert_eq!(s["latency_us"]["max"], 9);
        assert!(s.get("latencies_us").is_none(), "the summary carries percentiles only");
    }
}
