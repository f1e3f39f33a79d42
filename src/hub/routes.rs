//! Shard-local routing tables: which local connections subscribe to which topics, and
//! the per-shard directory other threads read for presence and to skip shards with no
//! subscriber. Sits between handler effects (subscribe, publish) and delivery; free of
//! sockets, so every rule here is unit-tested in memory.

use std::collections::HashMap;
use std::sync::Arc;

/// Topic subscriptions of one shard's connections (slab keys).
#[derive(Default)]
pub(crate) struct Routes {
    /// Topic → local subscribers.
    topics: HashMap<Arc<str>, Vec<usize>>,
    /// Connection → its topics (only connections with at least one), for cleanup.
    by_conn: HashMap<usize, Vec<Arc<str>>>,
}

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeError {
    /// The connection already has the maximum number of subscriptions.
    TooMany,
}

impl Routes {
    /// Subscribes `key` to `topic`. Returns `Ok(true)` if it was new, `Ok(false)` if the
    /// connection was already subscribed (idempotent).
    pub fn subscribe(&mut self, key: usize, topic: &Arc<str>, limit: usize) -> Result<bool, SubscribeError> {
        let mine = self.by_conn.entry(key).or_default();
        if mine.iter().any(|t| t == topic) {
            return Ok(false);
        }
        if mine.len() >= limit {
            if mine.is_empty() {
                self.by_conn.remove(&key);
            }
            return Err(SubscribeError::TooMany);
        }
        mine.push(topic.clone());
        self.topics.entry(topic.clone()).or_default().push(key);
        Ok(true)
    }

    /// Unsubscribes `key` from `topic`; `false` if it was not subscribed.
    pub fn unsubscribe(&mut self, key: usize, topic: &str) -> bool {
        let Some(mine) = self.by_conn.get_mut(&key) else { return false };
        let Some(at) = mine.iter().position(|t| &**t == topic) else { return false };
        mine.swap_remove(at);
        if mine.is_empty() {
            self.by_conn.remove(&key);
        }
        self.drop_subscriber(topic, key);
        true
    }

    /// Forgets everything about a connection that is gone; returns its topics.
    pub fn remove_conn(&mut self, key: usize) -> Vec<Arc<str>> {
        let topics = self.by_conn.remove(&key).unwrap_or_default();
        for topic in &topics {
            self.drop_subscriber(topic, key);
        }
        topics
    }

    fn drop_subscriber(&mut self, topic: &str, key: usize) {
        if let Some(keys) = self.topics.get_mut(topic) {
            keys.retain(|&k| k != key);
            if keys.is_empty() {
                self.topics.remove(topic);
            }
        }
    }

    /// The local subscribers of `topic`.
    pub fn subscribers(&self, topic: &str) -> &[usize] {
        self.topics.get(topic).map_or(&[], Vec::as_slice)
    }

    #[cfg(test)]
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    #[cfg(test)]
    pub fn subscription_count(&self) -> usize {
        self.by_conn.values().map(Vec::len).sum()
    }
}

/// What other threads may read about a shard's topics: per topic, how many of this shard's
/// connections of each user subscribe. Written only by the shard's own thread, so its
/// mutex is uncontended except while a presence query or a publisher looks.
#[derive(Default, Debug)]
pub struct Directory {
    topics: HashMap<Arc<str>, HashMap<Arc<str>, u32>>,
}

impl Directory {
    pub(crate) fn add(&mut self, topic: &Arc<str>, user: &Arc<str>) {
        *self.topics.entry(topic.clone()).or_default().entry(user.clone()).or_default() += 1;
    }

    pub(crate) fn remove(&mut self, topic: &str, user: &str) {
        if let Some(users) = self.topics.get_mut(topic) {
            if let Some(count) = users.get_mut(user) {
                *count -= 1;
                if *count == 0 {
                    users.remove(user);
                }
            }
            if users.is_empty() {
                self.topics.remove(topic);
            }
        }
    }

    /// Whether any connection on this shard subscribes to `topic`.
    pub fn has_topic(&self, topic: &str) -> bool {
        self.topics.contains_key(topic)
    }

    /// The users subscribed to `topic` on this shard.
    pub fn users(&self, topic: &str) -> impl Iterator<Item = &Arc<str>> {
        self.topics.get(topic).into_iter().flat_map(|users| users.keys())
    }

    pub fn topics(&self) -> impl Iterator<Item = &Arc<str>> {
        self.topics.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str) -> Arc<str> {
        name.into()
    }

    #[test]
    fn subscribe_is_idempotent_and_limited() {
        let mut routes = Routes::default();
        assert_eq!(routes.subscribe(1, &topic("a"), 2), Ok(true));
        assert_eq!(routes.subscribe(1, &topic("a"), 2), Ok(false));
        assert_eq!(routes.subscribe(1, &topic("b"), 2), Ok(true));
        assert_eq!(routes.subscribe(1, &topic("c"), 2), Err(SubscribeError::TooMany));
        assert_eq!(routes.subscribers("a"), &[1]);
        assert_eq!(routes.subscription_count(), 2);
    }

    #[test]
    fn unsubscribe_and_disconnect_leave_no_trace() {
        let mut routes = Routes::default();
        for key in 0..1000 {
            routes.subscribe(key, &topic("room"), 10).unwrap();
            routes.subscribe(key, &topic(&format!("own.{key}")), 10).unwrap();
        }
        for key in 0..500 {
            assert!(routes.unsubscribe(key, "room"));
            assert!(!routes.unsubscribe(key, "room"), "only once");
        }
        assert_eq!(routes.subscribers("room").len(), 500);
        for key in 0..1000 {
            routes.remove_conn(key);
        }
        assert_eq!(routes.topic_count(), 0);
        assert_eq!(routes.subscription_count(), 0);
        assert!(routes.topics.is_empty() && routes.by_conn.is_empty());
    }

    #[test]
    fn a_refused_first_subscription_leaves_nothing_behind() {
        let mut routes = Routes::default();
        assert_eq!(routes.subscribe(9, &topic("x"), 0), Err(SubscribeError::TooMany));
        assert!(routes.by_conn.is_empty());
    }

    #[test]
    fn the_directory_counts_connections_per_user() {
        let mut directory = Directory::default();
        let (room, ann) = (topic("room"), topic("ann"));
        directory.add(&room, &ann);
        directory.add(&room, &ann);
        directory.remove("room", "ann");
        assert!(directory.has_topic("room"), "ann still has one connection in the room");
        directory.remove("room", "ann");
        assert!(!directory.has_topic("room"));
        assert_eq!(directory.topics().count(), 0);
    }
}
