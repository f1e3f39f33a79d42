//! Which topics' Redis channels the subscribed bus connection holds, and the answers
//! waiting for one. A client's `subscribe` ack promises that what is published next
//! reaches it; on one instance that holds once the shard's table has the subscriber,
//! but in a cluster a publication made on another instance only arrives once this
//! instance's SUBSCRIBE has reached Redis. So the ack for a topic whose channel is not
//! held yet waits here, and the subscriber thread routes it to the connection right
//! after Redis confirms the SUBSCRIBE. Free of I/O.
//!
//! Every waiting answer is sent exactly once, whatever happens: when the channel is
//! held, when the topic is dropped before that (its last local subscriber left), or
//! when the subscribed connection is lost (Redis down: the promise cannot be kept, and
//! local delivery goes on). While that connection is down, nothing waits.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::frame::SharedFrame;
use crate::hub::{Changes, ConnId, Want, Wanted};
use crate::sync::lock;

/// An answer for a connection, sent once its topic is reachable.
pub(crate) struct Waiter {
    pub conn: ConnId,
    pub frame: SharedFrame,
}

#[derive(Default)]
struct State {
    /// The subscribed connection is up and has subscribed everything wanted.
    up: bool,
    /// Wants whose channel is subscribed in Redis (while `up`): the subscriber thread's
    /// record of what it holds, which it diffs against what is wanted.
    held: HashSet<Want>,
    /// Answers for wants not held yet.
    waiting: HashMap<Want, Vec<Waiter>>,
}

/// Shared by the shards (which ask) and the subscriber thread (which holds channels).
#[derive(Default)]
pub(crate) struct Reach {
    state: Mutex<State>,
}

impl Reach {
    /// `Some(frame)` to send now (the channel is held, or the bus is down); `None`
    /// when it waits for the channel and the subscriber thread will send it.
    pub fn when_held(&self, want: Want, conn: ConnId, frame: SharedFrame) -> Option<SharedFrame> {
        let mut state = lock(&self.state);
        if !state.up || state.held.contains(&want) {
            return Some(frame);
        }
        state.waiting.entry(want).or_default().push(Waiter { conn, frame });
        None
    }

    /// The subscribed connection (re)subscribed `wants`, everything wanted: what waited
    /// for them is due. Others keep waiting for their SUBSCRIBE.
    pub fn up(&self, wants: Vec<Want>) -> Vec<Waiter> {
        let mut state = lock(&self.state);
        state.up = true;
        state.held.clear();
        let mut due = Self::hold(&mut state, &wants);
        // Nothing that waited can be wanted and not held now (`wants` is all of them);
        // what waited for a name no longer wanted is answered too.
        due.extend(state.waiting.drain().flat_map(|(_, waiters)| waiters));
        due
    }

    /// What the subscriber thread must subscribe and unsubscribe to hold what is wanted.
    pub fn changes(&self, wanted: &Wanted) -> Changes {
        wanted.changes(&lock(&self.state).held)
    }

    /// Channels held (besides the ones always held).
    pub fn len(&self) -> usize {
        lock(&self.state).held.len()
    }

    /// Redis confirmed the SUBSCRIBE of `wants`.
    pub fn held(&self, wants: &[Want]) -> Vec<Waiter> {
        Self::hold(&mut lock(&self.state), wants)
    }

    /// `wants` were unsubscribed (no local connection wants them any more): whatever
    /// still waited for them is answered anyway.
    pub fn released(&self, wants: &[Want]) -> Vec<Waiter> {
        let mut state = lock(&self.state);
        let mut due = Vec::new();
        for want in wants {
            state.held.remove(want);
            due.extend(state.waiting.remove(want).unwrap_or_default());
        }
        due
    }

    /// The subscribed connection is lost: nothing is held, nothing waits.
    pub fn down(&self) -> Vec<Waiter> {
        let mut state = lock(&self.state);
        state.up = false;
        state.held.clear();
        state.waiting.drain().flat_map(|(_, waiters)| waiters).collect()
    }

    fn hold(state: &mut State, wants: &[Want]) -> Vec<Waiter> {
        let mut due = Vec::new();
        for want in wants {
            state.held.insert(want.clone());
            due.extend(state.waiting.remove(want).unwrap_or_default());
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room() -> Want {
        Want::Topic("room".into())
    }

    fn conns(waiters: Vec<Waiter>) -> Vec<u64> {
        waiters.iter().map(|waiter| waiter.conn.as_u64()).collect()
    }

    #[test]
    fn an_answer_waits_for_its_channel_only_while_the_bus_is_up() {
        let reach = Reach::default();
        let ack = || SharedFrame::text("ack");
        assert!(reach.when_held(room(), ConnId::from_u64(1), ack()).is_some(), "down: at once");
        assert!(conns(reach.up(Vec::new())).is_empty());
        assert!(reach.when_held(room(), ConnId::from_u64(2), ack()).is_none());
        assert!(reach.when_held(room(), ConnId::from_u64(3), ack()).is_none());
        assert!(reach.held(&[Want::Topic("other".into())]).is_empty());
        assert_eq!(conns(reach.held(&[room()])), [2, 3]);
        assert!(reach.when_held(room(), ConnId::from_u64(4), ack()).is_some(), "held: at once");
        assert!(conns(reach.released(&[room()])).is_empty());
        assert!(reach.when_held(room(), ConnId::from_u64(5), ack()).is_none(), "released: waits again");
        assert_eq!(conns(reach.released(&[room()])), [5], "answered even if never held");
        assert!(reach.when_held(room(), ConnId::from_u64(6), ack()).is_none());
        assert_eq!(conns(reach.down()), [6], "a lost connection answers everything");
        assert!(reach.when_held(room(), ConnId::from_u64(7), ack()).is_some());
        assert!(reach.when_held(room(), ConnId::from_u64(8), ack()).is_some());
        assert_eq!(conns(reach.up(vec![room()])), Vec::<u64>::new());
        assert!(reach.when_held(room(), ConnId::from_u64(9), ack()).is_some(), "resubscribed");
    }
}
