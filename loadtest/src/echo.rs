//! The `echo` subcommand: each of K connections keeps exactly one request in flight
//! (hub: `ping` answered by `pong` with the same id; raw: a text frame that
//! `wshub --echo` sends back), so the round-trip rate measures the server's
//! per-message cost and the latency its queueing. One process, one mio loop.

use crate::common_args::CommonArgs;
use crate::conn::{App, Net, NetStats, Outbox};
use crate::failures::ConnectFailed;
use crate::latency::{mono_ns, Latency, Percentiles};
use crate::opts::{self, parse_duration, Progress, Protocol};
use crate::ramp::{Ramp, RampStep};
use crate::track;
use clap::Args;
use serde::Serialize;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct EchoArgs {
    // Each of the `--connections` keeps one request in flight. One process only: the
    // round trips of one loop are what is measured.
    #[command(flatten)]
    pub common: CommonArgs,
    /// How long to measure, once every connection is up (e.g. 10s, 500ms, 2m)
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Bytes per request [default: raw 64; hub: a bare ping, padded with an "x" field
    /// when given]
    #[arg(long)]
    pub size: Option<usize>,
    /// hub: ping/pong of wshub's JSON protocol; raw: text frames echoed (`wshub --echo`)
    #[arg(long, value_enum, default_value_t = Protocol::Hub)]
    pub protocol: Protocol,
}

#[derive(Default, Clone)]
struct Slot {
    /// Id of the request in flight, and when it was sent (CLOCK_MONOTONIC ns).
    seq: u64,
    sent_ns: u64,
}

struct Echo {
    protocol: Protocol,
    size: Option<usize>,
    slots: Vec<Slot>,
    /// Round trips count only while this is set (after the ramp, before the end).
    measuring: bool,
    round_trips: u64,
    latency: Latency,
    bad_replies: u64,
    first_bad_reply: Option<String>,
    frame: String,
}

impl Echo {
    /// The request with id `seq`: what is sent and, in raw mode, what must come back.
    fn build(&mut self, seq: u64) {
        self.frame.clear();
        match self.protocol {
            Protocol::Hub => {
                let _ = write!(self.frame, r#"{{"type":"ping","id":{seq}"#);
                if let Some(size) = self.size {
                    let bare = self.frame.len() + r#","x":""}"#.len();
                    self.frame.push_str(r#","x":""#);
                    self.frame.extend(std::iter::repeat_n('x', size.saturating_sub(bare)));
                    self.frame.push('"');
                }
                self.frame.push('}');
            }
            Protocol::Raw => {
                let _ = write!(self.frame, "{seq} ");
                let size = self.size.unwrap_or(64);
                self.frame.extend(std::iter::repeat_n('x', size.saturating_sub(self.frame.len())));
            }
        }
    }

    fn send(&mut self, idx: usize, out: &mut Outbox<'_>) {
        let seq = self.slots[idx].seq;
        self.build(seq);
        self.slots[idx].sent_ns = mono_ns();
        out.text(self.frame.as_bytes());
    }

    /// Whether `text` answers the request in flight on `idx`.
    fn answers(&mut self, idx: usize, text: &[u8]) -> Option<bool> {
        let seq = self.slots[idx].seq;
        match self.protocol {
            Protocol::Hub => match track::hub_type(text)? {
                b"pong" => Some(track::number_after(text, br#""id":"#) == Some(seq)),
                b"welcome" => None,
                _ => Some(false),
            },
            Protocol::Raw => {
                self.build(seq);
                Some(text == self.frame.as_bytes())
            }
        }
    }
}

impl App for Echo {
    fn opened(&mut self, idx: usize, out: &mut Outbox<'_>) {
        self.send(idx, out);
    }

    fn message(&mut self, idx: usize, text: &[u8], out: &mut Outbox<'_>) {
        match self.answers(idx, text) {
            None => {}
            Some(true) => {
                if self.measuring {
                    self.round_trips += 1;
                    self.latency.record_since(self.slots[idx].sent_ns, mono_ns());
                }
                self.slots[idx].seq += 1;
                self.send(idx, out);
            }
            Some(false) => {
                // Counted, not fatal: the request stays in flight and may still be answered.
                self.bad_replies += 1;
                let shown = String::from_utf8_lossy(&text[..text.len().min(200)]).into_owned();
                self.first_bad_reply.get_or_insert(shown);
            }
        }
    }

    fn ended(&mut self, _idx: usize, _was_open: bool) {}
}

/// The `--json` line. Its keys are what scripts read (`errors`, `round_trips`, ...).
#[derive(Serialize)]
struct EchoSummary<'a> {
    mode: &'static str,
    protocol: &'static str,
    url: &'a str,
    connections: u64,
    established: u64,
    duration_s: f64,
    round_trips: u64,
    round_trips_per_sec: f64,
    latency_us: Percentiles,
    errors: u64,
    bad_replies: u64,
    first_bad_reply: Option<&'a str>,
    dropped: u64,
    first_drop: Option<&'a str>,
    #[serde(flatten)]
    connect_failed: ConnectFailed<'a>,
    interrupted: bool,
}

pub fn main(args: &EchoArgs) -> Result<ExitCode, String> {
    let common = &args.common;
    common.validate()?;
    if args.duration.is_zero() {
        return Err("--duration must be positive".into());
    }
    let n = common.connections;
    let fd_limit = opts::raise_fd_limit();
    let per_process = opts::sockets_per_process(fd_limit);
    if n > per_process || common.processes.is_some_and(|p| p > 1) {
        return Err(format!(
            "echo runs in one process, and the fd limit ({fd_limit}) allows about {per_process} connections"
        ));
    }
    let share = common.shares(1)?.remove(0);

    let tls = common.tls()?;
    let mut net = Net::new(&common.urls, tls.as_ref(), common.handshake_timeout, 0).map_err(|e| e.to_string())?;
    let mut echo = Echo {
        protocol: args.protocol,
        size: args.size,
        slots: vec![Slot::default(); n as usize],
        measuring: false,
        round_trips: 0,
        latency: Latency::default(),
        bad_replies: 0,
        first_bad_reply: None,
        frame: String::new(),
    };
    let mut progress = Progress::new();
    let io_err = |e: std::io::Error| e.to_string();

    // Connect everything first, so the measurement sees all K connections busy.
    let mut ramp = Ramp::new(n, common.connect_rate, common.max_inflight);
    let ramp_deadline =
        Instant::now() + Duration::from_secs_f64(n as f64 / common.connect_rate) + common.handshake_timeout * 2;
    loop {
        let step = ramp.step(&mut net, &mut echo, &share.source_ips);
        if let RampStep::NobodyListening(rest) = step {
            eprintln!(
                "wshub-load: the first connections to {} were all refused; not trying the other {rest}",
                common.url().addr
            );
        }
        if (step != RampStep::Going && net.handshaking() == 0) || opts::stop_requested() {
            break;
        }
        if Instant::now() > ramp_deadline {
            eprintln!("wshub-load: connections still upgrading after the ramp deadline; measuring anyway");
            break;
        }
        progress.show(|| format!("echo: connected {}/{n}", net.stats.established));
        net.poll(&mut echo, Duration::from_millis(if step == RampStep::Going { 1 } else { 20 })).map_err(io_err)?;
    }

    let start = Instant::now();
    let end = start + args.duration;
    echo.measuring = net.stats.established > 0;
    while echo.measuring && !opts::stop_requested() && Instant::now() < end {
        let left = end.saturating_duration_since(Instant::now());
        net.poll(&mut echo, left.min(Duration::from_millis(50))).map_err(io_err)?;
        progress.show(|| format!("echo: {} round trips", echo.round_trips));
    }
    echo.measuring = false;
    let secs = start.elapsed().as_secs_f64();
    progress.clear();
    net.close_all();

    let stats = &net.stats;
    let errors = stats.failures.total() + stats.dropped + echo.bad_replies;
    let rate = if secs > 0.0 { echo.round_trips as f64 / secs } else { 0.0 };
    if common.json {
        let summary = EchoSummary {
            mode: "echo",
            protocol: args.protocol.name(),
            url: &common.urls_text(),
            connections: n,
            established: stats.established,
            duration_s: (secs * 1000.0).round() / 1000.0,
            round_trips: echo.round_trips,
            round_trips_per_sec: rate.round(),
            latency_us: echo.latency.percentiles(),
            errors,
            bad_replies: echo.bad_replies,
            first_bad_reply: echo.first_bad_reply.as_deref(),
            dropped: stats.dropped,
            first_drop: stats.first_drop.as_deref(),
            connect_failed: stats.failures.connect_failed(),
            interrupted: opts::stop_requested(),
        };
        opts::emit_line(&serde_json::to_string(&summary).expect("summaries serialize"));
    } else {
        opts::emit_line(text_summary(args, stats, &echo, secs, rate, errors).trim_end());
    }
    if stats.established == 0 {
        common.nothing_connected("connection", "could be established", &stats.failures);
    }
    Ok(if errors == 0 && echo.round_trips > 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn text_summary(args: &EchoArgs, stats: &NetStats, echo: &Echo, secs: f64, rate: f64, errors: u64) -> String {
    let mut out = format!(
        "echo summary: {} connections to {} ({} protocol), {:.2} s\n",
        args.common.connections,
        args.common.urls_text(),
        args.protocol.name(),
        secs
    );
    out += &format!("  established:    {} (dropped by server: {})\n", stats.established, stats.dropped);
    if let Some(why) = &stats.first_drop {
        out += &format!("    first drop: {why}\n");
    }
    out += &format!("  connect failed: {}", stats.failures.to_text());
    out += &format!("  round trips:    {} ({:.0}/s)\n", echo.round_trips, rate);
    out += &format!("  latency:        {}\n", echo.latency.percentiles().to_text());
    out += &format!("  errors:         {} (bad replies: {})\n", errors, echo.bad_replies);
    if let Some(reply) = &echo.first_bad_reply {
        out += &format!("    first bad reply: {reply}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo(protocol: Protocol, size: Option<usize>) -> Echo {
        Echo {
            protocol,
            size,
            slots: vec![Slot { seq: 7, sent_ns: 0 }],
            measuring: true,
            round_trips: 0,
            latency: Latency::default(),
            bad_replies: 0,
            first_bad_reply: None,
            frame: String::new(),
        }
    }

    #[test]
    fn hub_requests_and_answers() {
        let mut e = echo(Protocol::Hub, None);
        e.build(7);
        assert_eq!(e.frame, r#"{"type":"ping","id":7}"#);
        assert_eq!(e.answers(0, br#"{"type":"pong","id":7}"#), Some(true));
        assert_eq!(e.answers(0, br#"{"type":"pong","id":6}"#), Some(false));
        assert_eq!(e.answers(0, br#"{"type":"welcome","conn":1,"user":"1"}"#), None);
        assert_eq!(e.answers(0, br#"{"type":"error","code":"bad_json"}"#), Some(false));
        let mut padded = echo(Protocol::Hub, Some(64));
        padded.build(7);
        assert_eq!(padded.frame.len(), 64);
        let v: serde_json::Value = serde_json::from_str(&padded.frame).unwrap();
        assert_eq!((v["type"].as_str(), v["id"].as_u64()), (Some("ping"), Some(7)));
    }

    #[test]
    fn raw_requests_must_come_back_unchanged() {
        let mut e = echo(Protocol::Raw, Some(20));
        e.build(7);
        assert_eq!(e.frame, "7 xxxxxxxxxxxxxxxxxx");
        let sent = e.frame.clone();
        assert_eq!(e.answers(0, sent.as_bytes()), Some(true));
        assert_eq!(e.answers(0, b"7 xxx"), Some(false));
        assert_eq!(e.answers(0, b"8 xxxxxxxxxxxxxxxxxx"), Some(false));
    }
}
