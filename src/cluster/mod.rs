//! Several instances acting as one over Redis (`--redis`). Sits after the hub: the
//! [`Hub`]'s routing seam hands every delivery that other instances may hold receivers of
//! to the [`Cluster`] (its [`Remote`]), and the bus hands what other instances published
//! back to the hub, as from [`Origin::Cluster`](crate::hub::Origin), which never goes
//! back to Redis.
//!
//! - One Redis channel per topic, per user, and one for broadcasts ([`envelope`]). An
//!   instance subscribes a topic's or a user's channel only while a local connection has
//!   the topic or is the user (counted across shards by the hub's `Wanted`), so it
//!   receives only what some local connection wants; the changes of a moment go out as
//!   one SUBSCRIBE and one UNSUBSCRIBE.
//! - Three connections per instance, each owned by one thread: one publishes and one is
//!   subscribed ([`bus`]); one answers questions someone waits for ([`ask`]: presence,
//!   tickets), each job handing its answer back itself. Shards never wait on them: a publication enters a bounded queue,
//!   and while that queue is full or Redis is down it is refused (counted; the sender
//!   is told: HTTP 503, an `overloaded` error frame, a worker's call fails) and goes to
//!   the local receivers only.
//! - A publication crosses as its already-encoded frame behind a 17-byte envelope, and is
//!   handed to the local shards as one shared frame.
//!
//! - The members ([`members`]): each instance renews a summary of itself in Redis every
//!   second with a TTL, so `/stats` counts the live instances and their connections.
//! - One-time tickets ([`tickets`]): stored in Redis with their lifetime when issued and
//!   taken atomically (`GETDEL`) when redeemed, so a ticket from any instance opens one
//!   connection on any instance. Both are ask jobs; the connection waits for the answer
//!   (the engine parks it), the shard thread does not.
//!
//! Connection ids and filtered sends stay local for now: a connection id is only unique
//! within its instance, and a filter is code. So does presence.

mod ask;
mod bus;
mod envelope;
mod health;
mod members;
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
use crate::hub::{Hub, InboxFull, Remote, Target, Wanted};
use crate::metrics::ClusterStats;
use crate::sync::lock;
use envelope::Channels;
use health::Health;

/// A delivery on its way to Redis.
struct Outbound {
    target: Target,
    frame: SharedFrame,
}

/// This instance's membership of a cluster: what the hub and the bus threads share.
pub(crate) struct Cluster {
    /// Tells this instance's publications from the others' (random per start).
    node: u64,
    /// `--cluster-prefix`.
    prefix: String,
    channels: Channels,
    queue: Sender<Outbound>,
    wanted: Arc<Wanted>,
    health: Health,
    /// Dropped on shutdown: both threads see it disconnect and stop.
    stop: Mutex<Option<Sender<()>>>,
    /// The cluster's members as of the last heartbeat.
    roster: Mutex<members::Roster>,
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
        let node = getrandom::u64().map_err(|e| Error::Startup(std::io::Error::other(e.to_string())))?;
        let (queue, outbound) = crossbeam_channel::bounded(capacity);
        let (asks, questions) = crossbeam_channel::bounded(ask::CAPACITY);
        let (stop, stopped) = crossbeam_channel::bounded(0);
        let cluster = Cluster {
            node,
            prefix: settings.prefix.clone(),
            channels: Channels::new(&settings.prefix),
            queue,
            wanted: Arc::default(),
            health: Health::default(),
            stop: Mutex::new(Some(stop)),
            roster: Mutex::default(),
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
        if matches!(target, Target::Conn(_) | Target::Filtered(_)) {
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

    fn wanted(&self) -> &Arc<Wanted> {
        &self.wanted
    }

    fn stats(&self) -> ClusterStats {
        let health = &self.health;
        let roster = *lock(&self.roster);
        ClusterStats {
            instances: roster.instances,
            connections: roster.totals.connections,
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
        }
    }

    fn shutdown(&self) {
        lock(&self.stop).take();
    }
}
