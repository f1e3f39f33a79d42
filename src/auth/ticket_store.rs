//! Where one-time tickets live. Alone, an instance keeps them in its own table
//! ([`Tickets`]): issued and redeemed on the shard thread, in memory. In a cluster
//! (`--redis`) they live in Redis, so a ticket issued by any instance opens a connection
//! on any instance, still exactly once: issuing stores the identity under the ticket with
//! the ticket's lifetime (`SET … PX`), redeeming takes it (`GETDEL`, atomic), and Redis
//! expires what is never used. Both are a round trip the shard thread does not wait for:
//! the connection waits instead (see the engine's parked handshake stages), and this
//! module only makes the ticket and reads back what was stored.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::tickets::{fresh_ticket, IssueError, Tickets};
use super::{AuthError, Grants, Identity};

/// The tickets of a server that issues them (`--auth ticket`).
pub(crate) enum TicketStore {
    /// This instance's own table: a ticket works here only.
    Local(Tickets),
    /// The cluster's Redis: the store is a round trip away, see [`ClusterTickets`].
    Cluster(ClusterTickets),
}

impl TicketStore {
    /// Tickets lasting `ttl`, in Redis when `clustered`.
    pub fn new(ttl: Duration, clustered: bool) -> Self {
        match clustered {
            true => TicketStore::Cluster(ClusterTickets { ttl }),
            false => TicketStore::Local(Tickets::new(ttl)),
        }
    }

    /// How long an issued ticket stays redeemable.
    pub fn ttl(&self) -> Duration {
        match self {
            TicketStore::Local(tickets) => tickets.ttl(),
            TicketStore::Cluster(tickets) => tickets.ttl,
        }
    }
}

/// Tickets kept in the cluster's Redis: this side makes them and reads their records;
/// storing and taking is the cluster bus's.
#[derive(Debug)]
pub(crate) struct ClusterTickets {
    pub ttl: Duration,
}

/// A ticket made for the cluster, not yet stored: it must be in Redis before anyone is
/// given it, or a fast client on another instance could find nothing there.
#[derive(Debug)]
pub(crate) struct NewTicket {
    pub ticket: String,
    /// What Redis keeps under the ticket: the identity, as [`Record`] JSON.
    pub record: String,
    pub ttl: Duration,
}

/// The identity as stored in Redis. Versioned by its shape only: a record an instance
/// cannot read refuses the ticket (401) rather than guessing.
#[derive(Serialize, Deserialize)]
struct Record {
    user: String,
    subs: Option<Vec<String>>,
    pubs: Option<Vec<String>>,
    admin: bool,
}

impl ClusterTickets {
    /// A fresh ticket for `identity` and the record to store with it.
    pub fn issue(&self, identity: Identity) -> Result<NewTicket, IssueError> {
        let Identity { user, grants: Grants { subscribe, publish, admin }, expires_at: _ } = identity;
        let record = Record { user, subs: subscribe, pubs: publish, admin };
        // A struct of strings and booleans always serializes.
        let record = serde_json::to_string(&record).unwrap_or_default();
        Ok(NewTicket { ticket: fresh_ticket()?, record, ttl: self.ttl })
    }

    /// The identity behind a ticket taken from Redis: `None` when nothing was stored
    /// under it (never issued, expired, or already taken).
    pub fn redeem(record: Option<&str>) -> Result<Identity, AuthError> {
        let record = record.ok_or(AuthError::UnknownToken)?;
        let Record { user, subs, pubs, admin } =
            serde_json::from_str(record).map_err(|_| AuthError::Invalid("unreadable ticket record"))?;
        Ok(Identity { user, grants: Grants { subscribe: subs, publish: pubs, admin }, expires_at: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tickets::is_well_formed;

    #[test]
    fn a_record_round_trips_the_identity_and_nothing_else_passes() {
        let store = ClusterTickets { ttl: Duration::from_secs(5) };
        let grants = Grants { subscribe: Some(vec!["room.*".into()]), publish: None, admin: true };
        let issued = store.issue(Identity { user: "cy".into(), grants: grants.clone(), expires_at: None }).unwrap();
        assert!(is_well_formed(&issued.ticket) && !issued.record.contains(&issued.ticket));
        assert_eq!(issued.ttl, Duration::from_secs(5));
        let identity = ClusterTickets::redeem(Some(&issued.record)).unwrap();
        assert_eq!((identity.user.as_str(), identity.grants, identity.expires_at), ("cy", grants, None));
        assert_eq!(ClusterTickets::redeem(None), Err(AuthError::UnknownToken));
        assert!(matches!(ClusterTickets::redeem(Some("{\"user\":1}")), Err(AuthError::Invalid(_))));
    }
}
