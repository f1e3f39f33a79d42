//! Each shard's inbox: a crossbeam channel plus a mio `Waker`, through which other
//! threads (other shards, the worker pool, the HTTP API, an embedding application) hand
//! a shard work for its connections.
//!
//! A sender wakes a shard at most once per batch: the first send after the shard last
//! drained its inbox sets `wake_pending` and calls the waker; later sends only enqueue. The
//! shard clears the flag *before* draining, so a message sent during the drain is either
//! drained now or triggers a fresh wake, never stranded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use mio::Waker;
use tungstenite::Message;

use super::{ConnId, Filter, Publication};

/// What one shard asks of another.
pub(crate) enum Command {
    /// Deliver to every open connection on the shard.
    Broadcast(Message),
    /// Deliver to the shard's subscribers of a topic (or hold it for their next batch).
    Publish(Publication),
    /// Deliver to every open connection whose session matches.
    Filtered(Filter, Message),
    /// Deliver to one connection, if it still exists.
    ToConn(ConnId, Message),
    /// Deliver to every local connection of this user.
    ToUser(Arc<str>, Message),
    /// Stop accepting, close every connection with 1001, exit when done or at the deadline.
    Shutdown,
}

/// The sending side of one shard's inbox.
#[derive(Clone)]
pub(crate) struct ShardInbox {
    commands: Sender<Command>,
    waker: Arc<Waker>,
    wake_pending: Arc<AtomicBool>,
}

/// The shard's side: its receiver and the flag it clears before draining.
pub(crate) struct InboxReceiver {
    pub commands: Receiver<Command>,
    wake_pending: Arc<AtomicBool>,
}

pub(crate) fn inbox(waker: Waker) -> (ShardInbox, InboxReceiver) {
    let (commands, receiver) = crossbeam_channel::unbounded();
    let wake_pending = Arc::new(AtomicBool::new(false));
    let sender = ShardInbox { commands, waker: Arc::new(waker), wake_pending: wake_pending.clone() };
    (sender, InboxReceiver { commands: receiver, wake_pending })
}

impl ShardInbox {
    pub fn send(&self, command: Command) {
        // A closed inbox means the shard has exited (shutdown); nothing is left to deliver to.
        if self.commands.send(command).is_ok() && !self.wake_pending.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.waker.wake() {
                log::error!("failed to wake shard: {e}");
            }
        }
    }

    pub fn depth(&self) -> usize {
        self.commands.len()
    }
}

impl InboxReceiver {
    /// Call on the waker's event, then drain with `try_recv` until empty.
    pub fn woken(&self) {
        self.wake_pending.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll, Token};
    use std::time::Duration;

    #[test]
    fn a_batch_of_sends_wakes_the_shard_once() {
        let mut poll = Poll::new().unwrap();
        let waker = Waker::new(poll.registry(), Token(0)).unwrap();
        let (sender, receiver) = inbox(waker);
        let mut events = Events::with_capacity(8);
        for i in 0..100 {
            sender.send(Command::Broadcast(Message::text(i.to_string())));
        }
        poll.poll(&mut events, Some(Duration::from_secs(1))).unwrap();
        assert_eq!(events.iter().count(), 1);
        receiver.woken();
        assert_eq!(receiver.commands.try_iter().count(), 100);

        // Nothing sent since the drain: no further wake.
        poll.poll(&mut events, Some(Duration::from_millis(50))).unwrap();
        assert_eq!(events.iter().count(), 0);
        // The next send wakes again.
        sender.send(Command::Shutdown);
        poll.poll(&mut events, Some(Duration::from_secs(1))).unwrap();
        assert_eq!(events.iter().count(), 1);
    }
}
