//! One process's part of `fanout`: subscribers first (connected, and in hub mode
//! subscribed), then publishers sending numbered, timestamped messages, until every
//! subscriber here has everything or time runs out.
//!
//! Connection indexes: subscribers are `0..subscribers`, publishers follow. A worker
//! process has only subscribers; with one process, the same loop does both.

use crate::conn::{App, Net, Outbox};
use crate::failures::Cause;
use crate::fanout_report::FanoutReport;
use crate::latency::mono_ns;
use crate::opts::{self, Protocol, WsUrl};
use crate::ramp::{Ramp, RampStep};
use crate::server_probe::ServerProbe;
use crate::tls::TlsClient;
use crate::track::{self, Publisher, Sample, Seen, SeqTrack};
use std::collections::VecDeque;
use std::io;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// After the last publisher has finished (or failed) while another failed, how long
/// deliveries still in flight get before the run ends without waiting for the timeout.
const SETTLE_AFTER_PUBLISHER_FAILURE: Duration = Duration::from_secs(2);

/// Bytes a publisher may have queued unsent before it waits for the socket.
const MAX_UNSENT: usize = 256 * 1024;

#[derive(Debug, Clone)]
pub struct FanoutConfig {
    pub urls: Vec<WsUrl>,
    /// wss://: the TLS client settings.
    pub tls: Option<TlsClient>,
    pub protocol: Protocol,
    pub topic: String,
    /// Hub: publishers broadcast (subscribers still subscribe to `topic`, to know they are in).
    pub broadcast: bool,
    /// Subscriber connections in this process.
    pub subscribers: u64,
    /// Publisher connections in this process (0 in a worker).
    pub publishers: u64,
    /// Publishers in the whole run: what each subscriber expects messages from.
    pub total_publishers: u64,
    pub messages: u64,
    pub size: usize,
    /// Messages per second over this process's publishers; None: as fast as the window allows.
    pub rate: Option<f64>,
    /// Messages per publisher in flight: hub, not yet acknowledged; raw, not yet back on
    /// the publisher's own connection. None: no window (raw by default).
    pub window: Option<u64>,
    pub connect_rate: f64,
    pub max_inflight: usize,
    pub handshake_timeout: Duration,
    /// Round-robin source addresses for subscribers; empty lets the kernel choose.
    pub source_ips: Vec<Ipv4Addr>,
    /// How long to wait, once every subscriber is in, before the publishers start.
    pub settle: Duration,
    /// The whole run ends by then, complete or not.
    pub deadline: Instant,
    pub seed: u64,
    /// Set when a parent tells this worker to stop.
    pub stop: Arc<AtomicBool>,
    /// The server's process, whose memory and CPU are read over publishing (the parent
    /// or only process; workers get None).
    pub server_pid: Option<u32>,
}

/// What lies outside this process's loop: nothing (one process), the parent (in a
/// worker), or the workers (in a parent).
pub trait Side {
    /// Every subscriber here has subscribed or failed. Returns false to skip publishing.
    fn ready(&mut self, subscribed: u64, failed: u64) -> bool;
    /// Called every turn of the loop with this process's numbers; true once nothing
    /// outside this process is still receiving.
    fn tick(&mut self, report: &FanoutReport, subscribing: bool) -> bool;
    /// The run is ending early: tell whoever else runs.
    fn stop_others(&mut self);
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum SubState {
    Waiting,
    Subscribing,
    Ready,
    Gone,
}

struct Sub {
    state: SubState,
    /// Distinct messages received.
    got: u64,
    /// Per publisher; allocated at the first delivery.
    tracks: Vec<SeqTrack>,
}

#[derive(Default)]
struct Pub {
    open: bool,
    gone: bool,
    sent: u64,
    /// Publishes answered by an ack or an error (hub protocol), or its own messages
    /// relayed back to it (raw protocol).
    answered: u64,
}

struct Fanout<'a> {
    cfg: &'a FanoutConfig,
    subs: Vec<Sub>,
    pubs: Vec<Pub>,
    /// Messages each subscriber should get.
    per_sub: u64,
    subscribe_frame: Vec<u8>,
    publisher: Publisher,
    /// The frame being built, reused.
    frame: String,
    /// Subscribe deadlines, in order.
    sub_deadlines: VecDeque<(Instant, usize)>,
    /// Subscribers to close after a refused subscribe (done outside the callback).
    to_close: Vec<usize>,
    subscribing: u64,
    /// Subscribers that became ready and then either got everything or went away.
    settled: u64,
    report: FanoutReport,
}

pub fn run(cfg: &FanoutConfig, side: &mut dyn Side) -> io::Result<FanoutReport> {
    let mut net = Net::new(&cfg.urls, cfg.tls.as_ref(), cfg.handshake_timeout, cfg.seed)?;
    let subscribe = format!(r#"{{"type":"subscribe","topic":{},"id":1}}"#, serde_json::to_string(&cfg.topic)?);
    let mut fan = Fanout {
        cfg,
        subs: (0..cfg.subscribers).map(|_| Sub { state: SubState::Waiting, got: 0, tracks: Vec::new() }).collect(),
        pubs: (0..cfg.publishers).map(|_| Pub::default()).collect(),
        per_sub: cfg.total_publishers * cfg.messages,
        subscribe_frame: subscribe.into_bytes(),
        publisher: if cfg.broadcast { Publisher::broadcasting(cfg.size) } else { Publisher::new(&cfg.topic, cfg.size) },
        frame: String::new(),
        sub_deadlines: VecDeque::new(),
        to_close: Vec::new(),
        subscribing: 0,
        settled: 0,
        report: FanoutReport { subscribers: cfg.subscribers, publishers: cfg.publishers, ..Default::default() },
    };
    let stopped = || opts::stop_requested() || cfg.stop.load(Ordering::SeqCst);

    // Phase 1: subscribers.
    let mut ramp = Ramp::new(cfg.subscribers, cfg.connect_rate, cfg.max_inflight);
    let mut started = false;
    let (mut ended_early, mut timed_out) = (false, false);
    loop {
        if stopped() || Instant::now() > cfg.deadline {
            (ended_early, timed_out) = (true, !stopped());
            break;
        }
        if !started {
            match ramp.step(&mut net, &mut fan, &cfg.source_ips) {
                RampStep::Going => {}
                RampStep::Started => started = true,
                RampStep::NobodyListening(rest) => {
                    eprintln!(
                        "wshub-load: the first connections to {} were all refused; is the server listening \
                         there? Not trying the other {rest}.",
                        cfg.urls[0].addr,
                    );
                    started = true;
                }
            }
        }
        fan.close_refused(&mut net);
        fan.expire_subscribes(&mut net, Instant::now());
        if started && net.handshaking() == 0 && fan.subscribing == 0 {
            break;
        }
        side.tick(&fan.report, true);
        net.poll(&mut fan, Duration::from_millis(if started { 20 } else { 1 }))?;
    }

    // Phase 2: publishers, then deliveries until everyone here (and elsewhere) is done.
    let failed = fan.report.failures.total() + net.stats.failures.total();
    let proceed = !ended_early && side.ready(fan.report.subscribed, failed) && !stopped();
    if !proceed {
        // Nobody subscribed, or the parent gave up waiting for its workers.
        (ended_early, timed_out) = (true, Instant::now() > cfg.deadline);
    } else {
        if cfg.publishers > 0 {
            let settled = Instant::now() + cfg.settle;
            while Instant::now() < settled && !stopped() {
                side.tick(&fan.report, true);
                net.poll(&mut fan, settled.saturating_duration_since(Instant::now()).min(Duration::from_millis(20)))?;
            }
        }
        let mut ramp = Ramp::new(cfg.publishers, cfg.connect_rate, cfg.max_inflight).first_target_only();
        let mut settle_from = None;
        let probe = cfg.server_pid.map(ServerProbe::start);
        let publish_start = Instant::now();
        loop {
            let now = Instant::now();
            if stopped() || now > cfg.deadline {
                (ended_early, timed_out) = (true, !stopped());
                break;
            }
            let all_started = ramp.step(&mut net, &mut fan, &[]) != RampStep::Going;
            fan.pump(&mut net, publish_start);
            let others_done = side.tick(&fan.report, false);
            let publishing_done = all_started && net.handshaking() == 0 && fan.publishers_done(&net);
            if publishing_done && fan.local_done() && others_done {
                break;
            }
            if publishing_done && fan.pubs.iter().any(|p| p.gone) {
                // Some messages will never come: give the rest a moment, then stop.
                if now - *settle_from.get_or_insert(now) > SETTLE_AFTER_PUBLISHER_FAILURE {
                    side.stop_others();
                    break;
                }
            }
            net.poll(&mut fan, Duration::from_millis(if publishing_done { 10 } else { 1 }))?;
        }
        fan.report.server = probe.map(ServerProbe::finish);
    }
    if ended_early {
        side.stop_others();
    }
    net.close_all();

    let mut report = fan.report;
    report.failures.merge(std::mem::take(&mut net.stats.failures));
    report.publishers_failed = fan.pubs.iter().filter(|p| p.gone).count() as u64;
    report.timed_out = timed_out;
    if report.dropped > 0 {
        report.first_drop = net.stats.first_drop.take();
    }
    report.interrupted = opts::stop_requested();
    report.processes = 1;
    Ok(report)
}

impl Fanout<'_> {
    fn publisher(&self, idx: usize) -> Option<usize> {
        idx.checked_sub(self.subs.len())
    }

    /// Every subscriber here that subscribed has everything or is gone.
    fn local_done(&self) -> bool {
        self.settled >= self.report.subscribed
    }

    fn publishers_done(&self, net: &Net) -> bool {
        let base = self.subs.len();
        self.pubs.iter().enumerate().all(|(i, p)| {
            p.gone
                || match self.cfg.protocol {
                    Protocol::Hub => p.answered >= self.cfg.messages,
                    Protocol::Raw => p.sent >= self.cfg.messages && net.unsent(base + i) == 0,
                }
        })
    }

    /// Sends what each publisher may send now: bounded by the rate, the window and
    /// the socket's backlog.
    fn pump(&mut self, net: &mut Net, start: Instant) {
        let cfg = self.cfg;
        let per_pub_rate = cfg.rate.map(|r| r / cfg.publishers.max(1) as f64);
        let allowed = per_pub_rate.map_or(cfg.messages, |r| (start.elapsed().as_secs_f64() * r) as u64 + 1);
        for i in 0..self.pubs.len() {
            let idx = self.subs.len() + i;
            let mut queued = false;
            loop {
                let p = &self.pubs[i];
                let windowed = cfg.window.is_some_and(|w| p.sent - p.answered >= w);
                if !p.open || p.gone || p.sent >= cfg.messages.min(allowed) || windowed || net.unsent(idx) > MAX_UNSENT
                {
                    break;
                }
                let t = mono_ns();
                let sample = Sample { t, p: i as u64, s: p.sent };
                match cfg.protocol {
                    Protocol::Hub => self.publisher.hub(&mut self.frame, sample),
                    Protocol::Raw => self.publisher.raw(&mut self.frame, sample),
                }
                net.queue(idx, self.frame.as_bytes());
                self.pubs[i].sent += 1;
                self.report.sent += 1;
                if self.report.first_send_ns == 0 {
                    self.report.first_send_ns = t;
                }
                self.report.last_send_ns = t;
                queued = true;
            }
            if queued {
                net.flush(self, idx);
            }
        }
    }

    fn close_refused(&mut self, net: &mut Net) {
        for idx in std::mem::take(&mut self.to_close) {
            net.close(idx);
        }
    }

    fn expire_subscribes(&mut self, net: &mut Net, now: Instant) {
        while let Some(&(deadline, idx)) = self.sub_deadlines.front() {
            if deadline > now {
                break;
            }
            self.sub_deadlines.pop_front();
            if self.subs[idx].state == SubState::Subscribing {
                self.subs[idx].state = SubState::Gone;
                self.subscribing -= 1;
                let limit = self.cfg.handshake_timeout;
                self.report.failures.fail(Cause::Timeout, || {
                    format!("no ack to subscribe within {limit:?} (a relay or echo server needs --protocol raw)")
                });
                net.close(idx);
            }
        }
    }

    fn subscribed(&mut self, idx: usize) {
        self.subs[idx].state = SubState::Ready;
        self.report.subscribed += 1;
        if self.subs[idx].got >= self.per_sub {
            self.settled += 1; // nothing to wait for (no messages asked for)
        }
    }

    fn on_subscriber_message(&mut self, idx: usize, text: &[u8]) {
        let now = mono_ns();
        match self.cfg.protocol {
            Protocol::Raw => match track::raw_sample(text) {
                Some(sample) => self.deliver(idx, sample, now),
                None => self.report.invalid += 1,
            },
            Protocol::Hub => match track::hub_type(text) {
                Some(b"message" | b"batch") => {
                    let malformed = track::hub_samples(text, |s| self.deliver(idx, s, now));
                    self.report.invalid += malformed;
                }
                Some(b"ack") if self.subs[idx].state == SubState::Subscribing => {
                    self.subscribing -= 1;
                    self.subscribed(idx);
                }
                Some(b"error") if self.subs[idx].state == SubState::Subscribing => {
                    self.subscribing -= 1;
                    self.subs[idx].state = SubState::Gone;
                    let text = String::from_utf8_lossy(text);
                    self.report.failures.fail(Cause::Other, || format!("subscribe refused: {text}"));
                    self.to_close.push(idx);
                }
                _ => {} // welcome, and anything else a subscriber does not need
            },
        }
    }

    fn deliver(&mut self, idx: usize, sample: Sample, now: u64) {
        let (p_count, m) = (self.cfg.total_publishers, self.cfg.messages);
        if sample.p >= p_count || sample.s >= m {
            self.report.invalid += 1;
            return;
        }
        let sub = &mut self.subs[idx];
        if sub.tracks.is_empty() {
            sub.tracks = vec![SeqTrack::default(); p_count as usize];
        }
        match sub.tracks[sample.p as usize].observe(sample.s) {
            Seen::Duplicate => {
                self.report.duplicates += 1;
                return;
            }
            Seen::Late => self.report.out_of_order += 1,
            Seen::Fresh => {}
        }
        sub.got += 1;
        if sub.got == self.per_sub && sub.state == SubState::Ready {
            self.settled += 1;
        }
        self.report.received += 1;
        self.report.last_recv_ns = now;
        self.report.latency.record_since(sample.t, now);
    }

    fn on_publisher_message(&mut self, i: usize, text: &[u8]) {
        if self.cfg.protocol == Protocol::Raw {
            // The relay sends publishers everything too; its own messages coming back
            // are what a raw window waits for.
            if track::raw_sample(text).is_some_and(|s| s.p == i as u64) {
                self.pubs[i].answered += 1;
            }
            return;
        }
        match track::hub_type(text) {
            Some(b"ack") => self.pubs[i].answered += 1,
            Some(b"error") => {
                // An error with an id answers that publish; one without says little.
                if track::number_after(text, br#""id":"#).is_some() {
                    self.pubs[i].answered += 1;
                }
                self.report.publish_errors += 1;
                let text = String::from_utf8_lossy(text);
                self.report.first_publish_error.get_or_insert_with(|| text.into_owned());
            }
            _ => {}
        }
    }
}

impl App for Fanout<'_> {
    fn opened(&mut self, idx: usize, out: &mut Outbox<'_>) {
        if let Some(i) = self.publisher(idx) {
            self.pubs[i].open = true;
            return;
        }
        match self.cfg.protocol {
            Protocol::Hub => {
                out.text(&self.subscribe_frame);
                self.subs[idx].state = SubState::Subscribing;
                self.subscribing += 1;
                self.sub_deadlines.push_back((Instant::now() + self.cfg.handshake_timeout, idx));
            }
            Protocol::Raw => self.subscribed(idx),
        }
    }

    fn message(&mut self, idx: usize, text: &[u8], _out: &mut Outbox<'_>) {
        match self.publisher(idx) {
            Some(i) => self.on_publisher_message(i, text),
            None => self.on_subscriber_message(idx, text),
        }
    }

    fn ended(&mut self, idx: usize, _was_open: bool) {
        if let Some(i) = self.publisher(idx) {
            self.pubs[i].gone = true;
            return;
        }
        let sub = &mut self.subs[idx];
        match sub.state {
            SubState::Subscribing => {
                // Counted by the connection layer as dropped; for us it never subscribed.
                self.subscribing -= 1;
                self.report.failures.fail(Cause::Other, || "closed by the server before the subscribe ack".into());
            }
            SubState::Ready => {
                self.report.dropped += 1;
                if sub.got < self.per_sub {
                    self.settled += 1;
                }
            }
            SubState::Waiting | SubState::Gone => {} // a connect failure, counted by the connection layer
        }
        sub.state = SubState::Gone;
    }
}
