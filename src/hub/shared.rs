//! What other threads may read of a shard, and the answers built from it: stats and
//! session data (presence is in `presence`). Each lock is taken by the shard's own thread
//! for its own work and only briefly by others (presence, stats, handlers on the worker
//! pool, the cluster's presence writer).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::topics::TopicTable;
use super::users::UserTable;
use super::wanted::Wanted;
use super::{ConnId, Hub, Session};
use crate::metrics::{Counters, Stats};
use crate::sync::lock;

/// What other threads may read or change of a shard: its topic and user tables, its
/// connections' session data, its connection count.
pub(crate) struct ShardShared {
    /// The shard's subscriptions. The shard reads them to deliver (its own thread, so the
    /// lock is uncontended then); others read them for presence and to skip this shard.
    pub topics: Mutex<TopicTable>,
    /// The shard's users and their connections: the shard delivers a send to a user
    /// through it, and a send crosses only to shards that have the user.
    pub users: Mutex<UserTable>,
    pub sessions: Mutex<HashMap<ConnId, Session>>,
    pub connections: AtomicUsize,
    /// The shard's counters as of its last loop pass (it publishes them once per pass).
    pub counters: Mutex<Counters>,
    /// Credential warnings and closes the shard has scheduled, live or stale, as of its
    /// last loop pass.
    pub expiry_entries: AtomicUsize,
}

impl ShardShared {
    /// In a cluster, the tables tell `wanted` what this shard's connections want.
    pub fn new(wanted: Option<Arc<Wanted>>) -> Self {
        ShardShared {
            topics: Mutex::new(TopicTable::watched(wanted.clone())),
            users: Mutex::new(UserTable::watched(wanted)),
            sessions: Mutex::default(),
            connections: AtomicUsize::new(0),
            counters: Mutex::default(),
            expiry_entries: AtomicUsize::new(0),
        }
    }
}

impl Hub {
    /// This instance's connections and summed counters, without walking any table:
    /// what it tells the rest of its cluster every heartbeat.
    pub(crate) fn totals(&self) -> (usize, Counters) {
        let mut totals = Counters::default();
        for shared in self.shared.iter() {
            totals.add(&lock(&shared.counters));
        }
        (self.shared.iter().map(|s| s.connections.load(Ordering::Acquire)).sum(), totals)
    }

    pub fn stats(&self) -> Stats {
        let mut topics = BTreeSet::new();
        let mut users = HashSet::new();
        let mut sessions = 0;
        let mut totals = Counters::default();
        let mut per_shard = Vec::with_capacity(self.shared.len());
        for shared in self.shared.iter() {
            topics.extend(lock(&shared.topics).topics().cloned());
            users.extend(lock(&shared.users).names().cloned());
            sessions += lock(&shared.sessions).len();
            let counters = *lock(&shared.counters);
            totals.add(&counters);
            per_shard.push(counters);
        }
        let connections_per_shard: Vec<usize> =
            self.shared.iter().map(|s| s.connections.load(Ordering::Acquire)).collect();
        Stats {
            connections: connections_per_shard.iter().sum(),
            connections_per_shard,
            topics: topics.len(),
            users: users.len(),
            sessions,
            inbox_depths: self.shards.iter().map(|inbox| inbox.depth()).collect(),
            inbox_refused: self.shards.iter().map(|inbox| inbox.refused()).collect(),
            expiry_entries: self.shared.iter().map(|s| s.expiry_entries.load(Ordering::Relaxed)).sum(),
            uptime_seconds: self.started.elapsed().as_secs(),
            totals,
            per_shard,
            cluster: self.cluster_stats(),
            history: self.history().map(|history| history.health.stats()),
        }
    }

    /// Reads one value of a connection's session data.
    pub fn session_get(&self, conn: ConnId, key: &str) -> Option<serde_json::Value> {
        let shared = self.shared.get(conn.shard())?;
        lock(&shared.sessions).get(&conn).and_then(|session| session.get(key).cloned())
    }

    /// Stores one value in a connection's session data. Only a connection's own shard
    /// creates its session (while it is alive), so a write for a connection that is gone
    /// changes nothing and returns `false`, rather than leaving data no one frees.
    pub fn session_set(&self, conn: ConnId, key: &str, value: serde_json::Value) -> bool {
        let Some(shared) = self.shared.get(conn.shard()) else { return false };
        match lock(&shared.sessions).get_mut(&conn) {
            Some(session) => {
                session.insert(key.to_string(), value);
                true
            }
            None => false,
        }
    }
}
