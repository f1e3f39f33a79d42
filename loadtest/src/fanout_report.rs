//! What a `fanout` run measured: one [`FanoutReport`] for a single process, for each
//! worker (sent to the parent as JSON, histogram included) and for the parent's sum,
//! shown as text or as the [`FanoutSummary`] JSON line.

use crate::failures::{Cause, ConnectFailed, Failures};
use crate::latency::{Latency, Percentiles};
use crate::server_probe::ServerStats;
use crate::workers::WorkerReport;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct FanoutReport {
    /// Subscriber connections asked for, and how many got their subscription going.
    pub subscribers: u64,
    pub subscribed: u64,
    /// Publisher connections opened here, and how many ended before finishing.
    pub publishers: u64,
    pub publishers_failed: u64,
    pub sent: u64,
    /// `error` frames answering a publish, and the first one.
    pub publish_errors: u64,
    pub first_publish_error: Option<String>,
    /// Distinct (publisher, sequence) deliveries, summed over subscribers.
    pub received: u64,
    pub duplicates: u64,
    /// Deliveries that arrived after a later message of the same publisher.
    pub out_of_order: u64,
    /// Deliveries that could not be read, or named a publisher or sequence out of range.
    pub invalid: u64,
    /// Subscribed connections the server closed, and why the first one was.
    pub dropped: u64,
    pub first_drop: Option<String>,
    /// Connections that never got going (publishers and subscribers), by cause.
    pub failures: Failures,
    /// CLOCK_MONOTONIC nanoseconds; 0 while nothing happened.
    pub first_send_ns: u64,
    pub last_send_ns: u64,
    pub last_recv_ns: u64,
    /// Send to receive, per delivery.
    pub latency: Latency,
    pub processes: u64,
    pub timed_out: bool,
    pub interrupted: bool,
    /// The server's memory and CPU while publishing (`--server-pid`; the parent's only).
    #[serde(default)]
    pub server: Option<ServerStats>,
}

/// Folds a time into a running minimum where 0 means "none yet".
fn min_time(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, t) | (t, 0) => t,
        (a, b) => a.min(b),
    }
}

impl WorkerReport for FanoutReport {
    fn worker_lost(subscribers: u64, why: String) -> FanoutReport {
        // Its messages count as lost too: the expected total already implies that.
        FanoutReport { subscribers, failures: Failures::all(Cause::Other, subscribers, why), ..Default::default() }
    }

    fn merge(&mut self, o: FanoutReport) {
        self.subscribers += o.subscribers;
        self.subscribed += o.subscribed;
        self.publishers += o.publishers;
        self.publishers_failed += o.publishers_failed;
        self.sent += o.sent;
        self.publish_errors += o.publish_errors;
        self.first_publish_error = self.first_publish_error.take().or(o.first_publish_error);
        self.received += o.received;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.invalid += o.invalid;
        self.dropped += o.dropped;
        self.first_drop = self.first_drop.take().or(o.first_drop);
        self.failures.merge(o.failures);
        self.first_send_ns = min_time(self.first_send_ns, o.first_send_ns);
        self.last_send_ns = self.last_send_ns.max(o.last_send_ns);
        self.last_recv_ns = self.last_recv_ns.max(o.last_recv_ns);
        self.latency.merge(&o.latency);
        self.timed_out |= o.timed_out;
        self.interrupted |= o.interrupted;
        self.server = self.server.take().or(o.server);
    }
}

impl FanoutReport {
    /// First send to last receive: the span over which messages were delivered.
    pub fn elapsed_s(&self) -> f64 {
        if self.first_send_ns == 0 || self.last_recv_ns <= self.first_send_ns {
            return 0.0;
        }
        (self.last_recv_ns - self.first_send_ns) as f64 / 1e9
    }

    pub fn delivered_per_sec(&self) -> f64 {
        let secs = self.elapsed_s();
        if secs > 0.0 {
            self.received as f64 / secs
        } else {
            0.0
        }
    }
}

/// The `--json` line. Its keys are what scripts read (`received`, `expected`, `lost`,
/// `latency_us`, `delivered_per_sec`, ...).
#[derive(Serialize)]
pub struct FanoutSummary<'a> {
    mode: &'static str,
    protocol: &'a str,
    url: &'a str,
    topic: &'a str,
    subscribers: u64,
    subscribed: u64,
    publishers: u64,
    publishers_failed: u64,
    messages: u64,
    size: usize,
    expected: u64,
    sent: u64,
    received: u64,
    lost: u64,
    duplicates: u64,
    out_of_order: u64,
    invalid: u64,
    subscribers_dropped: u64,
    first_drop: Option<&'a str>,
    publish_errors: u64,
    first_publish_error: Option<&'a str>,
    elapsed_s: f64,
    delivered_per_sec: f64,
    latency_us: Percentiles,
    #[serde(flatten)]
    connect_failed: ConnectFailed<'a>,
    processes: u64,
    timed_out: bool,
    interrupted: bool,
    /// With `--server-pid`: the server's peak RSS and CPU while publishing. Not called
    /// `server`, which scripts use for the server's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    server_proc: Option<&'a ServerStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_user_ns_per_delivery: Option<f64>,
}

/// The run as asked for: what the totals are measured against.
pub struct Plan<'a> {
    pub url: &'a str,
    pub protocol: &'a str,
    pub topic: &'a str,
    pub subscribers: u64,
    pub publishers: u64,
    pub messages: u64,
    pub size: usize,
}

impl Plan<'_> {
    /// Every subscriber should get every message of every publisher.
    pub fn expected(&self) -> u64 {
        self.subscribers * self.publishers * self.messages
    }
}

impl FanoutReport {
    pub fn lost(&self, plan: &Plan) -> u64 {
        plan.expected().saturating_sub(self.received)
    }

    /// The final line of `--json`.
    pub fn summary<'a>(&'a self, plan: &Plan<'a>) -> FanoutSummary<'a> {
        FanoutSummary {
            mode: "fanout",
            protocol: plan.protocol,
            url: plan.url,
            topic: plan.topic,
            subscribers: plan.subscribers,
            subscribed: self.subscribed,
            publishers: plan.publishers,
            publishers_failed: self.publishers_failed,
            messages: plan.messages,
            size: plan.size,
            expected: plan.expected(),
            sent: self.sent,
            received: self.received,
            lost: self.lost(plan),
            duplicates: self.duplicates,
            out_of_order: self.out_of_order,
            invalid: self.invalid,
            subscribers_dropped: self.dropped,
            first_drop: self.first_drop.as_deref(),
            publish_errors: self.publish_errors,
            first_publish_error: self.first_publish_error.as_deref(),
            elapsed_s: (self.elapsed_s() * 1000.0).round() / 1000.0,
            delivered_per_sec: self.delivered_per_sec().round(),
            latency_us: self.latency.percentiles(),
            connect_failed: self.failures.connect_failed(),
            processes: self.processes,
            timed_out: self.timed_out,
            interrupted: self.interrupted,
            server_proc: self.server.as_ref(),
            server_user_ns_per_delivery: self.server.as_ref().and_then(|s| s.user_ns_per_delivery(self.received)),
        }
    }

    pub fn summary_text(&self, plan: &Plan) -> String {
        let mut out = format!(
            "fanout summary: {} subscribers x {} publishers x {} messages of {} B to {} ({} protocol, {} process(es)){}{}\n",
            plan.subscribers,
            plan.publishers,
            plan.messages,
            plan.size,
            plan.url,
            plan.protocol,
            self.processes,
            if self.timed_out { " TIMED OUT" } else { "" },
            if self.interrupted { " (stopped early by signal)" } else { "" },
        );
        out += &format!("  subscribed:     {} (dropped by server later: {})\n", self.subscribed, self.dropped);
        if let Some(why) = &self.first_drop {
            out += &format!("    first drop: {why}\n");
        }
        out += &format!("  connect failed: {}", self.failures.to_text());
        out += &format!("  sent:           {} (publish errors: {})\n", self.sent, self.publish_errors);
        if let Some(why) = &self.first_publish_error {
            out += &format!("    first publish error: {why}\n");
        }
        out += &format!(
            "  received:       {} of {} expected, lost {}, duplicates {}, out of order {}, invalid {}\n",
            self.received,
            plan.expected(),
            self.lost(plan),
            self.duplicates,
            self.out_of_order,
            self.invalid
        );
        out += &format!(
            "  delivered:      {:.0} msg/s over {:.3} s (first send to last receive)\n",
            self.delivered_per_sec(),
            self.elapsed_s()
        );
        out += &format!("  latency:        {}\n", self.latency.percentiles().to_text());
        if let Some(server) = &self.server {
            out += &format!("  server:         {}\n", server.to_text(self.received));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan<'static> {
        Plan {
            url: "ws://127.0.0.1:1/",
            protocol: "hub",
            topic: "b",
            subscribers: 4,
            publishers: 2,
            messages: 10,
            size: 64,
        }
    }

    #[test]
    fn worker_reports_round_trip_and_merge() {
        let mut a =
            FanoutReport { subscribers: 2, subscribed: 2, received: 40, first_send_ns: 0, ..Default::default() };
        a.last_recv_ns = 3_000_000_000;
        a.latency.record_us(100);
        a.failures.fail(Cause::Refused, || "no".into());
        let mut b = FanoutReport { subscribers: 2, subscribed: 1, received: 19, duplicates: 1, ..Default::default() };
        b.publishers = 2;
        b.sent = 20;
        b.first_send_ns = 1_000_000_000;
        b.last_recv_ns = 2_000_000_000;
        b.latency.record_us(300);

        let mut total = FanoutReport::default();
        for r in [&a, &b] {
            total.merge(serde_json::from_str(&serde_json::to_string(r).unwrap()).unwrap());
        }
        assert_eq!((total.subscribers, total.subscribed, total.received, total.duplicates), (4, 3, 59, 1));
        assert_eq!(total.first_send_ns, 1_000_000_000, "0 means no send, not the earliest");
        assert_eq!(total.elapsed_s(), 2.0);
        assert_eq!(total.delivered_per_sec(), 29.5);
        assert_eq!(total.latency.count(), 2);

        let plan = plan();
        assert_eq!(plan.expected(), 80);
        let s = serde_json::to_value(total.summary(&plan)).unwrap();
        assert_eq!(s["lost"], 21);
        assert_eq!(s["connect_failed"]["refused"], 1);
        assert_eq!(s["latency_us"]["max"], 300);
        assert!(total.summary_text(&plan).contains("lost 21"));
        assert!(s.get("server_proc").is_none(), "no --server-pid, no server figures");

        // The parent's server figures survive a merge with reports that have none.
        let mut parent = FanoutReport {
            server: Some(ServerStats {
                pid: 7,
                user_cpu_ms: Some(5.9),
                peak_rss_kib: Some(2048),
                ..Default::default()
            }),
            ..Default::default()
        };
        parent.merge(total);
        let s = serde_json::to_value(parent.summary(&plan)).unwrap();
        assert_eq!(s["server_proc"]["peak_rss_kib"], 2048);
        assert_eq!(s["server_user_ns_per_delivery"], 100_000.0, "5.9 ms over 59 deliveries");
        assert!(parent.summary_text(&plan).contains("peak RSS 2.0 MiB"));
    }

    #[test]
    fn nothing_sent_means_no_rate() {
        let r = FanoutReport { received: 5, last_recv_ns: 10, ..Default::default() };
        assert_eq!(r.elapsed_s(), 0.0);
        assert_eq!(r.delivered_per_sec(), 0.0);
    }
}
