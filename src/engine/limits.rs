//! Abuse limits that sit beside the flow rather than in it: messages per second per
//! connection (a token bucket, checked by the hub protocol before it decodes a frame) and
//! concurrent connections per source address (checked by the shard at accept). Sans-I/O.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use crate::sync::lock;

/// What to do with a message under the rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateVerdict {
    Allow,
    /// Over the limit: refuse this message with a `rate_limited` error.
    Refuse,
    /// Over the limit for too long: close the connection (1008).
    Close,
}

/// A token bucket per connection: `rate` messages a second on average, bursts of `burst`.
/// A connection that keeps sending after it is refused (`strikes_to_close` refusals with
/// no allowed message between) is closed. Buckets exist only for connections that have
/// sent something, and go when the connection does.
pub(crate) struct RateLimiter {
    rate: f64,
    burst: f64,
    strikes_to_close: u32,
    epoch: Instant,
    buckets: HashMap<usize, Bucket>,
}

struct Bucket {
    tokens: f32,
    /// Milliseconds since `epoch` at the last refill.
    refilled_ms: u32,
    /// Refusals since the last allowed message.
    strikes: u32,
}

impl RateLimiter {
    /// `rate` per second, `burst` at most at once; `rate == 0` means no limit.
    pub fn new(rate: u32, burst: u32) -> Self {
        let burst = burst.max(1);
        RateLimiter {
            rate: f64::from(rate),
            burst: f64::from(burst),
            strikes_to_close: burst.max(10),
            epoch: Instant::now(),
            buckets: HashMap::new(),
        }
    }

    pub fn check(&mut self, key: usize, now: Instant) -> RateVerdict {
        if self.rate == 0.0 {
            return RateVerdict::Allow;
        }
        // Wraps after 49 days; a wrapped refill only looks like a long pause (a full bucket).
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u32;
        let burst = self.burst;
        let bucket =
            self.buckets.entry(key).or_insert(Bucket { tokens: burst as f32, refilled_ms: now_ms, strikes: 0 });
        let elapsed = f64::from(now_ms.wrapping_sub(bucket.refilled_ms)) / 1000.0;
        bucket.tokens = (f64::from(bucket.tokens) + elapsed * self.rate).min(burst) as f32;
        bucket.refilled_ms = now_ms;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            bucket.strikes = 0;
            return RateVerdict::Allow;
        }
        bucket.strikes += 1;
        if bucket.strikes >= self.strikes_to_close {
            RateVerdict::Close
        } else {
            RateVerdict::Refuse
        }
    }

    /// The connection at `key` is gone.
    pub fn forget(&mut self, key: usize) {
        self.buckets.remove(&key);
    }
}

/// Concurrent connections per source address, shared by every shard.
pub(crate) struct PerIp {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    pub fn new(max: usize) -> Self {
        PerIp { max, counts: Mutex::new(HashMap::new()) }
    }

    /// Counts one more connection from `ip`, unless it already has `max`.
    pub fn acquire(&self, ip: IpAddr) -> bool {
        let mut counts = lock(&self.counts);
        let count = counts.entry(ip).or_insert(0);
        if *count >= self.max {
            if *count == 0 {
                counts.remove(&ip);
            }
            return false;
        }
        *count += 1;
        true
    }

    pub fn release(&self, ip: IpAddr) {
        let mut counts = lock(&self.counts);
        if let Some(count) = counts.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_is_allowed_then_refused_then_refilled() {
        let mut limiter = RateLimiter::new(10, 3);
        let start = Instant::now();
        let verdicts: Vec<_> = (0..4).map(|_| limiter.check(1, start)).collect();
        assert_eq!(verdicts, [RateVerdict::Allow, RateVerdict::Allow, RateVerdict::Allow, RateVerdict::Refuse]);
        assert_eq!(limiter.check(2, start), RateVerdict::Allow, "buckets are per connection");
        // 10 a second: one token back after 100 ms.
        assert_eq!(limiter.check(1, start + Duration::from_millis(100)), RateVerdict::Allow);
        assert_eq!(limiter.check(1, start + Duration::from_millis(100)), RateVerdict::Refuse);
    }

    #[test]
    fn persisting_past_the_limit_closes() {
        let mut limiter = RateLimiter::new(1, 2);
        let now = Instant::now();
        let verdicts: Vec<_> = (0..12).map(|_| limiter.check(1, now)).collect();
        assert_eq!(verdicts.iter().filter(|v| **v == RateVerdict::Refuse).count(), 9);
        assert_eq!(verdicts[11], RateVerdict::Close, "the tenth refusal in a row");
    }

    #[test]
    fn zero_means_no_limit() {
        let mut limiter = RateLimiter::new(0, 0);
        assert!((0..10_000).all(|_| limiter.check(1, Instant::now()) == RateVerdict::Allow));
    }

    #[test]
    fn per_ip_counts_and_releases() {
        let per_ip = PerIp::new(2);
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        assert!(per_ip.acquire(ip) && per_ip.acquire(ip));
        assert!(!per_ip.acquire(ip));
        assert!(per_ip.acquire("127.0.0.10".parse().unwrap()), "another address");
        per_ip.release(ip);
        assert!(per_ip.acquire(ip));
        per_ip.release(ip);
        per_ip.release(ip);
        assert!(lock(&per_ip.counts).get(&ip).is_none(), "no entry left for a gone address");
    }
}
