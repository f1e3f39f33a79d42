//! The bus's two threads, each owning one Redis connection: the publisher sends what the
//! shards queued (PUBLISH, pipelined), the subscriber holds the channels local
//! connections want and hands what arrives to the local shards through their inboxes.
//! Neither is ever waited on by a shard. Each reconnects on its own with exponential
//! back-off and jitter; the subscriber resubscribes everything still wanted.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, RecvTimeoutError, TryRecvError};
use redis::{Client, Connection, PubSub, RedisResult};

use super::channels::Arrival;
use super::envelope;
use super::health::Link;
use super::members::{self, HEARTBEAT};
use super::presence::Writer;
use super::reach::Waiter;
use super::{nodeid, Cluster, Outbound};
use crate::hub::{Hub, Origin, Target, Want};
use crate::sync::lock;

/// Publications sent in one pipelined round trip at most.
const MAX_BATCH: usize = 256;
/// How long connecting, and any one command's answer, may take before the connection
/// counts as lost.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the subscriber looks for subscription changes while nothing arrives: the
/// longest a new local subscriber waits for its topic's channel (plus a round trip).
const POLL: Duration = Duration::from_millis(20);
/// A quiet connection is pinged this often, so a silently dead one is noticed.
const PING_EVERY: Duration = Duration::from_secs(5);
/// How often an idle publisher looks at whether its connection is suspect.
const TICK: Duration = Duration::from_millis(250);
/// Channels named in one SUBSCRIBE or UNSUBSCRIBE at most.
const CHANNELS_PER_COMMAND: usize = 1000;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(3);

/// Exponential back-off with jitter: each wait is drawn from the upper half of a window
/// that doubles per failure, so instances that lost Redis together do not retry together.
pub(super) struct Backoff {
    window: Duration,
}

impl Backoff {
    pub fn new() -> Self {
        Backoff { window: BACKOFF_MIN }
    }

    pub fn reset(&mut self) {
        self.window = BACKOFF_MIN;
    }

    /// How long to wait before the next try; each call doubles the window.
    pub fn next_delay(&mut self) -> Duration {
        let half = self.window / 2;
        let jitter = getrandom::u64().unwrap_or(0) % (half.as_millis() as u64 + 1);
        self.window = (self.window * 2).min(BACKOFF_MAX);
        half + Duration::from_millis(jitter)
    }

    /// Waits for the next try; `false` when the bus was stopped meanwhile.
    fn wait(&mut self, stop: &Receiver<()>) -> bool {
        !matches!(stop.recv_timeout(self.next_delay()), Err(RecvTimeoutError::Disconnected))
    }
}

pub(super) fn connect(client: &Client) -> RedisResult<Connection> {
    let connection = client.get_connection_with_timeout(COMMAND_TIMEOUT)?;
    connection.set_write_timeout(Some(COMMAND_TIMEOUT))?;
    connection.set_read_timeout(Some(COMMAND_TIMEOUT))?;
    Ok(connection)
}

/// The publisher thread: until stopped, sends what is queued. While Redis is down the
/// shards' publications are refused at the queue (`Cluster::publish`). A connection
/// found dead before a batch went out is replaced and the batch sent on the new one;
/// a batch whose send failed, and what is queued when no connection can be made, are
/// dropped and counted.
/// On each connection it first claims this instance's node number; between batches it
/// renews that and its entry among the cluster's members, and writes what changed of
/// its presence.
pub(super) fn publish(cluster: Arc<Cluster>, client: Client, hub: Hub, queue: Receiver<Outbound>, stop: Receiver<()>) {
    let mut backoff = Backoff::new();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut presence = Writer::new();
    // Every node number was held at the last try (logged once until that changes).
    let mut crowded = false;
    loop {
        // The node number before anything else: the bus counts as up (and /health says
        // ok) only once the ids minted from now on are the cluster's alone.
        let connected = connect(&client).and_then(|mut connection| {
            nodeid::hold(&mut connection, cluster.keys.prefix(), cluster.node, &cluster.number, &mut crowded)?;
            Ok(connection)
        });
        let mut connection = match connected {
            Ok(connection) => connection,
            Err(e) => {
                cluster.health.down(Link::Publish, &e.to_string());
                let stale = (batch.len() + queue.try_iter().count()) as u64;
                batch.clear();
                cluster.health.dropped.fetch_add(stale, Ordering::Relaxed);
                if !backoff.wait(&stop) {
                    return;
                }
                continue;
            }
        };
        cluster.health.up(Link::Publish);
        backoff.reset();
        // Redis may have lost (or restored an older copy of) this instance's presence.
        presence.rewrite();
        let mut heard = Instant::now();
        let mut beat: Option<Instant> = None;
        loop {
            if batch.is_empty() {
                select! {
                    recv(queue) -> item => match item {
                        Ok(item) => batch.push(item),
                        Err(_) => return leave(&mut connection, &cluster),
                    },
                    recv(stop) -> _ => return leave(&mut connection, &cluster),
                    default(TICK) => {}
                }
                batch.extend(queue.try_iter().take(MAX_BATCH - batch.len()));
            }
            // The subscribed connection saw Redis go, or this one has been quiet: check
            // this one before trusting it with a batch.
            if cluster.health.suspect.swap(false, Ordering::AcqRel) || heard.elapsed() >= PING_EVERY {
                if let Err(e) = redis::cmd("PING").exec(&mut connection) {
                    cluster.health.down(Link::Publish, &e.to_string());
                    break;
                }
                heard = Instant::now();
            }
            if beat.is_none_or(|at| at.elapsed() >= HEARTBEAT) {
                let own = members::Summary::of(&hub, &cluster.wanted);
                let renewed =
                    nodeid::hold(&mut connection, cluster.keys.prefix(), cluster.node, &cluster.number, &mut crowded)
                        .and_then(|()| members::beat(&mut connection, &cluster.keys, &own));
                match renewed {
                    Ok(beat) => {
                        if beat.rejoined {
                            presence.rewrite();
                        }
                        *lock(&cluster.roster) = beat.roster;
                    }
                    Err(e) => {
                        cluster.health.down(Link::Publish, &e.to_string());
                        break;
                    }
                }
                beat = Some(Instant::now());
                heard = Instant::now();
            }
            if presence.due() {
                if let Err(e) = presence.sync(&mut connection, &hub, &cluster.wanted, &cluster.keys) {
                    cluster.health.down(Link::Publish, &e.to_string());
                    break;
                }
            }
            if batch.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            let own = cluster.number.get();
            for Outbound { target, frame } in batch.iter() {
                for (channel, addressee) in cluster.channels.routes(target, own) {
                    pipe.cmd("PUBLISH").arg(channel).arg(envelope::encode(cluster.node, &addressee, frame)).ignore();
                }
            }
            let sent = batch.len() as u64;
            batch.clear();
            if let Err(e) = pipe.exec(&mut connection) {
                // Whether Redis took any of them is unknown: the batch counts as dropped
                // rather than risk sending some twice.
                cluster.health.dropped.fetch_add(sent, Ordering::Relaxed);
                cluster.health.down(Link::Publish, &e.to_string());
                break;
            }
            heard = Instant::now();
            cluster.health.published.fetch_add(sent, Ordering::Relaxed);
        }
    }
}

/// Leaves the cluster on a clean shutdown: frees the node number and the member entry.
fn leave(connection: &mut Connection, cluster: &Cluster) {
    nodeid::release(connection, cluster.keys.prefix(), cluster.node, &cluster.number);
    members::leave(connection, &cluster.keys);
}

/// The subscriber thread: until stopped, holds the wanted channels and delivers.
pub(super) fn subscribe(cluster: Arc<Cluster>, client: Client, hub: Hub, stop: Receiver<()>) {
    let mut backoff = Backoff::new();
    loop {
        let lost = match connect(&client) {
            Ok(mut connection) => {
                let mut listener = Listener { cluster: &cluster, hub: &hub, number: cluster.number.get() };
                match listener.serve(&mut connection, &stop, &mut backoff) {
                    Ok(()) => return,
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        cluster.health.down(Link::Subscribe, &lost.to_string());
        answer(&hub, cluster.reach.down());
        if !backoff.wait(&stop) {
            return;
        }
    }
}

struct Listener<'a> {
    cluster: &'a Cluster,
    hub: &'a Hub,
    /// The node number whose channel is subscribed (it follows the instance's).
    number: u16,
}

/// Channels held whatever local connections want: everyone's and this instance's.
const ALWAYS: usize = 2;

impl Listener<'_> {
    /// Subscribes what is wanted and delivers until stopped (`Ok`) or the connection is
    /// lost (`Err`).
    fn serve(&mut self, connection: &mut Connection, stop: &Receiver<()>, backoff: &mut Backoff) -> RedisResult<()> {
        let mut pubsub = connection.as_pubsub();
        let everything = self.cluster.wanted.all();
        let mut channels = vec![self.cluster.channels.everyone(), self.cluster.channels.node(self.number)];
        channels.extend(everything.iter().map(|want| self.cluster.channels.of_want(want)));
        command(&mut pubsub, Command::Subscribe, &channels)?;
        answer(self.hub, self.cluster.reach.up(everything));
        self.cluster.health.channels.store(self.cluster.reach.len() + ALWAYS, Ordering::Relaxed);
        self.cluster.health.up(Link::Subscribe);
        backoff.reset();
        pubsub.set_read_timeout(Some(POLL))?;
        let mut heard = Instant::now();
        loop {
            if matches!(stop.try_recv(), Err(TryRecvError::Disconnected)) {
                return Ok(());
            }
            self.apply_changes(&mut pubsub)?;
            match pubsub.get_message() {
                Ok(message) => {
                    heard = Instant::now();
                    self.deliver(message.get_channel_name(), message.get_payload_bytes());
                }
                Err(e) if e.is_timeout() && heard.elapsed() < PING_EVERY => {}
                Err(e) if e.is_timeout() => {
                    pubsub.set_read_timeout(Some(COMMAND_TIMEOUT))?;
                    pubsub.ping::<redis::Value>()?;
                    pubsub.set_read_timeout(Some(POLL))?;
                    heard = Instant::now();
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Subscribes the channels local connections came to want, unsubscribes those no
    /// longer wanted: one command per kind for all changes since the last look. The node
    /// channel follows the instance's node number when the publisher had to move it.
    fn apply_changes(&mut self, pubsub: &mut PubSub<'_>) -> RedisResult<()> {
        let changes = self.cluster.reach.changes(&self.cluster.wanted);
        let number = self.cluster.number.get();
        if changes.gained.is_empty() && changes.lost.is_empty() && number == self.number {
            return Ok(());
        }
        let names = |wants: &[Want]| wants.iter().map(|want| self.cluster.channels.of_want(want)).collect::<Vec<_>>();
        let (mut gained, mut lost) = (names(&changes.gained), names(&changes.lost));
        if number != self.number {
            gained.push(self.cluster.channels.node(number));
            lost.push(self.cluster.channels.node(self.number));
            self.number = number;
        }
        pubsub.set_read_timeout(Some(COMMAND_TIMEOUT))?;
        command(pubsub, Command::Subscribe, &gained)?;
        answer(self.hub, self.cluster.reach.held(&changes.gained));
        command(pubsub, Command::Unsubscribe, &lost)?;
        answer(self.hub, self.cluster.reach.released(&changes.lost));
        pubsub.set_read_timeout(Some(POLL))?;
        self.cluster.health.channels.store(self.cluster.reach.len() + ALWAYS, Ordering::Relaxed);
        Ok(())
    }

    /// Hands a publication from another instance to the local shards, as one shared
    /// frame; this instance's own publications come back too and are skipped.
    fn deliver(&self, channel: &str, payload: &[u8]) {
        let Some(received) = envelope::decode(payload) else {
            log::debug!("cluster: ignoring a message on {channel} that is not a wshub publication");
            return;
        };
        if received.node == self.cluster.node {
            return;
        }
        let target = match self.cluster.channels.arrival(channel, &received) {
            Some(Arrival::Target(target)) => target,
            Some(Arrival::Filter { name, arg }) => match self.hub.filters().bind_json(name, arg) {
                Ok(filter) => Target::Filtered(filter),
                Err(unknown) => {
                    self.cluster.health.unknown_filters.fetch_add(1, Ordering::Relaxed);
                    log::debug!("cluster: ignoring a filtered send from another instance: {unknown} here");
                    return;
                }
            },
            None => {
                log::debug!("cluster: ignoring a publication on {channel} whose envelope it does not carry");
                return;
            }
        };
        self.cluster.health.received.fetch_add(1, Ordering::Relaxed);
        // A full inbox is counted by that shard; the other shards still get it.
        let _ = self.hub.route_from(Origin::Cluster, &target, &received.frame());
    }
}

/// Sends the answers that waited for a channel (`reach`) to their connections, here.
fn answer(hub: &Hub, waiters: Vec<Waiter>) {
    for Waiter { conn, frame } in waiters {
        // Only a full inbox refuses, and that shard counts it.
        let _ = hub.route_from(Origin::Cluster, &Target::Conn(conn), &frame);
    }
}

enum Command {
    Subscribe,
    Unsubscribe,
}

/// Sends SUBSCRIBE or UNSUBSCRIBE for `channels`, in commands of at most
/// `CHANNELS_PER_COMMAND`; none for an empty list (a bare UNSUBSCRIBE drops every one).
fn command(pubsub: &mut PubSub<'_>, kind: Command, channels: &[String]) -> RedisResult<()> {
    for chunk in channels.chunks(CHANNELS_PER_COMMAND) {
        match kind {
            Command::Subscribe => pubsub.subscribe(chunk)?,
            Command::Unsubscribe => pubsub.unsubscribe(chunk)?,
        }
    }
    Ok(())
}
