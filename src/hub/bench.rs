//! A handle on one shard's per-connection tables (users and subscriptions)
//! for `benches/tables.rs`: the same calls, in the same order and under the same locks,
//! as a shard's admit/forget and a handler's subscribe/unsubscribe, without sockets.
//! Not part of the API (hidden from the docs).

use std::sync::Arc;

use super::handler::{Context, ShardRouting};
use super::{ConnId, Hub};
use crate::auth::Gate;
use crate::sync::lock;

/// One shard's tables, driven directly.
pub struct Tables {
    hub: Hub,
    routing: ShardRouting,
    /// What a connection's slab entry would hold: its user.
    users: Vec<Option<Arc<str>>>,
}

impl Default for Tables {
    fn default() -> Self {
        Self::new()
    }
}

impl Tables {
    pub fn new() -> Self {
        // Nothing is sent through it: only the shard's shared tables are used.
        let hub = Hub::undrained(1, 1).0;
        let routing = ShardRouting {
            recovering: Default::default(),
            index: 0,
            hub: hub.clone(),
            max_subscriptions: usize::MAX,
            grants: Default::default(),
            gate: Arc::new(Gate::new(&Default::default())),
        };
        Tables { hub, routing, users: Vec::new() }
    }

    fn id(key: usize) -> ConnId {
        ConnId::new(0, 0, key, 1)
    }

    /// A connection at `key` completed its upgrade (as `admit`).
    pub fn open(&mut self, key: usize, user: Option<&str>) {
        let user: Option<Arc<str>> = user.map(Into::into);
        if self.users.len() <= key {
            self.users.resize(key + 1, None);
        }
        if let Some(user) = &user {
            lock(&self.hub.shared(0).users).add(user, key as u32);
        }
        self.users[key] = user;
    }

    /// A handler's `subscribe`.
    pub fn subscribe(&mut self, key: usize, topic: &str) -> bool {
        let mut effects = Vec::new();
        let mut cx = Context::new(Self::id(key), self.users[key].as_ref(), &mut effects, &mut self.routing);
        cx.subscribe(topic).unwrap_or(false)
    }

    /// A handler's `unsubscribe`.
    pub fn unsubscribe(&mut self, key: usize, topic: &str) -> bool {
        let mut effects = Vec::new();
        let mut cx = Context::new(Self::id(key), self.users[key].as_ref(), &mut effects, &mut self.routing);
        cx.unsubscribe(topic)
    }

    /// The connection is gone (as `forget`).
    pub fn close(&mut self, key: usize) {
        let shared = self.hub.shared(0);
        if let Some(user) = self.users[key].take() {
            lock(&shared.users).remove(&user, key as u32);
        }
        lock(&shared.topics).remove_conn(key as u32);
    }

    /// Appends the local subscribers of `topic` to `keys`, as a publish collects them.
    pub fn subscribers(&self, topic: &str, keys: &mut Vec<usize>) {
        let table = lock(&self.hub.shared(0).topics);
        keys.extend(table.subscribers(topic).iter().map(|&key| key as usize));
    }

    /// Distinct users subscribed to `topic` (`Hub::presence`).
    pub fn presence(&self, topic: &str) -> usize {
        self.hub.presence(topic).count
    }
}
