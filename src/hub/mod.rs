//! Where a message goes: the [`Hub`] handle that reaches every shard, each shard's inbox
//! ([`inbox`]), its topic and user tables ([`topics`], [`users`]) and batches ([`batch`]),
//! the hook through which handlers act ([`handler`]), and who is subscribed to a topic
//! ([`presence`], here or, through the cluster, everywhere). Sits between the senders (a
//! handler, the worker pool, the HTTP API, an embedding application) and the shard loops
//! (the receivers).
//!
//! A message meant for many connections is framed once where it enters ([`SharedFrame`])
//! and crosses to each shard once; every receiver's queue holds a reference to its bytes.

pub(crate) mod batch;
#[doc(hidden)]
pub mod bench;
mod filter;
pub(crate) mod handler;
mod history;
mod id;
pub(crate) mod inbox;
mod keys;
mod node;
mod presence;
mod remote;
pub(crate) mod topics;
pub(crate) mod users;
mod wanted;

mod shared;

pub(crate) use filter::Filters;
pub use filter::{Filter, UnknownFilter};
pub(crate) use history::{Asker, HistoryBusy, HistoryQueue, Job, Recovering, Recovery, HISTORY_QUEUE};
pub use id::ConnId;
pub use inbox::InboxFull;
pub(crate) use inbox::{inbox, Answer, Command, InboxReceiver, ShardInbox};
pub(crate) use node::NodeNumber;
pub(crate) use presence::PresenceAnswer;
pub use presence::{Presence, PresenceError};
pub(crate) use remote::Remote;
pub(crate) use shared::ShardShared;
pub(crate) use wanted::{Changes, Want, Wanted};

use std::sync::Arc;
use std::time::Instant;

use serde_json::value::RawValue;
use tungstenite::Message;

use crate::frame::SharedFrame;
use crate::protocol;
use crate::sync::lock;
pub use topics::SubscribeError;

/// A connection's session data: whatever the application stores with `set`.
pub type Session = serde_json::Map<String, serde_json::Value>;

/// Who a frame is for. Every delivery names one, whatever its source (a client's frame,
/// an application handler, the HTTP API, a timer), and goes through [`Hub::route`].
#[derive(Debug, Clone)]
pub enum Target {
    /// The subscribers of `topic`. `data` is the payload alone, without the frame's
    /// envelope: shards that deliver the topic in batches wrap many payloads in one frame.
    Topic { topic: Arc<str>, data: Arc<str> },
    /// Every open connection.
    Everyone,
    /// Every connection of this user. A connection without a user goes by its id.
    User(Arc<str>),
    /// One connection, if it still exists (a stale id matches nothing), on whichever
    /// instance of the cluster holds it.
    Conn(ConnId),
    /// Every open connection whose session data the filter accepts: on every instance
    /// for a named filter, on this one for a closure ([`Filter::local`]).
    Filtered(Filter),
}

/// Where a delivery starts, which decides the shards it crosses to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A shard's own handler: that shard delivers to its own connections directly, so the
    /// hub skips it.
    Shard(usize),
    /// Any other thread: the worker pool, the HTTP API, an embedding application.
    Outside,
    /// Another instance of the cluster, through the bus: it has delivered its own part,
    /// and a delivery from there is never handed back to the cluster.
    Cluster,
}

/// Reaches every shard: what handlers and embedding applications use to send.
#[derive(Clone)]
pub struct Hub {
    shards: Arc<[ShardInbox]>,
    shared: Arc<[ShardShared]>,
    /// When the server started, for uptime.
    started: Instant,
    /// The other instances, when the server is part of a cluster.
    remote: Option<Arc<dyn Remote>>,
    /// The node number this instance's connection ids carry: the cluster's claim, or 0.
    node: Arc<NodeNumber>,
    /// The application's named filters, which deliveries from other instances name.
    filters: Arc<Filters>,
    /// The history thread's queue, with `--history`; publications on the topics it keeps
    /// go through it.
    history: Option<Arc<HistoryQueue>>,
}

impl Hub {
    pub(crate) fn new(shards: Vec<ShardInbox>, remote: Option<Arc<dyn Remote>>, filters: Filters) -> Self {
        let wanted = remote.as_ref().map(|remote| remote.wanted().clone());
        let node = remote.as_ref().map_or_else(Arc::default, |remote| remote.node().clone());
        let shared = (0..shards.len()).map(|_| ShardShared::new(wanted.clone())).collect();
        Hub {
            shards: shards.into(),
            shared,
            started: Instant::now(),
            remote,
            node,
            filters: Arc::new(filters),
            history: None,
        }
    }

    /// The same hub with publications on the topics `history` keeps going through it.
    pub(crate) fn with_history(mut self, history: HistoryQueue) -> Self {
        self.history = Some(Arc::new(history));
        self
    }

    /// The history thread's queue, with `--history`.
    pub(crate) fn history(&self) -> Option<&HistoryQueue> {
        self.history.as_deref()
    }

    /// Whether publications on `topic` are kept (and carry offsets).
    pub(crate) fn keeps(&self, topic: &str) -> bool {
        self.history.as_ref().is_some_and(|history| history.rule(topic).is_some())
    }

    /// Hands a publication on a topic with history to the history thread, which stores
    /// it, routes it with its offset, then acks `ack` (if any).
    pub(crate) fn publish_kept(
        &self,
        topic: &str,
        from: &str,
        data: &RawValue,
        ack: Option<Asker>,
    ) -> Result<(), HistoryBusy> {
        let history = self.history.as_ref().ok_or(HistoryBusy)?;
        let data = data.to_owned();
        let (topic, from, ts) = (topic.into(), from.into(), protocol::now_millis());
        history.queue(Job::Publish { topic, from, data, ts, ack })
    }

    /// A hub with `shards` inboxes that no shard drains: for unit tests of code that
    /// takes a `Hub`. Sends to it go nowhere.
    #[cfg(test)]
    pub(crate) fn detached(shards: usize) -> Self {
        Hub::undrained(shards, 1024).0
    }

    /// A hub whose inboxes hold what is sent until the test reads or drops the receivers
    /// (also what `bench::Tables` uses, never drained).
    pub(crate) fn undrained(shards: usize, capacity: usize) -> (Self, Vec<InboxReceiver>) {
        // One poll per waker (mio allows a single waker per poll); a waker outlives its poll.
        let waker = || mio::Waker::new(mio::Poll::new().expect("poll").registry(), mio::Token(0)).expect("waker");
        let (inboxes, receivers) = (0..shards).map(|_| inbox(waker(), capacity)).unzip();
        (Hub::new(inboxes, None, Filters::default()), receivers)
    }

    /// This instance's node number, which new connection ids take.
    pub(crate) fn node(&self) -> &NodeNumber {
        &self.node
    }

    pub(crate) fn filters(&self) -> &Filters {
        &self.filters
    }

    /// Whether the server is part of a cluster (`--redis`).
    pub fn is_clustered(&self) -> bool {
        self.remote.is_some()
    }

    /// The filter registered as `name` (`App::filter`), bound to `arg`: a send through it
    /// reaches the matching connections on every instance of a cluster.
    pub fn filter(&self, name: &str, arg: serde_json::Value) -> Result<Filter, UnknownFilter> {
        self.filters.bind(name, arg)
    }

    pub(crate) fn shared(&self, index: usize) -> &ShardShared {
        &self.shared[index]
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Sends `frame` to the connections `target` names, on every shard. The frame crosses
    /// once to each shard that may hold one of them, and to no other; it is serialized
    /// once, and its bytes are shared by every receiver. `Err` if a shard's inbox was
    /// full: that shard's receivers miss it (the others get it), and it is counted.
    pub fn route(&self, target: Target, frame: Message) -> Result<(), InboxFull> {
        self.route_from(Origin::Outside, &target, &SharedFrame::encode(frame))
    }

    /// The one seam every delivery passes: decides which shards a delivery crosses to,
    /// and (in a cluster) hands it to the other instances unless it came from them.
    pub(crate) fn route_from(&self, origin: Origin, target: &Target, frame: &SharedFrame) -> Result<(), InboxFull> {
        let mut result = Ok(());
        for (index, inbox) in self.shards.iter().enumerate() {
            if origin == Origin::Shard(index) || !self.may_hold(index, target) {
                continue;
            }
            let command = Command::Deliver { target: target.clone(), frame: frame.clone() };
            if let Err(full) = inbox.send(command) {
                result = Err(full);
            }
        }
        match &self.remote {
            Some(remote) if origin != Origin::Cluster => result.and(remote.publish(target, frame)),
            _ => result,
        }
    }

    /// `frame` back if publications to `topic` from every instance reach `conn` now;
    /// `None` if the cluster sends it to `conn` once they do (see [`Remote`]).
    pub(crate) fn once_reachable(&self, topic: &str, conn: ConnId, frame: SharedFrame) -> Option<SharedFrame> {
        match &self.remote {
            Some(remote) => remote.when_reachable(topic, conn, frame),
            None => Some(frame),
        }
    }

    /// The cluster bus's state, when the server is part of a cluster.
    pub(crate) fn cluster_stats(&self) -> Option<crate::metrics::ClusterStats> {
        self.remote.as_ref().map(|remote| remote.stats())
    }

    /// Whether shard `index` may hold a connection `target` names (checked here, so a
    /// frame does not cross for nothing).
    fn may_hold(&self, index: usize, target: &Target) -> bool {
        let shared = &self.shared[index];
        match target {
            // A subscriber acknowledged before this check is in the topic table (the shard
            // records it before queueing the ack), so skipping cannot lose its messages.
            Target::Topic { topic, .. } => lock(&shared.topics).has_topic(topic),
            Target::User(user) => self.holds(ConnId::parse(user), index) || lock(&shared.users).contains(user),
            Target::Conn(conn) => self.holds(Some(*conn), index),
            Target::Everyone | Target::Filtered(_) => true,
        }
    }

    /// Whether `conn` would be on shard `index` of this instance (its node number is this
    /// instance's, its shard that one).
    fn holds(&self, conn: Option<ConnId>, index: usize) -> bool {
        conn.is_some_and(|conn| conn.node() == self.node.get() && conn.shard() == index)
    }

    /// Publishes `data` to `topic` as `from`, in the hub protocol's `message` frame.
    /// On a topic with history it is stored first (see `--history`).
    pub fn publish(&self, topic: &str, from: &str, data: &RawValue) -> Result<(), InboxFull> {
        if self.keeps(topic) {
            return Ok(self.publish_kept(topic, from, data, None)?);
        }
        let frame = protocol::message(Some(topic), from, data, protocol::now_millis(), None);
        self.route(Target::Topic { topic: topic.into(), data: data.get().into() }, Message::text(frame))
    }

    /// Sends `message` to every open connection on every shard.
    pub fn broadcast(&self, message: Message) -> Result<(), InboxFull> {
        self.route(Target::Everyone, message)
    }

    /// Sends `message` to one connection; a stale id is ignored.
    pub fn send_to(&self, conn: ConnId, message: Message) -> Result<(), InboxFull> {
        self.route(Target::Conn(conn), message)
    }

    /// Sends `message` to every connection of `user`, on any shard. A connection without
    /// a user goes by its connection id, which names its instance and shard.
    pub fn send_to_user(&self, user: &str, message: Message) -> Result<(), InboxFull> {
        self.route(Target::User(user.into()), message)
    }

    /// Sends `message` to every open connection whose session data satisfies `filter`: on
    /// every instance of a cluster for a named filter ([`Hub::filter`]), on this one for
    /// a closure ([`Filter::local`]).
    pub fn send_filtered(&self, filter: Filter, message: Message) -> Result<(), InboxFull> {
        self.route(Target::Filtered(filter), message)
    }

    /// Hands connection `conn` the cluster's answer it waits for, through its shard's
    /// inbox (see [`Answer`]).
    pub(crate) fn resume(&self, conn: ConnId, answer: Answer) {
        if let Some(inbox) = self.shards.get(conn.shard()) {
            inbox.resume(conn, answer);
        }
    }

    /// Hands connection `conn`, recovering `topic`, its replay (see [`Recovering`]);
    /// `subscribed: false` when the recovery was refused (the frames say why).
    pub(crate) fn replay(
        &self,
        conn: ConnId,
        request: u64,
        topic: &Arc<str>,
        frames: Vec<SharedFrame>,
        subscribed: bool,
    ) {
        if let Some(inbox) = self.shards.get(conn.shard()) {
            inbox.send_replay(Command::Replay { conn, request, topic: topic.clone(), frames, subscribed });
        }
    }

    /// Deliveries waiting in each shard's inbox.
    pub fn inbox_depths(&self) -> Vec<usize> {
        self.shards.iter().map(ShardInbox::depth).collect()
    }

    /// Begins a graceful shutdown of every shard.
    pub(crate) fn shutdown(&self) {
        for inbox in self.shards.iter() {
            inbox.shutdown();
        }
        if let Some(remote) = &self.remote {
            remote.shutdown();
        }
        if let Some(history) = &self.history {
            history.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_sends_cross_only_to_shards_that_hold_the_user() {
        let (hub, _receivers) = Hub::undrained(3, 64);
        lock(&hub.shared(1).users).add(&"ann".into(), 0);
        hub.send_to_user("ann", Message::text("hi")).unwrap();
        assert_eq!(hub.inbox_depths(), [0, 1, 0]);
        // A connection id names its shard.
        hub.send_to_user(&ConnId::new(0, 2, 7, 1).to_string(), Message::text("by id")).unwrap();
        assert_eq!(hub.inbox_depths(), [0, 1, 1]);
        hub.send_to_user("nobody", Message::text("lost")).unwrap();
        assert_eq!(hub.inbox_depths(), [0, 1, 1]);
        // Another instance's connection: none of this one's shards (node 0 here).
        hub.send_to_user(&ConnId::new(3, 2, 7, 1).to_string(), Message::text("elsewhere")).unwrap();
        hub.send_to(ConnId::new(3, 1, 7, 1), Message::text("elsewhere")).unwrap();
        assert_eq!(hub.inbox_depths(), [0, 1, 1]);
    }

    #[test]
    fn each_target_crosses_to_the_shards_that_may_hold_it_and_skips_its_origin() {
        let (hub, _receivers) = Hub::undrained(3, 64);
        lock(&hub.shared(2).topics).subscribe(0, || "ann".into(), "room", 8).unwrap();
        let topic = Target::Topic { topic: "room".into(), data: "1".into() };
        hub.route(topic.clone(), Message::text("t")).unwrap();
        assert_eq!(hub.inbox_depths(), [0, 0, 1], "only the shard with a subscriber");
        hub.route(Target::Conn(ConnId::new(0, 1, 3, 9)), Message::text("c")).unwrap();
        assert_eq!(hub.inbox_depths(), [0, 1, 1], "only the connection's shard");
        hub.route(Target::Everyone, Message::text("e")).unwrap();
        assert_eq!(hub.inbox_depths(), [1, 2, 2]);
        let filter = Filter::local(|_| true);
        hub.route_from(Origin::Shard(0), &Target::Filtered(filter), &SharedFrame::text("f")).unwrap();
        assert_eq!(hub.inbox_depths(), [1, 3, 3], "the origin shard delivers its own part");
        hub.route_from(Origin::Shard(2), &topic, &SharedFrame::text("t")).unwrap();
        assert_eq!(hub.inbox_depths(), [1, 3, 3]);
    }

    #[test]
    fn in_a_cluster_the_tables_report_what_local_connections_want_counted_across_shards() {
        let wanted = Arc::new(Wanted::default());
        let shards: Vec<ShardShared> = (0..2).map(|_| ShardShared::new(Some(wanted.clone()))).collect();
        let (room, ann) = (Want::Topic("room".into()), Want::User("ann".into()));
        lock(&shards[0].topics).subscribe(1, || "ann".into(), "room", 8).unwrap();
        lock(&shards[0].topics).subscribe(2, || "bob".into(), "room", 8).unwrap();
        lock(&shards[1].topics).subscribe(1, || "cy".into(), "room", 8).unwrap();
        lock(&shards[1].users).add(&"ann".into(), 1);
        let mut subscribed = std::collections::HashSet::new();
        let mut gained = wanted.changes(&subscribed).gained;
        gained.sort();
        assert_eq!(gained, [room.clone(), ann.clone()]);
        subscribed.extend(gained);
        lock(&shards[0].topics).remove_conn(1);
        lock(&shards[0].topics).unsubscribe(2, "room");
        assert!(wanted.changes(&subscribed).lost.is_empty(), "shard 1 still has a subscriber");
        lock(&shards[1].topics).remove_conn(1);
        lock(&shards[1].users).remove("ann", 1);
        let mut lost = wanted.changes(&subscribed).lost;
        lost.sort();
        assert_eq!(lost, [room, ann]);
    }

    #[test]
    fn a_full_shard_refuses_while_the_others_still_receive() {
        let (hub, _receivers) = Hub::undrained(3, 64);
        lock(&hub.shared(1).users).add(&"bob".into(), 0);
        for _ in 0..64 {
            hub.send_to_user("bob", Message::text("fill")).unwrap();
        }
        assert_eq!(hub.broadcast(Message::text("all")), Err(InboxFull));
        assert_eq!(hub.inbox_depths(), [1, 64, 1]);
        assert_eq!(hub.stats().inbox_refused, [0, 1, 0]);
    }
}
