//! What this instance's connections want from the other instances of a cluster: the
//! topics with a local subscriber and the users with a local connection, each counted
//! across shards. A shard's topic and user tables report a name's first and last local
//! entry (per shard); the cluster bus reads the changes and subscribes or unsubscribes
//! the matching Redis channels, so an instance receives only what a local connection
//! wants. Free of I/O: it only counts and remembers what changed.
//!
//! It also remembers which topics' local subscribers changed at all (any subscribe,
//! unsubscribe or close, not only the first and last), so the cluster's presence entries
//! for this instance can be brought up to date in batches: see `cluster::presence`.
//!
//! Lock order: a shard's table lock, then one of these; the bus takes only these.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::sync::lock;

/// A name some local connection wants deliveries for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Want {
    Topic(Arc<str>),
    User(Arc<str>),
}

#[derive(Default)]
struct State {
    /// Shards with at least one local entry of the name; absent when none.
    shards: HashMap<Want, u32>,
    /// Names whose count went to or from zero since the bus last looked.
    changed: HashSet<Want>,
    /// How many of `shards`' keys are topics (the rest are users), kept as they change
    /// so the heartbeat reads both counts without a walk.
    topics: usize,
}

/// The counts, shared by every shard's tables and the bus.
#[derive(Default)]
pub struct Wanted {
    state: Mutex<State>,
    /// Set with every change, so the bus's frequent look costs no lock when nothing did.
    dirty: AtomicBool,
    /// Topics whose local subscribers changed since the presence writer last looked
    /// (a lock of its own: marked on every subscription change, from any shard).
    touched: Mutex<HashSet<Arc<str>>>,
    /// Set with every mark in `touched`, so an idle look costs no lock.
    touched_any: AtomicBool,
}

/// What the bus must do to match what is wanted: names to subscribe, names to drop.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub gained: Vec<Want>,
    pub lost: Vec<Want>,
}

impl Wanted {
    /// One shard has its first local entry of `want`.
    pub(crate) fn gain(&self, want: Want) {
        let mut state = lock(&self.state);
        let count = state.shards.entry(want.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            state.topics += matches!(want, Want::Topic(_)) as usize;
            state.changed.insert(want);
            self.dirty.store(true, Ordering::Release);
        }
    }

    /// One shard's last local entry of `want` is gone.
    pub(crate) fn lose(&self, want: Want) {
        let mut state = lock(&self.state);
        let Some(count) = state.shards.get_mut(&want) else { return };
        *count -= 1;
        if *count == 0 {
            state.shards.remove(&want);
            state.topics -= matches!(want, Want::Topic(_)) as usize;
            state.changed.insert(want);
            self.dirty.store(true, Ordering::Release);
        }
    }

    /// What changed since the last call, given what the bus has subscribed: a name that
    /// came and went in between is neither gained nor lost.
    pub fn changes(&self, subscribed: &HashSet<Want>) -> Changes {
        let mut changes = Changes::default();
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return changes;
        }
        let mut state = lock(&self.state);
        for want in std::mem::take(&mut state.changed) {
            match (state.shards.contains_key(&want), subscribed.contains(&want)) {
                (true, false) => changes.gained.push(want),
                (false, true) => changes.lost.push(want),
                _ => {}
            }
        }
        changes
    }

    /// Everything wanted now (after a reconnect, which starts with no subscription);
    /// the changes so far are covered by it.
    pub fn all(&self) -> Vec<Want> {
        self.dirty.store(false, Ordering::Release);
        let mut state = lock(&self.state);
        state.changed.clear();
        state.shards.keys().cloned().collect()
    }

    /// Names wanted now, for `/stats`.
    pub fn len(&self) -> usize {
        lock(&self.state).shards.len()
    }

    /// Distinct topics with a local subscriber and distinct users with a local
    /// connection, across shards: what the heartbeat tells the cluster, in O(1).
    pub fn counts(&self) -> (usize, usize) {
        let state = lock(&self.state);
        (state.topics, state.shards.len() - state.topics)
    }

    /// The local subscribers of `topic` changed (on some shard).
    pub(crate) fn touch(&self, topic: &Arc<str>) {
        let mut touched = lock(&self.touched);
        if !touched.contains(topic) {
            touched.insert(topic.clone());
        }
        self.touched_any.store(true, Ordering::Release);
    }

    /// The topics touched since the last call; nothing (and no lock) when none was.
    pub fn take_touched(&self) -> Vec<Arc<str>> {
        if !self.touched_any.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        // Taken rather than drained: a burst (a restart's reconnections) leaves no
        // large table behind.
        std::mem::take(&mut *lock(&self.touched)).into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str) -> Want {
        Want::Topic(name.into())
    }

    #[test]
    fn a_name_is_gained_on_its_first_shard_and_lost_with_its_last() {
        let wanted = Wanted::default();
        let mut subscribed = HashSet::new();
        wanted.gain(topic("room"));
        wanted.gain(topic("room"));
        wanted.gain(Want::User("ann".into()));
        let mut changes = wanted.changes(&subscribed);
        changes.gained.sort();
        assert_eq!(changes.gained, [topic("room"), Want::User("ann".into())]);
        subscribed.extend(changes.gained);
        assert_eq!(wanted.changes(&subscribed), Changes::default(), "nothing new");
        wanted.lose(topic("room"));
        assert_eq!(wanted.changes(&subscribed), Changes::default(), "another shard still has it");
        wanted.lose(topic("room"));
        assert_eq!(wanted.changes(&subscribed).lost, [topic("room")]);
        assert_eq!(wanted.len(), 1);
    }

    #[test]
    fn a_name_that_came_and_went_between_two_looks_changes_nothing() {
        let wanted = Wanted::default();
        wanted.gain(topic("brief"));
        wanted.lose(topic("brief"));
        assert_eq!(wanted.changes(&HashSet::new()), Changes::default());
        wanted.gain(topic("kept"));
        assert_eq!(wanted.all(), [topic("kept")]);
        assert_eq!(wanted.changes(&HashSet::new()), Changes::default(), "covered by all()");
    }

    #[test]
    fn topics_and_users_are_counted_apart_and_touched_topics_are_taken_once() {
        let wanted = Wanted::default();
        wanted.gain(topic("room"));
        wanted.gain(topic("room"));
        wanted.gain(topic("hall"));
        wanted.gain(Want::User("ann".into()));
        wanted.lose(topic("hall"));
        assert_eq!(wanted.counts(), (1, 1));
        assert!(wanted.take_touched().is_empty());
        wanted.touch(&"room".into());
        wanted.touch(&"room".into());
        wanted.touch(&"hall".into());
        let mut touched = wanted.take_touched();
        touched.sort();
        assert_eq!(touched, [Arc::<str>::from("hall"), "room".into()]);
        assert!(wanted.take_touched().is_empty(), "taken once");
    }
}
