//! What a connection call borrows from its shard: the poll, the limits, the read buffer and
//! the counters, kept apart from the slab so both can be borrowed at once.

use std::sync::Arc;
use std::time::Instant;

use mio::{Interest, Poll, Token};

use crate::auth::Gate;
use crate::clock::Tick;
use crate::engine::conn::{ConnEnv, Connection, Incoming, Limits};
use crate::engine::wire::Inbound;
use crate::metrics::Counters;

/// The shard's half of every connection call: [`ShardIo::cx`] lends it as a `ConnEnv`.
pub(super) struct ShardIo {
    pub poll: Poll,
    pub limits: Limits,
    /// What the connection being served produced, for the handler.
    pub incoming: Vec<Incoming>,
    /// This shard's running totals; published to `ShardShared` once per loop pass.
    pub counters: Counters,
    pub gate: Arc<Gate>,
    /// The one read buffer every connection of this shard reads into, in turn.
    pub inbound: Inbound,
    /// The wall-clock time of this loop pass.
    pub wall: Instant,
}

impl ShardIo {
    pub fn cx(&mut self, key: usize, now: Tick) -> ConnEnv<'_> {
        ConnEnv {
            key,
            limits: &self.limits,
            now,
            wall: self.wall,
            incoming: &mut self.incoming,
            counters: &mut self.counters,
            gate: &self.gate,
            inbound: &mut self.inbound,
        }
    }

    /// Registers WRITABLE exactly while the connection's last write would have blocked;
    /// the syscall happens only on a change. `false`: the socket is gone.
    #[inline]
    pub fn sync_interest(&self, key: usize, conn: &mut Connection) -> bool {
        let Some(writable) = conn.interest_change() else {
            return true;
        };
        let interest = if writable { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
        if self.poll.registry().reregister(&mut conn.wire_mut().tcp, Token(key), interest).is_err() {
            return false;
        }
        conn.interest_synced(writable);
        true
    }
}
