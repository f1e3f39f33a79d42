//! The instances in the cluster and their counts, for `/stats` and `/metrics`. Every
//! `HEARTBEAT` each instance writes a summary of itself to Redis under a key that
//! expires after `TTL`, and reads every member's: an instance that dies drops out when
//! its key expires, within `TTL`, with no one having to notice it. Runs on the publisher
//! thread between batches, so no shard waits on it.
//!
//! Keys (`P` is `--cluster-prefix`): `P:node:ID` (the summary, JSON, expiring) and the set
//! `P:nodes` of IDs, an index pruned of the IDs whose key has expired (by whoever reads
//! first: expiry is Redis's clock, so the instances' clocks never need to agree).

use std::time::Duration;

use redis::{Connection, RedisResult};
use serde::{Deserialize, Serialize};

/// How often an instance renews its summary.
pub(super) const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a summary outlives its last renewal: a dead instance is gone after this.
pub(super) const TTL: Duration = Duration::from_secs(3);

/// One instance's counts, as it publishes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Summary {
    pub connections: usize,
    pub messages_in: u64,
    pub messages_out: u64,
}

/// The cluster as of the last heartbeat: live instances and their summed counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Roster {
    pub instances: usize,
    pub totals: Summary,
}

/// Renews this instance's summary and reads every live member's: two round trips.
pub(super) fn beat(connection: &mut Connection, prefix: &str, node: u64, own: &Summary) -> RedisResult<Roster> {
    let index = format!("{prefix}:nodes");
    let key = |id: &str| format!("{prefix}:node:{id}");
    let summary = serde_json::to_string(own).expect("a summary serializes");
    let (ids,): (Vec<String>,) = redis::pipe()
        .cmd("SET")
        .arg(key(&node.to_string()))
        .arg(summary)
        .arg("PX")
        .arg(TTL.as_millis() as u64)
        .ignore()
        .cmd("SADD")
        .arg(&index)
        .arg(node.to_string())
        .ignore()
        .cmd("SMEMBERS")
        .arg(&index)
        .query(connection)?;
    let keys: Vec<String> = ids.iter().map(|id| key(id)).collect();
    let summaries: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query(connection)?;
    let mut roster = Roster::default();
    let mut expired = Vec::new();
    for (id, summary) in ids.iter().zip(summaries) {
        match summary.and_then(|text| serde_json::from_str::<Summary>(&text).ok()) {
            Some(summary) => {
                roster.instances += 1;
                roster.totals.connections += summary.connections;
                roster.totals.messages_in += summary.messages_in;
                roster.totals.messages_out += summary.messages_out;
            }
            None => expired.push(id),
        }
    }
    if !expired.is_empty() {
        redis::cmd("SREM").arg(&index).arg(expired).exec(connection)?;
    }
    Ok(roster)
}

/// Takes this instance out at once on a clean shutdown (best effort: the TTL covers a
/// failure).
pub(super) fn leave(connection: &mut Connection, prefix: &str, node: u64) {
    let _ = redis::pipe()
        .cmd("DEL")
        .arg(format!("{prefix}:node:{node}"))
        .ignore()
        .cmd("SREM")
        .arg(format!("{prefix}:nodes"))
        .arg(node.to_string())
        .ignore()
        .exec(connection);
}
