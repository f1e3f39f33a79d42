//! Every per-connection entry a shard keeps outside the connection itself, and the one
//! place each is taken out again, so a new index cannot be forgotten on close:
//!
//! | entered | where | by |
//! | --- | --- | --- |
//! | at accept | `Shared::live`, the shard's connection count, `peer_ips` (with `--max-connections-per-ip`) | `accept` |
//! | at the upgrade | the shard's user table (`ShardShared::users`), `grants`, `expiries` | [`Shard::admit`] |
//! | while open | subscriptions (`ShardShared::topics`), session data | handlers, via `Context` |
//!
//! [`Shard::forget`] removes all of them.

use std::sync::atomic::Ordering;

use super::Shard;
use crate::auth::unix_now;
use crate::engine::conn::{Admission, Connection};
use crate::hub::handler::Handler;
use crate::hub::ConnId;
use crate::sync::lock;

impl<H: Handler> Shard<H> {
    /// The connection at `key` completed its upgrade as what `admission` says.
    pub(super) fn admit(&mut self, key: usize, admission: Option<Admission>) {
        if let Some(admission) = admission {
            if let Some(grants) = admission.grants {
                self.routing.grants.insert(key, grants);
            }
            if let Some(expires_at) = admission.expires_at {
                self.expiries.set(key, expires_at, unix_now());
            }
        }
        if let Some(user) = &self.conns[key].user {
            lock(&self.routing.hub.shared(self.index).users).add(user, key as u32);
        }
    }

    /// Takes out every entry of `conn`, just removed from slot `key`.
    pub(super) fn forget(&mut self, key: usize, conn: &Connection) {
        self.shared.live.fetch_sub(1, Ordering::AcqRel);
        let shared = self.routing.hub.shared(self.index);
        shared.connections.fetch_sub(1, Ordering::AcqRel);
        if let (Some(ip), Some(per_ip)) = (self.peer_ips.remove(&key), &self.shared.per_ip) {
            per_ip.release(ip);
        }
        if let Some(user) = &conn.user {
            lock(&shared.users).remove(user, key as u32);
        }
        self.routing.grants.remove(&key);
        self.expiries.clear(key);
        lock(&shared.topics).remove_conn(key as u32);
        lock(&shared.sessions).remove(&ConnId::new(conn.node, self.index, key, conn.generation));
    }
}
