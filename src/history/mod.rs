//! Topic history (`--history`): the history thread, which owns the store (an SQLite
//! database, see [`store`]) and is the one place a kept topic's publications are ordered.
//!
//! A publication on a topic with history goes shard → the hub's bounded queue → this
//! thread, which gives it the topic's next offset and adds it to the open batch. Every few
//! milliseconds (or sooner when the batch is large) the batch is committed in one
//! transaction (group commit), and only then are its publications routed through the
//! hub, in offset order, and their publishers acked: an offset is never delivered before
//! it is stored, so a restart cannot hand the same offset out twice. If the commit fails
//! the publications are still delivered, without offsets, and publishers that asked for
//! an ack are told `unavailable`.
//!
//! A `subscribe` with `since` reaches this thread as a job too, in order with the
//! publications. Its connection is already in the topic table, its live deliveries of the
//! topic held back by its shard. The thread commits and routes the open batch, reads what
//! the subscriber missed, and hands the replay and the ack to the shard's inbox, where it
//! lands after every live delivery it replaces and before every later one: the shard
//! then lets live deliveries through. So there is neither a gap nor a repeat at the seam.

mod recover;
mod store;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};
use serde::Serialize;
use serde_json::value::RawValue;
use tungstenite::Message;

use crate::config::{Config, HistoryRule};
use crate::error::Error;
use crate::frame::SharedFrame;
use crate::hub::{Asker, Hub, Job, Origin, Recovery, Target};
use crate::protocol::{self, ErrorCode, Position, Since};
use recover::{complete, plan, Plan};
pub(crate) use store::Store;
use store::{Row, TopicRow, Trim};

/// How long a publication waits in the open batch at most before it is committed: the
/// delay added to delivery, against one disk sync per publication.
const COMMIT_EVERY: Duration = Duration::from_millis(2);
/// A batch this large is committed at once.
const MAX_BATCH: usize = 1024;
/// How often publications older than their topic's age limit are deleted from topics
/// that receive nothing (busy topics are trimmed with each commit; reads never serve
/// expired ones either way).
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Starts the history thread on `store` (already opened, so a bad `--store` fails the
/// start), serving `jobs` until `stop` fires or every sender is gone.
pub(crate) fn spawn(
    config: &Config,
    store: Store,
    hub: Hub,
    jobs: Receiver<Job>,
    stop: Receiver<()>,
) -> Result<JoinHandle<()>, Error> {
    let keeper = Keeper::new(store, hub, config.history.clone(), config.max_replay);
    thread::Builder::new().name("wshub-history".into()).spawn(move || keeper.run(jobs, stop)).map_err(Error::Startup)
}

/// The history thread's state.
struct Keeper {
    store: Store,
    hub: Hub,
    rules: Vec<HistoryRule>,
    max_replay: usize,
    /// Each topic's epoch and last offset given (the open batch included), loaded from
    /// the store on first use; dropped after a failed commit so the store's state wins.
    topics: HashMap<Arc<str>, TopicRow>,
    /// Topics whose row must be written with the open batch.
    dirty: HashSet<Arc<str>>,
    /// Publications with offsets, not yet committed.
    batch: Vec<Row>,
    /// Whom to ack for each publication in `batch`, at the same index.
    acks: Vec<Option<Asker>>,
    /// When the open batch is committed; `None` while there is nothing to commit.
    commit_at: Option<Instant>,
    sweep_at: Instant,
}

impl Keeper {
    fn new(store: Store, hub: Hub, rules: Vec<HistoryRule>, max_replay: usize) -> Self {
        Keeper {
            store,
            hub,
            rules,
            max_replay,
            topics: HashMap::new(),
            dirty: HashSet::new(),
            batch: Vec::new(),
            acks: Vec::new(),
            commit_at: None,
            sweep_at: Instant::now() + SWEEP_EVERY,
        }
    }

    fn run(mut self, jobs: Receiver<Job>, stop: Receiver<()>) {
        loop {
            let wake = self.commit_at.unwrap_or(self.sweep_at).min(self.sweep_at);
            let wait = wake.saturating_duration_since(Instant::now());
            select! {
                recv(jobs) -> job => match job {
                    Ok(job) => self.handle(job),
                    Err(_) => break,
                },
                recv(stop) -> _ => break,
                default(wait) => {}
            }
            let now = Instant::now();
            if self.commit_at.is_some_and(|at| at <= now) {
                self.commit();
            }
            if self.sweep_at <= now {
                self.sweep();
                self.sweep_at = now + SWEEP_EVERY;
            }
        }
        // What was accepted before the stop is still kept and delivered.
        while let Ok(job) = jobs.try_recv() {
            self.handle(job);
        }
        self.commit();
    }

    fn handle(&mut self, job: Job) {
        match job {
            Job::Publish { topic, from, data, ts, ack } => self.append(Row { topic, offset: 0, ts, from, data }, ack),
            Job::Recover { topic, since, asker } => {
                self.commit();
                self.recover(topic, since, asker);
            }
            Job::Page { topic, since, limit, asker } => {
                self.commit();
                let page = self.page(&topic, since, limit);
                let answer = match page {
                    Ok(result) => protocol::response_ok(&asker.id, &result),
                    Err((code, why)) => protocol::response_err(&asker.id, code.as_str(), &why),
                };
                // A full inbox is counted there; the client sees no answer, as for any overload.
                let _ = self.hub.send_to(asker.conn, Message::text(answer));
            }
        }
    }

    fn rule(&self, topic: &str) -> Option<&HistoryRule> {
        self.rules.iter().find(|rule| protocol::glob_match(&rule.pattern, topic))
    }

    /// The topic's state, loaded from the store, or begun with a new epoch if its history
    /// has not started (written with the next commit).
    fn state(&mut self, topic: &Arc<str>) -> rusqlite::Result<TopicRow> {
        if let Some(state) = self.topics.get(topic) {
            return Ok(state.clone());
        }
        let state = match self.store.topic(topic)? {
            Some(stored) => stored,
            None => {
                self.dirty.insert(topic.clone());
                self.commit_at.get_or_insert_with(|| Instant::now() + COMMIT_EVERY);
                TopicRow { epoch: new_epoch().into(), last: 0 }
            }
        };
        self.topics.insert(topic.clone(), state.clone());
        Ok(state)
    }

    /// Gives the publication its offset and adds it to the open batch.
    fn append(&mut self, mut row: Row, ack: Option<Asker>) {
        let last = match self.state(&row.topic) {
            Ok(state) => state.last,
            Err(e) => {
                log::error!("history: cannot read topic {:?} from the store: {e}", row.topic);
                self.report(Err(&e));
                return self.deliver_unkept(&row, ack, &e);
            }
        };
        row.offset = last + 1;
        if let Some(state) = self.topics.get_mut(&row.topic) {
            state.last = row.offset;
        }
        self.dirty.insert(row.topic.clone());
        self.batch.push(row);
        self.acks.push(ack);
        self.commit_at.get_or_insert_with(|| Instant::now() + COMMIT_EVERY);
        if self.batch.len() >= MAX_BATCH {
            self.commit();
        }
    }

    /// Commits the open batch, then routes its publications in order and acks them.
    fn commit(&mut self) {
        self.commit_at = None;
        if self.dirty.is_empty() {
            return;
        }
        let rows = std::mem::take(&mut self.batch);
        let acks = std::mem::take(&mut self.acks);
        let dirty: Vec<Arc<str>> = self.dirty.drain().collect();
        let now = protocol::now_millis();
        let states: Vec<(&str, &TopicRow)> =
            dirty.iter().filter_map(|topic| self.topics.get(topic).map(|state| (&**topic, state))).collect();
        let trims: Vec<Trim<'_>> = states
            .iter()
            .filter_map(|&(topic, state)| {
                let rule = self.rules.iter().find(|rule| protocol::glob_match(&rule.pattern, topic))?;
                let through = rule.keep.and_then(|keep| state.last.checked_sub(keep)).filter(|&n| n > 0);
                let before_ts = rule.max_age.map(|age| now.saturating_sub(age.as_millis() as u64));
                Some(Trim { topic, through, before_ts })
            })
            .collect();
        let committed = self.store.commit(&states, &rows, &trims);
        self.report(committed.as_ref().map(|_| ()));
        match committed {
            Ok(()) => {
                for (row, ack) in rows.iter().zip(acks) {
                    let epoch = self.topics.get(&row.topic).map(|state| state.epoch.clone());
                    let position = epoch.as_deref().map(|epoch| Position { offset: row.offset, epoch });
                    self.route(row, position, ack);
                }
            }
            Err(e) => {
                log::error!("history: cannot store {} publication(s): {e}; delivered without offsets", rows.len());
                // The store's state wins: offsets given in this batch are given again.
                for topic in &dirty {
                    self.topics.remove(topic);
                }
                for (row, ack) in rows.iter().zip(acks) {
                    self.deliver_unkept(row, ack, &e);
                }
            }
        }
    }

    /// Tells the hub's side (for `/health`, `/stats`, `/metrics`) how the last write went.
    fn report(&self, write: Result<(), &rusqlite::Error>) {
        let Some(history) = self.hub.history() else { return };
        match write {
            Ok(()) => history.health.ok(),
            Err(e) => history.health.failed(&e.to_string()),
        }
    }

    /// Routes a publication to its subscribers, then acks its publisher.
    fn route(&self, row: &Row, position: Option<Position<'_>>, ack: Option<Asker>) {
        let frame = protocol::message(Some(&row.topic), &row.from, &row.data, row.ts, position);
        let target = Target::Topic { topic: row.topic.clone(), data: row.data.get().into() };
        let routed = self.hub.route_from(Origin::Outside, &target, &SharedFrame::text(frame));
        if let Some(Asker { conn, id }) = ack {
            let answer = match routed {
                Ok(()) => protocol::ack(&id),
                Err(full) => protocol::error(ErrorCode::Overloaded.as_str(), &full.to_string(), Some(&id)),
            };
            let _ = self.hub.send_to(conn, Message::text(answer));
        }
    }

    /// The store failed: live delivery goes on without an offset; the publisher learns
    /// its publication was not kept.
    fn deliver_unkept(&self, row: &Row, ack: Option<Asker>, e: &rusqlite::Error) {
        self.route(row, None, None);
        if let Some(Asker { conn, id }) = ack {
            let why = format!("delivered live but not kept in history (the store failed: {e})");
            let answer = protocol::error(ErrorCode::Unavailable.as_str(), &why, Some(&id));
            let _ = self.hub.send_to(conn, Message::text(answer));
        }
    }

    /// Replays what a subscriber missed after `since` (everything before is committed
    /// and routed now), then acks; see the module's documentation.
    fn recover(&mut self, topic: Arc<str>, since: Since, asker: Recovery) {
        let Recovery { conn, request, id } = asker;
        let (frames, subscribed) = match self.replay(&topic, &since, id.as_deref()) {
            Ok(frames) => (frames, true),
            Err((code, why)) => (id.iter().map(|id| refusal(code, &why, id)).collect(), false),
        };
        self.hub.replay(conn, request, &topic, frames, subscribed);
    }

    fn replay(&mut self, topic: &Arc<str>, since: &Since, id: Option<&RawValue>) -> Result<Vec<SharedFrame>, Failure> {
        let state = self.state(topic).map_err(unavailable)?;
        let mut frames = Vec::new();
        let recovered = match plan(since, &state.epoch, state.last, self.max_replay) {
            Plan::UpToDate => true,
            Plan::Lost => false,
            Plan::BadSince => {
                let why = format!("offset {} is beyond the topic's last, {}", since.offset, state.last);
                return Err((ErrorCode::BadSince, why));
            }
            Plan::Read { after, count } => {
                let rows = self.store.read(topic, after, self.oldest_ts(topic), count).map_err(unavailable)?;
                let offsets: Vec<u64> = rows.iter().map(|row| row.offset).collect();
                let whole = complete(&offsets, after, count);
                if whole {
                    let position = |offset| Some(Position { offset, epoch: &state.epoch });
                    frames.extend(rows.iter().map(|row| {
                        let frame = protocol::message(Some(topic), &row.from, &row.data, row.ts, position(row.offset));
                        SharedFrame::text(frame)
                    }));
                }
                whole
            }
        };
        if let Some(id) = id {
            let position = Position { offset: state.last, epoch: &state.epoch };
            frames.push(SharedFrame::text(protocol::recovered_ack(id, recovered, position)));
        }
        Ok(frames)
    }

    /// A page of `topic`'s stored publications after `since` (from the oldest without).
    fn page(&mut self, topic: &Arc<str>, since: Option<Since>, limit: usize) -> Result<serde_json::Value, Failure> {
        let state = self.state(topic).map_err(unavailable)?;
        let after = match since {
            None => 0,
            Some(since) if *since.epoch != *state.epoch => {
                let why = format!(
                    "epoch {:?} is gone (the topic's history is now {:?}): page without since",
                    since.epoch, state.epoch
                );
                return Err((ErrorCode::BadSince, why));
            }
            Some(since) if since.offset > state.last => {
                let why = format!("offset {} is beyond the topic's last, {}", since.offset, state.last);
                return Err((ErrorCode::BadSince, why));
            }
            Some(since) => since.offset,
        };
        let limit = limit.min(self.max_replay);
        let rows = self.store.read(topic, after, self.oldest_ts(topic), limit).map_err(unavailable)?;
        let messages: Vec<Kept<'_>> =
            rows.iter().map(|row| Kept { offset: row.offset, ts: row.ts, from: &row.from, data: &row.data }).collect();
        let page = Page { epoch: &state.epoch, offset: state.last, messages };
        serde_json::to_value(page).map_err(|e| (ErrorCode::Unavailable, format!("the stored page is not JSON: {e}")))
    }

    /// The oldest publication time `topic` still serves (its rule's age limit).
    fn oldest_ts(&self, topic: &str) -> u64 {
        let age = self.rule(topic).and_then(|rule| rule.max_age);
        age.map_or(0, |age| protocol::now_millis().saturating_sub(age.as_millis() as u64))
    }

    /// Deletes expired publications of every topic with an age limit.
    fn sweep(&mut self) {
        let now = protocol::now_millis();
        let names = match self.store.topic_names() {
            Ok(names) => names,
            Err(e) => return log::warn!("history: cannot list topics to trim: {e}"),
        };
        let trims: Vec<Trim<'_>> = names
            .iter()
            .filter_map(|topic| {
                let age = self.rule(topic)?.max_age?;
                Some(Trim { topic, through: None, before_ts: Some(now.saturating_sub(age.as_millis() as u64)) })
            })
            .collect();
        if let Err(e) = self.store.commit(&[], &[], &trims) {
            log::warn!("history: cannot trim expired publications: {e}");
        }
    }
}

/// Why a recovery or a page was refused: the code and message the client gets.
type Failure = (ErrorCode, String);

fn unavailable(e: rusqlite::Error) -> Failure {
    log::error!("history: the store failed: {e}");
    (ErrorCode::Unavailable, format!("the history store failed: {e}"))
}

fn refusal(code: ErrorCode, why: &str, id: &RawValue) -> SharedFrame {
    SharedFrame::text(protocol::error(code.as_str(), why, Some(id)))
}

/// A fresh epoch: random, so a history begun again (a wiped store) never reuses one.
fn new_epoch() -> String {
    let random = getrandom::u64().unwrap_or_else(|_| {
        // No OS randomness: the clock still tells one start from another.
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
    });
    format!("{random:016x}")
}

/// The result of a `history` request.
#[derive(Serialize)]
struct Page<'a> {
    epoch: &'a str,
    /// The topic's last offset now.
    offset: u64,
    messages: Vec<Kept<'a>>,
}

#[derive(Serialize)]
struct Kept<'a> {
    offset: u64,
    ts: u64,
    from: &'a str,
    data: &'a RawValue,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Command, ConnId, HistoryQueue, InboxReceiver};
    use crate::sync::lock;

    /// A keeper on a memory store whose hub has one undrained shard, where connection
    /// slot 1 is subscribed to `t`.
    fn keeper(rule: &str) -> (Keeper, InboxReceiver) {
        let (hub, mut receivers) = Hub::undrained(1, 1024);
        lock(&hub.shared(0).topics).subscribe(1, || "sub".into(), "t", 8).unwrap();
        let config = Config { history: vec![rule.parse().unwrap()], ..Config::default() };
        // The hub's side of history, for the store's health; nothing is queued to it here.
        let (jobs, _) = crossbeam_channel::bounded(1);
        let (stop, _) = crossbeam_channel::bounded(1);
        let hub = hub.with_history(HistoryQueue::new(config.history.clone(), jobs, stop));
        let store = Store::open(&crate::config::Store::Memory).unwrap();
        let keeper = Keeper::new(store, hub, config.history, 100);
        (keeper, receivers.remove(0))
    }

    fn keeper_health(keeper: &Keeper) -> crate::metrics::HistoryStats {
        keeper.hub.history().expect("the test hub has history").health.stats()
    }

    fn publish(keeper: &mut Keeper, n: u64, ts: u64, ack: bool) {
        let data = RawValue::from_string(n.to_string()).unwrap();
        let ack = ack.then(|| Asker { conn: ConnId::new(0, 0, 2, 1), id: RawValue::from_string("9".into()).unwrap() });
        keeper.handle(Job::Publish { topic: "t".into(), from: "ann".into(), data, ts, ack });
    }

    /// Every frame the shard was handed, as JSON.
    fn handed(receiver: &InboxReceiver) -> Vec<serde_json::Value> {
        std::iter::from_fn(|| receiver.next())
            .flat_map(|command| match command {
                Command::Deliver { frame, .. } => vec![frame],
                Command::Replay { frames, .. } => frames,
                Command::Resume(..) => vec![],
            })
            .map(|frame| serde_json::from_str(frame.to_text().unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn nothing_is_delivered_before_its_batch_is_committed() {
        let (mut keeper, receiver) = keeper("t=10");
        let now = protocol::now_millis();
        publish(&mut keeper, 1, now, true);
        publish(&mut keeper, 2, now, false);
        assert!(handed(&receiver).is_empty(), "still in the open batch");
        keeper.commit();
        let frames = handed(&receiver);
        let seen: Vec<_> = frames.iter().map(|f| (f["type"].clone(), f["offset"].clone())).collect();
        let (message, ack) = (serde_json::Value::from("message"), serde_json::Value::from("ack"));
        assert_eq!(seen, [(message.clone(), 1.into()), (ack, serde_json::Value::Null), (message, 2.into())]);
    }

    #[test]
    fn publications_older_than_the_age_limit_are_neither_kept_nor_replayed() {
        let (mut keeper, receiver) = keeper("t=100/1h");
        let now = protocol::now_millis();
        publish(&mut keeper, 1, now - 2 * 3_600_000, false);
        publish(&mut keeper, 2, now, false);
        keeper.commit();
        let epoch = handed(&receiver)[0]["epoch"].as_str().unwrap().to_string();
        let recover = |keeper: &mut Keeper, offset| {
            let asker =
                Recovery { conn: ConnId::new(0, 0, 1, 1), request: 1, id: RawValue::from_string("5".into()).ok() };
            keeper.handle(Job::Recover { topic: "t".into(), since: Since { offset, epoch: epoch.clone() }, asker });
            handed(&receiver)
        };
        let frames = recover(&mut keeper, 0);
        assert_eq!((frames.len(), &frames[0]["recovered"]), (1, &false.into()), "offset 1 expired: {frames:?}");
        let frames = recover(&mut keeper, 1);
        assert_eq!(frames[0]["offset"], 2);
        assert_eq!(frames[1]["recovered"], true);
    }

    #[test]
    fn a_failing_store_still_delivers_live_without_offsets_and_tells_the_publisher() {
        let (mut keeper, receiver) = keeper("t=10");
        publish(&mut keeper, 0, protocol::now_millis(), false);
        keeper.commit();
        let up = keeper_health(&keeper);
        assert!(up.store_up && up.failures == 0, "{up:?}");
        keeper.store.break_writes();
        publish(&mut keeper, 1, protocol::now_millis(), true);
        keeper.commit();
        let frames = handed(&receiver);
        assert_eq!(frames[1]["data"], 1);
        assert!(frames[1].get("offset").is_none(), "{:?}", frames[1]);
        assert_eq!(frames[2]["code"], "unavailable");
        let down = keeper_health(&keeper);
        assert!(!down.store_up && down.failures == 1 && down.reason.is_some(), "/health and /metrics see it: {down:?}");
    }
}
