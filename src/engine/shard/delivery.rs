//! Deliveries on one shard: the local part of a [`Target`] (a connection, a user, a
//! topic's subscribers, everyone, or the connections a filter picks). Every path ends in
//! [`Shard::deliver`], which queues the frame (written at the end of the loop pass),
//! counts it, and evicts a consumer too far behind.

use std::mem;

use super::Shard;
use crate::clock::Tick;
use crate::engine::conn::{Connection, Delivery};
use crate::frame::SharedFrame;
use crate::hub::batch::Hold;
use crate::hub::handler::Handler;
use crate::hub::{ConnId, Filter, Target};
use crate::sync::lock;

impl<H: Handler> Shard<H> {
    /// Delivers `frame` to this shard's connections that `target` names.
    pub(super) fn deliver_local(&mut self, target: &Target, frame: &SharedFrame, now: Tick) {
        match target {
            // A topic with history is never batched: each message carries its own offset.
            Target::Topic { topic, .. } if self.routing.hub.keeps(topic) => self.deliver_to_topic(topic, frame, now),
            Target::Topic { topic, data } => match self.batcher.hold(topic, data, now) {
                Hold::NotBatched => self.deliver_to_topic(topic, frame, now),
                Hold::Full(batch) => self.deliver_to_topic(topic, &batch, now),
                Hold::Held => {}
            },
            Target::Everyone => self.broadcast_local(frame, now),
            Target::User(user) => self.deliver_to_user(user, frame, now),
            Target::Conn(id) => self.deliver_to_id(*id, frame, now),
            Target::Filtered(filter) => self.filtered_local(filter, frame, now),
        }
    }

    // Inlined into every fan-out loop by hand: the inliner stopped doing it once delivery
    // gained call sites, which cost ~30 instructions a delivery (callgrind, fanout bench).
    #[inline(always)]
    pub(super) fn deliver(&mut self, key: usize, frame: &SharedFrame, now: Tick) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let delivery = conn.send(frame, now, &self.io.limits);
        if delivery == Delivery::Queued {
            self.io.counters.messages_out += 1;
            self.io.counters.bytes_out += frame.payload_len() as u64;
        }
        if delivery == Delivery::Evicted {
            self.io.counters.evictions += 1;
            log::warn!(
                "shard {}: evicting slow consumer {} (over {} bytes pending), close 1008",
                self.index,
                ConnId::new(conn.node, self.index, key, conn.generation),
                self.shared.config.max_pending_bytes
            );
        }
        self.settle(key);
    }

    fn deliver_to_id(&mut self, id: ConnId, frame: &SharedFrame, now: Tick) {
        if self.holds(id).is_some() {
            self.deliver(id.slot(), frame, now);
        }
    }

    /// The live connection `id` names on this shard: the whole id is compared (node
    /// number, shard, slot, generation, and no bits past them).
    fn holds(&self, id: ConnId) -> Option<&Connection> {
        let conn = self.conns.get(id.slot())?;
        (ConnId::new(conn.node, self.index, id.slot(), conn.generation) == id).then_some(conn)
    }

    fn deliver_to_user(&mut self, user: &str, frame: &SharedFrame, now: Tick) {
        let mut keys = mem::take(&mut self.targets);
        keys.extend(lock(&self.routing.hub.shared(self.index).users).keys(user).iter().map(|&key| key as usize));
        if keys.is_empty() {
            // In open mode a connection without a user goes by its connection id.
            keys.extend(self.anonymous_conn(user));
        }
        self.deliver_to_all(&mut keys, frame, now);
        self.targets = keys;
    }

    fn broadcast_local(&mut self, frame: &SharedFrame, now: Tick) {
        let mut keys = mem::take(&mut self.targets);
        keys.extend(self.conns.iter().filter(|(_, conn)| conn.is_open()).map(|(key, _)| key));
        self.deliver_to_all(&mut keys, frame, now);
        self.targets = keys;
    }

    /// The local connection whose id is `name`, if it has no user of its own.
    fn anonymous_conn(&self, name: &str) -> Option<usize> {
        let id = ConnId::parse(name)?;
        self.holds(id).is_some_and(|conn| conn.user.is_none()).then_some(id.slot())
    }

    fn deliver_to_topic(&mut self, topic: &str, frame: &SharedFrame, now: Tick) {
        let mut keys = mem::take(&mut self.targets);
        keys.extend(
            lock(&self.routing.hub.shared(self.index).topics).subscribers(topic).iter().map(|&key| key as usize),
        );
        // A subscriber recovering this topic gets these in its replay instead.
        let recovering = &self.routing.recovering;
        if !recovering.is_empty() {
            keys.retain(|&key| !recovering.holds_back(key as u32, topic));
        }
        self.deliver_to_all(&mut keys, frame, now);
        self.targets = keys;
    }

    /// A recovering subscription's replay and ack, if it still waits for them; from then
    /// on the topic's live deliveries reach it (or, refused, it is unsubscribed).
    pub(super) fn replay(
        &mut self,
        id: ConnId,
        request: u64,
        topic: &str,
        frames: &[SharedFrame],
        subscribed: bool,
        now: Tick,
    ) {
        if self.holds(id).is_none() || !self.routing.recovering.finish(id.slot() as u32, request) {
            return;
        }
        if !subscribed {
            lock(&self.routing.hub.shared(self.index).topics).unsubscribe(id.slot() as u32, topic);
        }
        for frame in frames {
            self.deliver(id.slot(), frame, now);
        }
    }

    /// Sends the batches whose interval has ended to their topics' local subscribers.
    pub(super) fn deliver_batches(&mut self, now: Tick) {
        let mut due = Vec::new();
        self.batcher.take_due(now, &mut due);
        for (topic, frame) in due {
            self.deliver_to_topic(&topic, &frame, now);
        }
    }

    fn filtered_local(&mut self, filter: &Filter, frame: &SharedFrame, now: Tick) {
        let mut keys = mem::take(&mut self.targets);
        {
            let sessions = lock(&self.routing.hub.shared(self.index).sessions);
            for (id, session) in sessions.iter() {
                if self.holds(*id).is_some_and(|conn| conn.is_open()) && filter.matches(session) {
                    keys.push(id.slot());
                }
            }
        }
        self.deliver_to_all(&mut keys, frame, now);
        self.targets = keys;
    }

    /// Delivers one shared frame to every key in `keys` (left empty afterwards).
    fn deliver_to_all(&mut self, keys: &mut Vec<usize>, frame: &SharedFrame, now: Tick) {
        for key in keys.drain(..) {
            self.deliver(key, frame, now);
        }
    }
}
