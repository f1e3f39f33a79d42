//! Why connections fail ([`Cause`], [`Failures`], shared by every mode) and what a
//! `hold` run measured ([`Report`]), in one shape for a single process, for each worker
//! (sent to the parent as one JSON line) and for the parent's sum of them.

use serde_json::{json, Value};
use std::io;

/// Why a connection never got to the open state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cause {
    Refused,
    Timeout,
    BadHandshake,
    FdLimit,
    Other,
}

impl Cause {
    pub const ALL: [Cause; 5] = [Cause::Refused, Cause::Timeout, Cause::BadHandshake, Cause::FdLimit, Cause::Other];

    pub fn name(self) -> &'static str {
        match self {
            Cause::Refused => "refused",
            Cause::Timeout => "timeout",
            Cause::BadHandshake => "bad_handshake",
            Cause::FdLimit => "fd_limit",
            Cause::Other => "other",
        }
    }

    pub fn of(err: &io::Error) -> Cause {
        match err.raw_os_error() {
            Some(libc::ECONNREFUSED) => Cause::Refused,
            Some(libc::ETIMEDOUT) => Cause::Timeout,
            Some(libc::EMFILE) | Some(libc::ENFILE) => Cause::FdLimit,
            _ => Cause::Other,
        }
    }
}

/// Connections that never got going, by cause, with the first message of each cause
/// (the fanout and echo summaries; `hold` keeps the same numbers in [`Report`]).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Failures {
    /// Indexed like [`Cause::ALL`].
    pub counts: [u64; 5],
    pub first: [Option<String>; 5],
}

impl Failures {
    pub fn fail(&mut self, cause: Cause, message: impl FnOnce() -> String) {
        let i = cause as usize;
        self.counts[i] += 1;
        if self.first[i].is_none() {
            self.first[i] = Some(message());
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn merge(&mut self, other: &Failures) {
        for i in 0..self.counts.len() {
            self.counts[i] += other.counts[i];
            if self.first[i].is_none() {
                self.first[i].clone_from(&other.first[i]);
            }
        }
    }

    /// `{"refused": n, ...}` with every cause present.
    pub fn counts_json(&self) -> Value {
        Cause::ALL.iter().map(|c| (c.name().to_string(), json!(self.counts[*c as usize]))).collect()
    }

    /// `{"refused": "first message", ...}` with only the causes that happened.
    pub fn first_json(&self) -> Value {
        Cause::ALL
            .iter()
            .filter_map(|c| Some((c.name().to_string(), json!(self.first[*c as usize].as_ref()?))))
            .collect()
    }

    pub fn from_json(counts: &Value, first: &Value) -> Option<Failures> {
        let mut f = Failures::default();
        for c in Cause::ALL {
            f.counts[c as usize] = counts.get(c.name())?.as_u64()?;
            f.first[c as usize] = first.get(c.name()).and_then(Value::as_str).map(str::to_string);
        }
        Some(f)
    }

    /// "refused 3, timeout 0, ..." plus one indented line per first message.
    pub fn to_text(&self) -> String {
        let causes: Vec<String> =
            Cause::ALL.iter().map(|c| format!("{} {}", c.name(), self.counts[*c as usize])).collect();
        let mut out = format!("{} ({})\n", self.total(), causes.join(", "));
        for c in Cause::ALL {
            if let Some(msg) = &self.first[c as usize] {
                out += &format!("    first {}: {}\n", c.name(), msg);
            }
        }
        out
    }
}

#[derive(Debug, Default, Clone)]
pub struct Report {
    pub connections: u64,
    pub established: u64,
    /// Indexed like [`Cause::ALL`].
    pub failed: [u64; 5],
    /// The first error message seen for each cause: counts say how often, this says why.
    pub first_error: [Option<String>; 5],
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

impl Report {
    /// Counts one failure (the merge tests build reports with it; runs fill reports from
    /// `conn::NetStats`).
    #[cfg(test)]
    pub fn fail(&mut self, cause: Cause, message: impl FnOnce() -> String) {
        let i = cause as usize;
        self.failed[i] += 1;
        if self.first_error[i].is_none() {
            self.first_error[i] = Some(message());
        }
    }

    pub fn failed_total(&self) -> u64 {
        self.failed.iter().sum()
    }

    pub fn ready_line(&self) -> String {
        format!("READY established={} failed={}", self.established, self.failed_total())
    }

    pub fn connect_rate(&self) -> f64 {
        if self.ramp_secs > 0.0 {
            self.established as f64 / self.ramp_secs
        } else {
            0.0
        }
    }

    /// (p50, p99, max) in microseconds. Sorts a copy: at ~20k entries per process
    /// that is cheap, and it keeps reporting free of side effects.
    pub fn latency_summary(&self) -> (u64, u64, u64) {
        let mut v = self.latencies_us.clone();
        v.sort_unstable();
        if v.is_empty() {
            return (0, 0, 0);
        }
        let pick = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        (pick(0.50), pick(0.99), v[v.len() - 1])
    }

    /// Adds a worker's numbers to this (the parent's) total.
    pub fn merge(&mut self, other: Report) {
        self.connections += other.connections;
        self.established += other.established;
        for i in 0..self.failed.len() {
            self.failed[i] += other.failed[i];
            if self.first_error[i].is_none() {
                self.first_error[i].clone_from(&other.first_error[i]);
            }
        }
        self.dropped += other.dropped;
        self.pings_answered += other.pings_answered;
        // Workers ramp side by side, so the slowest one is how long the whole ramp took.
        self.ramp_secs = self.ramp_secs.max(other.ramp_secs);
        self.held_secs = self.held_secs.max(other.held_secs);
        self.latencies_us.extend(other.latencies_us);
        self.interrupted |= other.interrupted;
    }

    /// Workers include every latency so the parent's percentiles are exact; the final
    /// summary only carries the percentiles.
    pub fn to_json(&self, with_latencies: bool) -> Value {
        let (p50, p99, max) = self.latency_summary();
        let failed: serde_json::Map<String, Value> =
            Cause::ALL.iter().map(|c| (c.name().to_string(), json!(self.failed[*c as usize]))).collect();
        let errors: serde_json::Map<String, Value> = Cause::ALL
            .iter()
            .filter_map(|c| Some((c.name().to_string(), json!(self.first_error[*c as usize].as_ref()?))))
            .collect();
        let mut v = json!({
            "connections": self.connections,
            "established": self.established,
            "failed": failed,
            "failed_total": self.failed_total(),
            "first_errors": errors,
            "dropped": self.dropped,
            "pings_answered": self.pings_answered,
            "processes": self.processes,
            "ramp_secs": self.ramp_secs,
            "connect_rate": self.connect_rate(),
            "latency_us": { "p50": p50, "p99": p99, "max": max },
            "held_secs": self.held_secs,
            "interrupted": self.interrupted,
        });
        if with_latencies {
            v["latencies_us"] = json!(self.latencies_us);
        }
        v
    }

    /// Reads back what [`Report::to_json`] wrote in a worker.
    pub fn from_json(v: &Value) -> Option<Report> {
        let num = |key: &str| v.get(key)?.as_u64();
        let mut r = Report {
            connections: num("connections")?,
            established: num("established")?,
            dropped: num("dropped")?,
            pings_answered: num("pings_answered")?,
            processes: num("processes")?,
            ramp_secs: v.get("ramp_secs")?.as_f64()?,
            held_secs: v.get("held_secs")?.as_f64()?,
            interrupted: v.get("interrupted")?.as_bool()?,
            latencies_us: (v.get("latencies_us")?.as_array()?.iter()).filter_map(Value::as_u64).collect(),
            ..Report::default()
        };
        for c in Cause::ALL {
            r.failed[c as usize] = v.get("failed")?.get(c.name())?.as_u64()?;
            r.first_error[c as usize] =
                (v.get("first_errors")?.get(c.name())).and_then(Value::as_str).map(str::to_string);
        }
        Some(r)
    }

    pub fn to_text(&self, target: &str) -> String {
        let (p50, p99, max) = self.latency_summary();
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
        let causes: Vec<String> =
            Cause::ALL.iter().map(|c| format!("{} {}", c.name(), self.failed[*c as usize])).collect();
        out += &format!("  failed:         {} ({})\n", self.failed_total(), causes.join(", "));
        for c in Cause::ALL {
            if let Some(msg) = &self.first_error[c as usize] {
                out += &format!("    first {}: {}\n", c.name(), msg);
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let r = Report { latencies_us: (1..=100).rev().collect(), ..Report::default() };
        assert_eq!(r.latency_summary(), (50, 99, 100));
        let one = Report { latencies_us: vec![7], ..Report::default() };
        assert_eq!(one.latency_summary(), (7, 7, 7));
    }

    #[test]
    fn json_round_trip_and_merge() {
        let mut a = Report {
            connections: 10,
            established: 8,
            dropped: 1,
            processes: 1,
            ramp_secs: 2.0,
            held_secs: 5.0,
            latencies_us: vec![3, 1, 2],
            ..Report::default()
        };
        a.fail(Cause::Refused, || "refused!".into());
        a.fail(Cause::Refused, || unreachable!());
        a.fail(Cause::FdLimit, || "EMFILE".into());
        let back = Report::from_json(&a.to_json(true)).unwrap();
        assert_eq!(back.failed, [2, 0, 0, 1, 0]);
        assert_eq!(back.first_error[0].as_deref(), Some("refused!"));
        assert_eq!(back.latencies_us, vec![3, 1, 2]);

        let mut total = Report::default();
        total.merge(back.clone());
        total.merge(back);
        assert_eq!(total.established, 16);
        assert_eq!(total.failed_total(), 6);
        assert_eq!(total.ramp_secs, 2.0);
        assert_eq!(total.ready_line(), "READY established=16 failed=6");
        assert_eq!(total.connect_rate(), 8.0);
    }

    #[test]
    fn failures_merge_and_round_trip() {
        let mut a = Failures::default();
        a.fail(Cause::Timeout, || "slow".into());
        let mut b = Failures::default();
        b.fail(Cause::Timeout, || "later".into());
        b.fail(Cause::Other, || "odd".into());
        a.merge(&b);
        assert_eq!(a.counts, [0, 2, 0, 0, 1]);
        assert_eq!(a.first[1].as_deref(), Some("slow"));
        let back = Failures::from_json(&a.counts_json(), &a.first_json()).unwrap();
        assert_eq!(back, a);
        assert!(a.to_text().starts_with("3 (refused 0, timeout 2,"));
    }
}
