//! A handle on one shard's per-connection tables (users, subscriptions, the directory)
//! for `benches/tables.rs`: the same calls, in the same order and under the same locks,
//! as a shard's admit/forget and a handler's subscribe/unsubscribe, without sockets.
//! Not part of the API (hidden from the docs).

use std::sync::Arc;

use super::handler::ShardRouting;
use super::routes::Routes;
use super::{ConnId, Hub};
use crate::auth::Gate;
use crate::sync::lock;

/// One shard's tables, driven directly.
pub struct Tables {
    hub: Hub,
    routing: ShardRouting,
    /// What a connection's slab entry would hold: its user.
    users: Vec<Option<Arc<str>>>,
    local: std::collections::HashMap<Arc<str>, Vec<usize>>,
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
            index: 0,
            hub: hub.clone(),
            routes: Routes::default(),
            max_subscriptions: usize::MAX,
            grants: Default::default(),
            gate: Arc::new(Gate::new(&Default::default())),
        };
        Tables { hub, routing, users: Vec::new(), local: Default::default() }
    }

    fn id(key: usize) -> ConnId {
        ConnId::new(0, key, 1)
    }

    /// A connection at `key` completed its upgrade (as `admit`).
    pub fn open(&mut self, key: usize, user: Option<&str>) {
        let user: Option<Arc<str>> = user.map(Into::into);
        if self.users.len() <= key {
            self.users.resize(key + 1, None);
        }
        if let Some(user) = &user {
            let keys = self.local.entry(user.clone()).or_default();
            if keys.is_empty() {
                lock(&self.hub.shared(0).users).insert(user.clone());
            }
            keys.push(key);
        }
        self.users[key] = user;
    }

    /// As a handler's `subscribe`.
    pub fn subscribe(&mut self, key: usize, topic: &str) -> bool {
        let topic: Arc<str> = topic.into();
        let limit = self.routing.max_subscriptions;
        let added = self.routing.routes.subscribe(key, &topic, limit).unwrap_or(false);
        if added {
            let identity = ShardRouting::identity(Self::id(key), self.users[key].as_ref());
            lock(&self.hub.shared(0).directory).add(&topic, &identity);
        }
        added
    }

    /// As a handler's `unsubscribe`.
    pub fn unsubscribe(&mut self, key: usize, topic: &str) -> bool {
        let removed = self.routing.routes.unsubscribe(key, topic);
        if removed {
            let identity = ShardRouting::identity(Self::id(key), self.users[key].as_ref());
            lock(&self.hub.shared(0).directory).remove(topic, &identity);
        }
        removed
    }

    /// The connection is gone (as `forget`).
    pub fn close(&mut self, key: usize) {
        let user = self.users[key].take();
        let shared = self.hub.shared(0);
        if let Some(user) = &user {
            if let Some(keys) = self.local.get_mut(user) {
                keys.retain(|&k| k != key);
                if keys.is_empty() {
                    self.local.remove(user);
                    lock(&shared.users).remove(user);
                }
            }
        }
        let topics = self.routing.routes.remove_conn(key);
        if !topics.is_empty() {
            let identity = ShardRouting::identity(Self::id(key), user.as_ref());
            let mut directory = lock(&shared.directory);
            for topic in &topics {
                directory.remove(topic, &identity);
            }
        }
    }

    /// Appends the local subscribers of `topic` to `keys`, as a publish collects them.
    pub fn subscribers(&self, topic: &str, keys: &mut Vec<usize>) {
        keys.extend_from_slice(self.routing.routes.subscribers(topic));
    }

    /// Distinct users subscribed to `topic` (`Hub::presence`).
    pub fn presence(&self, topic: &str) -> usize {
        self.hub.presence(topic).count
    }
}
