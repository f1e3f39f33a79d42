//! One-time tickets: a backend that holds an API key asks `POST /api/ticket {user}` for a
//! ticket, hands it to its browser client, and the client opens `ws://…/?ticket=…` as that
//! user. A ticket is 256 random bits, lives a few seconds, and is gone once redeemed, so a
//! ticket that leaks into a log or a URL history is worthless by the time it is read.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use super::{AuthError, Identity};
use crate::inbox::lock;

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
    outstanding: Mutex<HashMap<String, (Identity, Instant)>>,
}

impl fmt::Debug for Tickets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tickets {{ ttl: {:?}, outstanding: {} }}", self.ttl, lock(&self.outstanding).len())
    }
}

impl Tickets {
    pub fn new(ttl: Duration) -> Self {
        Tickets { ttl, outstanding: Mutex::new(HashMap::new()) }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A fresh ticket for `identity`, redeemable once until `now + ttl`.
    pub fn issue(&self, identity: Identity, now: Instant) -> Result<String, IssueError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|_| IssueError::NoRandomness)?;
        let ticket = URL_SAFE_NO_PAD.encode(bytes);
        let mut outstanding = lock(&self.outstanding);
        if outstanding.len() >= MAX_OUTSTANDING / 2 {
            // Amortised: the sweep runs only when the map is large.
            outstanding.retain(|_, (_, expires)| *expires > now);
        }
        if outstanding.len() >= MAX_OUTSTANDING {
            return Err(IssueError::TooMany);
        }
        outstanding.insert(ticket.clone(), (identity, now + self.ttl));
        Ok(ticket)
    }

    /// The identity behind `ticket`; the ticket is spent either way.
    pub fn redeem(&self, ticket: &str, now: Instant) -> Result<Identity, AuthError> {
        match lock(&self.outstanding).remove(ticket) {
            Some((identity, expires)) if now <= expires => Ok(identity),
            Some(_) => Err(AuthError::Expired),
            None => Err(AuthError::UnknownToken),
        }
    }

    pub fn outstanding(&self) -> usize {
        lock(&self.outstanding).len()
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
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert!(!format!("{tickets:?}").contains(&a));
    }

    #[test]
    fn expired_tickets_do_not_pile_up() {
        let tickets = Tickets::new(Duration::from_millis(1));
        let start = Instant::now();
        for i in 0..MAX_OUTSTANDING {
            tickets.issue(ann(), start + Duration::from_millis(i as u64 / 1000)).unwrap();
        }
        // Far later, all have expired: issuing sweeps them instead of refusing.
        assert!(tickets.issue(ann(), start + Duration::from_secs(3600)).is_ok());
        assert!(tickets.outstanding() < 10, "{}", tickets.outstanding());
    }
}
