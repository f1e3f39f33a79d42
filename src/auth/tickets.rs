//! One-time tickets: a backend that holds an API key asks `POST /api/ticket {user}` for a
//! ticket, hands it to its browser client, and the client opens `ws://…/?ticket=…` as that
//! user. A ticket is 256 random bits, lives a few seconds, and is gone once redeemed, so a
//! ticket that leaks into a log or a URL history is worthless by the time it is read.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use super::{AuthError, Identity};
use crate::sync::lock;

/// Outstanding tickets at most; issuing more is refused until some expire or are used.
pub const MAX_OUTSTANDING: usize = 100_000;

/// Why a ticket could not be issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueError {
    /// `MAX_OUTSTANDING` tickets are waiting to be redeemed: try again shortly (503).
    TooMany,
    /// The OS random source failed: nothing sensible to retry (500).
    NoRandomness,
}

impl fmt::Display for IssueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IssueError::TooMany => "too many outstanding tickets; try again shortly",
            IssueError::NoRandomness => "no randomness available to make a ticket",
        })
    }
}

/// The tickets issued and not yet redeemed or expired. Shared by every shard.
pub struct Tickets {
    ttl: Duration,
    outstanding: Mutex<Outstanding>,
}

/// Every ticket lives the same `ttl`, so issue order is expiry order: expired tickets are
/// popped off the front of `by_expiry`, O(1) per ticket, instead of sweeping the whole
/// map under a lock every shard shares.
#[derive(Default)]
struct Outstanding {
    by_ticket: HashMap<Arc<str>, (Identity, Instant)>,
    /// Also holds tickets already redeemed (dropped lazily, or by `compact`).
    by_expiry: VecDeque<(Instant, Arc<str>)>,
}

impl Outstanding {
    fn purge_expired(&mut self, now: Instant) {
        // Shards read the clock before taking the lock, so the queue may be out of order
        // by a hair; a ticket left behind a later one is still refused at `redeem`.
        while let Some((expires, ticket)) = self.by_expiry.front() {
            if *expires >= now {
                break;
            }
            self.by_ticket.remove(ticket);
            self.by_expiry.pop_front();
        }
        // Redeemed tickets linger in the queue until they expire; when they are most of
        // it, drop them. Runs after at least as many redeems as entries kept: amortised O(1).
        if self.by_expiry.len() > 2 * self.by_ticket.len() + 1024 {
            let by_ticket = &self.by_ticket;
            self.by_expiry.retain(|(_, ticket)| by_ticket.contains_key(ticket));
        }
    }
}

/// 256 bits from the OS's CSPRNG, base64url: what every ticket is, local or in a cluster.
pub(crate) fn fresh_ticket() -> Result<String, IssueError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|_| IssueError::NoRandomness)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Whether `ticket` has the shape [`fresh_ticket`] gives: anything else was never issued,
/// and is refused without asking the cluster.
pub(crate) fn is_well_formed(ticket: &str) -> bool {
    ticket.len() == 43 && ticket.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

impl fmt::Debug for Tickets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tickets {{ ttl: {:?}, outstanding: {} }}", self.ttl, self.outstanding())
    }
}

impl Tickets {
    pub fn new(ttl: Duration) -> Self {
        Tickets { ttl, outstanding: Mutex::new(Outstanding::default()) }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A fresh ticket for `identity`, redeemable once until `now + ttl`.
    pub fn issue(&self, identity: Identity, now: Instant) -> Result<String, IssueError> {
        let ticket = fresh_ticket()?;
        let expires = now.checked_add(self.ttl).unwrap_or(now);
        let mut outstanding = lock(&self.outstanding);
        outstanding.purge_expired(now);
        if outstanding.by_ticket.len() >= MAX_OUTSTANDING {
            return Err(IssueError::TooMany);
        }
        let key: Arc<str> = Arc::from(ticket.as_str());
        outstanding.by_expiry.push_back((expires, key.clone()));
        outstanding.by_ticket.insert(key, (identity, expires));
        Ok(ticket)
    }

    /// The identity behind `ticket`; the ticket is spent either way.
    pub fn redeem(&self, ticket: &str, now: Instant) -> Result<Identity, AuthError> {
        match lock(&self.outstanding).by_ticket.remove(ticket) {
            Some((identity, expires)) if now <= expires => Ok(identity),
            Some(_) => Err(AuthError::Expired),
            None => Err(AuthError::UnknownToken),
        }
    }

    /// Tickets issued and neither redeemed nor yet purged.
    pub fn outstanding(&self) -> usize {
        lock(&self.outstanding).by_ticket.len()
    }

    #[cfg(test)]
    fn queued(&self) -> usize {
        lock(&self.outstanding).by_expiry.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Grants;

    fn ann() -> Identity {
        Identity { user: "ann".into(), grants: Grants::default(), expires_at: None }
    }

    #[test]
    fn a_ticket_works_once() {
        let tickets = Tickets::new(Duration::from_secs(10));
        let now = Instant::now();
        let ticket = tickets.issue(ann(), now).unwrap();
        assert_eq!(tickets.redeem(&ticket, now).unwrap().user, "ann");
        assert_eq!(tickets.redeem(&ticket, now), Err(AuthError::UnknownToken));
        assert_eq!(tickets.redeem("made-up", now), Err(AuthError::UnknownToken));
    }

    #[test]
    fn an_expired_ticket_is_refused() {
        let tickets = Tickets::new(Duration::from_secs(10));
        let now = Instant::now();
        let ticket = tickets.issue(ann(), now).unwrap();
        assert_eq!(tickets.redeem(&ticket, now + Duration::from_secs(11)), Err(AuthError::Expired));
    }

    #[test]
    fn tickets_are_distinct_and_url_safe() {
        let tickets = Tickets::new(Duration::from_secs(10));
        let now = Instant::now();
        let a = tickets.issue(ann(), now).unwrap();
        let b = tickets.issue(ann(), now).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43, "32 bytes, base64url without padding");
        assert!(is_well_formed(&a) && is_well_formed(&fresh_ticket().unwrap()));
        assert!(!is_well_formed(&a[1..]) && !is_well_formed(&format!("{}+", &a[1..])));
        assert!(!format!("{tickets:?}").contains(&a));
    }

    #[test]
    fn expired_tickets_do_not_pile_up() {
        let tickets = Tickets::new(Duration::from_millis(1));
        let start = Instant::now();
        for i in 0..MAX_OUTSTANDING {
            tickets.issue(ann(), start + Duration::from_millis(i as u64 / 1000)).unwrap();
        }
        assert!(tickets.outstanding() <= 2000, "expired ones are purged as new ones come: {}", tickets.outstanding());
        // Far later, all have expired: issuing purges them instead of refusing.
        assert!(tickets.issue(ann(), start + Duration::from_secs(3600)).is_ok());
        assert_eq!((tickets.outstanding(), tickets.queued()), (1, 1));
    }

    #[test]
    fn live_tickets_are_capped_until_some_expire() {
        let tickets = Tickets::new(Duration::from_secs(10));
        let now = Instant::now();
        let first = tickets.issue(ann(), now).unwrap();
        for _ in 1..MAX_OUTSTANDING {
            tickets.issue(ann(), now).unwrap();
        }
        assert_eq!(tickets.issue(ann(), now), Err(IssueError::TooMany));
        assert_eq!(tickets.redeem(&first, now).unwrap().user, "ann", "refusing one spends none");
        assert!(tickets.issue(ann(), now).is_ok(), "a redeemed ticket frees its place");
        assert_eq!(tickets.issue(ann(), now), Err(IssueError::TooMany));
        assert!(tickets.issue(ann(), now + Duration::from_secs(11)).is_ok());
        assert_eq!(tickets.outstanding(), 1);
    }

    #[test]
    fn redeemed_tickets_do_not_pile_up_in_the_queue() {
        let tickets = Tickets::new(Duration::from_secs(3600));
        let now = Instant::now();
        for _ in 0..50_000 {
            let ticket = tickets.issue(ann(), now).unwrap();
            tickets.redeem(&ticket, now).unwrap();
        }
        assert_eq!(tickets.outstanding(), 0);
        assert!(tickets.queued() <= 1025, "{}", tickets.queued());
    }

    #[test]
    fn a_redeemed_ticket_cannot_be_redeemed_after_its_expiry_either() {
        let tickets = Tickets::new(Duration::from_secs(10));
        let now = Instant::now();
        let ticket = tickets.issue(ann(), now).unwrap();
        tickets.redeem(&ticket, now).unwrap();
        let later = now + Duration::from_secs(11);
        tickets.issue(ann(), later).unwrap();
        assert_eq!(tickets.redeem(&ticket, later), Err(AuthError::UnknownToken));
        assert_eq!(tickets.redeem("", later), Err(AuthError::UnknownToken));
    }
}
