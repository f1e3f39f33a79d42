//! Cross-shard delivery: each shard's inbox (a crossbeam channel plus a mio `Waker`), and
//! the [`Hub`] handle that reaches every shard. Sits between a handler or an embedding
//! application (the senders) and the shard loops (the receivers).
//!
//! A sender wakes a shard at most once per batch: the first send after the shard last
//! drained its inbox sets `wake_pending` and calls the waker; later sends only enqueue. The
//! shard clears the flag *before* draining, so a message sent during the drain is either
//! drained now or triggers a fresh wake, never stranded. A message meant for many
//! connections crosses to each shard once, as one shared payload (`Message` clones share
//! their bytes).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use mio::Waker;
use serde::Serialize;
use serde_json::value::RawValue;
use tungstenite::Message;

use crate::metrics::Counters;
use crate::protocol;
use crate::routing::Directory;

/// A connection's identity, unique across shards and stable for its lifetime; a stale id
/// (its connection closed, its slot reused) matches nothing. It fits in 53 bits, so a
/// JavaScript client can hold it as a number without losing precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    const SLOT_BITS: u32 = 24;
    const GENERATION_BITS: u32 = 21;
    /// Connections one shard can hold at once (16.7 M).
    pub(crate) const MAX_SLOTS: usize = 1 << Self::SLOT_BITS;
    /// Generations wrap at this; a stale id only matches after 2M reuses of one slot.
    pub(crate) const GENERATION_MASK: u32 = (1 << Self::GENERATION_BITS) - 1;

    pub(crate) fn new(shard: usize, slot: usize, generation: u32) -> Self {
        debug_assert!(shard < 256 && slot < Self::MAX_SLOTS);
        ConnId(
            (shard as u64) << (Self::SLOT_BITS + Self::GENERATION_BITS)
                | (slot as u64) << Self::GENERATION_BITS
                | (generation & Self::GENERATION_MASK) as u64,
        )
    }

    pub fn shard(self) -> usize {
        (self.0 >> (Self::SLOT_BITS + Self::GENERATION_BITS)) as usize
    }

    pub(crate) fn slot(self) -> usize {
        ((self.0 >> Self::GENERATION_BITS) as usize) & (Self::MAX_SLOTS - 1)
    }

    pub(crate) fn generation(self) -> u32 {
        (self.0 as u32) & Self::GENERATION_MASK
    }

    /// The id as one number (for logs and the wire protocol).
    pub fn as_u64(self) -> u64 {
        self.0
    }

    pub fn from_u64(raw: u64) -> Self {
        ConnId(raw)
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

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

/// What one shard asks of another.
pub(crate) enum Command {
    /// Deliver to every open connection on the shard.
    Broadcast(Message),
    /// Deliver to the shard's subscribers of a topic (or hold it for their next batch).
    Publish(Publication),
    /// Deliver to every open connection whose session matches.
    Filtered(Filter, Message),
    /// Deliver to one connection, if it still exists.
    ToConn(ConnId, Message),
    /// Deliver to every local connection of this user.
    ToUser(Arc<str>, Message),
    /// Stop accepting, close every connection with 1001, exit when done or at the deadline.
    Shutdown,
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
    /// Credential warnings and closes the shard has scheduled, live or stale, as of its
    /// last loop pass.
    pub expiry_entries: AtomicUsize,
}

/// Locks a mutex even if a panicking thread poisoned it: the data is plain maps whose
/// invariants hold between statements.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The sending side of one shard's inbox.
#[derive(Clone)]
pub(crate) struct ShardInbox {
    commands: Sender<Command>,
    waker: Arc<Waker>,
    wake_pending: Arc<AtomicBool>,
}

/// The shard's side: its receiver and the flag it clears before draining.
pub(crate) struct InboxReceiver {
    pub commands: Receiver<Command>,
    wake_pending: Arc<AtomicBool>,
}

pub(crate) fn inbox(waker: Waker) -> (ShardInbox, InboxReceiver) {
    let (commands, receiver) = crossbeam_channel::unbounded();
    let wake_pending = Arc::new(AtomicBool::new(false));
    let sender = ShardInbox { commands, waker: Arc::new(waker), wake_pending: wake_pending.clone() };
    (sender, InboxReceiver { commands: receiver, wake_pending })
}

impl ShardInbox {
    pub fn send(&self, command: Command) {
        // A closed inbox means the shard has exited (shutdown); nothing is left to deliver to.
        if self.commands.send(command).is_ok() && !self.wake_pending.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.waker.wake() {
                log::error!("failed to wake shard: {e}");
            }
        }
    }

    pub fn depth(&self) -> usize {
        self.commands.len()
    }
}

impl InboxReceiver {
    /// Call on the waker's event, then drain with `try_recv` until empty.
    pub fn woken(&self) {
        self.wake_pending.store(false, Ordering::Release);
    }
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

/// A snapshot of the server's state.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Stats {
    /// Sockets held, in any phase: upgraded WebSockets, and also those still handshaking
    /// or being answered over plain HTTP.
    pub connections: usize,
    pub connections_per_shard: Vec<usize>,
    /// Distinct topics with at least one subscriber.
    pub topics: usize,
    /// Distinct named users with an open connection (anonymous connections not counted).
    pub users: usize,
    /// Connections holding session data.
    pub sessions: usize,
    /// Cross-shard commands waiting in each shard's inbox.
    pub inbox_depths: Vec<usize>,
    /// Credential warnings and closes scheduled (two per connection whose token expires,
    /// and a bounded number of stale ones for connections already gone).
    pub expiry_entries: usize,
    pub uptime_seconds: u64,
    /// Every shard's counters summed (flattened into the JSON: `messages_in`, ...).
    #[serde(flatten)]
    pub totals: Counters,
    /// Each shard's counters, for `/metrics`.
    #[serde(skip)]
    pub per_shard: Vec<Counters>,
}

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
        let waker = |_| Waker::new(mio::Poll::new().expect("poll").registry(), mio::Token(0)).expect("waker");
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
            expiry_entries: self.shared.iter().map(|s| s.expiry_entries.load(Ordering::Relaxed)).sum(),
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
    use mio::{Events, Poll, Token};
    use std::time::Duration;

    #[test]
    fn conn_ids_round_trip_their_parts() {
        let id = ConnId::new(255, ConnId::MAX_SLOTS - 1, ConnId::GENERATION_MASK);
        assert_eq!((id.shard(), id.slot(), id.generation()), (255, ConnId::MAX_SLOTS - 1, ConnId::GENERATION_MASK));
        assert!(id.as_u64() < 1 << 53, "exact as a JavaScript number");
        let id = ConnId::new(3, 17, ConnId::GENERATION_MASK + 5);
        assert_eq!((id.shard(), id.slot(), id.generation()), (3, 17, 4), "generation wraps");
        assert_eq!(ConnId::from_u64(id.as_u64()), id);
    }

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

    #[test]
    fn a_batch_of_sends_wakes_the_shard_once() {
        let mut poll = Poll::new().unwrap();
        let waker = Waker::new(poll.registry(), Token(0)).unwrap();
        let (sender, receiver) = inbox(waker);
        let mut events = Events::with_capacity(8);
        for i in 0..100 {
            sender.send(Command::Broadcast(Message::text(i.to_string())));
        }
        poll.poll(&mut events, Some(Duration::from_secs(1))).unwrap();
        assert_eq!(events.iter().count(), 1);
        receiver.woken();
        assert_eq!(receiver.commands.try_iter().count(), 100);

        // Nothing sent since the drain: no further wake.
        poll.poll(&mut events, Some(Duration::from_millis(50))).unwrap();
        assert_eq!(events.iter().count(), 0);
        // The next send wakes again.
        sender.send(Command::Shutdown);
        poll.poll(&mut events, Some(Duration::from_secs(1))).unwrap();
        assert_eq!(events.iter().count(), 1);
    }
}
