//! Presence across the cluster: each instance keeps, in Redis, who is subscribed to each
//! topic on it, and a question reads the other live instances' entries.
//!
//! Keys (`P` is `--cluster-prefix`, `ID` an instance's node id): the set `P:p:ID:TOPIC` of
//! the identities subscribed to `TOPIC` on that instance, present only while it has one;
//! the set `P:pi:ID` of those keys, so that all of an instance's entries can be removed
//! together: by itself when it stops cleanly, by whoever prunes it from `P:nodes` once its
//! heartbeat entry expired ([`PRUNE`], atomic so a returning instance's new entries are
//! never removed).
//!
//! Writing ([`Writer`], on the publisher thread between batches, never a shard): the
//! topic tables mark each topic whose local subscribers changed (`Wanted::touch`); at
//! most every [`SYNC`] the writer reads those topics' local identities and sends Redis
//! only the difference from what it wrote last (SADD / SREM), so a join to a topic with
//! 10,000 local users costs one member, not 10,000. Idle, a look costs one atomic load.
//! Everything is written anew (in one MULTI) on each new connection and when the
//! heartbeat finds this instance's entry gone (Redis lost its data, or the instance was
//! pruned while stalled).
//!
//! Reading ([`ask`], on the ask thread): the ids in `P:nodes`, then for each other
//! instance whether its heartbeat entry exists and its set for the topic (one pipelined
//! round trip): a dead instance's entries are ignored from the moment its heartbeat
//! expires (3 s), before anyone prunes them. This instance's own part is read from its
//! tables at that moment, so a connection sees its own subscription at once; the others'
//! are as of their last sync (at most a few hundred milliseconds old).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::{Connection, Pipeline, RedisResult, Value};

use super::ask::Job;
use super::Cluster;
use crate::hub::{Hub, Presence, PresenceAnswer, PresenceError, Wanted};
use crate::sync::lock;

/// How often, at most, the writer brings this instance's entries up to date: the longest
/// another instance sees a change late (plus the publisher's idle tick).
pub(super) const SYNC: Duration = Duration::from_millis(100);
/// Members named in one SADD or SREM at most, so Redis is never held for long.
const MEMBERS_PER_COMMAND: usize = 1000;

/// Removes instance `ARGV[1]`'s presence entries and its id from `P:nodes` (`KEYS`: its
/// heartbeat key, `P:nodes`, its `P:pi:ID`), unless its heartbeat entry exists again.
/// The entries' keys are read from the index inside the script (standalone Redis only,
/// as is everything here).
pub(super) const PRUNE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SREM', KEYS[2], ARGV[1])
for _, key in ipairs(redis.call('SMEMBERS', KEYS[3])) do redis.call('UNLINK', key) end
redis.call('UNLINK', KEYS[3])
return 1
";

/// Removes every presence entry of the index `KEYS[1]`, and the index.
const CLEAR: &str = r"
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do redis.call('UNLINK', key) end
redis.call('UNLINK', KEYS[1])
return 1
";

/// The cluster's key names, and this instance's id among them.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
    own: String,
}

impl Keys {
    pub fn new(prefix: &str, node: u64) -> Self {
        Keys { prefix: prefix.to_string(), own: node.to_string() }
    }

    /// `--cluster-prefix`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn own_id(&self) -> &str {
        &self.own
    }

    /// `P:nodes`: the ids of the instances that joined and were not pruned yet.
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// `P:node:ID`: an instance's heartbeat entry (expiring).
    pub fn node(&self, id: &str) -> String {
        format!("{}:node:{id}", self.prefix)
    }

    pub fn own_node(&self) -> String {
        self.node(&self.own)
    }

    /// `P:p:ID:TOPIC`: who is subscribed to `topic` on instance `id`.
    pub fn presence(&self, id: &str, topic: &str) -> String {
        format!("{}:p:{id}:{topic}", self.prefix)
    }

    /// `P:pi:ID`: the keys of instance `id`'s presence entries.
    pub fn index(&self, id: &str) -> String {
        format!("{}:pi:{id}", self.prefix)
    }
}

/// Adds to `pipe` the removal of instance `id` (see [`PRUNE`]); its result is ignored.
pub(super) fn prune(pipe: &mut Pipeline, keys: &Keys, id: &str) {
    pipe.cmd("EVAL").arg(PRUNE).arg(3).arg(keys.node(id)).arg(keys.nodes()).arg(keys.index(id)).arg(id).ignore();
}

/// How one topic's local identities changed since they were written.
#[derive(Debug, PartialEq, Eq)]
struct Change<'a> {
    added: Vec<&'a Arc<str>>,
    removed: Vec<&'a Arc<str>>,
    /// The topic had no entry and now has one (its key joins the index).
    appeared: bool,
    /// The topic had an entry and now has none (its key leaves the index).
    vanished: bool,
}

impl<'a> Change<'a> {
    /// `old` is sorted (as [`Writer`] keeps it).
    fn between(old: Option<&'a [Arc<str>]>, now: &'a HashSet<Arc<str>>) -> Self {
        let old_len = old.map_or(0, <[_]>::len);
        let added = now.iter().filter(|user| old.is_none_or(|old| old.binary_search(*user).is_err())).collect();
        let removed = old.map_or_else(Vec::new, |old| old.iter().filter(|user| !now.contains(*user)).collect());
        Change { added, removed, appeared: old_len == 0 && !now.is_empty(), vanished: old_len > 0 && now.is_empty() }
    }

    /// Adds the commands that make Redis match to `pipe`; how many.
    fn write(&self, pipe: &mut Pipeline, keys: &Keys, topic: &str) -> usize {
        let key = keys.presence(keys.own_id(), topic);
        if self.vanished {
            pipe.cmd("UNLINK").arg(&key).ignore();
            pipe.cmd("SREM").arg(keys.index(keys.own_id())).arg(&key).ignore();
            return 2;
        }
        let mut commands = 0;
        for (kind, users) in [("SADD", &self.added), ("SREM", &self.removed)] {
            for chunk in users.chunks(MEMBERS_PER_COMMAND) {
                pipe.cmd(kind).arg(&key).arg(chunk.iter().map(|user| user.as_bytes()).collect::<Vec<_>>()).ignore();
                commands += 1;
            }
        }
        if self.appeared {
            pipe.cmd("SADD").arg(keys.index(keys.own_id())).arg(&key).ignore();
            commands += 1;
        }
        commands
    }
}

/// Keeps this instance's presence entries in Redis matching its topic tables. Lives on
/// the publisher thread, across its reconnections.
pub(super) struct Writer {
    /// What Redis holds of this instance's presence, as last written: per topic with a
    /// local subscriber, its identities, sorted. Emptied when everything is to be written
    /// anew. A sorted slice rather than a set: one pointer per identity and no table, since
    /// most topics have one or a few local subscribers (a set of one took ~100 B more).
    written: HashMap<Arc<str>, Box<[Arc<str>]>>,
    /// Everything must be written anew at the next sync.
    rewrite: bool,
    /// When the last sync ran.
    last: Option<Instant>,
}

impl Writer {
    pub fn new() -> Self {
        Writer { written: HashMap::new(), rewrite: true, last: None }
    }

    /// What Redis holds may not be what was written (a new connection, this instance's
    /// entry was gone): the next sync writes everything anew.
    pub fn rewrite(&mut self) {
        self.rewrite = true;
    }

    pub fn due(&self) -> bool {
        self.rewrite || self.last.is_none_or(|at| at.elapsed() >= SYNC)
    }

    /// Writes what changed since the last sync (everything, after [`Writer::rewrite`]) in
    /// one round trip, none when nothing did. After an error everything is written anew
    /// next time, since what Redis took is unknown.
    pub fn sync(&mut self, connection: &mut Connection, hub: &Hub, wanted: &Wanted, keys: &Keys) -> RedisResult<()> {
        self.last = Some(Instant::now());
        // Taken before reading the tables: a change after this is marked again.
        let touched = wanted.take_touched();
        let rewrite = std::mem::take(&mut self.rewrite);
        let mut pipe = redis::pipe();
        let topics: Vec<Arc<str>> = if rewrite {
            self.written.clear();
            // Atomic, so other instances never see this one's entries half written.
            pipe.atomic().cmd("EVAL").arg(CLEAR).arg(1).arg(keys.index(keys.own_id())).ignore();
            hub.local_topics().into_iter().collect()
        } else {
            touched
        };
        let mut commands = rewrite as usize;
        let mut updates = Vec::with_capacity(topics.len());
        for topic in topics {
            let now = hub.local_identities(&topic);
            commands +=
                Change::between(self.written.get(&topic).map(|old| &**old), &now).write(&mut pipe, keys, &topic);
            updates.push((topic, now));
        }
        if commands == 0 {
            return Ok(());
        }
        if let Err(e) = pipe.exec(connection) {
            self.rewrite = true;
            return Err(e);
        }
        for (topic, now) in updates {
            match now.is_empty() {
                true => self.written.remove(&topic),
                false => {
                    let mut sorted: Vec<Arc<str>> = now.into_iter().collect();
                    sorted.sort_unstable();
                    self.written.insert(topic, sorted.into_boxed_slice())
                }
            };
        }
        Ok(())
    }
}

/// Calls a presence question's answer once, whichever of the asker (refused) or the ask
/// thread gets to it.
struct Once(Mutex<Option<PresenceAnswer>>);

impl Once {
    fn answer(&self, result: Result<Presence, PresenceError>) {
        let answer = lock(&self.0).take();
        if let Some(answer) = answer {
            answer(result);
        }
    }
}

/// Queues the question "who is subscribed to `topic` in the cluster" for the ask
/// thread; `answer` gets the reply there, or at once `Overloaded` when the queue is full.
pub(super) fn ask(cluster: &Cluster, hub: Hub, topic: Arc<str>, answer: PresenceAnswer) {
    let once = Arc::new(Once(Mutex::new(Some(answer))));
    let (asker, keys) = (once.clone(), cluster.keys.clone());
    let job: Job = Box::new(move |connection: Option<&mut Connection>| {
        let Some(connection) = connection else {
            asker.answer(Err(PresenceError::Unavailable("Redis unreachable".into())));
            return Ok(());
        };
        match others(connection, &keys, &topic) {
            Ok(mut users) => {
                users.extend(hub.local_identities(&topic).iter().map(|user| user.to_string()));
                asker.answer(Ok(Presence::of(users)));
                Ok(())
            }
            Err(e) => {
                asker.answer(Err(PresenceError::Unavailable(format!("Redis: {e}"))));
                Err(e)
            }
        }
    });
    if cluster.ask(job).is_err() {
        once.answer(Err(PresenceError::Overloaded));
    }
}

/// The identities subscribed to `topic` on the other live instances: two round trips.
fn others(connection: &mut Connection, keys: &Keys, topic: &str) -> RedisResult<BTreeSet<String>> {
    let ids: Vec<String> = redis::cmd("SMEMBERS").arg(keys.nodes()).query(connection)?;
    let mut pipe = redis::pipe();
    let mut asked = 0;
    for id in ids.iter().filter(|id| *id != keys.own_id()) {
        pipe.cmd("EXISTS").arg(keys.node(id)).cmd("SMEMBERS").arg(keys.presence(id, topic));
        asked += 1;
    }
    let mut users = BTreeSet::new();
    if asked == 0 {
        return Ok(users);
    }
    let replies: Vec<Value> = pipe.query(connection)?;
    for pair in replies.chunks(2) {
        if let [live, members] = pair {
            if redis::from_redis_value_ref::<bool>(live)? {
                users.extend(redis::from_redis_value_ref::<Vec<String>>(members)?);
            }
        }
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(users: &[&str]) -> HashSet<Arc<str>> {
        users.iter().map(|user| Arc::from(*user)).collect()
    }

    /// As the writer keeps it.
    fn listed(users: &HashSet<Arc<str>>) -> Vec<Arc<str>> {
        let mut listed: Vec<Arc<str>> = users.iter().cloned().collect();
        listed.sort();
        listed
    }

    fn sorted(users: Vec<&Arc<str>>) -> Vec<&str> {
        let mut users: Vec<&str> = users.into_iter().map(|user| &**user).collect();
        users.sort();
        users
    }

    #[test]
    fn a_change_names_only_the_users_that_came_or_went() {
        let (old, now) = (set(&["ann", "bob"]), set(&["bob", "cy", "dan"]));
        let written = listed(&old);
        let change = Change::between(Some(&written), &now);
        assert_eq!((sorted(change.added), sorted(change.removed)), (vec!["cy", "dan"], vec!["ann"]));
        assert!(!change.appeared && !change.vanished);
        let same = Change::between(Some(&written), &old);
        assert!(same.added.is_empty() && same.removed.is_empty());
        assert_eq!(same.write(&mut redis::pipe(), &Keys::new("w", 1), "room"), 0, "nothing to send");
    }

    #[test]
    fn a_topic_appears_with_its_first_user_and_vanishes_with_its_last() {
        let (empty, ann) = (set(&[]), set(&["ann"]));
        let first = Change::between(None, &ann);
        assert!(first.appeared && !first.vanished);
        assert_eq!(first.write(&mut redis::pipe(), &Keys::new("w", 1), "room"), 2, "SADD the user, SADD the index");
        let written = listed(&ann);
        let last = Change::between(Some(&written), &empty);
        assert!(last.vanished && !last.appeared);
        assert_eq!(last.write(&mut redis::pipe(), &Keys::new("w", 1), "room"), 2, "UNLINK the set, SREM the index");
        assert_eq!(Change::between(None, &empty).write(&mut redis::pipe(), &Keys::new("w", 1), "room"), 0);
    }

    #[test]
    fn a_large_change_is_sent_in_bounded_commands() {
        let many: HashSet<Arc<str>> = (0..2500).map(|n| Arc::from(format!("u{n}"))).collect();
        let change = Change::between(None, &many);
        assert_eq!(change.write(&mut redis::pipe(), &Keys::new("w", 1), "room"), 3 + 1);
    }

    /// The asker is never left waiting: refused at once when the ask queue is full, told
    /// when the job runs while Redis cannot be reached.
    #[test]
    fn a_question_is_answered_overloaded_when_the_queue_is_full_and_unavailable_without_redis() {
        let settings =
            crate::config::ClusterSettings { redis: "redis://127.0.0.1:1".parse().unwrap(), prefix: "t".into() };
        let (cluster, parts) = Cluster::new(&settings, 16).unwrap();
        let hub = Hub::detached(1);
        let (told, answers) = crossbeam_channel::unbounded();
        for _ in 0..=super::super::ask::CAPACITY {
            let told = told.clone();
            ask(&cluster, hub.clone(), "room".into(), Box::new(move |result| told.send(result).unwrap()));
        }
        assert_eq!(answers.try_recv(), Ok(Err(PresenceError::Overloaded)), "the one past the capacity");
        assert!(answers.try_recv().is_err(), "the others wait for the ask thread");
        let job = parts.asks.try_recv().unwrap();
        job(None).unwrap();
        assert_eq!(answers.try_recv(), Ok(Err(PresenceError::Unavailable("Redis unreachable".into()))));
    }

    #[test]
    fn keys_are_named_under_the_prefix_by_instance_and_topic() {
        let keys = Keys::new("wshub", 42);
        assert_eq!(keys.presence("7", "room:1"), "wshub:p:7:room:1");
        assert_eq!(
            (keys.index("42"), keys.own_node(), keys.nodes()),
            ("wshub:pi:42".into(), "wshub:node:42".into(), "wshub:nodes".into())
        );
    }
}
