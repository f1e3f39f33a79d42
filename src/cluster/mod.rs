//! Several instances acting as one over Redis (`--redis`). Sits after the hub: the
//! [`Hub`]'s routing seam hands every delivery that other instances may hold receivers of
//! to the [`Cluster`] (its [`Remote`]), and the bus hands what other instances published
//! back to the hub, as from [`Origin::Cluster`](crate::hub::Origin), which never goes
//! back to Redis.
//!
//! - One Redis channel per topic, per user, per instance, and one for everyone
//!   ([`channels`]). An instance subscribes a topic's or a user's channel only while a
//!   local connection has the topic or is the user (counted across shards by the hub's
//!   `Wanted`), so it receives only what some local connection wants; the changes of a
//!   moment go out as one SUBSCRIBE and one UNSUBSCRIBE. It always holds the channel for
//!   everyone (broadcasts, named filters) and its own instance's (sends to its
//!   connection ids).
//! - Connection ids are unique across the cluster: each carries its instance's node
//!   number, which the instance claims in Redis ([`nodeid`]), so a send to an id goes to
//!   that instance's channel only. A send to a user whose name is the id of a connection
//!   without a user goes there too.
//! - A filtered send crosses as the name of a filter the application registered
//!   (`App::filter`) and its JSON argument; each instance binds it to its own
//!   registration and runs it over its own connections. A closure filter cannot cross:
//!   it stays on its instance (the `App` API refuses it in a cluster). A name a receiving
//!   instance does not know is counted (`unknown_filters`) and logged at debug level.
//! - Three connections per instance, each owned by one thread: one publishes and one is
//!   subscribed ([`bus`]); one answers questions someone waits for ([`ask`]: presence,
//!   tickets), each job handing its answer back itself. Shards never wait on them: a publication enters a bounded queue,
//!   and while that queue is full or Redis is down it is refused (counted; the sender
//!   is told: HTTP 503, an `overloaded` error frame, a worker's call fails) and goes to
//!   the local receivers only.
//! - A publication crosses as its already-encoded frame behind an 18-byte envelope
//!   ([`envelope`]), and is handed to the local shards as one shared frame.
//!
//! - The members ([`members`]): each instance renews a summary of itself in Redis every
//!   second with a TTL, so `/stats` counts the live instances and sums their
//!   connections, topics, users and messages.
//! - Presence ([`presence`]): each instance keeps who is subscribed to each topic on it in
//!   Redis (written by the publisher thread, only what changed, every 100 ms at most); a
//!   `presence` question reads the live instances' entries on the ask thread, and an
//!   instance whose heartbeat expired is left out, then pruned with its entries.
//! - One-time tickets ([`tickets`]): stored in Redis with their lifetime when issued and
//!   taken atomically (`GETDEL`) when redeemed, so a ticket from any instance opens one
//!   connection on any instance. Both are ask jobs; the connection waits for the answer
//!   (the engine parks it), the shard thread does not.
//! - A `subscribe` ack waits, when the topic is new to the instance, until Redis has
//!   confirmed its SUBSCRIBE ([`reach`]), so what another instance publishes after the ack
//!   arrives.

mod ask;
mod bus;
mod channels;
mod envelope;
mod health;
mod members;
mod nodeid;
mod presence;
mod reach;
mod tickets;

pub(crate) use ask::Busy;
pub(crate) use tickets::Unreachable;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::config::ClusterSettings;
use crate::error::Error;
use crate::frame::SharedFrame;
use crate::hub::{ConnId, Hub, InboxFull, NodeNumber, PresenceAnswer, Remote, Target, Want, Wanted};
use crate::metrics::{ClusterStats, InstanceStats};
use crate::sync::lock;
use channels::Channels;
use health::Health;

/// A delivery on its way to Redis.
struct Outbound {
    target: Target,
    frame: SharedFrame,
}

/// This instance's membership of a cluster: what the hub and the bus threads share.
pub(crate) struct Cluster {
    /// Tells this instance's publications from the others' (random per start), and is
    /// what it holds its node number under.
    node: u64,
    /// The Redis keys of the members and their presence (under `--cluster-prefix`).
    keys: presence::Keys,
    /// The node number its connection ids carry: provisional until the publisher claims
    /// it, then renewed every heartbeat (see [`nodeid`]); shared with the hub.
    number: Arc<NodeNumber>,
    channels: Channels,
    queue: Sender<Outbound>,
    wanted: Arc<Wanted>,
    health: Health,
    /// Dropped on shutdown: both threads see it disconnect and stop.
    stop: Mutex<Option<Sender<()>>>,
    /// The cluster's members as of the last heartbeat.
    roster: Mutex<members::Roster>,
    /// The topics whose channel the subscribed connection holds, and the `subscribe`
    /// acks waiting for theirs ([`reach`]).
    reach: reach::Reach,
    /// Questions for the ask thread ([`ask`]).
    asks: Sender<ask::Job>,
}

/// What [`Cluster::new`] leaves for [`Cluster::spawn`]: the threads' ends.
pub(crate) struct Parts {
    client: redis::Client,
    queue: Receiver<Outbound>,
    asks: Receiver<ask::Job>,
    stop: Receiver<()>,
}

impl Cluster {
    /// A cluster member whose queue toward Redis holds at most `capacity` publications.
    /// Connects nothing yet.
    pub fn new(settings: &ClusterSettings, capacity: usize) -> Result<(Arc<Self>, Parts), Error> {
        let client = redis::Client::open(settings.redis.expose())
            .map_err(|e| Error::Config(format!("--redis {}: {e}", settings.redis)))?;
        let random = || getrandom::u64().map_err(|e| Error::Startup(std::io::Error::other(e.to_string())));
        let node = random()?;
        let number = Arc::new(NodeNumber::new(nodeid::provisional(random()?)));
        let (queue, outbound) = crossbeam_channel::bounded(capacity);
        let (asks, questions) = crossbeam_channel::bounded(ask::CAPACITY);
        let (stop, stopped) = crossbeam_channel::bounded(0);
        let cluster = Cluster {
            node,
            keys: presence::Keys::new(&settings.prefix, node),
            number,
            channels: Channels::new(&settings.prefix),
            queue,
            wanted: Arc::default(),
            health: Health::default(),
            stop: Mutex::new(Some(stop)),
            roster: Mutex::default(),
            reach: reach::Reach::default(),
            asks,
        };
        Ok((Arc::new(cluster), Parts { client, queue: outbound, asks: questions, stop: stopped }))
    }

    /// Starts the bus's three threads; they deliver what arrives through `hub`.
    pub fn spawn(self: &Arc<Self>, parts: Parts, hub: Hub) -> Result<Vec<JoinHandle<()>>, Error> {
        let Parts { client, queue, asks, stop } = parts;
        let (ask_client, ask_stop) = (client.clone(), stop.clone());
        let asker = thread::Builder::new()
            .name("wshub-redis-ask".into())
            .spawn(move || ask::answer(ask_client, asks, ask_stop))
            .map_err(Error::Startup)?;
        let (cluster, publisher_client, publisher_stop) = (self.clone(), client.clone(), stop.clone());
        let publisher_hub = hub.clone();
        let publisher = thread::Builder::new()
            .name("wshub-redis-pub".into())
            .spawn(move || bus::publish(cluster, publisher_client, publisher_hub, queue, publisher_stop))
            .map_err(Error::Startup)?;
        let cluster = self.clone();
        let subscriber = thread::Builder::new()
            .name("wshub-redis-sub".into())
            .spawn(move || bus::subscribe(cluster, client, hub, stop))
            .map_err(Error::Startup)?;
        Ok(vec![publisher, subscriber, asker])
    }
}

impl Remote for Cluster {
    fn publish(&self, target: &Target, frame: &SharedFrame) -> Result<(), InboxFull> {
        let own = match target {
            Target::Conn(id) => id.node() == self.number.get(),
            Target::User(user) => ConnId::parse(user).is_some_and(|id| id.node() == self.number.get()),
            Target::Filtered(filter) => filter.wire().is_none(),
            _ => false,
        };
        if own {
            return Ok(());
        }
        // Down: refused here, so nothing queues up for a Redis that is not there.
        let queued = self.health.all_up()
            && match self.queue.try_send(Outbound { target: target.clone(), frame: frame.clone() }) {
                Ok(()) => true,
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
            };
        if !queued {
            self.health.refused.fetch_add(1, Ordering::Relaxed);
            return Err(InboxFull);
        }
        Ok(())
    }

    fn node(&self) -> &Arc<NodeNumber> {
        &self.number
    }

    fn wanted(&self) -> &Arc<Wanted> {
        &self.wanted
    }

    fn when_reachable(&self, topic: &str, conn: ConnId, frame: SharedFrame) -> Option<SharedFrame> {
        self.reach.when_held(Want::Topic(topic.into()), conn, frame)
    }

    fn presence(&self, hub: Hub, topic: Arc<str>, answer: PresenceAnswer) {
        presence::ask(self, hub, topic, answer);
    }

    fn stats(&self) -> ClusterStats {
        let health = &self.health;
        let roster = lock(&self.roster).clone();
        let totals = roster.totals;
        let members = roster.members.into_iter().map(|(id, summary)| InstanceStats {
            id,
            connections: summary.connections,
            topics: summary.topics,
            users: summary.users,
            messages_in: summary.messages_in,
            messages_out: summary.messages_out,
        });
        ClusterStats {
            instances: roster.instances,
            connections: totals.connections,
            topics: totals.topics,
            users: totals.users,
            messages_in: totals.messages_in,
            messages_out: totals.messages_out,
            members: members.collect(),
            id: self.keys.own_id().to_string(),
            redis_up: health.all_up(),
            down_reason: health.reason(),
            reconnects: health.reconnects.load(Ordering::Relaxed),
            published: health.published.load(Ordering::Relaxed),
            received: health.received.load(Ordering::Relaxed),
            refused: health.refused.load(Ordering::Relaxed),
            dropped: health.dropped.load(Ordering::Relaxed),
            queue_depth: self.queue.len(),
            wanted: self.wanted.len(),
            channels: health.channels.load(Ordering::Relaxed),
            node: self.number.get(),
            unknown_filters: health.unknown_filters.load(Ordering::Relaxed),
        }
    }

    fn shutdown(&self) {
        lock(&self.stop).take();
    }
}
