//! One process's share of `hold`: opens connections at a fixed rate, upgrades them, then
//! keeps them idle (answering the server's pings) until the hold period ends.
//!
//! The connections are `conn::Net`'s, like every mode's: one mio poll loop, no thread or
//! task per connection. What `hold` adds is the schedule (ramp, `READY`, hold, close) and
//! its report.

use crate::conn::{App, Net, Outbox, REFUSED_ABORT_AFTER};
use crate::failures::Cause;
use crate::hold_report::{ready_line, HoldReport};
use crate::opts::{self, WsUrl};
use crate::procs;
use crate::ramp::{Ramp, RampStep};
use crate::tls::TlsClient;
use crate::workers::WorkerMessage;
use std::io;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct HoldConfig {
    pub urls: Vec<WsUrl>,
    /// wss://: the TLS client settings.
    pub tls: Option<TlsClient>,
    pub connections: u64,
    /// New connections per second (this process's share).
    pub connect_rate: f64,
    /// How long to keep the connections once all are up. For a worker this is only a
    /// safety cap: the parent ends the hold through stdin so all workers end together.
    pub duration: Duration,
    /// Round-robin source addresses; empty lets the kernel choose.
    pub source_ips: Vec<Ipv4Addr>,
    pub handshake_timeout: Duration,
    pub max_inflight: usize,
    /// Running as one of several processes under a parent `hold`.
    pub worker: bool,
    pub seed: u64,
    /// Each connection its own user.
    pub user: bool,
    /// Subscriptions per connection, made right after the upgrade.
    pub topics: u32,
}

/// Idle connections: after the upgrade each subscribes to its topics (if any), then sends
/// nothing; what arrives (pings) `Net` answers itself.
#[derive(Default)]
struct Idle {
    /// Subscriptions per connection.
    topics: u32,
    /// Names this process's own topics apart from other processes'.
    process: u64,
    /// Acknowledged subscriptions, by connection index.
    acked: Vec<u32>,
    /// Connections with every subscription acknowledged and still open.
    subscribed: u64,
    /// The first refusal the server sent, if any.
    first_error: Option<String>,
}

impl Idle {
    fn topic(&self, idx: usize, k: u32) -> String {
        if k == 0 {
            "global".to_string()
        } else {
            format!("room.{}x{idx}.{k}", self.process)
        }
    }
}

impl App for Idle {
    fn opened(&mut self, idx: usize, out: &mut Outbox<'_>) {
        for k in 0..self.topics {
            let topic = self.topic(idx, k);
            out.text(format!(r#"{{"type":"subscribe","topic":"{topic}","id":{k}}}"#).as_bytes());
        }
    }

    fn message(&mut self, idx: usize, text: &[u8], _out: &mut Outbox<'_>) {
        if self.topics == 0 {
            return;
        }
        let text = String::from_utf8_lossy(text);
        if text.contains(r#""type":"ack""#) {
            if self.acked.len() <= idx {
                self.acked.resize(idx + 1, 0);
            }
            self.acked[idx] += 1;
            if self.acked[idx] == self.topics {
                self.subscribed += 1;
            }
        } else if text.contains(r#""type":"error""#) && self.first_error.is_none() {
            self.first_error = Some(text.into_owned());
        }
    }

    fn ended(&mut self, idx: usize, was_open: bool) {
        if was_open && self.topics > 0 && self.acked.get(idx) == Some(&self.topics) {
            self.subscribed -= 1;
        }
    }
}

/// Runs the whole hold in this process: ramp, `READY`, hold, close.
pub fn run(cfg: &HoldConfig) -> io::Result<HoldReport> {
    let mut net = Net::new(&cfg.urls, cfg.tls.as_ref(), cfg.handshake_timeout, cfg.seed)?;
    if cfg.user {
        net.set_user_prefix(format!("u{}x", cfg.seed));
    }
    let mut app = Idle { topics: cfg.topics, process: cfg.seed, ..Idle::default() };
    // The parent ends a worker's hold through its stdin.
    let control_stop = if cfg.worker { procs::stop_flag_from_stdin() } else { Arc::new(AtomicBool::new(false)) };
    let should_stop = || control_stop.load(Ordering::SeqCst) || opts::stop_requested();
    let mut report = HoldReport { connections: cfg.connections, processes: 1, ..HoldReport::default() };

    let ramp_started = Instant::now();
    ramp(cfg, &mut net, &mut app, &should_stop)?;
    if cfg.topics > 0 {
        await_acks(cfg, &mut net, &mut app, &should_stop)?;
    }
    report.ramp_secs = ramp_started.elapsed().as_secs_f64();
    fill(&mut report, &net);
    if cfg.topics > 0 {
        // Ready means upgraded and subscribed: a connection whose subscriptions were not
        // all acknowledged counts as failed.
        let unsubscribed = report.established - app.subscribed;
        if unsubscribed > 0 {
            let why = app.first_error.as_deref().unwrap_or("no ack in time");
            eprintln!("wshub-load: {unsubscribed} connection(s) not subscribed to all {} topics: {why}", cfg.topics);
            report.failures.fail(Cause::Other, || format!("subscriptions not acknowledged: {why}"));
            report.failures.counts[Cause::Other as usize] += unsubscribed - 1;
        }
        report.established = app.subscribed;
    }
    if cfg.worker {
        WorkerMessage::<()>::Ready { connected: report.established, failed: report.failures.total() }.send();
    } else {
        opts::emit_line(&ready_line(report.established, report.failures.total()));
    }

    if report.established > 0 && !should_stop() {
        let hold_started = Instant::now();
        let end = hold_started + cfg.duration;
        while !should_stop() {
            let now = Instant::now();
            if now >= end {
                break;
            }
            // Short enough that a signal is noticed promptly.
            net.poll(&mut app, (end - now).min(Duration::from_millis(100)))?;
        }
        report.held_secs = hold_started.elapsed().as_secs_f64();
    }
    // A polite goodbye to each open connection, so the server logs normal closures.
    net.close_all();
    fill(&mut report, &net);
    report.interrupted = opts::stop_requested();
    Ok(report)
}

/// Opens every connection (or gives up on those that cannot open in time).
fn ramp(cfg: &HoldConfig, net: &mut Net, app: &mut Idle, should_stop: &impl Fn() -> bool) -> io::Result<()> {
    let n = cfg.connections;
    let mut ramp = Ramp::new(n, cfg.connect_rate, cfg.max_inflight);
    // Every attempt ends by its own handshake timeout; this is the backstop.
    let deadline = Instant::now() + ramp_bound(n, cfg.connect_rate, cfg.handshake_timeout);
    loop {
        if should_stop() {
            net.fail_handshaking(app, Cause::Other, "run stopped during the handshake");
            return Ok(());
        }
        let step = ramp.step(net, app, &cfg.source_ips);
        match step {
            RampStep::NobodyListening(rest) => {
                eprintln!(
                    "wshub-load: the first {REFUSED_ABORT_AFTER} connections to {} were all refused; \
                     is the server listening there? Not trying the other {rest}.",
                    cfg.urls[0].addr
                );
                return Ok(());
            }
            RampStep::Started if net.handshaking() == 0 => return Ok(()),
            _ => {}
        }
        if Instant::now() > deadline {
            net.fail_handshaking(app, Cause::Timeout, "ramp deadline passed during the handshake");
            return Ok(());
        }
        // While ramping, wake often enough to keep the rate smooth.
        let wait = if step == RampStep::Going { 1 } else { 50 };
        net.poll(app, Duration::from_millis(wait))?;
    }
}

/// Waits (at most a handshake timeout) until every open connection's subscriptions are
/// acknowledged.
fn await_acks(cfg: &HoldConfig, net: &mut Net, app: &mut Idle, should_stop: &impl Fn() -> bool) -> io::Result<()> {
    let deadline = Instant::now() + cfg.handshake_timeout;
    while app.subscribed < net.stats.established - net.stats.dropped && !should_stop() && Instant::now() < deadline {
        net.poll(app, Duration::from_millis(10))?;
    }
    Ok(())
}

/// Worst case for one ramp: the last connect starts at N/rate and may take a full
/// handshake timeout; plus slack for a loaded machine.
pub fn ramp_bound(connections: u64, connect_rate: f64, handshake_timeout: Duration) -> Duration {
    Duration::from_secs_f64(connections as f64 / connect_rate) + handshake_timeout + Duration::from_secs(30)
}

/// Copies the connections' counters into the report.
fn fill(report: &mut HoldReport, net: &Net) {
    let stats = &net.stats;
    report.established = stats.established;
    report.failures.clone_from(&stats.failures);
    report.dropped = stats.dropped;
    report.pings_answered = stats.pings_answered;
    report.latencies_us.clone_from(&stats.connect_latencies_us);
}
