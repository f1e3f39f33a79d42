//! What this instance's connections want from the other instances of a cluster: the
//! topics with a local subscriber and the users with a local connection, each counted
//! across shards. A shard's topic and user tables report a name's first and last local
//! entry (per shard); the cluster bus reads the changes and subscribes or unsubscribes
//! the matching Redis channels, so an instance receives only what a local connection
//! wants. Free of I/O: it only counts and remembers what changed.
//!
//! Lock order: a shard's table lock, then this one; the bus takes only this one.

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
}

/// The counts, shared by every shard's tables and the bus.
#[derive(Default)]
pub struct Wanted {
    state: Mutex<State>,
    /// Set with every change, so the bus's frequent look costs no lock when nothing did.
    dirty: AtomicBool,
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
}
