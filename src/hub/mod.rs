//! Where a message goes: the [`Hub`] handle that reaches every shard, each shard's inbox
//! ([`inbox`]), its topic tables ([`routes`]) and batches ([`batch`]), and the hook through
//! which handlers act ([`handler`]). Sits between the senders (a handler, the worker pool,
//! the HTTP API, an embedding application) and the shard loops (the receivers).
//!
//! A message meant for many connections crosses to each shard once, as one shared payload
//! (`Message` clones share their bytes).

pub(crate) mod batch;
pub(crate) mod handler;
mod id;
pub(crate) mod inbox;
pub(crate) mod routes;

pub use id::ConnId;
pub(crate) use inbox::{inbox, Command, InboxReceiver, ShardInbox};

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use serde_json::value::RawValue;
use tungstenite::Message;

use crate::metrics::{Counters, Stats};
use crate::protocol;
use crate::sync::lock;
use routes::Directory;
pub use routes::SubscribeError;

/// A connection's session data: whatever the application stores with `set`.
pub type Session = serde_json::Map<String, serde_json::Value>;

/// A predicate over session data, for `send_filtered`; runs on each shard's thread.
pub type Filter = Arc<dyn Fn(&Session) -> bool + Send + Sync>;

/// A message published to a topic: the outbound frame, serialized once, and the raw
/// `data` it carries (for shards that hold the topic's messages in batches).
#[derive(Debug, Clone)]
pub struct Publication {
    pub topic: Arc<str>,
    pub frame: Message,
    pub data: Arc<str>,
}

/// What other threads may read or change of a shard: its topic directory, its
/// connections' session data, its connection count. Each lock is taken by the shard's
/// own thread for its own work and only briefly by others (presence, stats, handlers
/// on the worker pool).
#[derive(Default)]
pub(crate) struct ShardShared {
    pub directory: Mutex<Directory>,
    /// Users with at least one open connection on this shard, so a send to a user
    /// crosses only to shards that have one.
    pub users: Mutex<HashSet<Arc<str>>>,
    pub sessions: Mutex<HashMap<ConnId, Session>>,
    pub connections: AtomicUsize,
    /// The shard's counters as of its last loop pass (it publishes them once per pass).
    pub counters: Mutex<Counters>,
}

/// Reaches every shard: what handlers and embedding applications use to send.
#[derive(Clone)]
pub struct Hub {
    shards: Arc<[ShardInbox]>,
    shared: Arc<[ShardShared]>,
    /// When the server started, for uptime.
    started: Instant,
}

/// Who is subscribed to a topic, across all shards.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Presence {
    /// Distinct users subscribed.
    pub count: usize,
    /// Their names, sorted; at most `PRESENCE_LIST_LIMIT` of them.
    pub users: Vec<String>,
    /// True when `users` was cut at the limit.
    pub truncated: bool,
}

/// Longest user list a presence answer carries.
pub const PRESENCE_LIST_LIMIT: usize = 1000;

impl Hub {
    pub(crate) fn new(shards: Vec<ShardInbox>) -> Self {
        let shared = (0..shards.len()).map(|_| ShardShared::default()).collect();
        Hub { shards: shards.into(), shared, started: Instant::now() }
    }

    /// A hub with `shards` inboxes that no shard drains: for unit tests of code that
    /// takes a `Hub`.
    #[cfg(test)]
    pub(crate) fn detached(shards: usize) -> Self {
        // One poll per waker: mio allows a single waker per poll.
        let waker = |_| mio::Waker::new(mio::Poll::new().expect("poll").registry(), mio::Token(0)).expect("waker");
        let inboxes = (0..shards).map(|i| inbox(waker(i)).0).collect();
        Hub::new(inboxes)
    }

    pub(crate) fn shard(&self, index: usize) -> &ShardInbox {
        &self.shards[index]
    }

    pub(crate) fn shared(&self, index: usize) -> &ShardShared {
        &self.shared[index]
    }

    /// Publishes `data` to `topic` as `from`: the frame is serialized here, once, and
    /// crosses only to shards that have a subscriber.
    pub fn publish(&self, topic: &str, from: &str, data: &RawValue) {
        let frame = protocol::message(Some(topic), from, data, protocol::now_millis());
        let publication = Publication { topic: topic.into(), frame: Message::text(frame), data: Arc::from(data.get()) };
        for index in 0..self.shards.len() {
            self.publish_to_shard(index, &publication);
        }
    }

    pub(crate) fn publish_to_shard(&self, index: usize, publication: &Publication) {
        // A subscriber acknowledged before this check is in the directory (the shard
        // records it before queueing the ack), so skipping cannot lose its messages.
        if lock(&self.shared[index].directory).has_topic(&publication.topic) {
            self.shards[index].send(Command::Publish(publication.clone()));
        }
    }

    /// Sends `message` to every open connection whose session data satisfies `filter`.
    pub fn send_filtered(&self, filter: Filter, message: Message) {
        self.to_all_shards(|| Command::Filtered(filter.clone(), message.clone()));
    }

    /// Users subscribed to `topic`, across shards.
    pub fn presence(&self, topic: &str) -> Presence {
        let mut users = BTreeSet::new();
        for shared in self.shared.iter() {
            users.extend(lock(&shared.directory).users(topic).map(|user| user.to_string()));
        }
        let count = users.len();
        let users: Vec<String> = users.into_iter().take(PRESENCE_LIST_LIMIT).collect();
        Presence { count, truncated: users.len() < count, users }
    }

    pub fn stats(&self) -> Stats {
        let mut topics = BTreeSet::new();
        let mut users = HashSet::new();
        let mut sessions = 0;
        let mut totals = Counters::default();
        let mut per_shard = Vec::with_capacity(self.shared.len());
        for shared in self.shared.iter() {
            topics.extend(lock(&shared.directory).topics().cloned());
            users.extend(lock(&shared.users).iter().cloned());
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
            inbox_depths: self.inbox_depths(),
            uptime_seconds: self.started.elapsed().as_secs(),
            totals,
            per_shard,
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

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Sends `message` to every open connection on every shard.
    pub fn broadcast(&self, message: Message) {
        self.to_all_shards(|| Command::Broadcast(message.clone()));
    }

    /// Sends `message` to one connection; a stale id is ignored.
    pub fn send_to(&self, conn: ConnId, message: Message) {
        if let Some(shard) = self.shards.get(conn.shard()) {
            shard.send(Command::ToConn(conn, message));
        }
    }

    /// Sends `message` to every connection of `user`, on any shard. A connection without
    /// a user goes by its connection id, which names its shard.
    pub fn send_to_user(&self, user: &str, message: Message) {
        let user: Arc<str> = user.into();
        for index in 0..self.shards.len() {
            self.send_to_user_on(index, &user, &message);
        }
    }

    /// Sends to `user`'s connections on one shard, if it has any (checked here, so the
    /// message does not cross for nothing).
    pub(crate) fn send_to_user_on(&self, index: usize, user: &Arc<str>, message: &Message) {
        let by_id = user.parse::<u64>().is_ok_and(|raw| ConnId::from_u64(raw).shard() == index);
        if by_id || lock(&self.shared[index].users).contains(user) {
            self.shards[index].send(Command::ToUser(user.clone(), message.clone()));
        }
    }

    /// Messages waiting in each shard's inbox.
    pub fn inbox_depths(&self) -> Vec<usize> {
        self.shards.iter().map(ShardInbox::depth).collect()
    }

    pub(crate) fn shutdown(&self) {
        self.to_all_shards(|| Command::Shutdown);
    }

    fn to_all_shards(&self, command: impl Fn() -> Command) {
        for shard in self.shards.iter() {
            shard.send(command());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Poll, Token, Waker};

    #[test]
    fn user_sends_cross_only_to_shards_that_hold_the_user() {
        // One poll per shard, as in a server (mio allows one waker per poll).
        let polls: Vec<Poll> = (0..3).map(|_| Poll::new().unwrap()).collect();
        let (inboxes, receivers): (Vec<_>, Vec<_>) =
            polls.iter().map(|poll| inbox(Waker::new(poll.registry(), Token(0)).unwrap())).unzip();
        let hub = Hub::new(inboxes);
        lock(&hub.shared(1).users).insert("ann".into());
        hub.send_to_user("ann", Message::text("hi"));
        assert_eq!(receivers.iter().map(|r| r.commands.len()).collect::<Vec<_>>(), vec![0, 1, 0]);
        // A connection id names its shard.
        hub.send_to_user(&ConnId::new(2, 7, 1).to_string(), Message::text("by id"));
        assert_eq!(receivers.iter().map(|r| r.commands.len()).collect::<Vec<_>>(), vec![0, 1, 1]);
        hub.send_to_user("nobody", Message::text("lost"));
        assert_eq!(receivers.iter().map(|r| r.commands.len()).sum::<usize>(), 2);
    }
}
