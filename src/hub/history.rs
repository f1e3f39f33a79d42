//! The hub's side of topic history (`--history`): which topics keep their publications,
//! the bounded queue to the history thread (which assigns each publication its offset,
//! stores it, and only then routes it, so every subscriber sees a topic's offsets in
//! order), and, per shard, the subscriptions waiting for their replay.
//!
//! The history thread itself (and its SQLite store) lives in the `history` folder; the
//! hub only queues what it must do, so a shard never waits on storage.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Sender, TrySendError};
use serde_json::value::RawValue;

use super::{ConnId, InboxFull};
use crate::config::HistoryRule;
use crate::metrics::HistoryStats;
use crate::protocol::{glob_match, Since};
use crate::sync::lock;

/// Jobs the history thread may have waiting; past that, publications on topics with
/// history are refused (`overloaded`) rather than queued without bound.
pub(crate) const HISTORY_QUEUE: usize = 65_536;

/// What the history thread is asked to do, in the order it was asked.
pub(crate) enum Job {
    /// Keep a publication, give it the topic's next offset, then route it.
    Publish {
        topic: Arc<str>,
        from: Arc<str>,
        data: Box<RawValue>,
        ts: u64,
        /// The publisher to ack once the publication is stored (a frame with an `id`).
        ack: Option<Asker>,
    },
    /// A `subscribe` with `since` (the connection is already in the topic table, its live
    /// deliveries held back, see [`Recovering`]): replay what it missed and hand it over.
    Recover { topic: Arc<str>, since: Since, asker: Recovery },
    /// A `history` request: a page of what is stored.
    Page { topic: Arc<str>, since: Option<Since>, limit: usize, asker: Asker },
}

/// The connection a job answers, and the id of the frame it answers.
pub(crate) struct Asker {
    pub conn: ConnId,
    pub id: Box<RawValue>,
}

/// The recovering subscription a `Recover` job answers.
pub(crate) struct Recovery {
    pub conn: ConnId,
    /// Matches the shard's [`Recovering`] entry, so an answer to an earlier, abandoned
    /// recovery of the same topic is recognised and dropped.
    pub request: u64,
    /// The frame's id, for the ack; without one the client gets the replay and no ack.
    pub id: Option<Box<RawValue>>,
}

/// The history thread's queue, and which topics it keeps.
pub(crate) struct HistoryQueue {
    rules: Vec<HistoryRule>,
    jobs: Sender<Job>,
    /// Tells the thread to commit what it holds and end (the server is stopping).
    stop: Sender<()>,
    /// Whether the store took the last write; the thread reports, `/health` reads.
    pub health: StoreHealth,
}

/// The store as the history thread last found it, for `/health`, `/stats` and `/metrics`.
#[derive(Default)]
pub(crate) struct StoreHealth {
    /// Why the last write failed, until one succeeds again.
    failing: Mutex<Option<String>>,
    /// Writes (batch commits, topic reads before an offset) that failed since the start.
    failures: AtomicU64,
}

impl StoreHealth {
    pub fn ok(&self) {
        lock(&self.failing).take();
    }

    pub fn failed(&self, reason: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *lock(&self.failing) = Some(reason.to_string());
    }

    pub fn stats(&self) -> HistoryStats {
        let reason = lock(&self.failing).clone();
        HistoryStats { store_up: reason.is_none(), reason, failures: self.failures.load(Ordering::Relaxed) }
    }
}

/// The history thread's queue is full (or the thread has stopped): tell the client
/// `overloaded`; nothing was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HistoryBusy;

impl From<HistoryBusy> for InboxFull {
    fn from(_: HistoryBusy) -> Self {
        InboxFull
    }
}

impl HistoryQueue {
    pub fn new(rules: Vec<HistoryRule>, jobs: Sender<Job>, stop: Sender<()>) -> Self {
        HistoryQueue { rules, jobs, stop, health: StoreHealth::default() }
    }

    /// Asks the thread to commit what it holds and end.
    pub fn shutdown(&self) {
        let _ = self.stop.try_send(());
    }

    /// The rule `topic` keeps its history by, if any (the first that matches).
    pub fn rule(&self, topic: &str) -> Option<&HistoryRule> {
        self.rules.iter().find(|rule| glob_match(&rule.pattern, topic))
    }

    pub fn queue(&self, job: Job) -> Result<(), HistoryBusy> {
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) | TrySendError::Disconnected(_) => HistoryBusy,
        })
    }
}

/// One shard's subscriptions waiting for their replay: by connection slot, the topics
/// and the request each waits on. An entry lives from the `subscribe` with `since` until
/// its replay arrives, the connection unsubscribes, or it goes. Empty (and costing
/// nothing) without recoveries under way.
#[derive(Default)]
pub(crate) struct Recovering {
    waiting: HashMap<u32, Vec<(Arc<str>, u64)>>,
    /// The last request number given; unique on this shard for its lifetime.
    last: u64,
}

impl Recovering {
    /// Marks `topic` of connection `slot` as recovering; the request number to match.
    pub fn begin(&mut self, slot: u32, topic: &Arc<str>) -> u64 {
        self.last += 1;
        self.waiting.entry(slot).or_default().push((topic.clone(), self.last));
        self.last
    }

    /// Whether no recovery is under way on this shard (the common case, checked first).
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Whether live deliveries of `topic` to `slot` are held back: they are part of the
    /// replay to come (the history thread orders both), so they are dropped here.
    pub fn holds_back(&self, slot: u32, topic: &str) -> bool {
        self.waiting.get(&slot).is_some_and(|topics| topics.iter().any(|(t, _)| &**t == topic))
    }

    /// Ends the recovery `request` of `slot`: `true` if it was the one waiting (its
    /// replay is to be delivered), `false` for an abandoned one.
    pub fn finish(&mut self, slot: u32, request: u64) -> bool {
        let Some(topics) = self.waiting.get_mut(&slot) else { return false };
        let Some(at) = topics.iter().position(|(_, r)| *r == request) else { return false };
        topics.swap_remove(at);
        if topics.is_empty() {
            self.waiting.remove(&slot);
        }
        true
    }

    /// The connection unsubscribed from `topic`: a replay on its way is dropped.
    pub fn abandon(&mut self, slot: u32, topic: &str) {
        if let Some(topics) = self.waiting.get_mut(&slot) {
            topics.retain(|(t, _)| &**t != topic);
            if topics.is_empty() {
                self.waiting.remove(&slot);
            }
        }
    }

    /// The connection is gone.
    pub fn forget(&mut self, slot: u32) {
        if !self.waiting.is_empty() {
            self.waiting.remove(&slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recovery_holds_back_its_topic_until_its_own_replay_arrives() {
        let mut recovering = Recovering::default();
        let room: Arc<str> = "room".into();
        let first = recovering.begin(3, &room);
        assert!(recovering.holds_back(3, "room"));
        assert!(!recovering.holds_back(3, "other") && !recovering.holds_back(4, "room"));
        recovering.abandon(3, "room");
        assert!(!recovering.holds_back(3, "room"));
        let second = recovering.begin(3, &room);
        assert!(!recovering.finish(3, first), "the abandoned recovery's replay is dropped");
        assert!(recovering.holds_back(3, "room"));
        assert!(recovering.finish(3, second));
        assert!(!recovering.holds_back(3, "room"));
        recovering.begin(5, &room);
        recovering.forget(5);
        assert!(recovering.waiting.is_empty());
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let (jobs, _queue) = crossbeam_channel::bounded(1);
        let (stop, _stopped) = crossbeam_channel::bounded(1);
        let rules = vec!["chat.*=10".parse().unwrap(), "chat.x=5".parse().unwrap()];
        let history = HistoryQueue::new(rules, jobs, stop);
        assert_eq!(history.rule("chat.x").unwrap().keep, Some(10));
        assert!(history.rule("news").is_none());
    }
}
