//! The instances in the cluster and their counts, for `/stats` and `/metrics`. Every
//! `HEARTBEAT` each instance writes a summary of itself to Redis under a key that
//! expires after `TTL`, and reads every member's: an instance that dies drops out when
//! its key expires, within `TTL`, with no one having to notice it. Runs on the publisher
//! thread between batches, so no shard waits on it.
//!
//! Keys (`P` is `--cluster-prefix`): `P:node:ID` (the summary, JSON, expiring) and the set
//! `P:nodes` of IDs, an index pruned of the IDs whose key has expired (by whoever reads
//! first: expiry is Redis's clock, so the instances' clocks never need to agree), along
//! with the pruned instance's presence entries ([`presence::PRUNE`]).
//!
//! The summary's counts are this instance's own; summed over the live instances they are
//! the cluster's totals (a user or topic on two instances counts twice there).

use std::time::Duration;

use redis::{Connection, RedisResult};
use serde::{Deserialize, Serialize};

use super::presence::{self, Keys};
use crate::hub::{Hub, Wanted};

/// How often an instance renews its summary.
pub(super) const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a summary outlives its last renewal: a dead instance is gone after this.
pub(super) const TTL: Duration = Duration::from_secs(3);

/// One instance's counts, as it publishes them. A field an older instance does not send
/// reads as 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Summary {
    /// Sockets held, in any phase.
    pub connections: usize,
    /// Distinct topics with a local subscriber.
    pub topics: usize,
    /// Distinct named users with a local connection.
    pub users: usize,
    pub messages_in: u64,
    pub messages_out: u64,
}

impl Summary {
    /// This instance's, read without walking any table (`wanted` counts topics and
    /// users across shards as they come and go).
    pub fn of(hub: &Hub, wanted: &Wanted) -> Self {
        let (connections, counters) = hub.totals();
        let (topics, users) = wanted.counts();
        Summary { connections, topics, users, messages_in: counters.messages_in, messages_out: counters.messages_out }
    }

    fn add(&mut self, other: &Summary) {
        self.connections += other.connections;
        self.topics += other.topics;
        self.users += other.users;
        self.messages_in += other.messages_in;
        self.messages_out += other.messages_out;
    }
}

/// The cluster as of the last heartbeat: live instances, each one's summary, and their
/// sums.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Roster {
    pub instances: usize,
    pub totals: Summary,
    /// Each live instance's id (as in its key) and summary, sorted by id.
    pub members: Vec<(String, Summary)>,
}

/// What a heartbeat learned.
pub(super) struct Beat {
    pub roster: Roster,
    /// This instance's entry was not there before this beat (its first, or it expired,
    /// was pruned, or Redis lost its data): its presence entries must be written anew.
    pub rejoined: bool,
}

/// Renews this instance's summary and reads every live member's: two round trips.
/// Needs Redis 6.2 or later (`SET ... GET`).
pub(super) fn beat(connection: &mut Connection, keys: &Keys, own: &Summary) -> RedisResult<Beat> {
    let index = keys.nodes();
    let summary = serde_json::to_string(own).expect("a summary serializes");
    let (previous, ids): (Option<String>, Vec<String>) = redis::pipe()
        .cmd("SET")
        .arg(keys.own_node())
        .arg(summary)
        .arg("PX")
        .arg(TTL.as_millis() as u64)
        .arg("GET")
        .cmd("SADD")
        .arg(&index)
        .arg(keys.own_id())
        .ignore()
        .cmd("SMEMBERS")
        .arg(&index)
        .query(connection)?;
    let node_keys: Vec<String> = ids.iter().map(|id| keys.node(id)).collect();
    let summaries: Vec<Option<String>> = redis::cmd("MGET").arg(&node_keys).query(connection)?;
    let mut roster = Roster::default();
    let mut expired = Vec::new();
    for (id, summary) in ids.into_iter().zip(summaries) {
        match summary.and_then(|text| serde_json::from_str::<Summary>(&text).ok()) {
            Some(summary) => {
                roster.instances += 1;
                roster.totals.add(&summary);
                roster.members.push((id, summary));
            }
            None => expired.push(id),
        }
    }
    roster.members.sort_by(|a, b| a.0.cmp(&b.0));
    if !expired.is_empty() {
        let mut pipe = redis::pipe();
        for id in &expired {
            presence::prune(&mut pipe, keys, id);
        }
        pipe.exec(connection)?;
    }
    Ok(Beat { roster, rejoined: previous.is_none() })
}

/// Takes this instance and its presence entries out at once on a clean shutdown (best
/// effort: the TTL covers a failure, and whoever prunes it removes the entries).
pub(super) fn leave(connection: &mut Connection, keys: &Keys) {
    let mut pipe = redis::pipe();
    pipe.cmd("DEL").arg(keys.own_node()).ignore();
    presence::prune(&mut pipe, keys, keys.own_id());
    let _ = pipe.exec(connection);
}
