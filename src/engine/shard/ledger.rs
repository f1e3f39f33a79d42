//! Every per-connection entry a shard keeps outside the connection itself, and the one
//! place each is taken out again, so a new index cannot be forgotten on close:
//!
//! | entered | where | by |
//! | --- | --- | --- |
//! | at accept | `Shared::live`, the shard's connection count, `peer_ips` (with `--max-connections-per-ip`) | `accept` |
//! | at the upgrade | `users` and the hub's user set, `grants`, `expiries` | [`Shard::admit`] |
//! | while open | subscriptions (`routes` and the directory), session data | handlers, via `Context` |
//!
//! [`Shard::forget`] removes all of them.

use std::sync::atomic::Ordering;

use super::Shard;
use crate::auth::unix_now;
use crate::engine::conn::{Admission, Connection};
use crate::hub::handler::{Handler, ShardRouting};
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
            let keys = self.users.entry(user.clone()).or_default();
            if keys.is_empty() {
                lock(&self.routing.hub.shared(self.index).users).insert(user.clone());
            }
            keys.push(key);
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
            if let Some(keys) = self.users.get_mut(user) {
                keys.retain(|&k| k != key);
                if keys.is_empty() {
                    self.users.remove(user);
                    lock(&shared.users).remove(user);
                }
            }
        }
        self.routing.grants.remove(&key);
        self.expiries.clear(key);
        let id = ConnId::new(self.index, key, conn.generation);
        let topics = self.routing.routes.remove_conn(key);
        if !topics.is_empty() {
            let identity = ShardRouting::identity(id, conn.user.as_ref());
            let mut directory = lock(&shared.directory);
            for topic in &topics {
                directory.remove(topic, &identity);
            }
        }
        lock(&shared.sessions).remove(&id);
    }
}
