//! Latencies of the message modes (fanout, echo): one HdrHistogram per process, merged
//! exactly in the parent, and the clock that timestamps go by.

use hdrhistogram::Histogram;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Nanoseconds of CLOCK_MONOTONIC. It is one clock for the whole machine, so a time
/// written into a message by one process can be subtracted from the arrival time seen
/// by another (a worker), and it never jumps with wall-clock adjustments.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the struct we pass; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Highest latency tracked exactly: one hour. Longer values are clamped to it, which
/// no bounded run reaches.
const MAX_US: u64 = 3_600_000_000;

/// Latencies in microseconds, 3 significant digits (error below 0.1%).
#[derive(Debug, Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Latency(Histogram::new_with_bounds(1, MAX_US, 3).expect("static bounds are valid"))
    }
}

/// The percentiles every summary shows, in microseconds (`latency_us` in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    /// Rounded to 0.1 us: more digits would only be noise.
    pub mean: f64,
}

impl Latency {
    pub fn record_us(&mut self, us: u64) {
        self.0.saturating_record(us);
    }

    /// Records the time from `sent_ns` (CLOCK_MONOTONIC) to `now_ns`.
    pub fn record_since(&mut self, sent_ns: u64, now_ns: u64) {
        self.record_us(now_ns.saturating_sub(sent_ns) / 1000);
    }

    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    pub fn percentiles(&self) -> Percentiles {
        if self.0.is_empty() {
            return Percentiles::default();
        }
        let q = |q: f64| self.0.value_at_quantile(q);
        let mean = (self.0.mean() * 10.0).round() / 10.0;
        Percentiles { p50: q(0.50), p90: q(0.90), p99: q(0.99), p999: q(0.999), max: self.0.max(), mean }
    }
}

/// `[[value, count], ...]` for every non-empty bucket: a few hundred pairs however many
/// samples there were. Recording each value back lands it in the same bucket, so the
/// parent's merged percentiles are exactly those of one big histogram.
impl Serialize for Latency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())))
    }
}

impl<'de> Deserialize<'de> for Latency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Latency, D::Error> {
        let mut h = Latency::default();
        for (value, count) in Vec::<(u64, u64)>::deserialize(deserializer)? {
            h.0.record_n(value.min(MAX_US), count).map_err(serde::de::Error::custom)?;
        }
        Ok(h)
    }
}

impl Percentiles {
    pub fn to_text(self) -> String {
        format!(
            "p50 {} us, p90 {} us, p99 {} us, p99.9 {} us, max {} us",
            self.p50, self.p90, self.p99, self.p999, self.max
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_uniform_run() {
        let mut h = Latency::default();
        (1..=1000).for_each(|us| h.record_us(us));
        let p = h.percentiles();
        assert_eq!((p.p50, p.p90, p.p99, p.p999, p.max), (500, 900, 990, 999, 1000));
        assert!((p.mean - 500.5).abs() < 0.5);
        assert_eq!(Latency::default().percentiles(), Percentiles::default());
    }

    #[test]
    fn serialized_halves_merge_to_the_whole() {
        let (mut whole, mut a, mut b) = (Latency::default(), Latency::default(), Latency::default());
        for i in 0..50_000u64 {
            let us = (i * 7919) % 250_000 + 1;
            whole.record_us(us);
            if i % 2 == 0 { &mut a } else { &mut b }.record_us(us);
        }
        let through_json =
            |h: &Latency| -> Latency { serde_json::from_str(&serde_json::to_string(h).unwrap()).unwrap() };
        let mut merged = through_json(&a);
        merged.merge(&through_json(&b));
        assert_eq!(merged.count(), 50_000);
        assert_eq!(merged.percentiles(), whole.percentiles());
        let json = serde_json::to_string(&a).unwrap();
        assert!(json.len() < 100_000, "buckets, not samples: {} bytes", json.len());
    }

    #[test]
    fn clock_and_clamping() {
        let (t0, t1) = (mono_ns(), mono_ns());
        assert!(t1 >= t0);
        let mut h = Latency::default();
        h.record_since(5_000, 2_000); // a clock that went backwards counts as 0
        h.record_us(u64::MAX);
        assert_eq!(h.count(), 2);
        assert!(h.percentiles().max >= MAX_US);
    }
}
