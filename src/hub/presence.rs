//! Who is subscribed to a topic. This instance's answer is read from its shards' topic
//! tables ([`Hub::presence`]); the cluster's is asked of Redis through the hub's
//! [`Remote`](super::Remote) ([`Hub::cluster_presence`]), whose answer comes back later
//! on another thread, so no shard ever waits for it. Without a cluster both are the same.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::Hub;
use crate::protocol::ErrorCode;
use crate::sync::lock;

/// Who is subscribed to a topic, across all shards (and, asked of the cluster, across
/// all its live instances).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Presence {
    /// Distinct users subscribed.
    pub count: usize,
    /// Their names, sorted; at most `PRESENCE_LIST_LIMIT` of them.
    pub users: Vec<String>,
    /// True when `users` was cut at the limit.
    pub truncated: bool,
}

/// Longest user list a presence answer carries.
pub const PRESENCE_LIST_LIMIT: usize = 1000;

impl Presence {
    /// The answer for these distinct users: counted, then listed up to the limit.
    pub(crate) fn of(users: BTreeSet<String>) -> Self {
        let count = users.len();
        let users: Vec<String> = users.into_iter().take(PRESENCE_LIST_LIMIT).collect();
        Presence { count, truncated: users.len() < count, users }
    }
}

/// Why the cluster could not say who is subscribed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PresenceError {
    /// Redis cannot be reached (or did not answer): the other instances' subscribers are
    /// unknown. Carries the reason.
    Unavailable(String),
    /// Too many questions are already waiting for Redis; asked again later, it may work.
    Overloaded,
}

impl PresenceError {
    /// The protocol's error code for it: `unavailable` or `overloaded`.
    pub fn code(&self) -> &'static str {
        match self {
            PresenceError::Unavailable(_) => ErrorCode::Unavailable.as_str(),
            PresenceError::Overloaded => ErrorCode::Overloaded.as_str(),
        }
    }
}

impl fmt::Display for PresenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PresenceError::Unavailable(why) => write!(f, "the cluster's presence is unavailable: {why}"),
            PresenceError::Overloaded => f.write_str("too many presence questions are waiting; try again later"),
        }
    }
}

impl std::error::Error for PresenceError {}

/// What a cluster-wide presence question calls with its answer, once, on whichever
/// thread has it.
pub(crate) type PresenceAnswer = Box<dyn FnOnce(Result<Presence, PresenceError>) + Send>;

/// How long [`Hub::cluster_presence_wait`] waits: longer than the ask thread's two
/// round trips can take (each bounded by its command timeout).
const WAIT: Duration = Duration::from_secs(5);

impl Hub {
    /// Users subscribed to `topic` on this instance, across shards: each shard's
    /// subscribers of the topic name their identities (O(local subscribers) per shard,
    /// under its lock), and the set counts a user with several connections once. In a
    /// cluster this is this instance's part only; see [`Hub::cluster_presence`].
    pub fn presence(&self, topic: &str) -> Presence {
        let users = self.local_identities(topic).iter().map(|user| user.to_string()).collect();
        Presence::of(users)
    }

    /// Users subscribed to `topic` on every live instance of the cluster, a user on
    /// several instances counted once. Never waits: `answer` is called once, later on
    /// the cluster's ask thread (keep it short: send the answer on, as the hub protocol
    /// does to the connection that asked), or at once on this thread with
    /// [`PresenceError::Overloaded`] when too many questions are waiting. Without
    /// `--redis` it is called at once with [`Hub::presence`].
    pub fn cluster_presence(&self, topic: &str, answer: impl FnOnce(Result<Presence, PresenceError>) + Send + 'static) {
        match &self.remote {
            Some(remote) => remote.presence(self.clone(), topic.into(), Box::new(answer)),
            None => answer(Ok(self.presence(topic))),
        }
    }

    /// [`Hub::cluster_presence`], waiting for the answer (a few milliseconds; at most 5 s,
    /// then `Unavailable`). For threads that may block (the worker pool, an embedding
    /// application's own threads), never a shard thread (a [`Handler`](crate::Handler)).
    pub fn cluster_presence_wait(&self, topic: &str) -> Result<Presence, PresenceError> {
        let (sender, answer) = crossbeam_channel::bounded(1);
        self.cluster_presence(topic, move |result| {
            let _ = sender.send(result);
        });
        answer.recv_timeout(WAIT).unwrap_or_else(|_| Err(PresenceError::Unavailable("no answer in time".into())))
    }

    /// Whether this instance is part of a cluster (`--redis`).
    pub(crate) fn in_cluster(&self) -> bool {
        self.remote.is_some()
    }

    /// The distinct identities subscribed to `topic` on this instance.
    pub(crate) fn local_identities(&self, topic: &str) -> HashSet<Arc<str>> {
        let mut users = HashSet::new();
        for shared in self.shared.iter() {
            users.extend(lock(&shared.topics).users(topic).cloned());
        }
        users
    }

    /// Every topic with a subscriber on this instance.
    pub(crate) fn local_topics(&self) -> HashSet<Arc<str>> {
        let mut topics = HashSet::new();
        for shared in self.shared.iter() {
            topics.extend(lock(&shared.topics).topics().cloned());
        }
        topics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_counts_every_user_and_lists_the_first_ones_sorted() {
        let few = Presence::of(["cy", "ann", "bob"].map(String::from).into());
        assert_eq!(few, Presence { count: 3, users: vec!["ann".into(), "bob".into(), "cy".into()], truncated: false });
        let many = Presence::of((0..PRESENCE_LIST_LIMIT + 5).map(|n| format!("u{n:05}")).collect());
        assert_eq!(
            (many.count, many.users.len(), many.truncated),
            (PRESENCE_LIST_LIMIT + 5, PRESENCE_LIST_LIMIT, true)
        );
        assert_eq!(many.users[0], "u00000");
    }

    #[test]
    fn without_a_cluster_the_cluster_answer_is_this_instances_at_once() {
        let hub = Hub::detached(2);
        lock(&hub.shared(0).topics).subscribe(1, || "ann".into(), "room", 8).unwrap();
        lock(&hub.shared(1).topics).subscribe(1, || "ann".into(), "room", 8).unwrap();
        lock(&hub.shared(1).topics).subscribe(2, || "bob".into(), "room", 8).unwrap();
        assert_eq!(hub.cluster_presence_wait("room"), Ok(hub.presence("room")));
        assert_eq!(hub.presence("room").users, ["ann", "bob"]);
        assert_eq!(hub.local_topics(), HashSet::from(["room".into()]));
    }

    #[test]
    fn in_a_cluster_the_tables_mark_every_change_of_a_topics_subscribers() {
        let wanted = Arc::new(super::super::Wanted::default());
        let shared = super::super::ShardShared::new(Some(wanted.clone()));
        let taken = || {
            let mut topics: Vec<String> = wanted.take_touched().iter().map(|t| t.to_string()).collect();
            topics.sort();
            topics
        };
        lock(&shared.topics).subscribe(1, || "ann".into(), "room", 8).unwrap();
        lock(&shared.topics).subscribe(2, || "bob".into(), "room", 8).unwrap();
        lock(&shared.topics).subscribe(2, || "bob".into(), "hall", 8).unwrap();
        assert_eq!(taken(), ["hall", "room"]);
        lock(&shared.topics).subscribe(2, || "bob".into(), "room", 8).unwrap();
        assert!(taken().is_empty(), "already subscribed: nothing changed");
        lock(&shared.topics).unsubscribe(1, "room");
        assert_eq!(taken(), ["room"], "not only the first and last subscriber");
        lock(&shared.topics).remove_conn(2);
        assert_eq!(taken(), ["hall", "room"]);
    }

    #[test]
    fn errors_name_their_protocol_code() {
        assert_eq!(PresenceError::Unavailable("down".into()).code(), "unavailable");
        assert_eq!(PresenceError::Overloaded.code(), "overloaded");
    }
}
