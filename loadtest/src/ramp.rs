//! The connect schedule every mode ramps up with: a steady rate of new connections,
//! a cap on handshakes in flight, and an early stop when nobody is listening.

use crate::conn::{App, Net};
use crate::failures::Cause;
use std::net::Ipv4Addr;
use std::time::Instant;

/// Opens `total` connections at `rate` per second, at most `max_inflight` upgrading at
/// once. The caller polls between steps.
///
/// It also spreads them: the n-th connection started comes from source address n mod
/// (addresses given) and goes to target URL n mod (the `Net`'s URLs), unless
/// [`Ramp::first_target_only`]. In a worker process the URLs arrive rotated to where its
/// share begins (`CommonArgs::worker_args`), so the round-robin is run-wide.
pub struct Ramp {
    start: Instant,
    total: u64,
    next: u64,
    rate: f64,
    max_inflight: usize,
    spread: bool,
}

#[derive(Debug, PartialEq)]
pub enum RampStep {
    /// More to start later.
    Going,
    /// Every connection has been started.
    Started,
    /// Only refusals so far; this many more were counted as refused and never started.
    NobodyListening(u64),
}

impl Ramp {
    pub fn new(total: u64, rate: f64, max_inflight: usize) -> Ramp {
        Ramp { start: Instant::now(), total, next: 0, rate, max_inflight, spread: true }
    }

    /// Every connection to the first URL (fanout's publishers).
    pub fn first_target_only(mut self) -> Ramp {
        self.spread = false;
        self
    }

    /// Starts the connections that are due, from `source_ips` in turn (none given: the
    /// kernel chooses).
    pub fn step(&mut self, net: &mut Net, app: &mut impl App, source_ips: &[Ipv4Addr]) -> RampStep {
        if self.next < self.total && net.nobody_listening() {
            let rest = self.total - self.next;
            net.stats.failures.counts[Cause::Refused as usize] += rest;
            self.next = self.total;
            return RampStep::NobodyListening(rest);
        }
        let due = ((self.start.elapsed().as_secs_f64() * self.rate) as u64 + 1).min(self.total);
        while self.next < due && net.handshaking() < self.max_inflight {
            let (src, target) = spread(self.next, source_ips, if self.spread { net.targets() } else { 1 });
            net.connect(app, src, target);
            self.next += 1;
        }
        if self.next == self.total {
            RampStep::Started
        } else {
            RampStep::Going
        }
    }
}

/// The source address (none given: the kernel's choice) and the target URL of the n-th
/// connection: both round-robin.
pub fn spread(n: u64, source_ips: &[Ipv4Addr], targets: usize) -> (Option<Ipv4Addr>, usize) {
    let src = (!source_ips.is_empty()).then(|| source_ips[n as usize % source_ips.len()]);
    (src, n as usize % targets)
}
