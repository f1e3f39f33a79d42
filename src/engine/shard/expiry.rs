//! Credentials that expire while their connection is open (a JWT's `exp`): the shard
//! warns the client `REFRESH_WARNING` before, with a `token_expiring` frame, and closes it
//! with 4001 at the expiry unless a `refresh` frame brought a new token first. Connections
//! without an expiring credential cost nothing here.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// How long before expiry the client is told to refresh, in seconds.
pub(crate) const REFRESH_WARNING: u64 = 30;

/// What came due for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExpiryEvent {
    /// Send `token_expiring`; the credential expires at this Unix second.
    Warn(u64),
    /// Close with 4001.
    Expired,
}

#[derive(Default)]
pub(crate) struct Expiries {
    /// The current expiry (Unix seconds) of each connection that has one, by slab key.
    current: HashMap<usize, u64>,
    /// (due, key, the expiry it was scheduled for, is the close), soonest first. An entry
    /// whose expiry is no longer the connection's current one is stale and skipped.
    due: BinaryHeap<Reverse<(u64, usize, u64, bool)>>,
}

impl Expiries {
    /// The connection at `key` now holds a credential expiring at `expires_at`.
    pub fn set(&mut self, key: usize, expires_at: u64, now: u64) {
        self.current.insert(key, expires_at);
        self.due.push(Reverse((expires_at.saturating_sub(REFRESH_WARNING).max(now), key, expires_at, false)));
        self.due.push(Reverse((expires_at, key, expires_at, true)));
    }

    /// The connection at `key` is gone, or its new credential does not expire.
    pub fn clear(&mut self, key: usize) {
        self.current.remove(&key);
    }

    /// Moves the events due at `now` into `out`.
    pub fn take_due(&mut self, now: u64, out: &mut Vec<(usize, ExpiryEvent)>) {
        while let Some(&Reverse((due, key, expires_at, close))) = self.due.peek() {
            if due > now {
                break;
            }
            self.due.pop();
            if self.current.get(&key) != Some(&expires_at) {
                continue;
            }
            if close {
                self.current.remove(&key);
                out.push((key, ExpiryEvent::Expired));
            } else {
                out.push((key, ExpiryEvent::Warn(expires_at)));
            }
        }
        if self.current.is_empty() {
            // Only stale entries can remain: drop them rather than pop them one by one.
            self.due.clear();
        }
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
}
