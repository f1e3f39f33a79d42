//! Each shard's inbox: a crossbeam channel plus a mio `Waker`, through which other
//! threads (other shards, the worker pool, the HTTP API, an embedding application) hand
//! a shard deliveries for its connections, and the cluster's ask thread the answers its
//! connections wait for ([`Answer`]).
//!
//! A sender wakes a shard at most once per batch: the first send after the shard last
//! drained its inbox sets `wake_pending` and calls the waker; later sends only enqueue. The
//! shard clears the flag *before* draining, so a message sent during the drain is either
//! drained now or triggers a fresh wake, never stranded.
//!
//! An inbox holds at most `capacity` deliveries. Past that, a send is refused and counted
//! rather than queued or waited on: the senders include other shards, and a shard that
//! waited on a full inbox could wait on one that waits on it. A refused delivery is lost
//! for that shard's receivers only; the sender is told (`Err(InboxFull)`), so the HTTP API
//! answers 503 and a worker's call fails, and `/stats` and `/metrics` count it. Shutdown
//! is a flag beside the channel, so a full inbox cannot hold it up. The bound is a soft
//! one: senders racing past the check may overshoot it by one delivery each. Answers are
//! not bounded by it: each is owed to one waiting connection, which asks nothing more.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::frame::SharedFrame;
use crate::http::HttpResponse;
use crossbeam_channel::{Receiver, Sender};
use mio::Waker;

use super::{ConnId, Target};

/// What a shard is handed.
pub(crate) enum Command {
    /// A delivery: the frame, for its connections that `target` names.
    Deliver { target: Target, frame: SharedFrame },
    /// The answer the cluster gives a connection waiting for it (a ticket taken, a
    /// ticket stored). A connection that is gone, or no longer waiting, matches nothing.
    Resume(ConnId, Answer),
    /// A recovering subscription's replay (the missed messages, then the ack), from the
    /// history thread: delivered if recovery `request` of `conn` is still waiting, after
    /// which the topic's live deliveries reach it again; or, `subscribed` false, the
    /// refusal, after which it is no longer subscribed to `topic`.
    Replay { conn: ConnId, request: u64, topic: Arc<str>, frames: Vec<SharedFrame>, subscribed: bool },
}

/// What a connection waiting on the cluster gets back.
#[derive(Debug)]
pub(crate) enum Answer {
    /// Its ticket, taken from Redis: the record stored under it, or `None` when there
    /// was none (never issued, expired, or already taken).
    Ticket(Option<String>),
    /// The response to its HTTP request.
    Http(HttpResponse),
    /// The cluster could not be asked (Redis unreachable, or too many questions
    /// waiting): nothing was done, it is answered 503.
    Unavailable,
}

/// A delivery did not reach all its receivers: a shard's inbox was full (that shard's
/// receivers missed it), or, in a cluster, the queue toward Redis was full or Redis is
/// down (the other instances' receivers missed it). The others got it. Tell the sender
/// (503, an error frame) rather than retry blindly: a retry reaches the others twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxFull;

impl std::fmt::Display for InboxFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the server is overloaded or its cluster unreachable; some receivers missed the message")
    }
}

impl std::error::Error for InboxFull {}

/// What the senders and the shard share.
struct Shared {
    waker: Waker,
    /// Set by the first send after a drain, cleared by the shard before it drains.
    wake_pending: AtomicBool,
    /// Set once, by `shutdown`.
    shutdown: AtomicBool,
    /// Deliveries refused because the inbox was full, since the start.
    refused: AtomicU64,
    capacity: usize,
}

/// The sending side of one shard's inbox.
#[derive(Clone)]
pub(crate) struct ShardInbox {
    commands: Sender<Command>,
    shared: Arc<Shared>,
}

/// The shard's side.
pub(crate) struct InboxReceiver {
    commands: Receiver<Command>,
    shared: Arc<Shared>,
}

/// An inbox that holds at most `capacity` deliveries.
pub(crate) fn inbox(waker: Waker, capacity: usize) -> (ShardInbox, InboxReceiver) {
    // Unbounded underneath, bounded by the length check in `send`: a bounded crossbeam
    // channel allocates all its slots up front, which an idle shard should not pay for.
    let (commands, receiver) = crossbeam_channel::unbounded();
    let shared = Arc::new(Shared {
        waker,
        wake_pending: AtomicBool::new(false),
        shutdown: AtomicBool::new(false),
        refused: AtomicU64::new(0),
        capacity,
    });
    (ShardInbox { commands, shared: shared.clone() }, InboxReceiver { commands: receiver, shared })
}

impl ShardInbox {
    pub fn send(&self, command: Command) -> Result<(), InboxFull> {
        if self.commands.len() >= self.shared.capacity {
            self.shared.refused.fetch_add(1, Ordering::Relaxed);
            return Err(InboxFull);
        }
        // A closed inbox means the shard has exited (shutdown); nothing is left to deliver to.
        if self.commands.send(command).is_ok() {
            self.wake();
        }
        Ok(())
    }

    /// Hands a waiting connection its answer. Not bounded by the capacity: at most one
    /// is ever owed per connection (it asks nothing more until answered), and refusing
    /// one would leave its connection hanging with its ticket spent.
    pub fn resume(&self, conn: ConnId, answer: Answer) {
        // A closed inbox means the shard has exited: the connection is gone too.
        if self.commands.send(Command::Resume(conn, answer)).is_ok() {
            self.wake();
        }
    }

    /// Hands a recovering subscription its replay. Not bounded by the capacity, like an
    /// answer: one is owed per recovering subscription (the history thread's queue bounds
    /// those), and refusing it would leave the subscription held back for good.
    pub fn send_replay(&self, replay: Command) {
        if self.commands.send(replay).is_ok() {
            self.wake();
        }
    }

    /// Asks the shard to stop accepting, close every connection with 1001 and exit.
    pub fn shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.wake();
    }

    fn wake(&self) {
        if !self.shared.wake_pending.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.shared.waker.wake() {
                log::error!("failed to wake shard: {e}");
            }
        }
    }

    /// Deliveries waiting.
    pub fn depth(&self) -> usize {
        self.commands.len()
    }

    /// Deliveries refused since the start because the inbox was full.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }
}

impl InboxReceiver {
    /// Call on the waker's event, then drain with `next` until it returns `None`.
    pub fn woken(&self) {
        self.shared.wake_pending.store(false, Ordering::Release);
    }

    pub fn next(&self) -> Option<Command> {
        self.commands.try_recv().ok()
    }

    /// Whether `shutdown` was called.
    pub fn shutdown_requested(&self) -> bool {
        self.shared.shutdown.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll, Token};
    use std::time::Duration;

    fn everyone(text: &str) -> Command {
        Command::Deliver { target: Target::Everyone, frame: SharedFrame::text(text) }
    }

    #[test]
    fn a_batch_of_sends_wakes_the_shard_once() {
        let mut poll = Poll::new().unwrap();
        let waker = Waker::new(poll.registry(), Token(0)).unwrap();
        let (sender, receiver) = inbox(waker, 1000);
        let mut events = Events::with_capacity(8);
        for i in 0..100 {
            sender.send(everyone(&i.to_string())).unwrap();
        }
        poll.poll(&mut events, Some(Duration::from_secs(1))).unwrap();
        assert_eq!(events.iter().count(), 1);
        receiver.woken();
        assert_eq!(std::iter::from_fn(|| receiver.next()).count(), 100);

        // Nothing sent since the drain: no further wake (an absence, so a short bounded wait).
        poll.poll(&mut events, Some(Duration::from_millis(50))).unwrap();
        assert_eq!(events.iter().count(), 0);
        // The next send wakes again.
        sender.send(everyone("again")).unwrap();
        poll.poll(&mut events, Some(Duration::from_secs(1))).unwrap();
        assert_eq!(events.iter().count(), 1);
    }

    #[test]
    fn a_full_inbox_refuses_and_counts_but_still_takes_shutdown() {
        let poll = Poll::new().unwrap();
        let (sender, receiver) = inbox(Waker::new(poll.registry(), Token(0)).unwrap(), 3);
        let results: Vec<_> = (0..5).map(|i| sender.send(everyone(&i.to_string()))).collect();
        assert_eq!(results, [Ok(()), Ok(()), Ok(()), Err(InboxFull), Err(InboxFull)]);
        assert_eq!((sender.depth(), sender.refused()), (3, 2));
        sender.shutdown();
        assert!(receiver.shutdown_requested());
        sender.resume(ConnId::new(0, 0, 1, 2), Answer::Unavailable);
        let kept: Vec<String> = std::iter::from_fn(|| receiver.next())
            .map(|command| match command {
                Command::Deliver { frame, .. } => frame.to_text().unwrap().to_owned(),
                Command::Resume(id, Answer::Unavailable) => format!("resume {id}"),
                Command::Resume(..) | Command::Replay { .. } => "another answer".into(),
            })
            .collect();
        let resume = format!("resume {}", ConnId::new(0, 0, 1, 2));
        assert_eq!(kept, ["0", "1", "2", resume.as_str()], "the first three, in order; an answer is never refused");
        sender.send(everyone("room again")).unwrap();
        assert_eq!(sender.refused(), 2);
    }
}
