//! One shard's topic subscriptions, in one table: which local connections subscribe to
//! which topics. Its shard's thread writes it and reads it to deliver; other threads read
//! it for presence, stats and to skip shards without a subscriber (under the shard's lock
//! in `ShardShared`). Free of sockets, so every rule here is unit-tested in memory.
//!
//! Laid out for very many connections with a few topics each (one shared, some of their
//! own): a topic's name is allocated once and known by a small id; a topic with one
//! subscriber and a connection with up to [`INLINE`] topics need no heap block of their
//! own. Presence reads each subscriber's identity from its member entry, instead of
//! keeping a second per-topic map of users.

use std::collections::HashMap;
use std::sync::Arc;

use super::keys::{KeyLists, Keys};
use super::wanted::{Want, Wanted};

/// Topics a member entry holds inline; more go to a side table. Four cost no more than
/// three: the entry is padded to 8 bytes either way.
pub(crate) const INLINE: usize = 4;
/// An unused inline slot.
const NONE: u32 = u32::MAX;
/// Tables smaller than this are never shrunk (not worth the churn).
const MIN_SHRINK: usize = 64;

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeError {
    /// The connection already has the maximum number of subscriptions.
    TooMany,
}

/// A topic with at least one local subscriber.
struct Topic {
    /// Shared with its key in `TopicTable::ids`; `None` while the id is free.
    name: Option<Arc<str>>,
    subscribers: Keys,
}

/// A connection with at least one subscription.
struct Member {
    /// Its user, or its connection id in open mode: what presence reports.
    identity: Arc<str>,
    /// Its first topics' ids, unused slots `NONE`.
    topics: [u32; INLINE],
}

#[derive(Default)]
pub(crate) struct TopicTable {
    ids: HashMap<Arc<str>, u32>,
    /// By id.
    topics: Vec<Topic>,
    /// Ids of `topics` entries without a topic, for reuse.
    free: Vec<u32>,
    /// Subscriber lists of topics with more than one.
    lists: KeyLists,
    /// By slab key.
    members: HashMap<u32, Member>,
    /// Topics of a member past its inline ones, by slab key (rare: few connections
    /// subscribe to more than `INLINE` topics).
    more: HashMap<u32, Vec<u32>>,
    /// Times the ids were renumbered, for tests to know that they were.
    #[cfg(test)]
    renumbered: usize,
    /// In a cluster: told of each topic's first and last subscriber here, and of every
    /// change of its subscribers (for presence).
    wanted: Option<Arc<Wanted>>,
}

impl TopicTable {
    /// A table that tells `wanted` when a topic gains its first or loses its last
    /// subscriber here.
    pub fn watched(wanted: Option<Arc<Wanted>>) -> Self {
        TopicTable { wanted, ..TopicTable::default() }
    }

    /// Subscribes connection `key` (whose identity `identity` makes, if it is new here) to
    /// `topic`. `Ok(true)` if it was new, `Ok(false)` if it already was (idempotent).
    pub fn subscribe(
        &mut self,
        key: u32,
        identity: impl FnOnce() -> Arc<str>,
        topic: &str,
        limit: usize,
    ) -> Result<bool, SubscribeError> {
        let id = self.ids.get(topic).copied();
        if let Some(member) = self.members.get(&key) {
            let more = self.more.get(&key).map_or(&[][..], Vec::as_slice);
            if id.is_some_and(|id| member.topics.contains(&id) || more.contains(&id)) {
                return Ok(false);
            }
        }
        if self.count_of(key) >= limit {
            return Err(SubscribeError::TooMany);
        }
        let id = match id {
            Some(id) => {
                self.topics[id as usize].subscribers.push(key, &mut self.lists);
                id
            }
            None => self.create(topic, key),
        };
        self.touch(id);
        let member = self.members.entry(key).or_insert_with(|| Member { identity: identity(), topics: [NONE; INLINE] });
        match member.topics.iter_mut().find(|slot| **slot == NONE) {
            Some(slot) => *slot = id,
            None => self.more.entry(key).or_default().push(id),
        }
        Ok(true)
    }

    /// Unsubscribes `key` from `topic`; `false` if it was not subscribed.
    pub fn unsubscribe(&mut self, key: u32, topic: &str) -> bool {
        let (Some(&id), Some(member)) = (self.ids.get(topic), self.members.get_mut(&key)) else { return false };
        if let Some(slot) = member.topics.iter_mut().find(|slot| **slot == id) {
            *slot = NONE;
            // Keep the member's inline topics first: refill the slot from the side table.
            if let Some(more) = self.more.get_mut(&key) {
                *slot = more.pop().expect("side lists are never empty");
                if more.is_empty() {
                    self.more.remove(&key);
                }
            }
        } else {
            let Some(more) = self.more.get_mut(&key) else { return false };
            let Some(at) = more.iter().position(|&t| t == id) else { return false };
            more.swap_remove(at);
            if more.is_empty() {
                self.more.remove(&key);
            }
        }
        if member.topics.iter().all(|&t| t == NONE) {
            self.members.remove(&key);
            shrink(&mut self.members);
        }
        self.drop_subscriber(id, key);
        self.compact();
        true
    }

    /// Forgets every subscription of a connection that is gone.
    pub fn remove_conn(&mut self, key: u32) {
        let Some(member) = self.members.remove(&key) else { return };
        for id in member.topics.into_iter().filter(|&t| t != NONE) {
            self.drop_subscriber(id, key);
        }
        for id in self.more.remove(&key).unwrap_or_default() {
            self.drop_subscriber(id, key);
        }
        shrink(&mut self.members);
        shrink(&mut self.more);
        // Only now: renumbering would change the ids still being dropped above.
        self.compact();
    }

    /// The local subscribers of `topic`.
    pub fn subscribers(&self, topic: &str) -> &[u32] {
        self.ids.get(topic).map_or(&[], |&id| self.topics[id as usize].subscribers.as_slice(&self.lists))
    }

    /// Whether any connection on this shard subscribes to `topic`.
    pub fn has_topic(&self, topic: &str) -> bool {
        self.ids.contains_key(topic)
    }

    /// The identities subscribed to `topic` on this shard, once per subscribed
    /// connection (a user with two connections here comes twice).
    pub fn users(&self, topic: &str) -> impl Iterator<Item = &Arc<str>> {
        self.subscribers(topic).iter().filter_map(|key| self.members.get(key)).map(|member| &member.identity)
    }

    /// Topics with at least one local subscriber.
    pub fn topics(&self) -> impl Iterator<Item = &Arc<str>> {
        self.ids.keys()
    }

    fn count_of(&self, key: u32) -> usize {
        let inline = self.members.get(&key).map_or(0, |m| m.topics.iter().filter(|&&t| t != NONE).count());
        inline + self.more.get(&key).map_or(0, Vec::len)
    }

    fn create(&mut self, name: &str, key: u32) -> u32 {
        let name: Arc<str> = name.into();
        let topic = Topic { name: Some(name.clone()), subscribers: Keys::One(key) };
        let id = match self.free.pop() {
            Some(id) => {
                self.topics[id as usize] = topic;
                id
            }
            None => {
                self.topics.push(topic);
                (self.topics.len() - 1) as u32
            }
        };
        if let Some(wanted) = &self.wanted {
            wanted.gain(Want::Topic(name.clone()));
        }
        self.ids.insert(name, id);
        id
    }

    /// In a cluster, marks topic `id`'s local subscribers as changed, for presence.
    fn touch(&self, id: u32) {
        if let (Some(wanted), Some(name)) = (&self.wanted, &self.topics[id as usize].name) {
            wanted.touch(name);
        }
    }

    fn drop_subscriber(&mut self, id: u32, key: u32) {
        self.touch(id);
        let topic = &mut self.topics[id as usize];
        if !topic.subscribers.remove(key, &mut self.lists) {
            return;
        }
        let name = topic.name.take().expect("a live topic has its name");
        self.ids.remove(&name);
        if let Some(wanted) = &self.wanted {
            wanted.lose(Want::Topic(name));
        }
        shrink(&mut self.ids);
        self.free.push(id);
    }

    /// Gives back the memory of topics that are gone: when at least half the ids are
    /// free, and as many as there are members, renumbers the live topics (rewriting the
    /// members' ids). That costs O(topics + members) = O(free ids), each freed by one
    /// removal since the last time, so O(1) amortized.
    fn compact(&mut self) {
        if self.ids.is_empty() {
            self.topics = Vec::new();
            self.free = Vec::new();
            return;
        }
        let free = self.free.len();
        if free < MIN_SHRINK || free * 2 < self.topics.len() || free < self.members.len() {
            return;
        }
        let mut renumbered = vec![NONE; self.topics.len()];
        let mut live = Vec::with_capacity(self.ids.len() * 2);
        for (old, topic) in std::mem::take(&mut self.topics).into_iter().enumerate() {
            if topic.name.is_some() {
                renumbered[old] = live.len() as u32;
                live.push(topic);
            }
        }
        self.topics = live;
        self.free = Vec::new();
        #[cfg(test)]
        {
            self.renumbered += 1;
        }
        let new_id = |id: &mut u32| {
            if *id != NONE {
                *id = renumbered[*id as usize];
            }
        };
        self.ids.values_mut().for_each(new_id);
        self.members.values_mut().flat_map(|member| member.topics.iter_mut()).for_each(new_id);
        self.more.values_mut().flat_map(|ids| ids.iter_mut()).for_each(new_id);
    }

    #[cfg(test)]
    pub fn topic_count(&self) -> usize {
        self.ids.len()
    }

    #[cfg(test)]
    pub fn subscription_count(&self) -> usize {
        self.members.keys().map(|&key| self.count_of(key)).sum::<usize>()
    }

    /// Heap capacity still held (entries and slots): for tests that a table left empty
    /// keeps nothing.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.ids.capacity()
            + self.topics.capacity()
            + self.free.capacity()
            + self.members.capacity()
            + self.more.capacity()
            + self.lists.capacity()
    }
}

/// A map that emptied to under a quarter of its capacity gives half of it back, so a
/// burst (a million topics) does not pin its peak for good; amortized O(1).
fn shrink<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > MIN_SHRINK && map.len() * 4 < map.capacity() {
        map.shrink_to(map.len() * 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(name: &str) -> impl FnOnce() -> Arc<str> + '_ {
        move || name.into()
    }

    #[test]
    fn subscribe_is_idempotent_and_limited() {
        let mut table = TopicTable::default();
        assert_eq!(table.subscribe(1, who("ann"), "a", 2), Ok(true));
        assert_eq!(table.subscribe(1, who("ann"), "a", 2), Ok(false));
        assert_eq!(table.subscribe(1, who("ann"), "b", 2), Ok(true));
        assert_eq!(table.subscribe(1, who("ann"), "c", 2), Err(SubscribeError::TooMany));
        assert_eq!(table.subscribe(1, who("ann"), "a", 2), Ok(false), "already: not refused");
        assert_eq!(table.subscribers("a"), &[1]);
        assert_eq!(table.subscription_count(), 2);
        assert!(!table.has_topic("c"));
    }

    #[test]
    fn unsubscribe_and_disconnect_leave_no_trace() {
        let mut table = TopicTable::default();
        for key in 0..1000 {
            table.subscribe(key, who("u"), "room", 10).unwrap();
            table.subscribe(key, who("u"), &format!("own.{key}"), 10).unwrap();
        }
        for key in 0..500 {
            assert!(table.unsubscribe(key, "room"));
            assert!(!table.unsubscribe(key, "room"), "only once");
        }
        assert_eq!(table.subscribers("room").len(), 500);
        assert_eq!(table.subscribers("own.7"), &[7]);
        for key in 0..1000 {
            table.remove_conn(key);
        }
        assert_eq!((table.topic_count(), table.subscription_count()), (0, 0));
        assert!(table.members.is_empty() && table.more.is_empty() && table.topics.is_empty());
    }

    #[test]
    fn topics_past_the_inline_ones_go_to_the_side_table_and_back() {
        let mut table = TopicTable::default();
        let names: Vec<String> = (0..INLINE + 2).map(|t| format!("t{t}")).collect();
        for name in &names {
            assert_eq!(table.subscribe(4, who("ann"), name, 10), Ok(true));
        }
        assert_eq!(table.more[&4].len(), 2);
        assert_eq!(table.subscribe(4, who("ann"), &names[INLINE + 1], 10), Ok(false), "found in the side table");
        assert!(table.unsubscribe(4, &names[0]), "an inline one: refilled from the side table");
        assert_eq!(table.more[&4].len(), 1);
        assert!(table.unsubscribe(4, &names[INLINE + 1]) || table.unsubscribe(4, &names[INLINE]));
        assert!(table.more.is_empty());
        assert_eq!(table.subscription_count(), INLINE);
        assert!(names.iter().skip(1).all(|name| table.subscribers(name).len() <= 1));
        table.remove_conn(4);
        assert_eq!(table.topic_count(), 0);
        assert!(table.members.is_empty());
    }

    #[test]
    fn a_refused_first_subscription_leaves_nothing_behind() {
        let mut table = TopicTable::default();
        assert_eq!(table.subscribe(9, who("ann"), "x", 0), Err(SubscribeError::TooMany));
        assert!(table.members.is_empty() && table.ids.is_empty());
    }

    #[test]
    fn presence_reads_each_subscribers_identity() {
        let mut table = TopicTable::default();
        table.subscribe(1, who("ann"), "room", 8).unwrap();
        table.subscribe(2, who("ann"), "room", 8).unwrap();
        table.subscribe(3, who("bob"), "room", 8).unwrap();
        table.subscribe(3, who("bob"), "other", 8).unwrap();
        let mut users: Vec<&str> = table.users("room").map(|user| &**user).collect();
        users.sort();
        assert_eq!(users, ["ann", "ann", "bob"]);
        table.unsubscribe(1, "room");
        table.remove_conn(2);
        assert_eq!(table.users("room").map(|user| &**user).collect::<Vec<_>>(), ["bob"]);
        assert_eq!(table.topics().count(), 2);
    }

    #[test]
    fn ids_are_renumbered_when_most_topics_are_gone() {
        let mut table = TopicTable::default();
        for key in 0..1000 {
            table.subscribe(key, who("u"), "shared", 8).unwrap();
            table.subscribe(key, who("u"), &format!("own.{key}"), 8).unwrap();
        }
        for key in 0..900 {
            table.remove_conn(key);
        }
        assert!(table.renumbered > 0 && table.topics.len() < 1001, "renumbered: {} slots", table.topics.len());
        for key in 900..1000 {
            assert_eq!(table.subscribers(&format!("own.{key}")), &[key]);
            assert!(table.unsubscribe(key, &format!("own.{key}")));
        }
        assert_eq!(table.subscribers("shared").len(), 100);
        assert_eq!(table.topic_count(), 1);
    }

    /// Every topic's subscribers are the model's.
    fn check(table: &TopicTable, model: &HashMap<u32, std::collections::BTreeSet<String>>) {
        for t in 0..400 {
            let topic = format!("t{t}");
            let mut got = table.subscribers(&topic).to_vec();
            got.sort_unstable();
            let mut want: Vec<u32> = model.iter().filter(|(_, mine)| mine.contains(&topic)).map(|(&k, _)| k).collect();
            want.sort_unstable();
            assert_eq!(got, want, "subscribers of {topic}");
            assert_eq!(table.has_topic(&topic), !want.is_empty());
        }
    }

    #[test]
    fn random_churn_matches_a_plain_model() {
        use std::collections::BTreeSet;
        // A small xorshift: deterministic, no dependency.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |bound: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        };
        let mut table = TopicTable::default();
        let mut model: HashMap<u32, BTreeSet<String>> = HashMap::new();
        for step in 0..200_000 {
            let key = next(300) as u32;
            let topic = format!("t{}", next(400));
            match next(10) {
                0 => {
                    table.remove_conn(key);
                    model.remove(&key);
                }
                1..=5 => {
                    let mine = model.entry(key).or_default();
                    let expected = if mine.contains(&topic) {
                        Ok(false)
                    } else if mine.len() >= 6 {
                        Err(SubscribeError::TooMany)
                    } else {
                        mine.insert(topic.clone());
                        Ok(true)
                    };
                    assert_eq!(table.subscribe(key, who("u"), &topic, 6), expected, "step {step}");
                }
                _ => {
                    let expected = model.get_mut(&key).is_some_and(|mine| mine.remove(&topic));
                    assert_eq!(table.unsubscribe(key, &topic), expected, "step {step}");
                }
            }
            if step % 1000 == 0 {
                check(&table, &model);
            }
        }
        // Closing them all frees most ids while members with side tables remain: the
        // renumbering runs, and must keep every remaining subscription where it was.
        let renumbered = table.renumbered;
        for key in 0..300 {
            table.remove_conn(key);
            model.remove(&key);
            if key % 10 == 0 {
                check(&table, &model);
            }
        }
        assert!(table.renumbered > renumbered, "the renumbering ran");
        assert_eq!((table.topic_count(), table.subscription_count()), (0, 0));
        assert!(table.members.is_empty() && table.more.is_empty() && table.lists.is_empty());
    }

    #[test]
    fn a_million_topics_created_and_dropped_leave_nothing_behind() {
        let mut table = TopicTable::default();
        let names: Vec<String> = (0..1_000_000).map(|t| format!("topic.{t}")).collect();
        for (key, name) in names.iter().enumerate() {
            // A connection per topic, as with personal topics.
            table.subscribe(key as u32, who("u"), name, 8).unwrap();
        }
        assert_eq!(table.topic_count(), 1_000_000);
        for (key, name) in names.iter().enumerate() {
            if key % 2 == 0 {
                assert!(table.unsubscribe(key as u32, name));
            } else {
                table.remove_conn(key as u32);
            }
        }
        assert_eq!((table.topic_count(), table.subscription_count()), (0, 0));
        assert!(table.capacity() <= 2 * MIN_SHRINK, "capacity {} kept", table.capacity());
    }
}
