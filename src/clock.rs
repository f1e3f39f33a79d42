//! The shard's clock: coarse ticks since the shard started. Everything that schedules
//! (timers, batches, deadlines) counts in ticks, and takes `now` as an argument rather
//! than reading the wall clock, so it is tested in memory with made-up times.

use std::time::{Duration, Instant};

/// Timer resolution. Every deadline is rounded up to a tick.
pub const TICK: Duration = Duration::from_millis(100);

/// A point in time in ticks since the shard started; `u32` lasts 13 years.
pub type Tick = u32;

/// Converts a duration into whole ticks, rounding up, at least one.
pub fn ticks(duration: Duration) -> Tick {
    let tick = TICK.as_millis();
    (duration.as_millis().div_ceil(tick)).clamp(1, Tick::MAX as u128) as Tick
}

/// Monotonic shard clock in ticks.
pub struct Clock {
    started: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Clock { started: Instant::now() }
    }

    pub fn now(&self) -> Tick {
        (self.started.elapsed().as_millis() / TICK.as_millis()) as Tick
    }

    /// How long until the next tick boundary: the poll timeout.
    pub fn until_next_tick(&self) -> Duration {
        let tick = TICK.as_nanos();
        let elapsed = self.started.elapsed().as_nanos();
        Duration::from_nanos((tick - elapsed % tick) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_round_up() {
        assert_eq!(ticks(Duration::from_millis(1)), 1);
        assert_eq!(ticks(Duration::from_millis(250)), 3);
        assert_eq!(ticks(Duration::from_secs(10)), 100);
    }
}
