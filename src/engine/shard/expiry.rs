//! Credentials that expire while their connection is open (a JWT's `exp`): the shard
//! warns the client [`REFRESH_WARNING_SECS`] before, with a `token_expiring` frame, and
//! closes it with [`TOKEN_EXPIRED`](crate::protocol::TOKEN_EXPIRED) at the expiry unless a
//! `refresh` frame brought a new token first. Connections
//! without an expiring credential cost nothing here.
//!
//! Each `set` is a schedule of its own (a stamp), and its two heap entries belong to it:
//! a refresh, a close, or a new connection in the same slab slot makes them stale, even
//! when the expiry is the same. Stale entries are dropped when they come due, or all at
//! once when they outnumber the live ones, so the heap stays in proportion to the
//! connections that hold an expiring credential, however many came and went.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::protocol::REFRESH_WARNING_SECS;

/// Stale entries tolerated beyond the live ones before the heap is compacted.
const COMPACT_SLACK: usize = 64;

/// What came due for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExpiryEvent {
    /// Send `token_expiring`; the credential expires at this Unix second.
    Warn(u64),
    /// Close with [`TOKEN_EXPIRED`](crate::protocol::TOKEN_EXPIRED).
    Expired,
}

/// One scheduled warning or close, soonest first (a warning before the close due at the
/// same second).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    at: u64,
    close: bool,
    /// The `set` this entry was scheduled by.
    stamp: u64,
    key: usize,
    expires_at: u64,
}

#[derive(Default)]
pub(crate) struct Expiries {
    /// The live schedule of each connection that has one, by slab key: the stamp of the
    /// `set` that made it.
    current: HashMap<usize, u64>,
    /// Warnings and closes, soonest first. An entry whose stamp is not its key's current
    /// one is stale and skipped.
    due: BinaryHeap<Reverse<Due>>,
    /// The stamp the next `set` gets.
    next_stamp: u64,
}

impl Expiries {
    /// The connection at `key` now holds a credential expiring at `expires_at`; whatever
    /// was scheduled for that key before (an earlier token, an earlier tenant of the slot)
    /// no longer fires.
    pub fn set(&mut self, key: usize, expires_at: u64, now: u64) {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        self.current.insert(key, stamp);
        let warn_at = expires_at.saturating_sub(REFRESH_WARNING_SECS).max(now);
        self.due.push(Reverse(Due { at: warn_at, close: false, stamp, key, expires_at }));
        self.due.push(Reverse(Due { at: expires_at, close: true, stamp, key, expires_at }));
        self.compact_if_mostly_stale();
    }

    /// The connection at `key` is gone, or its new credential does not expire.
    pub fn clear(&mut self, key: usize) {
        if self.current.remove(&key).is_some() {
            self.compact_if_mostly_stale();
        }
    }

    /// Entries in the heap, live and stale: at most twice the live ones plus a small
    /// constant after any call.
    pub fn pending(&self) -> usize {
        self.due.len()
    }

    /// Moves the events due at `now` into `out`.
    pub fn take_due(&mut self, now: u64, out: &mut Vec<(usize, ExpiryEvent)>) {
        while let Some(&Reverse(entry)) = self.due.peek() {
            if entry.at > now {
                break;
            }
            self.due.pop();
            if self.current.get(&entry.key) != Some(&entry.stamp) {
                continue;
            }
            if entry.close {
                self.current.remove(&entry.key);
                out.push((entry.key, ExpiryEvent::Expired));
            } else {
                out.push((entry.key, ExpiryEvent::Warn(entry.expires_at)));
            }
        }
        if self.current.is_empty() {
            // Only stale entries can remain: drop them rather than pop them one by one.
            self.due.clear();
        }
    }

    /// Drops the stale entries once they outnumber the live ones (each schedule has at
    /// most two entries). Every entry is dropped at most once and a compaction removes
    /// at least half of the heap, so this costs O(1) amortized per `set`.
    fn compact_if_mostly_stale(&mut self) {
        let live = 2 * self.current.len();
        if self.due.len() <= 2 * live + COMPACT_SLACK {
            return;
        }
        let current = &self.current;
        self.due.retain(|Reverse(entry)| current.get(&entry.key) == Some(&entry.stamp));
        // Give back what a burst of churn grew, keeping room to grow again.
        self.due.shrink_to(2 * self.due.len() + COMPACT_SLACK);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(expiries: &mut Expiries, now: u64) -> Vec<(usize, ExpiryEvent)> {
        let mut out = Vec::new();
        expiries.take_due(now, &mut out);
        out
    }

    #[test]
    fn warns_then_closes() {
        let mut expiries = Expiries::default();
        expiries.set(7, 1000, 900);
        assert_eq!(due(&mut expiries, 969), vec![]);
        assert_eq!(due(&mut expiries, 970), vec![(7, ExpiryEvent::Warn(1000))]);
        assert_eq!(due(&mut expiries, 999), vec![]);
        assert_eq!(due(&mut expiries, 1000), vec![(7, ExpiryEvent::Expired)]);
        assert_eq!(due(&mut expiries, 2000), vec![]);
    }

    #[test]
    fn a_refresh_replaces_the_old_deadline() {
        let mut expiries = Expiries::default();
        expiries.set(1, 1000, 900);
        expiries.set(1, 5000, 980);
        assert_eq!(due(&mut expiries, 1000), vec![], "the old warning and close are stale");
        assert_eq!(due(&mut expiries, 4970), vec![(1, ExpiryEvent::Warn(5000))]);
        expiries.clear(1);
        assert_eq!(due(&mut expiries, 6000), vec![]);
    }

    #[test]
    fn a_short_lived_token_is_warned_at_once() {
        let mut expiries = Expiries::default();
        expiries.set(3, 1010, 1000);
        assert_eq!(due(&mut expiries, 1000), vec![(3, ExpiryEvent::Warn(1010))]);
    }

    #[test]
    fn a_reused_slot_is_warned_once() {
        let mut expiries = Expiries::default();
        // Three connections in slot 5 with the same token expiry, each gone before its
        // warning came due, then a fourth that stays.
        for _ in 0..3 {
            expiries.set(5, 1000, 900);
            expiries.clear(5);
        }
        expiries.set(5, 1000, 900);
        assert_eq!(due(&mut expiries, 970), vec![(5, ExpiryEvent::Warn(1000))]);
        assert_eq!(due(&mut expiries, 1000), vec![(5, ExpiryEvent::Expired)]);
        // A refresh with a token of the same expiry replaces the schedule, not adds one.
        expiries.set(6, 2000, 1900);
        expiries.set(6, 2000, 1901);
        assert_eq!(due(&mut expiries, 1970), vec![(6, ExpiryEvent::Warn(2000))]);
    }

    #[test]
    fn churn_does_not_grow_the_heap() {
        let mut expiries = Expiries::default();
        // A day-long token that stays while 100,000 others come and go.
        expiries.set(0, 86_400, 0);
        let mut most = 0;
        for i in 0..100_000u64 {
            let key = 1 + (i % 3) as usize;
            expiries.set(key, 86_400 + i, i / 100);
            expiries.clear(key);
            most = most.max(expiries.pending());
        }
        // At most one churned connection is live at a time besides the long one: two
        // schedules of two entries each, twice over, plus the slack.
        assert!(most <= 2 * (2 * 2) + COMPACT_SLACK, "the heap grew to {most} entries");
        assert_eq!(due(&mut expiries, 86_370), vec![(0, ExpiryEvent::Warn(86_400))]);
        assert_eq!(due(&mut expiries, 86_400), vec![(0, ExpiryEvent::Expired)]);
        assert_eq!(expiries.pending(), 0, "nothing live is left");
    }
}
