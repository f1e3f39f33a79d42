//! The bus's state as others see it: whether each Redis connection is up, why not, and
//! the counts `/stats`, `/metrics` and `/health` show. An outage is logged once when it
//! begins and once when it ends, never per message or per retry.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::sync::lock;

/// The bus's two Redis connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Link {
    /// Sends PUBLISH commands.
    Publish,
    /// Holds the subscriptions and receives.
    Subscribe,
}

#[derive(Default)]
struct Outage {
    /// When the current outage began; `None` while both links are up (or before the
    /// first connection).
    since: Option<Instant>,
    /// The last error, for `/health`.
    reason: Option<String>,
    /// Both links have been up at least once.
    joined: bool,
}

#[derive(Default)]
pub(crate) struct Health {
    publish_up: AtomicBool,
    subscribe_up: AtomicBool,
    /// Each link has connected at least once (so the next connection is a reconnect).
    publish_seen: AtomicBool,
    subscribe_seen: AtomicBool,
    outage: Mutex<Outage>,
    pub reconnects: AtomicU64,
    pub published: AtomicU64,
    pub received: AtomicU64,
    pub refused: AtomicU64,
    pub dropped: AtomicU64,
    /// Filtered sends from other instances through a filter name not registered here.
    pub unknown_filters: AtomicU64,
    /// Channels the subscribed link holds.
    pub channels: AtomicUsize,
    /// Set when the subscribed link is lost: the publishing one, which only notices when
    /// it uses its connection, checks it before sending more.
    pub suspect: AtomicBool,
}

impl Health {
    fn flags(&self, link: Link) -> (&AtomicBool, &AtomicBool) {
        match link {
            Link::Publish => (&self.publish_up, &self.publish_seen),
            Link::Subscribe => (&self.subscribe_up, &self.subscribe_seen),
        }
    }

    pub fn is_up(&self, link: Link) -> bool {
        self.flags(link).0.load(Ordering::Acquire)
    }

    pub fn all_up(&self) -> bool {
        self.is_up(Link::Publish) && self.is_up(Link::Subscribe)
    }

    /// `link` (re)connected.
    pub fn up(&self, link: Link) {
        let (up, seen) = self.flags(link);
        if seen.swap(true, Ordering::AcqRel) {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        up.store(true, Ordering::Release);
        let mut outage = lock(&self.outage);
        if !self.all_up() {
            return;
        }
        match outage.since.take() {
            Some(since) => log::warn!("cluster: Redis is back after {:.1?}; cluster delivery resumes", since.elapsed()),
            None if !outage.joined => log::info!("cluster: connected to Redis"),
            None => {}
        }
        outage.joined = true;
        outage.reason = None;
    }

    /// `link` failed to connect or was lost.
    pub fn down(&self, link: Link, reason: &str) {
        self.flags(link).0.store(false, Ordering::Release);
        if link == Link::Subscribe {
            self.channels.store(0, Ordering::Relaxed);
            self.suspect.store(true, Ordering::Release);
        }
        let mut outage = lock(&self.outage);
        outage.reason = Some(format!("Redis unreachable: {reason}"));
        if outage.since.is_none() {
            outage.since = Some(Instant::now());
            log::error!(
                "cluster: Redis unreachable ({reason}); local delivery goes on, publications to other \
                 instances are refused until it is back (retrying with back-off)"
            );
        }
    }

    /// Why the bus is degraded, while it is.
    pub fn reason(&self) -> Option<String> {
        if self.all_up() {
            return None;
        }
        Some(lock(&self.outage).reason.clone().unwrap_or_else(|| "connecting to Redis".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_needs_both_links_and_a_second_connection_is_a_reconnect() {
        let health = Health::default();
        assert_eq!(health.reason().as_deref(), Some("connecting to Redis"));
        health.up(Link::Publish);
        health.up(Link::Subscribe);
        assert!(health.all_up() && health.reason().is_none());
        assert_eq!(health.reconnects.load(Ordering::Relaxed), 0);
        health.down(Link::Subscribe, "connection refused");
        health.down(Link::Subscribe, "connection refused");
        assert_eq!(health.reason().as_deref(), Some("Redis unreachable: connection refused"));
        assert!(health.is_up(Link::Publish));
        health.up(Link::Subscribe);
        assert_eq!((health.all_up(), health.reconnects.load(Ordering::Relaxed)), (true, 1));
    }
}
