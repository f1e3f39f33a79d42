//! Per-shard timers: one hashed timing wheel for every deadline a connection has
//! (handshake, ping, idle, close). Sits beside the shard loop, which fires it once per tick.
//!
//! Entries are lazy: activity (a message heard) never touches the wheel. When an entry
//! fires, the shard asks the connection what it is really due for and re-schedules it.
//! A connection remembers the due tick of its one current entry; an entry with another
//! tick is stale (the connection was re-scheduled earlier, on a phase change) and is
//! dropped when it comes round. That keeps the hot path free of timer work and the cost
//! to about 12 bytes per connection. Deadlines past the wheel's span come round early
//! and go back in the wheel without firing.

use crate::clock::Tick;

const SLOTS: usize = 1024;

/// One timer entry: a slab key, the generation it belonged to, and when it is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub key: u32,
    pub generation: u32,
    pub at: Tick,
}

/// The wheel: `SLOTS` buckets of entries, one bucket per tick.
pub struct TimerWheel {
    slots: Vec<Vec<Entry>>,
    /// Last tick whose bucket has been fired.
    fired_through: Tick,
}

impl TimerWheel {
    pub fn new(now: Tick) -> Self {
        TimerWheel { slots: (0..SLOTS).map(|_| Vec::new()).collect(), fired_through: now }
    }

    /// Schedules `entry` to fire at `entry.at` (or the next tick, if that has passed).
    pub fn schedule(&mut self, entry: Entry) {
        let at = entry.at.max(self.fired_through + 1);
        self.slots[at as usize % SLOTS].push(entry);
    }

    /// Hands every entry whose bucket is due by `now` to `fire`, which may schedule again.
    pub fn advance(&mut self, now: Tick, mut fire: impl FnMut(&mut Self, Entry)) {
        // A stalled loop catches up by at most one full turn: that visits every bucket.
        let first = self.fired_through.saturating_add(1).max(now.saturating_sub(SLOTS as Tick - 1));
        for tick in first..=now {
            self.fired_through = tick;
            // Taken, not drained: the emptied bucket's memory goes back instead of staying
            // sized for the largest burst it ever held.
            let due = std::mem::take(&mut self.slots[tick as usize % SLOTS]);
            for entry in due {
                if entry.at > tick {
                    self.schedule(entry); // beyond the span: came round early
                } else {
                    fire(self, entry);
                }
            }
        }
        self.fired_through = self.fired_through.max(now);
    }

    /// Number of entries held (live and stale).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.slots.iter().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: u32, at: Tick) -> Entry {
        Entry { key, generation: 0, at }
    }

    fn fired(wheel: &mut TimerWheel, now: Tick) -> Vec<u32> {
        let mut keys = Vec::new();
        wheel.advance(now, |_, e| keys.push(e.key));
        keys
    }

    #[test]
    fn fires_at_the_scheduled_tick_and_not_before() {
        let mut wheel = TimerWheel::new(0);
        wheel.schedule(entry(1, 5));
        wheel.schedule(entry(2, 3));
        assert!(fired(&mut wheel, 2).is_empty());
        assert_eq!(fired(&mut wheel, 4), vec![2]);
        assert_eq!(fired(&mut wheel, 5), vec![1]);
        assert_eq!(wheel.len(), 0);
    }

    #[test]
    fn past_deadlines_fire_on_the_next_tick() {
        let mut wheel = TimerWheel::new(10);
        wheel.schedule(entry(7, 2));
        assert_eq!(fired(&mut wheel, 11), vec![7]);
    }

    #[test]
    fn a_stalled_loop_catches_up_on_every_bucket_once() {
        let mut wheel = TimerWheel::new(0);
        for key in 1..=50 {
            wheel.schedule(entry(key, key * 7));
        }
        let mut keys = fired(&mut wheel, 100_000);
        keys.sort();
        assert_eq!(keys, (1..=50).collect::<Vec<_>>());
    }

    #[test]
    fn entries_beyond_the_span_wait_for_their_turn() {
        let mut wheel = TimerWheel::new(0);
        let far = SLOTS as Tick * 3 + 10;
        wheel.schedule(entry(9, far));
        for now in (100..far).step_by(100) {
            assert!(fired(&mut wheel, now).is_empty(), "fired early at {now}");
        }
        assert_eq!(fired(&mut wheel, far), vec![9]);
    }

    #[test]
    fn a_fired_entry_can_schedule_itself_again() {
        let mut wheel = TimerWheel::new(0);
        wheel.schedule(entry(4, 2));
        let mut count = 0;
        for now in 1..=10 {
            wheel.advance(now, |wheel, e| {
                count += 1;
                wheel.schedule(Entry { at: e.at + 2, ..e });
            });
        }
        assert_eq!(count, 5, "every second tick from 2 to 10");
    }
}
